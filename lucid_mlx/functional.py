"""Functional forms of alpha dropout: the core of the package.

The layers in :mod:`lucid_mlx.layers` are one-line wrappers around these functions.
"""

from __future__ import annotations

import mlx.core as mx

from lucid_mlx import _kernels
from lucid_mlx._math import alpha_dropout_coefficients
from lucid_mlx._validation import (
    check_bool,
    check_input,
    check_key,
    check_optional_bool,
    check_probability,
    resolve_channel_axis,
)

__all__ = ["alpha_dropout", "feature_alpha_dropout"]


def feature_alpha_dropout(
    x: mx.array,
    p: float = 0.5,
    *,
    training: bool = True,
    key: mx.array | None = None,
    channel_axis: int = -1,
    use_kernel: bool | None = None,
) -> mx.array:
    r"""Channel-wise alpha dropout for self-normalizing (SELU) networks.

    One Bernoulli draw per (sample, channel) decides whether that whole feature map is kept
    or set to the SELU saturation value :math:`\alpha' = -\lambda\alpha`; an affine map then
    restores mean 0 and variance 1 (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515):

    .. math::

        y = a \bigl(m \odot x + (1 - m)\,\alpha'\bigr) + b, \qquad
        m_{n,c} \sim \mathrm{Bernoulli}(1 - p),

        a = \bigl((1 - p)(1 + p\,\alpha'^2)\bigr)^{-1/2}, \qquad b = -a\,\alpha'\,p.

    Axis 0 is always the batch axis; the mask has ``x``'s size on axis 0 and on
    ``channel_axis`` and size 1 elsewhere, so every (sample, channel) slice is wholly kept or
    wholly dropped. There is no unbatched form: add a batch axis of size 1 instead.

    Args:
        x (mlx.core.array): Floating-point input with at least 2 dimensions, batch first.
        p (float): Probability of dropping a channel, in ``[0, 1]``. Default: ``0.5``.
        training (bool): Apply dropout if ``True``; return ``x`` itself if ``False``.
            Default: ``True``.
        key (mlx.core.array, optional): PRNG key. If given, the mask is a pure function of
            ``(key, x.shape, p)``; otherwise it comes from MLX's global generator.
            Default: ``None``.
        channel_axis (int): The channel axis, never ``0``. ``-1`` suits MLX's channels-last
            layouts ``(N, C)``, ``(N, L, C)``, ``(N, H, W, C)``, ``(N, D, H, W, C)``; use
            ``1`` for PyTorch-style ``(N, C, *)``. Default: ``-1``.
        use_kernel (bool, optional): ``None`` picks the fused GPU kernel where it is
            available and measured faster, else the compiled ops path; ``True`` requires the
            kernel (``RuntimeError`` where it cannot run); ``False`` always takes the ops
            path. Same mask and same values either way. Default: ``None``.

    Returns:
        mlx.core.array: An array of ``x``'s shape and dtype. ``x`` itself when not training,
        when ``p == 0`` or when ``x`` is empty; zeros (the limit of the affine map) when
        ``p == 1``.

    Shape:
        - Input: :math:`(N, *, C, *)`, with ``C`` on ``channel_axis``.
        - Output: the same shape as the input.
    """
    where = "feature_alpha_dropout"
    p, training, key, use_kernel = _check_options(p, training, key, use_kernel, where)
    x = check_input(x, where, min_ndim=2)
    axis = resolve_channel_axis(channel_axis, x.ndim, where)
    mask_shape = [1] * x.ndim
    mask_shape[0] = x.shape[0]
    mask_shape[axis] = x.shape[axis]
    return _alpha_dropout(x, p, training, key, mask_shape, axis, use_kernel, where)


def alpha_dropout(
    x: mx.array,
    p: float = 0.5,
    *,
    training: bool = True,
    key: mx.array | None = None,
    use_kernel: bool | None = None,
) -> mx.array:
    r"""Element-wise alpha dropout for self-normalizing (SELU) networks.

    Each element is kept or set to :math:`\alpha' = -\lambda\alpha` independently, then the
    affine map of :func:`feature_alpha_dropout` restores mean 0 and variance 1
    (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515). Suits fully connected SELU
    layers; for convolutional features prefer :func:`feature_alpha_dropout`.

    Args:
        x (mlx.core.array): Floating-point input of any shape.
        p (float): Probability of dropping an element, in ``[0, 1]``. Default: ``0.5``.
        training (bool): Apply dropout if ``True``; return ``x`` itself if ``False``.
            Default: ``True``.
        key (mlx.core.array, optional): PRNG key; see :func:`feature_alpha_dropout`.
            Default: ``None``.
        use_kernel (bool, optional): Kernel or ops path; see :func:`feature_alpha_dropout`.
            Default: ``None``.

    Returns:
        mlx.core.array: An array of ``x``'s shape and dtype, with the same special cases as
        :func:`feature_alpha_dropout`.
    """
    where = "alpha_dropout"
    p, training, key, use_kernel = _check_options(p, training, key, use_kernel, where)
    x = check_input(x, where, min_ndim=0)
    return _alpha_dropout(x, p, training, key, list(x.shape), None, use_kernel, where)


def _check_options(
    p: object, training: object, key: object, use_kernel: object, where: str
) -> tuple[float, bool, mx.array | None, bool | None]:
    """The checks both functions share, in one place."""
    return (
        check_probability(p, where),
        check_bool(training, "training", where),
        check_key(key, where),
        check_optional_bool(use_kernel, "use_kernel", where),
    )


def _alpha_dropout(
    x: mx.array,
    p: float,
    training: bool,
    key: mx.array | None,
    mask_shape: list[int],
    channel_axis: int | None,
    use_kernel: bool | None,
    where: str,
) -> mx.array:
    """Shared body of both functions, after validation.

    ``channel_axis`` is None for the element-wise variant (``mask_shape == x.shape``).
    """
    if not training or p == 0.0 or x.size == 0:
        return x
    if p == 1.0:
        return mx.zeros_like(x)
    # Resolved only when a kernel would run: a model configured with use_kernel=True still
    # runs in eval mode on a machine without a GPU.
    kernel = _kernels.use_kernel_for(use_kernel, x, where)
    keep = mx.random.bernoulli(1.0 - p, mask_shape, key=key)
    if kernel:
        return _kernels.masked_affine(x, keep, *alpha_dropout_coefficients(p), channel_axis)
    return _masked_affine(x, keep, p)


def _compute_dtype(dtype: mx.Dtype) -> mx.Dtype:
    # Half-precision inputs are computed in float32 and rounded once on store: more accurate,
    # faster on CPUs without half arithmetic, and the custom kernels do the same.
    return mx.float64 if dtype == mx.float64 else mx.float32


def _masked_affine(x: mx.array, keep: mx.array, p: float) -> mx.array:
    """``a * x + b`` where ``keep`` is true, ``a * alpha' + b`` elsewhere, in one pass over x."""
    coefficients = alpha_dropout_coefficients(p)
    compute = _compute_dtype(x.dtype)
    scale, shift, dropped = (mx.array(value, compute) for value in coefficients)
    if keep.size == x.size:
        # Element-wise: one fused pass reads x and the mask together.
        return _fused_masked_affine(x, keep, scale, shift, dropped)
    # Channel-wise: per-(sample, channel) scale and shift come from the small mask, so the
    # pass over x is a single broadcast multiply-add.
    unit = _small_unit_affine(keep, scale, shift, dropped)
    return _affine(x, unit[0], unit[1])


def _unit_affine(
    keep: mx.array, scale: mx.array, shift: mx.array, dropped: mx.array
) -> tuple[mx.array, mx.array]:
    """Per-unit ``(scale, shift)``: ``(a, b)`` where kept, ``(0, a * alpha' + b)`` where dropped."""
    # Arithmetic instead of mx.where: MLX's CPU select is many times slower than a
    # multiply-add, and with keep in {0, 1} both forms give the same values exactly.
    kept = keep.astype(scale.dtype)
    return kept * scale, kept * shift + (1.0 - kept) * dropped


def _affine_body(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    return (x.astype(scale.dtype) * scale + shift).astype(x.dtype)


@mx.compile
def _small_unit_affine(
    keep: mx.array, scale: mx.array, shift: mx.array, dropped: mx.array
) -> mx.array:
    """``_unit_affine`` on the small channel-wise mask, stacked: shape ``(2, *keep.shape)``."""
    # mx.stack is not elementwise, so inside a caller's mx.compile it keeps the mask draw and
    # this arithmetic out of the fused pass over x, which would otherwise redo them for every
    # element (measured 6x the cost of one pass, against 1.2-1.5x eagerly).
    return mx.stack(list(_unit_affine(keep, scale, shift, dropped)))


_affine = mx.compile(_affine_body)


@mx.compile
def _fused_masked_affine(
    x: mx.array, keep: mx.array, scale: mx.array, shift: mx.array, dropped: mx.array
) -> mx.array:
    return _affine_body(x, *_unit_affine(keep, scale, shift, dropped))
