"""The fused masked-affine GPU kernel (Metal and CUDA) and its plumbing.

Nothing outside this module knows how the kernel is written: :mod:`lucid_mlx.functional`
asks :func:`use_kernel_for` whether to take it and calls :func:`masked_affine`.

One thread per element of ``x`` (row-major), computing in float32::

    unit  = (elem / per_sample) * channels + (elem / inner) % channels   # (n, c) -> flat
    y     = keep[unit] ? (x - alpha') * a + d : d          # d = a * alpha' + b

``per_sample`` is the size of one sample, ``inner`` the size of one channel's slice after the
channel axis, ``channels`` the mask's size per sample. The element-wise variant is the same
kernel with ``channels = per_sample`` and ``inner = 1``. The coefficients are
``(a, alpha', d)``, and a kept unit is computed with the ops path's operations in its order,
so without contraction the two paths agree bit for bit. The backward pass is this kernel
again on the cotangent, with coefficients ``(a, 0, 0)``: ``dx = cotangent * a * keep``.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, cast

import mlx.core as mx

# The two bodies differ only in how a thread finds its index; everything after that line is
# shared, so a CUDA run on real hardware also checks the index math the Metal kernel uses.
METAL_THREAD_INDEX = "unsigned int elem = thread_position_in_grid.x;"
CUDA_THREAD_INDEX = "unsigned int elem = blockIdx.x * blockDim.x + threadIdx.x;"
_BODY = """
    // The CUDA grid is rounded up to whole blocks: threads past the end do nothing.
    if (elem >= static_cast<unsigned int>(layout[0])) {
        return;
    }
    unsigned int per_sample = static_cast<unsigned int>(layout[1]);
    unsigned int inner = static_cast<unsigned int>(layout[2]);
    unsigned int channels = static_cast<unsigned int>(layout[3]);
    unsigned int unit = (elem / per_sample) * channels + (elem / inner) % channels;
    // (x - alpha') * a + d, the ops path's operations in its order: a kept unit is a x + b.
    // A dropped unit is exactly the dropped value, whatever x holds (inf and NaN included).
    float kept_value = (static_cast<float>(x[elem]) - coefficients[1]) * coefficients[0]
        + coefficients[2];
    out[elem] = static_cast<T>(keep[unit] ? kept_value : coefficients[2]);
"""
METAL_SOURCE = METAL_THREAD_INDEX + _BODY
CUDA_SOURCE = CUDA_THREAD_INDEX + _BODY

KERNEL_DTYPES = (mx.float16, mx.bfloat16, mx.float32)
_INPUT_NAMES = ["x", "keep", "coefficients", "layout"]
_THREADS_PER_GROUP = 256
# The kernel indexes with 32-bit integers, and MLX's CUDA launch rounds the grid up to whole
# thread groups in a signed 32-bit int: stay a group clear of 2**31.
MAX_KERNEL_ELEMENTS = 2**31 - _THREADS_PER_GROUP

# Backends on which benchmarks/bench_dropout.py measured the kernel at least as fast as the
# compiled ops path, forward and backward. Automatic selection (use_kernel=None) takes the
# kernel only there. Empty: the kernel has not yet been measured on a GPU (docs/gpu-kernel.md).
MEASURED_FASTER: frozenset[str] = frozenset()


def gpu_backend() -> str | None:
    """``"metal"`` or ``"cuda"`` where MLX has that kernel backend, else ``None``."""
    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return None


def _default_device_is_gpu() -> bool:
    return bool(mx.default_device() == mx.gpu)


def use_kernel_for(use_kernel: bool | None, x: mx.array, where: str) -> bool:
    """Resolve the ``use_kernel`` argument for input ``x``.

    ``False``: never. ``None``: only where the default device is a GPU with a kernel backend
    that is listed in :data:`MEASURED_FASTER`, and ``x`` is a dtype and size the kernel takes.
    ``True``: always, or a ``RuntimeError`` saying why the kernel cannot run here.
    """
    if use_kernel is False:
        return False
    backend = gpu_backend()
    runnable = (
        backend is not None
        and _default_device_is_gpu()
        and x.dtype in KERNEL_DTYPES
        and x.size <= MAX_KERNEL_ELEMENTS
    )
    if use_kernel is None:
        return runnable and backend in MEASURED_FASTER
    if not runnable:
        raise RuntimeError(f"[{where}] use_kernel=True but {_why_not_runnable(backend, x)}.")
    return True


def _why_not_runnable(backend: str | None, x: mx.array) -> str:
    if backend is None:
        return (
            "this MLX has no GPU kernel backend (mx.metal.is_available() and"
            " mx.cuda.is_available() are both False); the kernel needs Metal on Apple silicon"
            " or MLX's CUDA backend. Use use_kernel=None or False for the ops path"
        )
    if not _default_device_is_gpu():
        return (
            f"the default device is {mx.default_device()}; the {backend} kernel runs on the GPU"
            " only (mx.set_default_device(mx.gpu))"
        )
    if x.dtype not in KERNEL_DTYPES:
        return f"the kernel supports float16, bfloat16 and float32 but 'x' is {x.dtype}"
    return f"the kernel takes at most {MAX_KERNEL_ELEMENTS} elements but 'x' has {x.size}"


@cache
def _kernel(backend: str, dtype: mx.Dtype) -> Any:
    """The kernel object for one backend and dtype, built once.

    One object per dtype, each with its own name: MLX's CUDA backend caches compiled kernels
    by name and template arguments, not by input dtypes.
    """
    name = f"lucid_mlx_masked_affine_{str(dtype).rsplit('.', 1)[-1]}"
    if backend == "metal":
        return mx.fast.metal_kernel(
            name=name, input_names=_INPUT_NAMES, output_names=["out"], source=METAL_SOURCE
        )
    return mx.fast.cuda_kernel(
        name=name, input_names=_INPUT_NAMES, output_names=["out"], source=CUDA_SOURCE
    )


def _launch(x: mx.array, keep: mx.array, coefficients: mx.array, layout: mx.array) -> mx.array:
    backend = gpu_backend()
    if backend is None:  # use_kernel_for() checked this; reaching here is a bug
        raise RuntimeError("lucid_mlx: the GPU kernel was called without a GPU backend.")
    kernel = _kernel(backend, x.dtype)
    (out,) = kernel(
        inputs=[x, keep, coefficients, layout],
        template=[("T", x.dtype)],
        grid=(x.size, 1, 1),
        threadgroup=(min(_THREADS_PER_GROUP, x.size), 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
    )
    return out  # type: ignore[no-any-return]


def _slope(coefficients: mx.array, dtype: mx.Dtype) -> mx.array:
    """Coefficients of the map's derivative: ``(a, 0, 0)``, so the kernel gives ``a * keep * v``.

    The map is affine in x, so cotangents (VJP) and tangents (JVP) both go through the same
    kernel with alpha' and the dropped value set to 0: ``(v - 0) * a + 0`` where kept. For
    bfloat16, ``a`` is first rounded to bfloat16, as the ops path's bfloat16 VJP does.
    """
    slope = coefficients * mx.array([1.0, 0.0, 0.0], dtype=coefficients.dtype)
    if dtype == mx.bfloat16:
        slope = slope.astype(mx.bfloat16).astype(coefficients.dtype)
    return slope


@mx.custom_function
def _masked_affine(
    x: mx.array, keep: mx.array, coefficients: mx.array, layout: mx.array
) -> mx.array:
    return _launch(x, keep, coefficients, layout)


@_masked_affine.vjp
def _masked_affine_vjp(
    primals: tuple[mx.array, ...], cotangent: mx.array, output: mx.array
) -> tuple[mx.array, ...]:
    x, keep, coefficients, layout = primals
    dx = _launch(cotangent.astype(x.dtype), keep, _slope(coefficients, x.dtype), layout)
    # The mask, coefficients and layout are not differentiable inputs.
    return dx, mx.zeros_like(keep), mx.zeros_like(coefficients), mx.zeros_like(layout)


@_masked_affine.jvp
def _masked_affine_jvp(
    primals: tuple[mx.array, ...], tangents: tuple[mx.array | None, ...]
) -> mx.array:
    x, keep, coefficients, layout = primals
    if tangents[0] is None:
        return mx.zeros_like(x)
    return _launch(tangents[0].astype(x.dtype), keep, _slope(coefficients, x.dtype), layout)


@_masked_affine.vmap
def _masked_affine_vmap(
    inputs: tuple[mx.array, ...], axes: tuple[int | None, ...]
) -> tuple[mx.array, int]:
    """Batch over a leading axis of ``x`` (and of ``keep``) by stacking along the samples.

    With ``B`` copies stacked first, element ``elem`` of the stack belongs to sample
    ``elem / per_sample`` of ``B * N``: the same index math, over a keep mask of ``B * N``
    samples. The layout only grows its total size.
    """
    x, keep, coefficients, layout = inputs
    x_axis, keep_axis, coefficients_axis, layout_axis = axes
    if coefficients_axis is not None or layout_axis is not None:
        raise ValueError("lucid_mlx: the kernel cannot be vmapped over its coefficients.")
    batch = x.shape[x_axis] if x_axis is not None else keep.shape[keep_axis]  # type: ignore[index]
    x = mx.moveaxis(x, x_axis, 0) if x_axis is not None else mx.broadcast_to(x, (batch, *x.shape))
    if keep_axis is None:
        keep = mx.broadcast_to(keep, (batch, *keep.shape))
    else:
        keep = mx.moveaxis(keep, keep_axis, 0)
    grown = layout * mx.array([batch, 1, 1, 1], dtype=layout.dtype)
    return cast(mx.array, _masked_affine(x, keep.reshape(-1), coefficients, grown)), 0


def layout_of(shape: tuple[int, ...], channel_axis: int | None) -> tuple[int, int, int, int]:
    """``(size, per_sample, inner, channels)`` for the kernel's index math.

    ``channel_axis=None`` is the element-wise variant: one mask entry per element.
    """
    size = math.prod(shape)
    per_sample = size // shape[0] if shape and shape[0] else 1
    if channel_axis is None:
        return size, per_sample, 1, per_sample
    inner = math.prod(shape[channel_axis + 1 :])
    return size, per_sample, max(inner, 1), shape[channel_axis]


def masked_affine(
    x: mx.array,
    keep: mx.array,
    scale: float,
    saturation: float,
    dropped: float,
    channel_axis: int | None,
) -> mx.array:
    """``(x - saturation) * scale + dropped`` where ``keep``, ``dropped`` elsewhere, in one launch.

    ``keep`` has ``x``'s size on axis 0 and on ``channel_axis`` (every axis when
    ``channel_axis`` is None) and 1 elsewhere. Differentiable through a custom VJP.
    """
    if x.ndim == 0:  # a scalar has no batch axis; treat it as one sample of one element
        one = masked_affine(x.reshape(1), keep.reshape(1), scale, saturation, dropped, None)
        return one.reshape(())
    coefficients = mx.array([scale, saturation, dropped], dtype=mx.float32)
    layout = mx.array(layout_of(tuple(x.shape), channel_axis), dtype=mx.int32)
    return cast(mx.array, _masked_affine(x, keep.reshape(-1), coefficients, layout))
