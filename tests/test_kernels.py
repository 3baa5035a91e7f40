"""The fused GPU kernel: selection, sources, and kernel-vs-ops equality.

Two ways to run the kernel path:

- ``emulated`` (always runs): the kernel launch is replaced by an MLX evaluation of the
  kernel source's own index expression, so the custom function, its VJP, the layout
  arithmetic and the index math run on any machine. It does not compile the Metal or CUDA
  source; only real hardware does that.
- ``gpu`` (marked ``gpu``; ``pytest -m gpu`` selects them): the real Metal or CUDA kernel.
  Skipped, with the reason, where MLX has no GPU kernel backend.
"""

from __future__ import annotations

import difflib
import re

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
from tests.reference import FLOAT_DTYPES, UNIT_ROUNDOFF, normal_input, to_numpy

HAS_GPU_KERNEL = _kernels.gpu_backend() is not None and mx.default_device() == mx.gpu
NO_GPU_REASON = (
    "no GPU kernel backend here (mx.metal.is_available() and mx.cuda.is_available() are"
    " False, or the default device is not the GPU)"
)


def _unit_expression() -> str:
    """The right-hand side of the kernel's ``unit = ...`` line, as Python integer math."""
    (line,) = [ln for ln in _kernels.CUDA_SOURCE.splitlines() if "unsigned int unit =" in ln]
    expression = line.split("=", 1)[1].strip().rstrip(";")
    return expression.replace("/", "//")


def _emulated_launch(x, keep, coefficients, layout):
    size, per_sample, inner, channels = (int(v) for v in np.array(layout))
    assert size == x.size
    elem = np.arange(size, dtype=np.int64)
    unit = eval(  # the kernel's own expression, evaluated over every thread index
        _unit_expression(),
        {"elem": elem, "per_sample": per_sample, "inner": inner, "channels": channels},
    )
    kept = mx.take(keep, mx.array(unit.astype(np.int32)))
    scale = mx.where(kept, coefficients[0], 0.0)
    shift = mx.where(kept, coefficients[1], coefficients[2])
    return (x.reshape(-1).astype(mx.float32) * scale + shift).astype(x.dtype).reshape(x.shape)


@pytest.fixture(
    params=[
        "emulated",
        pytest.param(
            "gpu",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU_KERNEL, reason=NO_GPU_REASON)],
        ),
    ]
)
def kernel_mode(request, monkeypatch):
    if request.param == "emulated":
        monkeypatch.setattr(_kernels, "gpu_backend", lambda: "emulated")
        monkeypatch.setattr(_kernels, "_default_device_is_gpu", lambda: True)
        monkeypatch.setattr(_kernels, "_launch", _emulated_launch)
    return request.param


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


def _assert_close(actual: mx.array, expected: mx.array) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    # Same float32 arithmetic, rounded once to the dtype; a fused multiply-add on one side
    # can move the float32 result by an ulp, and that ulp can move the rounding by one.
    a, e = to_numpy(actual), to_numpy(expected)
    tolerance = 2 * UNIT_ROUNDOFF[actual.dtype] * np.abs(e) + 2.0**-24 * (1 + np.abs(e))
    assert np.all(np.abs(a - e) <= tolerance), np.max(np.abs(a - e))


def _assert_paths_agree(dropout, x, **kwargs):
    """``dropout`` with the kernel and with the ops path: same key, so the same mask."""
    _assert_close(dropout(x, use_kernel=True, **kwargs), dropout(x, use_kernel=False, **kwargs))


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
    _assert_close(y_kernel, y_ops)
    _assert_close(dx_kernel, dx_ops)


@pytest.mark.parametrize("shape", [(1,), (5, 3), (2, 9, 7, 33), ()])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_elementwise_kernel_matches_ops_path(kernel_mode, shape, dtype):
    x = normal_input(shape, dtype=dtype, seed=3)
    _assert_paths_agree(alpha_dropout, x, p=0.4, key=mx.random.key(6))


def test_kernel_on_non_contiguous_input(kernel_mode):
    base = normal_input((4, 9, 6, 10), seed=4)
    x = base.transpose(0, 2, 1, 3)  # a strided view: (4, 6, 9, 10)
    _assert_paths_agree(feature_alpha_dropout, x, p=0.5, key=mx.random.key(7))


def test_kernel_under_compile_grad_and_compiled_grad(kernel_mode):
    x = normal_input((4, 5, 5, 12), seed=5)
    key = mx.random.key(8)

    def loss(x, use_kernel):
        return (feature_alpha_dropout(x, 0.3, key=key, use_kernel=use_kernel) ** 2).sum()

    expected_y = feature_alpha_dropout(x, 0.3, key=key, use_kernel=False)
    expected_grad = mx.grad(lambda x: loss(x, False))(x)
    compiled = mx.compile(lambda x: feature_alpha_dropout(x, 0.3, key=key, use_kernel=True))
    _assert_close(compiled(x), expected_y)
    _assert_close(mx.grad(lambda x: loss(x, True))(x), expected_grad)
    _assert_close(mx.compile(mx.grad(lambda x: loss(x, True)))(x), expected_grad)
    _assert_close(mx.grad(mx.compile(lambda x: loss(x, True)))(x), expected_grad)


def test_kernel_under_jvp_and_vmap(kernel_mode):
    x = normal_input((4, 5, 3, 12), seed=6)
    tangent = normal_input((4, 5, 3, 12), seed=7)
    key = mx.random.key(10)

    def f(use_kernel):
        return lambda x: feature_alpha_dropout(
            x, 0.3, key=key, channel_axis=1, use_kernel=use_kernel
        )

    (_, jvp_kernel), (_, jvp_ops) = (mx.jvp(f(k), [x], [tangent]) for k in (True, False))
    _assert_close(jvp_kernel[0], jvp_ops[0])
    # vmap over a new leading axis (the same key: the same mask for every batch entry), and
    # over an inner axis of the input.
    stacked = normal_input((3, 4, 5, 3, 12), seed=8)
    _assert_close(mx.vmap(f(True))(stacked), mx.vmap(f(False))(stacked))
    inner = stacked.transpose(1, 2, 0, 3, 4)
    _assert_close(mx.vmap(f(True), in_axes=2)(inner), mx.vmap(f(False), in_axes=2)(inner))


def test_modules_pass_use_kernel_through(kernel_mode):
    x = normal_input((3, 4, 4, 8))
    key = mx.random.key(9)
    _assert_close(
        FeatureAlphaDropout(0.2, use_kernel=True)(x, key),
        FeatureAlphaDropout(0.2, use_kernel=False)(x, key),
    )
    _assert_close(AlphaDropout(0.2, use_kernel=True)(x, key), AlphaDropout(0.2)(x, key))


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
