"""The fused GPU kernel: its real sources run on the CPU, selection, kernel-vs-ops equality.

Three ways to run the kernel path (the ``kernel_mode`` fixture):

- ``metal-body`` and ``cuda-body`` (always run): ``mx.fast.metal_kernel`` / ``cuda_kernel``
  are replaced by :class:`tests.kernel_harness.HarnessKernel`, which compiles the translation
  unit MLX would build around the package's kernel source with ``g++`` and runs it on the CPU
  (every Metal thread position; every CUDA block and thread of MLX's rounded-up grid, so the
  bounds check is exercised). The package's own ``_launch`` drives it unchanged. Without
  contraction the body computes what the ops path computes, so outputs must be bit-identical.
  Under ``mx.compile`` and ``mx.vmap`` MLX refuses to evaluate, so no host launch can run:
  there (and only where a test allows it) the harness falls back to a transcription of the
  body in MLX ops. Every harness-mode test must run the real body at least once.
- ``gpu`` (marked ``gpu``; ``pytest -m gpu`` selects them): the real Metal or CUDA kernel.
  Skipped, with the reason, where MLX has no GPU kernel backend. A GPU compiler contracts
  ``(x - alpha') * a + d`` into a fused multiply-add, so there values agree to a derived
  tolerance.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from lucid_mlx import (
    AlphaDropout,
    FeatureAlphaDropout,
    _kernels,
    alpha_dropout,
    feature_alpha_dropout,
)
from tests import kernel_harness as harness
from tests.reference import (
    FLOAT_DTYPES,
    UNIT_ROUNDOFF,
    coefficients,
    normal_input,
    rounded,
    to_numpy,
    used_probability,
)

HAS_GPU_KERNEL = _kernels.gpu_backend() is not None and mx.default_device() == mx.gpu
NO_GPU_REASON = (
    "no GPU kernel backend here (mx.metal.is_available() and mx.cuda.is_available() are"
    " False, or the default device is not the GPU)"
)
# .ci/run sets this on the project's machines, which have g++ and nvcc: there a missing
# toolchain fails the run instead of skipping the tests that compile the kernel sources.
REQUIRE_TOOLCHAINS = os.environ.get("LUCID_MLX_REQUIRE_TOOLCHAINS") == "1"


def _need(tool: str) -> None:
    reason = harness.nvrtc_missing() if tool == "nvrtc" else harness.toolchain_missing(tool)
    if reason is None:
        return
    if REQUIRE_TOOLCHAINS:
        pytest.fail(f"{reason}, and LUCID_MLX_REQUIRE_TOOLCHAINS=1 requires it")
    pytest.skip(f"{reason}: the kernel source cannot be compiled here")


@dataclass
class KernelMode:
    name: str
    imitation_allowed: str | None = None

    @property
    def harness(self) -> bool:
        return self.name != "gpu"

    def allow_imitation(self, why: str) -> None:
        """Let this test's traced calls (mx.compile, mx.vmap) use the imitation."""
        self.imitation_allowed = why


def _use_harness(monkeypatch: pytest.MonkeyPatch, backend: str, flags: Any = harness.EXACT):
    _kernels._kernel.cache_clear()
    monkeypatch.setattr(mx.fast, "metal_kernel", harness.harness_constructor("metal", flags))
    monkeypatch.setattr(mx.fast, "cuda_kernel", harness.harness_constructor("cuda", flags))
    monkeypatch.setattr(_kernels, "gpu_backend", lambda: backend)
    monkeypatch.setattr(_kernels, "_default_device_is_gpu", lambda: True)


@pytest.fixture(
    params=[
        "metal-body",
        "cuda-body",
        pytest.param(
            "gpu",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU_KERNEL, reason=NO_GPU_REASON)],
        ),
    ]
)
def kernel_mode(request, monkeypatch) -> Iterator[KernelMode]:
    mode = KernelMode(request.param)
    if not mode.harness:
        yield mode
        return
    _need(harness.CXX)
    _use_harness(monkeypatch, mode.name.removesuffix("-body"))
    real, imitated = harness.STATS.real_launches, harness.STATS.imitated_launches
    yield mode
    _kernels._kernel.cache_clear()
    assert harness.STATS.real_launches > real, "the test never ran the compiled kernel body"
    if mode.imitation_allowed is None:
        assert harness.STATS.imitated_launches == imitated, "a launch fell back to the imitation"


# (shape, channel_axis): ranks 2-5, channels last, first and in the middle, odd sizes that
# are not multiples of the 256-thread group.
CASES = [
    ((7, 13), -1),
    ((3, 11, 5), -1),
    ((3, 5, 11), 1),
    ((2, 9, 7, 33), -1),
    ((2, 33, 9, 7), 1),
    ((2, 9, 33, 7), 2),
    ((2, 3, 5, 7, 17), -1),
    ((2, 17, 3, 5, 7), 1),
    ((64, 8, 8, 64), -1),
]


def _assert_same(actual: mx.array, expected: mx.array, mode: KernelMode) -> None:
    """Exactly equal for the harness (no contraction); close on a GPU (see _assert_close).

    "Exactly" compares values: a zero cotangent may carry either sign on either path.
    """
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if mode.harness:
        a, e = to_numpy(actual), to_numpy(expected)  # exact: float64 holds every value
        mismatches = np.count_nonzero((a != e) & ~(np.isnan(a) & np.isnan(e)))
        assert mismatches == 0, f"{mismatches} of {actual.size} elements differ from the ops path"
    else:
        _assert_close(actual, expected)


def _assert_close(actual: mx.array, expected: mx.array) -> None:
    # A fused multiply-add in (x - alpha') * a + d rounds once where the ops path rounds twice:
    # the float32 results differ by at most 2**-24 |(x - alpha') a| + 2**-23 |y| (first
    # order), and |(x - alpha') a| <= |y| + |d| with |d| <= |alpha'| < 2 for every p; rounding
    # to a half type adds one of its ulps.
    a, e = to_numpy(actual), to_numpy(expected)
    tolerance = 2 * UNIT_ROUNDOFF[actual.dtype] * np.abs(e) + 2.0**-23 * (1 + 2 * np.abs(e))
    assert np.all(np.abs(a - e) <= tolerance), np.max(np.abs(a - e))


def _assert_paths_agree(dropout, x, mode, **kwargs):
    """``dropout`` with the kernel and with the ops path: same key, so the same mask."""
    kernel = dropout(x, use_kernel=True, **kwargs)
    _assert_same(kernel, dropout(x, use_kernel=False, **kwargs), mode)


@pytest.mark.parametrize(("shape", "channel_axis"), CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_feature_kernel_matches_ops_path(kernel_mode, shape, channel_axis, dtype):
    x = normal_input(shape, dtype=dtype, seed=1)
    cotangent = normal_input(shape, dtype=dtype, seed=2)
    key = mx.random.key(5)

    def run(use_kernel):
        def f(x):
            return feature_alpha_dropout(
                x, 0.3, key=key, channel_axis=channel_axis, use_kernel=use_kernel
            )

        (y,), (dx,) = mx.vjp(f, [x], [cotangent])
        return y, dx

    y_kernel, dx_kernel = run(True)
    y_ops, dx_ops = run(False)
    _assert_same(y_kernel, y_ops, kernel_mode)
    _assert_same(dx_kernel, dx_ops, kernel_mode)


@pytest.mark.parametrize("shape", [(1,), (5, 3), (2, 9, 7, 33), ()])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_elementwise_kernel_matches_ops_path(kernel_mode, shape, dtype):
    x = normal_input(shape, dtype=dtype, seed=3)
    _assert_paths_agree(alpha_dropout, x, kernel_mode, p=0.4, key=mx.random.key(6))


def test_kernel_on_non_contiguous_input(kernel_mode):
    base = normal_input((4, 9, 6, 10), seed=4)
    x = base.transpose(0, 2, 1, 3)  # a strided view: (4, 6, 9, 10)
    _assert_paths_agree(feature_alpha_dropout, x, kernel_mode, p=0.5, key=mx.random.key(7))


def test_kernel_under_grad(kernel_mode):
    x = normal_input((4, 5, 5, 12), seed=5)
    key = mx.random.key(8)

    def loss(x, use_kernel):
        return (feature_alpha_dropout(x, 0.3, key=key, use_kernel=use_kernel) ** 2).sum()

    expected = mx.grad(lambda x: loss(x, False))(x)
    _assert_same(mx.grad(lambda x: loss(x, True))(x), expected, kernel_mode)


def test_kernel_under_compile(kernel_mode):
    kernel_mode.allow_imitation("mx.compile traces without data: no host launch can run")
    x = normal_input((4, 5, 5, 12), seed=5)
    key = mx.random.key(8)

    def loss(x, use_kernel):
        return (feature_alpha_dropout(x, 0.3, key=key, use_kernel=use_kernel) ** 2).sum()

    expected_y = feature_alpha_dropout(x, 0.3, key=key, use_kernel=False)
    expected_grad = mx.grad(lambda x: loss(x, False))(x)
    compiled = mx.compile(lambda x: feature_alpha_dropout(x, 0.3, key=key, use_kernel=True))
    _assert_same(compiled(x), expected_y, kernel_mode)
    _assert_same(mx.compile(mx.grad(lambda x: loss(x, True)))(x), expected_grad, kernel_mode)
    _assert_same(mx.grad(mx.compile(lambda x: loss(x, True)))(x), expected_grad, kernel_mode)
    # ... and the uncompiled call on the same input, through the real body.
    _assert_same(feature_alpha_dropout(x, 0.3, key=key, use_kernel=True), expected_y, kernel_mode)


def _channel_first(use_kernel, key):
    return lambda x: feature_alpha_dropout(x, 0.3, key=key, channel_axis=1, use_kernel=use_kernel)


def test_kernel_under_jvp(kernel_mode):
    x = normal_input((4, 5, 3, 12), seed=6)
    tangent = normal_input((4, 5, 3, 12), seed=7)
    key = mx.random.key(10)
    (_, jvp_kernel), (_, jvp_ops) = (
        mx.jvp(_channel_first(k, key), [x], [tangent]) for k in (True, False)
    )
    _assert_same(jvp_kernel[0], jvp_ops[0], kernel_mode)


def test_kernel_under_vmap(kernel_mode):
    kernel_mode.allow_imitation("mx.vmap traces without data: no host launch can run")
    key = mx.random.key(10)
    f_kernel, f_ops = _channel_first(True, key), _channel_first(False, key)
    # vmap over a new leading axis (the same key: the same mask for every batch entry), and
    # over an inner axis of the input.
    stacked = normal_input((3, 4, 5, 3, 12), seed=8)
    _assert_same(mx.vmap(f_kernel)(stacked), mx.vmap(f_ops)(stacked), kernel_mode)
    inner = stacked.transpose(1, 2, 0, 3, 4)
    _assert_same(mx.vmap(f_kernel, in_axes=2)(inner), mx.vmap(f_ops, in_axes=2)(inner), kernel_mode)
    _assert_same(f_kernel(stacked[0]), f_ops(stacked[0]), kernel_mode)  # the real body


def test_modules_pass_use_kernel_through(kernel_mode):
    x = normal_input((3, 4, 4, 8))
    key = mx.random.key(9)
    _assert_same(
        FeatureAlphaDropout(0.2, use_kernel=True)(x, key),
        FeatureAlphaDropout(0.2, use_kernel=False)(x, key),
        kernel_mode,
    )
    _assert_same(AlphaDropout(0.2, use_kernel=True)(x, key), AlphaDropout(0.2)(x, key), kernel_mode)


def test_kernel_takes_the_global_generators_mask(kernel_mode):
    # Without a key both paths draw with the key MLX hands out and advance the state alike.
    x = normal_input((8, 3, 3, 16), seed=12)
    for dropout in (feature_alpha_dropout, alpha_dropout):
        mx.random.seed(4)
        kernel = dropout(x, 0.3, use_kernel=True)
        kernel_next = mx.random.uniform(shape=(2,))
        mx.random.seed(4)
        ops = dropout(x, 0.3, use_kernel=False)
        _assert_same(kernel, ops, kernel_mode)
        assert mx.array_equal(kernel_next, mx.random.uniform(shape=(2,)))


def test_kernel_writes_the_dropped_value_whatever_x_holds(kernel_mode):
    # The kernel selects d for a dropped unit; the ops path computes (x - alpha') * 0 + d,
    # NaN for an infinite or NaN x (README documents the difference). Kept units agree.
    x = np.array(normal_input((16, 4, 24), seed=13))
    x[:, 0, :], x[:, 1, :], x[:, 2, :] = np.inf, -np.inf, np.nan
    key = mx.random.key(14)
    kernel = to_numpy(feature_alpha_dropout(mx.array(x), 0.5, key=key, use_kernel=True))
    ops = to_numpy(feature_alpha_dropout(mx.array(x), 0.5, key=key, use_kernel=False))
    dropped_value = rounded(coefficients(used_probability(0.5))[2], mx.float32)
    dropped = kernel[:, 3:4, :] == dropped_value
    assert 0 < dropped.sum() < dropped.size
    assert (kernel[:, :3, :][np.broadcast_to(dropped, (16, 3, 24))] == dropped_value).all()
    assert np.isnan(ops[:, :3, :][np.broadcast_to(dropped, (16, 3, 24))]).all()
    kept = np.broadcast_to(~dropped, x.shape)
    np.testing.assert_array_equal(kernel[kept], ops[kept])


# ---- the kernel sources compiled: nvcc (CUDA), g++ with contraction, planted defects ------


class _RecordingKernel:
    """Records what the package passes to ``mx.fast.cuda_kernel`` and to the kernel call."""

    calls: list[dict[str, Any]]

    def __init__(self, **construction: Any) -> None:
        self.construction = construction

    def __call__(self, **call: Any) -> list[mx.array]:
        _RecordingKernel.calls.append({**self.construction, **call})
        return [mx.zeros(shape, dtype) for shape, dtype in zip(
            call["output_shapes"], call["output_dtypes"], strict=True)]  # fmt: skip


def package_cuda_unit(dtype: mx.Dtype) -> str:
    """The CUDA translation unit for the package's own kernel call on ``dtype`` input: the
    source, names, input dtypes and template exactly as the package hands them to MLX."""
    _RecordingKernel.calls = []
    with pytest.MonkeyPatch.context() as patch:
        _kernels._kernel.cache_clear()
        patch.setattr(mx.fast, "cuda_kernel", _RecordingKernel)
        patch.setattr(_kernels, "gpu_backend", lambda: "cuda")
        patch.setattr(_kernels, "_default_device_is_gpu", lambda: True)
        mx.eval(feature_alpha_dropout(mx.zeros((4, 6), dtype), use_kernel=True))
        _kernels._kernel.cache_clear()
    (call,) = _RecordingKernel.calls
    return harness.cuda_translation_unit(
        call["name"],
        call["input_names"],
        call["inputs"],
        call["output_names"],
        call["output_dtypes"],
        call["template"],
        call["source"],
        call.get("header", ""),
    )


NVCC_BUILDS = [(arch, dtype) for arch in harness.NVCC_ARCHS for dtype in FLOAT_DTYPES]


def _kernel_symbol(unit: str) -> str:
    match = re.search(r"__global__ void (\w+)\(", unit)
    assert match
    return f"mlx::core::cu::{match.group(1)}"  # the name MLX asks NVRTC for


@pytest.fixture(scope="session")
def cuda_builds() -> Iterator[dict[tuple[str, str, str], Future[Any]]]:
    """Every nvcc and NVRTC build this module checks, started together, run in parallel."""
    units = {str(dtype): package_cuda_unit(dtype) for dtype in FLOAT_DTYPES}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures: dict[tuple[str, str, str], Future[Any]] = {}
        if harness.toolchain_missing("nvcc") is None:
            for arch, dtype in NVCC_BUILDS:
                unit = units[str(dtype)]
                futures["nvcc", arch, str(dtype)] = pool.submit(harness.nvcc_compile, unit, arch)
            futures["nvcc", "sm_90a", "ptx"] = pool.submit(
                harness.nvcc_compile, units[str(mx.float32)], "sm_90a", "ptx"
            )
        if harness.nvrtc_missing() is None:
            for arch, dtype in NVCC_BUILDS:
                unit = units[str(dtype)]
                futures["nvrtc", arch, str(dtype)] = pool.submit(
                    harness.nvrtc_compile, unit, arch, _kernel_symbol(unit)
                )
        yield futures


@pytest.mark.parametrize(("arch", "dtype"), NVCC_BUILDS, ids=[f"{a}-{d}" for a, d in NVCC_BUILDS])
def test_nvrtc_compiles_the_cuda_kernel_as_mlx_does(cuda_builds, arch, dtype):
    _need("nvrtc")
    assert cuda_builds["nvrtc", arch, str(dtype)].result() > 0


@pytest.mark.parametrize(("arch", "dtype"), NVCC_BUILDS, ids=[f"{a}-{d}" for a, d in NVCC_BUILDS])
def test_nvcc_compiles_the_cuda_kernel(cuda_builds, arch, dtype):
    _need("nvcc")
    cubin = cuda_builds["nvcc", arch, str(dtype)].result()
    assert os.path.getsize(cubin) > 0


def test_the_cuda_unit_is_what_mlx_builds():
    if mx.__version__ != harness.MLX_CHECKED_AGAINST:
        warnings.warn(
            f"the CUDA translation unit rebuilt in tests/kernel_harness.py was checked against"
            f" MLX {harness.MLX_CHECKED_AGAINST}, but MLX {mx.__version__} is installed: compare"
            " it with build_kernel in mlx/backend/cuda/custom_kernel.cpp",
            stacklevel=1,
        )
    unit = package_cuda_unit(mx.bfloat16)
    assert '#include "mlx/backend/cuda/device/utils.cuh"' in unit
    assert "__global__ void custom_kernel_lucid_mlx_masked_affine_bfloat16_bfloat16_t(" in unit
    signature = unit[unit.index("__global__") : unit.index(") {")]
    assert re.findall(r"\n    (.*?)[,)]?$", signature, flags=re.M) == [
        "const __nv_bfloat16* x",
        "const bool* keep",
        "const float* coefficients",
        "const int32_t* layout",
        "__nv_bfloat16* out",
    ]
    assert "  using T = __nv_bfloat16;\n" in unit
    assert _kernels.CUDA_SOURCE in unit


def test_nvcc_contracts_the_multiply_add(cuda_builds):
    """On the GPU, nvcc fuses the multiply-add: why GPU results are compared with a tolerance."""
    _need("nvcc")
    ptx = cuda_builds["nvcc", "sm_90a", "ptx"].result()
    assert re.search(r"\bfma\.rn\.f32\b", ptx), ptx


@pytest.mark.parametrize("backend", ["metal", "cuda"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_contracted_build_agrees_to_the_fma_bound(monkeypatch, backend, dtype):
    """Built with fused multiply-adds, as a GPU compiler does: within the derived bound."""
    _need(harness.CXX)
    _use_harness(monkeypatch, backend, harness.CONTRACTED)
    x = normal_input((16, 9, 7, 32), dtype=dtype, seed=11)
    key = mx.random.key(12)
    kernel = feature_alpha_dropout(x, 0.3, key=key, use_kernel=True)
    ops = feature_alpha_dropout(x, 0.3, key=key, use_kernel=False)
    library = _kernels._kernel(backend, dtype).last_library
    _kernels._kernel.cache_clear()
    _assert_close(kernel, ops)
    # The contraction is real: the body's multiply-add became an FMA instruction, and some
    # float32 results moved.
    if shutil.which("objdump"):
        disassembly = subprocess.run(
            ["objdump", "-d", library._name], capture_output=True, text=True, check=True
        ).stdout
        assert re.search(harness.FMA_INSTRUCTION, disassembly)
    if dtype == mx.float32:
        assert not mx.array_equal(kernel, ops)


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_a_body_that_does_not_compile_fails(monkeypatch, backend):
    _need(harness.CXX)
    _use_harness(monkeypatch, backend)
    source = f"{backend.upper()}_SOURCE"
    broken = getattr(_kernels, source).replace("return;", "return;\n    undeclared_name += 1;")
    monkeypatch.setattr(_kernels, source, broken)
    with pytest.raises(harness.HarnessBuildError, match="undeclared_name"):
        feature_alpha_dropout(normal_input((2, 3, 4)), use_kernel=True)
    _kernels._kernel.cache_clear()


@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
def test_cuda_compilers_reject_a_body_that_does_not_compile(compiler):
    _need(compiler)
    unit = package_cuda_unit(mx.float32).replace("return;", "return;\n    undeclared_name += 1;")
    build = {
        "nvcc": lambda: harness.nvcc_compile(unit, "sm_80"),
        "nvrtc": lambda: harness.nvrtc_compile(unit, "sm_80", _kernel_symbol(unit)),
    }[compiler]
    with pytest.raises(harness.HarnessBuildError, match="undeclared_name"):
        build()


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_a_wrong_coefficient_index_is_caught(monkeypatch, backend):
    _need(harness.CXX)
    _use_harness(monkeypatch, backend)
    source = f"{backend.upper()}_SOURCE"
    swapped = getattr(_kernels, source).replace("coefficients[0]", "coefficients[1]", 1)
    assert swapped != getattr(_kernels, source)
    monkeypatch.setattr(_kernels, source, swapped)
    x, key = normal_input((4, 5, 6)), mx.random.key(2)
    with pytest.raises(AssertionError, match="differ from the ops path"):
        _assert_paths_agree(feature_alpha_dropout, x, KernelMode(f"{backend}-body"), key=key)
    _kernels._kernel.cache_clear()


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_a_write_past_the_output_is_caught(monkeypatch, backend):
    _need(harness.CXX)
    _use_harness(monkeypatch, backend)
    source = f"{backend.upper()}_SOURCE"
    past_end = getattr(_kernels, source).replace("out[elem]", "out[elem + 1]")
    monkeypatch.setattr(_kernels, source, past_end)
    with pytest.raises(AssertionError, match="wrote past the end of its output"):
        feature_alpha_dropout(normal_input((3, 300)), use_kernel=True)
    _kernels._kernel.cache_clear()


def test_metal_source_is_generated_by_mlx_itself():
    """What MLX's own generator writes around the body (a failure here is an MLX change)."""
    inputs = [mx.zeros((4, 9), mx.float16), mx.zeros((4, 9), mx.bool_)]
    inputs += [mx.zeros((3,), mx.float32), mx.zeros((4,), mx.int32)]
    unit = harness.metal_translation_unit(
        "probe", _kernels._INPUT_NAMES, inputs, ["out"], [(4, 9)], [mx.float16],
        [("T", mx.float16)], _kernels.METAL_SOURCE,
    )  # fmt: skip
    assert "const device float16_t* x [[buffer(0)]]" in unit
    assert "const device bool* keep [[buffer(1)]]" in unit
    # Inputs under 8 elements become constant buffers.
    assert "const constant float* coefficients [[buffer(2)]]" in unit
    assert "const constant int32_t* layout [[buffer(3)]]" in unit
    assert "device float16_t* out [[buffer(4)]]" in unit
    assert "uint3 thread_position_in_grid [[thread_position_in_grid]]" in unit
    assert _kernels.METAL_SOURCE in unit


# ---- always on the CPU path of this machine, or with the backend faked -------------------


def test_sources_differ_only_in_the_thread_index_line():
    diff = [
        line
        for line in difflib.ndiff(
            _kernels.METAL_SOURCE.splitlines(), _kernels.CUDA_SOURCE.splitlines()
        )
        if line[:1] in "+-"
    ]
    assert diff == [f"- {_kernels.METAL_THREAD_INDEX}", f"+ {_kernels.CUDA_THREAD_INDEX}"]
    assert re.search(r"if \(elem >= .*\) \{\s*return;", _kernels.CUDA_SOURCE)  # bounds check


@pytest.mark.skipif(HAS_GPU_KERNEL, reason="checks the machine without a GPU backend")
def test_automatic_selection_falls_back_to_ops_without_gpu():
    x = normal_input((4, 3, 3, 8))
    assert not _kernels.use_kernel_for(None, x, "test")
    key = mx.random.key(1)
    assert mx.array_equal(
        feature_alpha_dropout(x, 0.5, key=key),
        feature_alpha_dropout(x, 0.5, key=key, use_kernel=False),
    )


@pytest.mark.skipif(HAS_GPU_KERNEL, reason="checks the machine without a GPU backend")
@pytest.mark.parametrize("entry", [feature_alpha_dropout, alpha_dropout])
def test_use_kernel_true_without_gpu_backend_raises_when_a_kernel_would_run(entry):
    x = normal_input((2, 4))
    with pytest.raises(RuntimeError, match=r"use_kernel=True but this MLX has no GPU kernel"):
        entry(x, use_kernel=True)
    # Nothing to run, nothing to refuse: eval mode, p == 0 and empty input return x.
    assert entry(x, use_kernel=True, training=False) is x
    assert entry(x, 0.0, use_kernel=True) is x


@pytest.mark.skipif(HAS_GPU_KERNEL, reason="checks the machine without a GPU backend")
def test_layer_with_use_kernel_true_raises_in_training_and_runs_in_eval():
    layer = FeatureAlphaDropout(use_kernel=True)
    x = normal_input((2, 4))
    with pytest.raises(RuntimeError, match=r"\[feature_alpha_dropout\] use_kernel=True but"):
        layer(x)
    layer.eval()
    assert layer(x) is x


def test_automatic_selection_needs_a_measured_backend(monkeypatch):
    x = normal_input((2, 4))
    monkeypatch.setattr(_kernels, "gpu_backend", lambda: "cuda")
    monkeypatch.setattr(_kernels, "_default_device_is_gpu", lambda: True)
    monkeypatch.setattr(_kernels, "MEASURED_FASTER", frozenset())
    assert not _kernels.use_kernel_for(None, x, "test")
    monkeypatch.setattr(_kernels, "MEASURED_FASTER", frozenset({"cuda"}))
    assert _kernels.use_kernel_for(None, x, "test")
    assert not _kernels.use_kernel_for(None, x.astype(mx.float64), "test")
    assert not _kernels.use_kernel_for(False, x, "test")


def test_use_kernel_true_explains_cpu_default_device_and_dtype(monkeypatch):
    monkeypatch.setattr(_kernels, "gpu_backend", lambda: "metal")
    monkeypatch.setattr(_kernels, "_default_device_is_gpu", lambda: False)
    with pytest.raises(RuntimeError, match=r"the default device is .*cpu.* runs on the GPU only"):
        feature_alpha_dropout(normal_input((2, 4)), use_kernel=True)
    monkeypatch.setattr(_kernels, "_default_device_is_gpu", lambda: True)
    with pytest.raises(RuntimeError, match="supports float16, bfloat16 and float32 but 'x' is"):
        feature_alpha_dropout(normal_input((2, 4), dtype=mx.float64), use_kernel=True)


@pytest.mark.parametrize("value", [1, "yes", 0.0])
def test_use_kernel_must_be_none_or_bool(value):
    with pytest.raises(TypeError, match="'use_kernel' must be None, True or False but got"):
        feature_alpha_dropout(normal_input((2, 4)), use_kernel=value)
    with pytest.raises(TypeError, match=r"\[AlphaDropout\] 'use_kernel' must be None"):
        AlphaDropout(use_kernel=value)


@pytest.mark.parametrize(
    ("shape", "channel_axis", "expected"),
    [
        ((2, 3, 4, 5), 3, (120, 60, 1, 5)),
        ((2, 5, 3, 4), 1, (120, 60, 12, 5)),
        ((2, 3, 5, 4), 2, (120, 60, 4, 5)),
        ((2, 3, 4, 5), None, (120, 60, 1, 60)),
        ((7, 13), 1, (91, 13, 1, 13)),
    ],
)
def test_layout(shape, channel_axis, expected):
    assert _kernels.layout_of(shape, channel_axis) == expected
