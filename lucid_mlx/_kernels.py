"""The optional fused GPU kernel: one pass that reads the random bits and ``x`` and writes ``y``.

One thread per element of ``x`` (row-major), computing in float32. The thread finds its unit
(its (sample, channel), or itself for the element-wise variant) in the flat mask, compares that
unit's 16 random bits with the threshold, and computes the ops path's expression in its order::

    unit = (elem / per_sample) * channels + (elem / inner) % channels
    s    = bits[unit] >= t ? a : 0                   # t: the drop threshold
    y    = (x - alpha') * s + d                      # kept: a x + b; dropped: d

The gradient is the same kernel on the cotangent with ``alpha' = d = 0``: ``dx = g * s``.
Metal (``mx.fast.metal_kernel``) and CUDA (``mx.fast.cuda_kernel``) share the body; only the
line that reads the thread index differs. Kernels are built on first use, one per backend and
dtype (MLX's CUDA backend caches compiled kernels by name), or not at all where MLX has no
GPU backend.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, cast

import mlx.core as mx

METAL_THREAD_INDEX = "unsigned int elem = thread_position_in_grid.x;"
CUDA_THREAD_INDEX = "unsigned int elem = blockIdx.x * blockDim.x + threadIdx.x;"
BODY = """
    // The grid is rounded up to whole thread groups: threads past the end do nothing.
    if (elem >= static_cast<unsigned int>(layout[0])) {
        return;
    }
    unsigned int per_sample = static_cast<unsigned int>(layout[1]);
    unsigned int inner = static_cast<unsigned int>(layout[2]);
    unsigned int channels = static_cast<unsigned int>(layout[3]);
    unsigned int unit = (elem / per_sample) * channels + (elem / inner) % channels;
    float scale = static_cast<float>(bits[unit]) >= coefficients[3] ? coefficients[0] : 0.0f;
    float y = (static_cast<float>(x[elem]) - coefficients[1]) * scale + coefficients[2];
    out[elem] = static_cast<T>(y);
"""
INPUT_NAMES = ("x", "bits", "coefficients", "layout")
KERNEL_DTYPES = (mx.float16, mx.bfloat16, mx.float32)
_THREADS_PER_GROUP = 256
# 32-bit indices, and MLX's CUDA launch rounds the grid up in a signed 32-bit int.
MAX_ELEMENTS = 2**31 - _THREADS_PER_GROUP


def _backend() -> str | None:
    if mx.default_device() != mx.gpu:
        return None
    if mx.metal.is_available():
        return "metal"
    return "cuda" if mx.cuda.is_available() else None


@cache
def _kernel(backend: str, dtype: mx.Dtype) -> Any:
    name = f"lucid_mlx_masked_affine_{str(dtype).rsplit('.', 1)[-1]}"
    make, index = (
        (mx.fast.metal_kernel, METAL_THREAD_INDEX)
        if backend == "metal"
        else (mx.fast.cuda_kernel, CUDA_THREAD_INDEX)
    )
    return make(name=name, input_names=list(INPUT_NAMES), output_names=["out"], source=index + BODY)


def why_not(x: mx.array) -> str | None:
    """``None`` if the kernel can run on ``x`` here, else the reason it cannot."""
    if _backend() is None:
        return (
            "the kernel runs on the GPU only (Metal, or MLX's CUDA backend), and here the"
            f" default device is {mx.default_device()}"
            f" (metal: {mx.metal.is_available()}, cuda: {mx.cuda.is_available()})"
        )
    if x.dtype not in KERNEL_DTYPES:
        return f"the kernel takes float16, bfloat16 and float32 but 'x' is {x.dtype}"
    if x.size > MAX_ELEMENTS:
        return f"the kernel takes at most {MAX_ELEMENTS} elements but 'x' has {x.size}"
    return None


def _launch(x: mx.array, bits: mx.array, coefficients: mx.array, layout: mx.array) -> mx.array:
    backend = _backend()
    assert backend is not None, "lucid_mlx: the kernel was called without a GPU backend"
    (out,) = _kernel(backend, x.dtype)(
        inputs=[x, bits, coefficients, layout],
        template=[("T", x.dtype)],
        grid=(x.size, 1, 1),
        threadgroup=(min(_THREADS_PER_GROUP, x.size), 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
    )
    return out  # type: ignore[no-any-return]


def slope(coefficients: mx.array, dtype: mx.Dtype) -> mx.array:
    """The derivative's coefficients ``(a, 0, 0, t)``: the kernel then gives ``g * s``.

    For bfloat16 ``a`` is rounded to bfloat16, as the ops path's bfloat16 gradient is.
    """
    scale = coefficients[:1]
    if dtype == mx.bfloat16:
        scale = scale.astype(mx.bfloat16).astype(mx.float32)
    return mx.concatenate([scale, mx.zeros(2, mx.float32), coefficients[3:]])


@mx.custom_function
def _masked_affine(
    x: mx.array, bits: mx.array, coefficients: mx.array, layout: mx.array
) -> mx.array:
    return _launch(x, bits, coefficients, layout)


@_masked_affine.vjp
def _masked_affine_vjp(
    primals: tuple[mx.array, ...], cotangent: mx.array, output: mx.array
) -> tuple[mx.array, ...]:
    x, bits, coefficients, layout = primals
    dx = _launch(cotangent.astype(x.dtype), bits, slope(coefficients, x.dtype), layout)
    # The bits, coefficients and layout are not differentiable inputs.
    return dx, mx.zeros_like(bits), mx.zeros_like(coefficients), mx.zeros_like(layout)


@_masked_affine.jvp
def _masked_affine_jvp(
    primals: tuple[mx.array, ...], tangents: tuple[mx.array | None, ...]
) -> mx.array:
    x, bits, coefficients, layout = primals
    if tangents[0] is None:
        return mx.zeros_like(x)
    return _launch(tangents[0].astype(x.dtype), bits, slope(coefficients, x.dtype), layout)


def layout_of(shape: tuple[int, ...], channel_axis: int | None) -> list[int]:
    """``[size, per_sample, inner, channels]``: the kernel's index math.

    ``channel_axis=None`` is the element-wise variant, one unit per element; a 0-D ``x`` is one
    sample of one element.
    """
    size = math.prod(shape)
    per_sample = size // shape[0] if shape and shape[0] else 1
    if channel_axis is None:
        return [size, per_sample, 1, per_sample]
    return [size, per_sample, math.prod(shape[channel_axis + 1 :]), shape[channel_axis]]


def masked_affine(
    x: mx.array, bits: mx.array, coefficients: mx.array, channel_axis: int | None
) -> mx.array:
    """``(x - alpha') * s + d`` with ``s = a`` where ``bits >= t`` and 0 elsewhere, one launch.

    ``bits`` is the flat uint16 mask, one entry per unit; ``coefficients`` is the float32
    ``(a, alpha', d, t)``. Differentiable in ``x`` (VJP and JVP).
    """
    layout = mx.array(layout_of(tuple(x.shape), channel_axis), dtype=mx.int32)
    return cast(mx.array, _masked_affine(x, bits, coefficients, layout))
