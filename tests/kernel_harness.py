"""Run the package's real Metal and CUDA kernel sources on the CPU, and compile the CUDA one.

MLX's ``mx.fast.metal_kernel`` and ``mx.fast.cuda_kernel`` take a kernel *body* and wrap it in
a generated translation unit. This module gets that translation unit and builds it:

- **Metal**: the CPU build of MLX writes the Metal source itself. ``mx.fast.metal_kernel``
  runs while ``mx.export_function`` traces a call, even without Metal, and ``verbose=True``
  prints the generated source; :func:`metal_translation_unit` captures it.
- **CUDA**: MLX's CPU build refuses ``mx.fast.cuda_kernel``, so
  :func:`cuda_translation_unit` rebuilds the unit the way MLX does (``build_kernel`` in
  ``mlx/backend/cuda/custom_kernel.cpp``, checked against :data:`MLX_CHECKED_AGAINST`).

The CUDA unit is also compiled for real GPUs, with ``nvcc`` (:func:`nvcc_compile`) and with
NVRTC, the compiler MLX itself calls at run time, given MLX's options (:func:`nvrtc_compile`).
Both units are compiled with ``g++`` against host stand-ins for the GPU keywords and types
(``tests/harness_include/cpu``) together with a small launcher that plays MLX's launch (every
Metal thread position; every CUDA block and thread of MLX's rounded-up grid), loaded with
``ctypes`` and run on real arrays. :class:`HarnessKernel` has the call signature of the
kernel objects MLX returns, so a test swaps it in for ``mx.fast.metal_kernel`` /
``mx.fast.cuda_kernel`` and the package's own ``_launch`` drives it unchanged.

MLX refuses to evaluate an array while ``mx.compile`` or ``mx.vmap`` traces a function, so a
host launch cannot run there; such calls go to :func:`imitate_masked_affine`, a transcription
of the body in MLX ops, and are counted so that tests can require that they did not happen.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

INCLUDE = Path(__file__).resolve().parent / "harness_include"

#: The MLX version whose ``build_kernel`` (CUDA) and Metal source generation this module was
#: checked against (MLX source tree at ml-explore/mlx 846d176, whose custom-kernel files are
#: unchanged since v0.32.1, and the installed CPU wheel's Metal output).
MLX_CHECKED_AGAINST = "0.32.4"

# The real kernel constructors, saved before any test replaces them with HarnessKernel.
_REAL_METAL_KERNEL = mx.fast.metal_kernel

# MLX's dtype_to_cuda_type (mlx/backend/cuda/utils.cpp) and get_type_string
# (mlx/backend/common/compiled.cpp), for the dtypes a kernel here can meet.
_CUDA_TYPE = {
    mx.bool_: "bool",
    mx.int8: "int8_t",
    mx.int16: "int16_t",
    mx.int32: "int32_t",
    mx.int64: "int64_t",
    mx.uint8: "uint8_t",
    mx.uint16: "uint16_t",
    mx.uint32: "uint32_t",
    mx.uint64: "uint64_t",
    mx.float16: "__half",
    mx.bfloat16: "__nv_bfloat16",
    mx.float32: "float",
    mx.float64: "double",
}
_TYPE_STRING = {
    mx.bool_: "bool",
    mx.int32: "int32_t",
    mx.uint32: "uint32_t",
    mx.float16: "float16_t",
    mx.bfloat16: "bfloat16_t",
    mx.float32: "float",
    mx.float64: "double",
}
# Same-width unsigned integers: how the harness moves any dtype's bits through NumPy.
_BITS = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}

#: The host compiler: GCC. (Clang rejects the attribute list MLX puts on the Metal explicit
#: instantiation, and clang before 15 has no _Float16 on x86; Apple's ``g++`` is clang.)
CXX = "g++"
GXX_FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror")
#: No contraction: ``(x - alpha') * a + d`` rounds each operation, like MLX's CPU ops.
EXACT = ("-ffp-contract=off",)
#: Contraction on, as nvcc does by default on the GPU (``fma.rn.f32``). x86-64 needs FMA
#: enabled explicitly; AArch64 always has it.
CONTRACTED = (
    ("-mfma", "-ffp-contract=fast")
    if platform.machine() in ("x86_64", "AMD64")
    else ("-ffp-contract=fast",)
)
#: How a fused single-precision multiply-add reads in this machine's disassembly.
FMA_INSTRUCTION = r"\bvfn?madd\w*ss\b" if "-mfma" in CONTRACTED else r"\bfn?madd\s+s\d"
NVCC_ARCHS = ("sm_80", "sm_90a")  # A100; H100/H200 (MLX adds "a" from compute capability 9)

_GUARD_ELEMENTS = 64
_GUARD_BYTE = 0xA5


class HarnessBuildError(RuntimeError):
    """A translation unit did not compile; the message holds the compiler's output."""


@dataclass
class HarnessStats:
    """What the harness did in this process (reported at the end of the pytest run)."""

    gxx_builds: int = 0
    nvcc_builds: list[str] = field(default_factory=list)
    real_launches: int = 0
    imitated_launches: int = 0


STATS = HarnessStats()
_BUILD_DIR = Path(tempfile.mkdtemp(prefix="lucid_mlx_harness_"))
atexit.register(shutil.rmtree, _BUILD_DIR, ignore_errors=True)
_LIBRARIES: dict[str, ctypes.CDLL] = {}
_LOCK = threading.Lock()


@functools.cache
def toolchain_missing(tool: str) -> str | None:
    """Why ``tool`` cannot run here, or ``None`` when it can."""
    if tool == "nvcc":
        found = shutil.which("nvcc") or (
            "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
        )
        return None if found else "nvcc (the CUDA toolkit's compiler) is not on PATH"
    if not shutil.which(tool):
        return f"{tool} is not on PATH"
    if tool == CXX:
        version = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
        if "Free Software Foundation" not in version.stdout:
            return f"the kernel harness needs GCC, and {tool} here is not GCC"
    return None


def nvcc_path() -> str:
    return shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"


def cuda_include() -> Path:
    """The CUDA toolkit's include folder (cuda_fp16.h, cuda_bf16.h, cooperative_groups.h)."""
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"]
    candidates.append(Path(nvcc_path()).resolve().parent.parent / "include")
    for candidate in candidates:
        if (candidate / "cuda_fp16.h").exists():
            return candidate
    raise HarnessBuildError(f"no cuda_fp16.h in {[str(c) for c in candidates]}")


# ---- translation units ---------------------------------------------------------------------


def kernel_name(name: str, template: Sequence[tuple[str, Any]]) -> str:
    """MLX's CUDA kernel name: ``custom_kernel_<name>`` plus the template arguments' hash."""
    suffix = ""
    for _, argument in template:
        if isinstance(argument, bool):
            suffix += "_t" if argument else "_f"
        elif isinstance(argument, int):
            suffix += f"_{argument}"
        else:
            suffix += f"_{_TYPE_STRING[argument]}"
    return f"custom_kernel_{name}{suffix}"


def cuda_translation_unit(
    name: str,
    input_names: Sequence[str],
    inputs: Sequence[mx.array],
    output_names: Sequence[str],
    output_dtypes: Sequence[mx.Dtype],
    template: Sequence[tuple[str, Any]],
    source: str,
    header: str = "",
) -> str:
    """The source MLX's CUDA backend hands to NVRTC for this kernel call (``build_kernel``)."""
    unit = '\n#include "mlx/backend/cuda/device/utils.cuh"\n\n#include <cooperative_groups.h>\n\n'
    unit += header
    unit += "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
    unit += f"__global__ void {kernel_name(name, template)}(\n"
    for input_name, array in zip(input_names, inputs, strict=True):
        unit += f"    const {_CUDA_TYPE[array.dtype]}* {input_name},\n"
        if array.ndim > 0:
            if f"{input_name}_shape" in source:
                unit += f"    const __grid_constant__ Shape {input_name}_shape,\n"
            if f"{input_name}_strides" in source:
                unit += f"    const __grid_constant__ Strides {input_name}_strides,\n"
            if f"{input_name}_ndim" in source:
                unit += f"    const __grid_constant__ int {input_name}_ndim,\n"
    outputs = [
        f"    {_CUDA_TYPE[dtype]}* {output}"
        for output, dtype in zip(output_names, output_dtypes, strict=True)
    ]
    unit += ",\n".join(outputs) + ") {\n"
    if template:
        for argument_name, argument in template:
            if isinstance(argument, bool):
                unit += f"  constexpr bool {argument_name} = {str(argument).lower()};\n"
            elif isinstance(argument, int):
                unit += f"  constexpr int {argument_name} = {argument};\n"
            else:
                unit += f"  using {argument_name} = {_CUDA_TYPE[argument]};\n"
        unit += "\n"
    unit += source
    unit += "\n}\n\n} // namespace mlx::core::cu\n"
    return unit


class _CapturedStdout:
    """Capture what C++ writes to file descriptor 1 (``std::cout``) inside the block."""

    def __enter__(self) -> _CapturedStdout:
        sys.stdout.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode()
        self._file.close()


def metal_translation_unit(
    name: str,
    input_names: Sequence[str],
    inputs: Sequence[mx.array],
    output_names: Sequence[str],
    output_shapes: Sequence[Sequence[int]],
    output_dtypes: Sequence[mx.Dtype],
    template: Sequence[tuple[str, Any]],
    source: str,
    header: str = "",
) -> str:
    """The Metal source MLX itself generates for this call, written by MLX's CPU build.

    Raises ``AssertionError`` (never skips) if MLX stops printing it.
    """
    kernel = _REAL_METAL_KERNEL(
        name=name,
        input_names=list(input_names),
        output_names=list(output_names),
        source=source,
        header=header,
    )
    placeholders = [mx.zeros(array.shape, array.dtype) for array in inputs]

    def call(*arrays: mx.array) -> list[mx.array]:
        return kernel(  # type: ignore[no-any-return]
            inputs=list(arrays),
            template=list(template),
            grid=(1, 1, 1),
            threadgroup=(1, 1, 1),
            output_shapes=[tuple(shape) for shape in output_shapes],
            output_dtypes=list(output_dtypes),
            verbose=True,
        )

    with tempfile.TemporaryDirectory() as directory, _CapturedStdout() as captured:
        mx.export_function(os.path.join(directory, "trace.mlxfn"), call, *placeholders)
    match = re.search(r"Generated source code for `[^`]*`:\n```\n(.*)```", captured.text, re.S)
    assert match, (
        "MLX no longer prints the generated Metal source while exporting a metal_kernel call"
        f" (mlx {mx.__version__}); the Metal half of the kernel harness cannot run. Output:\n"
        + captured.text
    )
    return match.group(1)


# ---- building ------------------------------------------------------------------------------


def _metal_launcher(unit: str, buffers: int) -> str:
    match = re.search(
        r"template \[\[host_name\(\"\w+\"\)\]\] \[\[kernel\]\] decltype\((\w+)<([\w:]+)>\)", unit
    )
    assert match, "no explicit kernel instantiation in the generated Metal source"
    function, type_argument = match.groups()
    arguments = ", ".join(f"lucid_any_pointer{{buffers[{i}]}}" for i in range(buffers))
    return f"""
extern "C" void lucid_launch(void* const* buffers, unsigned int gx, unsigned int gy,
                             unsigned int gz, unsigned int, unsigned int, unsigned int) {{
  for (unsigned int z = 0; z < gz; ++z)
    for (unsigned int y = 0; y < gy; ++y)
      for (unsigned int x = 0; x < gx; ++x)
        {function}<{type_argument}>({arguments}, uint3{{x, y, z}});
}}
"""


def _cuda_launcher(unit: str, buffers: int) -> str:
    match = re.search(r"__global__ void (\w+)\(", unit)
    assert match, "no __global__ kernel in the CUDA translation unit"
    arguments = ", ".join(f"lucid_any_pointer{{buffers[{i}]}}" for i in range(buffers))
    return f"""
// MLX's launch: blocks of min(threadgroup, grid) threads, grid rounded up to whole blocks.
extern "C" void lucid_launch(void* const* buffers, unsigned int gx, unsigned int gy,
                             unsigned int gz, unsigned int tx, unsigned int ty,
                             unsigned int tz) {{
  blockDim = dim3{{tx < gx ? tx : gx, ty < gy ? ty : gy, tz < gz ? tz : gz}};
  gridDim = dim3{{(gx + tx - 1) / tx, (gy + ty - 1) / ty, (gz + tz - 1) / tz}};
  for (unsigned int bz = 0; bz < gridDim.z; ++bz)
  for (unsigned int by = 0; by < gridDim.y; ++by)
  for (unsigned int bx = 0; bx < gridDim.x; ++bx)
    for (unsigned int z = 0; z < blockDim.z; ++z)
    for (unsigned int y = 0; y < blockDim.y; ++y)
    for (unsigned int x = 0; x < blockDim.x; ++x) {{
      blockIdx = uint3{{bx, by, bz}};
      threadIdx = uint3{{x, y, z}};
      mlx::core::cu::{match.group(1)}({arguments});
    }}
}}
"""


def build_host_library(
    backend: str, unit: str, buffers: int, flags: Sequence[str] = EXACT
) -> ctypes.CDLL:
    """Compile a Metal or CUDA translation unit with g++ and a launcher; load it (cached)."""
    if backend == "metal":
        program = '#include "lucid_metal_stub.h"\n' + unit + _metal_launcher(unit, buffers)
        extra: tuple[str, ...] = ("-Wno-attributes",)  # [[kernel]], [[buffer(i)]], ...
    else:
        program = unit + _cuda_launcher(unit, buffers)
        extra = ()
    command = [CXX, *GXX_FLAGS, *extra, *flags, f"-I{INCLUDE / 'cpu'}"]
    digest = hashlib.sha256("\0".join([*command, program]).encode()).hexdigest()[:20]
    with _LOCK:
        if digest in _LIBRARIES:
            return _LIBRARIES[digest]
        source_path = _BUILD_DIR / f"{backend}_{digest}.cpp"
        library_path = source_path.with_suffix(".so")
        source_path.write_text(program)
        result = subprocess.run(
            [*command, str(source_path), "-o", str(library_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise HarnessBuildError(f"{CXX} failed on the {backend} kernel:\n{result.stderr}")
        STATS.gxx_builds += 1
        library = ctypes.CDLL(str(library_path))
        library.lucid_launch.restype = None
        library.lucid_launch.argtypes = [ctypes.POINTER(ctypes.c_void_p)] + [ctypes.c_uint] * 6
        _LIBRARIES[digest] = library
        return library


def nvcc_compile(unit: str, arch: str, output: str = "cubin") -> str:
    """Compile a CUDA translation unit with nvcc for ``arch``; return PTX text or the path."""
    digest = hashlib.sha256(unit.encode()).hexdigest()[:20]
    source_path = _BUILD_DIR / f"cuda_{digest}.cu"
    source_path.write_text(unit)
    target = source_path.with_suffix(f".{arch}.{output}")
    command = [
        nvcc_path(),
        f"-{output}",
        f"--gpu-architecture={arch}",
        "-std=c++17",
        "--Werror=all-warnings",
        f"-I{INCLUDE / 'nvcc'}",
        str(source_path),
        "-o",
        str(target),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HarnessBuildError(f"nvcc failed ({arch}):\n{result.stdout}{result.stderr}")
    with _LOCK:
        STATS.nvcc_builds.append(f"{arch}:{output}")
    return target.read_text() if output == "ptx" else str(target)


def _load_nvrtc() -> ctypes.CDLL | None:
    """NVRTC from the ``nvidia-cuda-nvrtc`` wheel (CUDA 13), or ``None`` where it is absent."""
    try:
        import nvidia  # the wheels' namespace package
    except ImportError:
        return None
    for root in nvidia.__path__:
        for library in sorted(Path(root).glob("cu*/lib/libnvrtc.so.*")):
            # NVRTC opens its builtins library by name at compile time: load it first.
            for builtins in library.parent.glob("libnvrtc-builtins.so.*"):
                ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(str(library))
    return None


_NVRTC = _load_nvrtc()


def nvrtc_missing() -> str | None:
    if _NVRTC is None:
        return "NVRTC is not installed (pip install 'nvidia-cuda-nvrtc==13.0.*')"
    if toolchain_missing("nvcc"):
        return "the CUDA toolkit's headers (cuda_fp16.h, next to nvcc) are not here"
    return None


def nvrtc_compile(unit: str, arch: str, kernel: str) -> int:
    """Compile ``unit`` with NVRTC as MLX's CUDA backend does; return the cubin's size.

    The same options as MLX's ``jit_module.cpp`` (``--device-as-default-execution-space``,
    ``--gpu-architecture=sm_XY[a]``), the stand-in ``utils.cuh`` handed over in memory under
    MLX's include name, and ``kernel`` registered as a name expression, as MLX does.
    """
    assert _NVRTC is not None
    nvrtc = _NVRTC
    header_name = b"mlx/backend/cuda/device/utils.cuh"
    header = (INCLUDE / "nvcc" / header_name.decode()).read_bytes()
    toolkit_include = cuda_include()
    program = ctypes.c_void_p()

    def check(code: int, what: str) -> None:
        if code != 0:
            nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise HarnessBuildError(f"{what} failed: {nvrtc.nvrtcGetErrorString(code).decode()}")

    check(
        nvrtc.nvrtcCreateProgram(
            ctypes.byref(program),
            unit.encode(),
            b"lucid_mlx_kernel.cu",
            1,
            (ctypes.c_char_p * 1)(header),
            (ctypes.c_char_p * 1)(header_name),
        ),
        "nvrtcCreateProgram",
    )
    try:
        check(nvrtc.nvrtcAddNameExpression(program, kernel.encode()), "nvrtcAddNameExpression")
        options = [
            b"--device-as-default-execution-space",
            f"--gpu-architecture={arch}".encode(),
            f"--include-path={toolkit_include}".encode(),
            f"--include-path={toolkit_include / 'cccl'}".encode(),  # libcu++, as MLX adds
        ]
        compiled = nvrtc.nvrtcCompileProgram(
            program, len(options), (ctypes.c_char_p * len(options))(*options)
        )
        log_size = ctypes.c_size_t()
        check(nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(log_size)), "log size")
        log = ctypes.create_string_buffer(log_size.value)
        check(nvrtc.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
        text = log.value.decode()
        if compiled != 0 or "warning" in text:
            raise HarnessBuildError(f"NVRTC ({arch}) did not compile the unit cleanly:\n{text}")
        lowered = ctypes.c_char_p()
        check(
            nvrtc.nvrtcGetLoweredName(program, kernel.encode(), ctypes.byref(lowered)),
            "nvrtcGetLoweredName",
        )
        size = ctypes.c_size_t()
        check(nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    with _LOCK:
        STATS.nvcc_builds.append(f"nvrtc:{arch}")
    return size.value


# ---- running -------------------------------------------------------------------------------


def _to_bits(array: mx.array) -> np.ndarray:
    if array.dtype == mx.bool_:
        return np.ascontiguousarray(np.array(array))
    return np.ascontiguousarray(np.array(array.view(_BITS[array.dtype.size])))


def _eval_or_none(arrays: Sequence[mx.array]) -> bool:
    """Evaluate ``arrays``; ``False`` when MLX refuses because a transformation is tracing."""
    try:
        mx.eval(*arrays)
    except ValueError as error:
        if "during function transformations" in str(error):
            return False
        raise
    return True


def run_host_library(
    library: ctypes.CDLL,
    inputs: Sequence[mx.array],
    output_shapes: Sequence[Sequence[int]],
    output_dtypes: Sequence[mx.Dtype],
    grid: Sequence[int],
    threadgroup: Sequence[int],
) -> list[mx.array]:
    """Launch over NumPy copies of ``inputs``; outputs sit before a guard region that must
    come back untouched (no thread writes past the end)."""
    host_inputs = [_to_bits(array) for array in inputs]
    host_outputs = []
    for shape, dtype in zip(output_shapes, output_dtypes, strict=True):
        buffer = np.full((math.prod(shape) + _GUARD_ELEMENTS) * dtype.size, _GUARD_BYTE, np.uint8)
        host_outputs.append(buffer)
    pointers = (ctypes.c_void_p * (len(host_inputs) + len(host_outputs)))(
        *[buffer.ctypes.data for buffer in (*host_inputs, *host_outputs)]
    )
    library.lucid_launch(pointers, *grid, *threadgroup)
    results = []
    for buffer, shape, dtype in zip(host_outputs, output_shapes, output_dtypes, strict=True):
        end = math.prod(shape) * dtype.size
        guard = buffer[end:]
        assert np.all(guard == _GUARD_BYTE), (
            f"the kernel wrote past the end of its output: {np.count_nonzero(guard != _GUARD_BYTE)}"
            " guard bytes changed"
        )
        bits = mx.array(buffer[:end].view(np.dtype(f"u{dtype.size}")))
        results.append(bits.view(dtype).reshape(tuple(shape)))
    return results


def imitate_masked_affine(inputs: Sequence[mx.array], dtype: mx.Dtype) -> mx.array:
    """The kernel body in MLX ops, for calls that happen while a transformation traces.

    Only reached under ``mx.compile`` and ``mx.vmap``, where MLX refuses to evaluate and so
    no host launch can run; every other call runs the compiled body.
    """
    x, keep, coefficients, layout = inputs
    size, per_sample, inner, channels = (int(v) for v in np.array(layout))
    elem = np.arange(size, dtype=np.int64)
    unit = (elem // per_sample) * channels + (elem // inner) % channels
    kept = mx.take(keep, mx.array(unit.astype(np.int32)))
    scale, saturation, dropped = coefficients[0], coefficients[1], coefficients[2]
    values = (x.reshape(-1).astype(mx.float32) - saturation) * scale + dropped
    return mx.where(kept, values, dropped).astype(dtype)


class HarnessKernel:
    """Stands in for the object ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel`` returns."""

    def __init__(
        self,
        backend: str,
        name: str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        source: str,
        header: str = "",
        ensure_row_contiguous: bool = True,
        atomic_outputs: bool = False,
        flags: Sequence[str] = EXACT,
    ) -> None:
        # The harness passes inputs as contiguous copies, which is what MLX's default
        # ensure_row_contiguous=True does; the other options are not played.
        assert ensure_row_contiguous, "harness: ensure_row_contiguous=False is not played"
        assert not atomic_outputs, "harness: atomic_outputs is not played"
        self.backend = backend
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.source = source
        self.header = header
        self.flags = tuple(flags)
        self.last_library: ctypes.CDLL | None = None

    def translation_unit(
        self,
        inputs: Sequence[mx.array],
        output_shapes: Sequence[Sequence[int]],
        output_dtypes: Sequence[mx.Dtype],
        template: Sequence[tuple[str, Any]],
    ) -> str:
        if self.backend == "metal":
            return metal_translation_unit(
                self.name,
                self.input_names,
                inputs,
                self.output_names,
                output_shapes,
                output_dtypes,
                template,
                self.source,
                self.header,
            )
        return cuda_translation_unit(
            self.name,
            self.input_names,
            inputs,
            self.output_names,
            output_dtypes,
            template,
            self.source,
            self.header,
        )

    def __call__(
        self,
        *,
        inputs: Sequence[mx.array],
        output_shapes: Sequence[Sequence[int]],
        output_dtypes: Sequence[mx.Dtype],
        grid: tuple[int, int, int],
        threadgroup: tuple[int, int, int],
        template: Sequence[tuple[str, Any]] = (),
        init_value: float | None = None,
        verbose: bool = False,
        stream: Any = None,
    ) -> list[mx.array]:
        assert init_value is None, "harness: init_value is not played"
        if self.backend == "metal":
            assert math.prod(threadgroup) <= 1024, "Metal allows at most 1024 threads a group"
        if not _eval_or_none(inputs):
            with _LOCK:
                STATS.imitated_launches += 1
            (dtype,) = output_dtypes
            (shape,) = output_shapes
            return [imitate_masked_affine(inputs, dtype).reshape(tuple(shape))]
        unit = self.translation_unit(inputs, output_shapes, output_dtypes, template)
        buffers = len(inputs) + len(output_shapes)
        library = build_host_library(self.backend, unit, buffers, self.flags)
        self.last_library = library
        outputs = run_host_library(library, inputs, output_shapes, output_dtypes, grid, threadgroup)
        with _LOCK:
            STATS.real_launches += 1
        return outputs


def harness_constructor(backend: str, flags: Sequence[str] = EXACT) -> Any:
    """A drop-in for ``mx.fast.metal_kernel`` or ``mx.fast.cuda_kernel``."""

    def construct(**kwargs: Any) -> HarnessKernel:
        return HarnessKernel(backend, flags=flags, **kwargs)

    return construct
