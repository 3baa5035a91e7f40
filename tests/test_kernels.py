"""The fused GPU kernel against the ops path, its oracle.

- On the CPU (any machine with ``g++``): the kernel body this package writes, Metal and CUDA
  thread-index lines included, is compiled as C++ through the small shim below (thread
  index, a bfloat16 type, a loop over every thread of a grid rounded up to whole groups) and
  stands in for MLX's launch, so the package's own packing of coefficients, layout and
  gradient runs unchanged. Compiled without contraction, it must equal the ops path bit for
  bit. Where ``nvcc`` exists, the CUDA source must also compile for a GPU.
- On a GPU (marked ``gpu``; skipped with the reason elsewhere): the real kernel, within the
  bound a fused multiply-add allows.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from lucid_mlx import AlphaDropout, FeatureAlphaDropout, _kernels, alpha_dropout
from lucid_mlx import feature_alpha_dropout as fad
from tests.reference import FLOAT_DTYPES, UNIT_ROUNDOFF, normal_input, to_numpy

HAS_GPU = _kernels.why_not(mx.zeros(1)) is None
NO_GPU = "no GPU here: the kernel needs Metal or MLX's CUDA backend as the default device"
GXX = shutil.which("g++")
NVCC = shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")
GROUP = 256
GUARD = 64  # elements after each output that a thread past the end must leave alone
C_TYPES = {mx.float32: "float", mx.float16: "_Float16", mx.bfloat16: "bfloat16_t"}
NP_TYPES = {mx.float32: np.float32, mx.float16: np.float16, mx.bfloat16: np.uint16}

SHIM = """
#include <cstdint>
#include <cstring>
struct bfloat16_t {  // storage as MLX stores it, float conversion rounding to nearest even
    uint16_t bits;
    explicit bfloat16_t(float f) {
        uint32_t u; std::memcpy(&u, &f, 4); bits = uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }
    explicit operator float() const {
        uint32_t u = uint32_t(bits) << 16; float f; std::memcpy(&f, &u, 4); return f;
    }
};
struct Index { unsigned int x; };
static Index thread_position_in_grid, blockIdx, blockDim, threadIdx;
template <typename T>
static void body(const T* x, const uint16_t* bits, const float* coefficients,
                 const int32_t* layout, T* out) {
SOURCE
}
#define LAUNCH(T) extern "C" void launch_##T(const T* x, const uint16_t* bits, \\
        const float* c, const int32_t* layout, T* out, unsigned int threads) { \\
    for (unsigned int i = 0; i < threads; ++i) { \\
        thread_position_in_grid.x = i; blockIdx.x = i / GROUP; blockDim.x = GROUP; \\
        threadIdx.x = i % GROUP; body<T>(x, bits, c, layout, out); } }
LAUNCH(float) LAUNCH(bfloat16_t)
#ifdef __FLT16_MAX__  // _Float16: g++ 12 and later on x86-64, earlier on arm64
LAUNCH(_Float16)
#endif
"""


def build(source: str, folder: Path, flags: tuple[str, ...] = ("-ffp-contract=off",)) -> Path:
    """Compile ``source`` (a kernel's thread-index line and body) into a shared library."""
    unit = folder / "kernel.cpp"
    unit.write_text(SHIM.replace("SOURCE", source).replace("GROUP", str(GROUP)))
    library = folder / "kernel.so"
    command = [GXX or "g++", "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror"]
    result = subprocess.run([*command, *flags, str(unit), "-o", str(library)], capture_output=True)
    assert result.returncode == 0, f"g++ rejects the kernel source:\n{result.stderr.decode()}"
    return library


def host_launch(library: Path) -> Callable[..., mx.array]:
    """A stand-in for ``_kernels._launch`` that runs the compiled body over the whole grid."""
    loaded = ctypes.CDLL(str(library))

    def launch(x: mx.array, bits: mx.array, coefficients: mx.array, layout: mx.array) -> mx.array:
        launch.count += 1  # type: ignore[attr-defined]
        dtype = NP_TYPES[x.dtype]
        host_x = np.ascontiguousarray(np.array(x.view(mx.uint16) if dtype is np.uint16 else x))
        out = np.full(x.size + GUARD, 7, dtype)
        args = [host_x, np.array(bits), np.array(coefficients), np.array(layout), out]
        threads = -(-x.size // GROUP) * GROUP
        getattr(loaded, f"launch_{C_TYPES[x.dtype]}")(*(a.ctypes for a in args), threads)
        assert np.all(out[x.size :] == 7), "a thread wrote past the end of the output"
        result = mx.array(out[: x.size]).reshape(x.shape)
        return result.view(mx.bfloat16) if dtype is np.uint16 else result

    launch.count = 0  # type: ignore[attr-defined]
    return launch


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, Path]:
    if GXX is None:
        pytest.skip("g++ is not installed: the kernel body cannot be compiled on the CPU")
    sources = {"metal": _kernels.METAL_THREAD_INDEX, "cuda": _kernels.CUDA_THREAD_INDEX}
    return {
        name: build(index + _kernels.BODY, tmp_path_factory.mktemp(name))
        for name, index in sources.items()
    }


@contextmanager
def kernel_on_host(library: Path, backend: str) -> Iterator[Callable[..., mx.array]]:
    """The kernel path with the body run on the CPU; ``mx.compile`` traces nothing inside."""
    launch = host_launch(library)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_kernels, "_backend", lambda: backend)
        patch.setattr(_kernels, "_launch", launch)
        mx.disable_compile()
        try:
            yield launch
        finally:
            mx.enable_compile()


@pytest.fixture(params=["metal", "cuda"])
def on_host(request, libraries) -> Iterator[None]:
    params = request.node.callspec.params
    if params.get("dtype") is mx.float16 and not hasattr(
        ctypes.CDLL(str(libraries["cuda"])), "launch__Float16"
    ):
        pytest.skip("this g++ has no _Float16 (g++ 12 or later on x86-64): float16 is not run")
    with kernel_on_host(libraries[request.param], request.param) as launch:
        yield
    assert launch.count > 0, "the test never ran the compiled body"  # type: ignore[attr-defined]


def paths(dropout: Callable[..., mx.array], x: mx.array, v: mx.array, **kwargs):
    """``(y, VJP, JVP)`` of ``v`` with the kernel and with the ops path, for the same key (so
    the same mask)."""

    def run(use_kernel: bool) -> tuple[mx.array, mx.array, mx.array]:
        def f(x: mx.array) -> mx.array:
            return dropout(x, use_kernel=use_kernel, **kwargs)

        (y,), (vjp,) = mx.vjp(f, [x], [v])
        return y, vjp, mx.jvp(f, [x], [v])[1][0]

    return run(True), run(False)


def assert_equal(actual: mx.array, expected: mx.array) -> None:
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
    a, e = to_numpy(actual), to_numpy(expected)  # float64 holds every value exactly
    differ = np.count_nonzero((a != e) & ~(np.isnan(a) & np.isnan(e)))
    assert differ == 0, f"{differ} of {a.size} elements differ from the ops path"


def assert_close(actual: mx.array, expected: mx.array) -> None:
    # A fused multiply-add in (x - alpha') * s + d rounds once where the ops path rounds twice:
    # at most 2**-24 |(x - alpha') s| + 2**-23 |y| apart, with |(x - alpha') s| <= |y| + 2;
    # storing a half type adds one of its ulps.
    a, e = to_numpy(actual), to_numpy(expected)
    tolerance = 2 * UNIT_ROUNDOFF[actual.dtype] * np.abs(e) + 2.0**-23 * (1 + 2 * np.abs(e))
    assert np.all(np.abs(a - e) <= tolerance), float(np.max(np.abs(a - e)))


# Ranks 2-5, channels last, first and in the middle; sizes not multiples of a thread group.
CASES = [
    ((7, 13), -1),
    ((3, 5, 11), 1),
    ((2, 9, 7, 33), -1),
    ((2, 9, 33, 7), 2),
    ((2, 17, 3, 5, 7), 1),
]


@pytest.mark.usefixtures("on_host")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_body_matches_ops_path_bit_for_bit(dtype):
    for shape, channel_axis in CASES:
        x, v = normal_input(shape, dtype=dtype, seed=1), normal_input(shape, dtype=dtype)
        kwargs = {"p": 0.3, "key": mx.random.key(5), "channel_axis": channel_axis}
        for kernel, ops in zip(*paths(fad, x, v, **kwargs), strict=True):
            assert_equal(kernel, ops)
    for shape in [(), (1,), (5, 3), (2, 9, 7, 33)]:
        x, v = normal_input(shape, dtype=dtype, seed=3), normal_input(shape, dtype=dtype)
        for kernel, ops in zip(
            *paths(alpha_dropout, x, v, p=0.4, key=mx.random.key(6)), strict=True
        ):
            assert_equal(kernel, ops)


@pytest.mark.usefixtures("on_host")
def test_body_with_the_global_generator_strided_input_and_layers():
    x = normal_input((4, 9, 6, 10), seed=4).transpose(0, 2, 1, 3)  # a strided view
    for dropout in (FeatureAlphaDropout(0.5, channel_axis=2), AlphaDropout(0.2)):
        outputs = []
        for use_kernel in (True, False):
            dropout.use_kernel = use_kernel
            mx.random.seed(11)
            outputs.append(dropout(x))
        assert_equal(*outputs)


def test_planted_defects_fail(tmp_path):
    """A wrong coefficient index fails the comparison; a syntax error fails the build."""
    if GXX is None:
        pytest.skip("g++ is not installed: the kernel body cannot be compiled on the CPU")
    wrong = _kernels.BODY.replace("coefficients[2]", "coefficients[1]")
    x = normal_input((3, 4, 5))
    with kernel_on_host(build(_kernels.CUDA_THREAD_INDEX + wrong, tmp_path), "cuda"):
        kernel = fad(x, 0.5, key=mx.random.key(0), use_kernel=True)
    with pytest.raises(AssertionError, match="differ from the ops path"):
        assert_equal(kernel, fad(x, 0.5, key=mx.random.key(0), use_kernel=False))
    with pytest.raises(AssertionError, match="g\\+\\+ rejects"):
        build(_kernels.CUDA_THREAD_INDEX + _kernels.BODY.replace(";", "", 1), tmp_path)


@pytest.mark.skipif(
    NVCC is None or GXX is None,
    reason="nvcc, or the host compiler it needs, is not installed: the CUDA source is not compiled",
)
def test_nvcc_compiles_the_cuda_source(tmp_path):
    parameters = "const T* x, const uint16_t* bits, const float* coefficients,"
    parameters += " const int32_t* layout, T* out"
    lines = ["#include <cstdint>", "#include <cuda_fp16.h>", "#include <cuda_bf16.h>"]
    lines.append(f"template <typename T> __global__ void masked_affine({parameters}) {{")
    lines += [_kernels.CUDA_THREAD_INDEX, _kernels.BODY, "}"]
    for t in ("float", "__half", "__nv_bfloat16"):
        lines.append(f"template __global__ void masked_affine<{t}>({parameters.replace('T', t)});")
    (tmp_path / "kernel.cu").write_text("\n".join(lines))
    command = [str(NVCC), "-c", "-arch=sm_80", "-Werror=all-warnings", "kernel.cu"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


# ---- selection ---------------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="checks a machine without a GPU")
def test_use_kernel_true_says_why_it_cannot_run_and_eval_mode_still_runs():
    x = normal_input((2, 3))
    for call in (lambda: fad(x, use_kernel=True), lambda: alpha_dropout(x, use_kernel=True)):
        with pytest.raises(RuntimeError, match="use_kernel=True but the kernel runs on the GPU"):
            call()
    layer = FeatureAlphaDropout(use_kernel=True)
    layer.eval()
    assert layer(x) is x
    assert not mx.array_equal(fad(x, key=mx.random.key(0)), x)  # None: the ops path


def test_use_kernel_true_names_the_dtype_or_size_it_cannot_take(monkeypatch):
    monkeypatch.setattr(_kernels, "_backend", lambda: "cuda")
    with pytest.raises(RuntimeError, match="float16, bfloat16 and float32 but 'x' is"):
        fad(mx.zeros((2, 3), mx.float64), use_kernel=True)
    monkeypatch.setattr(_kernels, "MAX_ELEMENTS", 5)
    with pytest.raises(RuntimeError, match="at most 5 elements but 'x' has 6"):
        fad(mx.zeros((2, 3)), use_kernel=True)


@pytest.mark.parametrize(
    ("shape", "channel_axis", "expected"),
    [
        ((2, 3, 4, 5), -1, [120, 60, 1, 5]),
        ((2, 3, 4, 5), 1, [120, 60, 20, 3]),
        ((2, 3, 4, 5), None, [120, 60, 1, 60]),
        ((), None, [1, 1, 1, 1]),
    ],
)
def test_layout(shape, channel_axis, expected):
    axis = channel_axis % len(shape) if channel_axis is not None else None
    assert _kernels.layout_of(shape, axis) == expected


# ---- the real kernel ---------------------------------------------------------------------

gpu_only = pytest.mark.skipif(not HAS_GPU, reason=NO_GPU)


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("shape", "channel_axis"), [*CASES, ((64, 8, 8, 64), -1)])
def test_gpu_kernel_matches_ops_path(shape, channel_axis, dtype):
    x, cotangent = normal_input(shape, dtype=dtype, seed=1), normal_input(shape, dtype=dtype)
    kwargs = {"p": 0.3, "key": mx.random.key(5), "channel_axis": channel_axis}
    for dropout, options in ((fad, kwargs), (alpha_dropout, {"p": 0.3, "key": mx.random.key(6)})):
        (y, vjp, jvp), (y_ops, vjp_ops, jvp_ops) = paths(dropout, x, cotangent, **options)
        assert_close(y, y_ops)
        assert_equal(vjp, vjp_ops)  # v * s: one rounding on both paths
        assert_equal(jvp, jvp_ops)


@pytest.mark.gpu
@gpu_only
def test_gpu_kernel_under_compile_and_grad():
    x = normal_input((8, 6, 6, 16))

    def loss(x, use_kernel):
        return fad(x, 0.2, key=mx.random.key(1), use_kernel=use_kernel).square().sum()

    step = mx.compile(mx.value_and_grad(loss))
    (value, grad), (value_ops, grad_ops) = step(x, True), step(x, False)
    assert abs(value.item() - value_ops.item()) <= 1e-5 * value_ops.item()
    assert_close(grad, grad_ops)
