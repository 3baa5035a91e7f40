"""Functional forms of alpha dropout: the core of the package.

The layers in :mod:`lucid_mlx.layers` are one-line wrappers around these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, lru_cache
from typing import cast

import mlx.core as mx

from lucid_mlx import _kernels, _mask
from lucid_mlx._math import (
    MASK_LEVELS,
    SELU_SATURATION,
    alpha_dropout_coefficients,
    drop_threshold,
    mean_scale,
    realized_probability,
)
from lucid_mlx._validation import (
    check_bool,
    check_eval_rule,
    check_inplace,
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
    training: bool = True,
    inplace: bool = False,
    *,
    key: mx.array | None = None,
    channel_axis: int = -1,
    use_kernel: bool | None = None,
    eval_rule: str = "identity",
) -> mx.array:
    r"""Channel-wise alpha dropout for self-normalizing (SELU) networks.

    One Bernoulli draw per (sample, channel) decides whether that whole feature map is kept
    or set to the SELU saturation value :math:`\alpha' = -\lambda\alpha`; an affine map then
    restores mean 0 and variance 1 (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515):

    .. math::

        y = a \bigl(m \odot x + (1 - m)\,\alpha'\bigr) + b, \qquad
        m_{n,c} \sim \mathrm{Bernoulli}(1 - \hat p),

        a = \bigl((1 - \hat p)(1 + \hat p\,\alpha'^2)\bigr)^{-1/2}, \qquad
        b = -a\,\alpha'\,\hat p.

    The drop probability used, :math:`\hat p`, is ``p`` to 16 bits: each unit compares 16
    random bits with the integer threshold :math:`t = \mathrm{round}(2^{16} p)`, kept within
    :math:`[1, 2^{16} - 1]`, so :math:`\hat p = t / 2^{16}` is within :math:`2^{-16}` of
    ``p``, never 0 for ``p > 0`` and never 1 for ``p < 1``. ``a`` and ``b`` come from
    :math:`\hat p`, so mean 0 and variance 1 hold exactly for the probability used.

    Axis 0 is always the batch axis; the mask has ``x``'s size on axis 0 and on
    ``channel_axis`` and size 1 elsewhere, so every (sample, channel) slice is wholly kept or
    wholly dropped. There is no unbatched form: add a batch axis of size 1 instead.

    Args:
        x (mlx.core.array): Floating-point input with at least 2 dimensions, batch first.
        p (float): Probability of dropping a channel, in ``[0, 1]``. Default: ``0.5``.
        training (bool): Apply dropout if ``True``; return ``x`` itself if ``False``. It may
            be given by position, as in PyTorch's ``F.feature_alpha_dropout(x, p, training)``;
            the default differs from PyTorch's (``False``). Default: ``True``.
        inplace (bool): Accepted in PyTorch's position, with no effect: MLX arrays are
            immutable, so the result is a new array either way. Default: ``False``.
        key (mlx.core.array, optional): PRNG key. If given, the mask is a pure function of
            ``(key, x.shape, p)``; otherwise it comes from MLX's global generator.
            Default: ``None``.
        channel_axis (int): The channel axis, never ``0``. ``-1`` suits MLX's channels-last
            layouts ``(N, C)``, ``(N, L, C)``, ``(N, H, W, C)``, ``(N, D, H, W, C)``; use
            ``1`` for PyTorch-style ``(N, C, *)``. Default: ``-1``.
        use_kernel (bool, optional): ``True`` takes the fused GPU kernel (Metal, or MLX's
            CUDA backend; ``RuntimeError`` saying why where it cannot run); ``None`` and
            ``False`` take the compiled ops path (``None`` will pick the kernel where it is
            measured faster: so far nowhere). Same mask either way. Default: ``None``.
        eval_rule (str): What to return when not training: ``"identity"`` returns ``x``
            itself, as PyTorch does; ``"mean"`` returns :math:`a (1 - \hat p)\,x`, the
            train-mode output's mean given ``x`` (with ``a`` and :math:`\hat p` as above).
            Default: ``"identity"``.

    Returns:
        mlx.core.array: An array of ``x``'s shape and dtype. ``x`` itself when not training
        (with ``eval_rule="identity"``), when ``p == 0`` or when ``x`` is empty; zeros (the
        limit of the affine map) when ``p == 1``.

    Shape:
        - Input: :math:`(N, *, C, *)`, with ``C`` on ``channel_axis``.
        - Output: the same shape as the input.
    """
    where = "feature_alpha_dropout"
    p, training, key, use_kernel = _check_options(p, training, key, use_kernel, where)
    eval_rule = check_eval_rule(eval_rule, where)
    check_inplace(inplace, where, f"{where}(x, {p!r}, {training!r}, ")
    x = check_input(x, where, min_ndim=2)
    axis = resolve_channel_axis(channel_axis, x.ndim, where)
    return _alpha_dropout(x, p, training, key, axis, use_kernel, eval_rule, where)


def alpha_dropout(
    x: mx.array,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    key: mx.array | None = None,
    use_kernel: bool | None = None,
    eval_rule: str = "identity",
) -> mx.array:
    r"""Element-wise alpha dropout for self-normalizing (SELU) networks.

    Each element is kept or set to :math:`\alpha' = -\lambda\alpha` independently, then the
    affine map of :func:`feature_alpha_dropout` restores mean 0 and variance 1
    (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515), with the same 16-bit drop
    probability. Suits fully connected SELU layers; for convolutional features prefer
    :func:`feature_alpha_dropout`.

    Args:
        x (mlx.core.array): Floating-point input of any shape.
        p (float): Probability of dropping an element, in ``[0, 1]``. Default: ``0.5``.
        training (bool): Apply dropout if ``True``; return ``x`` itself if ``False``; may be
            given by position, as in PyTorch. Default: ``True``.
        inplace (bool): Accepted in PyTorch's position, with no effect. Default: ``False``.
        key (mlx.core.array, optional): PRNG key; see :func:`feature_alpha_dropout`.
            Default: ``None``.
        use_kernel (bool, optional): Kernel or ops path; see :func:`feature_alpha_dropout`.
            Default: ``None``.
        eval_rule (str): ``"identity"`` or ``"mean"`` (:math:`a (1 - \hat p)\,x`) when not
            training; see :func:`feature_alpha_dropout`. Default: ``"identity"``.

    Returns:
        mlx.core.array: An array of ``x``'s shape and dtype, with the same special cases as
        :func:`feature_alpha_dropout`.
    """
    where = "alpha_dropout"
    p, training, key, use_kernel = _check_options(p, training, key, use_kernel, where)
    eval_rule = check_eval_rule(eval_rule, where)
    check_bool(inplace, "inplace", where)
    x = check_input(x, where, min_ndim=0)
    return _alpha_dropout(x, p, training, key, None, use_kernel, eval_rule, where)


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
    channel_axis: int | None,
    use_kernel: bool | None,
    eval_rule: str,
    where: str,
) -> mx.array:
    """Shared body of both functions, after validation.

    ``channel_axis`` is None for the element-wise variant.
    """
    if p == 0.0 or x.size == 0 or not (training or eval_rule == "mean"):
        return x
    if not training:
        return _scaled(x, p)
    if p == 1.0:
        return mx.zeros_like(x)
    if channel_axis is not None and x.size == x.shape[0] * x.shape[channel_axis]:
        # A channel-wise mask as large as x, as for (N, C) input, is an element-wise one
        # (the same bits in the same order), and the element-wise pass is the faster one.
        channel_axis = None
    # Resolved only when dropout runs: a model configured with use_kernel=True still runs in
    # eval mode on a machine without a GPU.
    fused = _fused(use_kernel, x, where)
    constants = _constants(p, x.dtype)
    # One compiled call draws the mask, derives the per-unit scale and makes the pass over x.
    if key is None:
        return _global_forward()(x, *constants, channel_axis, fused)
    return _keyed_forward(x, key, *constants, channel_axis, fused)


def _scaled(x: mx.array, p: float) -> mx.array:
    """``a q x`` in the compute dtype, rounded once to ``x``'s: the ``"mean"`` eval rule."""
    realized = p if p == 1.0 else realized_probability(p)
    compute = _compute_dtype(x.dtype)
    return (x.astype(compute) * mx.array(mean_scale(realized), compute)).astype(x.dtype)


def _fused(use_kernel: bool | None, x: mx.array, where: str) -> bool:
    """Whether to take the fused GPU kernel: only on request.

    ``None`` (automatic) takes the ops path everywhere: the kernel has not been measured
    faster than the compiled ops path on any GPU yet.
    """
    if not use_kernel:
        return False
    reason = _kernels.why_not(x)
    if reason is not None:
        raise RuntimeError(
            f"[{where}] use_kernel=True but {reason}. Use use_kernel=None for the ops path."
        )
    return True


# ---- the ops path -----------------------------------------------------------------------


@lru_cache(maxsize=256)
def _constants(p: float, dtype: mx.Dtype) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """``(t, a, alpha', d)`` for ``(p, dtype)``, built once per pair: the uint16 threshold, the
    rest in the compute dtype, for the probability the mask realizes."""
    threshold = drop_threshold(p)
    coefficients = alpha_dropout_coefficients(threshold / MASK_LEVELS)
    compute = _compute_dtype(dtype)
    arrays = (
        mx.array(threshold, mx.uint16),
        mx.array(coefficients.scale, compute),
        mx.array(SELU_SATURATION, compute),
        mx.array(coefficients.dropped, compute),
    )
    mx.eval(arrays)
    return arrays


def _compute_dtype(dtype: mx.Dtype) -> mx.Dtype:
    # Half-precision inputs are computed in float32 and rounded once on store: more accurate,
    # faster on CPUs without half arithmetic, and the custom kernels do the same.
    return mx.float64 if dtype == mx.float64 else mx.float32


def _forward(
    x: mx.array,
    key: mx.array,
    threshold: mx.array,
    scale: mx.array,
    saturation: mx.array,
    dropped: mx.array,
    channel_axis: int | None,
    fused: bool,
) -> mx.array:
    """The whole of one call: draw the mask, derive the per-unit scale, one pass over x."""
    mask_shape = _mask.mask_shape(x.shape, channel_axis)
    bits = _mask.random_bits(key, math.prod(mask_shape))
    if fused:
        coefficients = mx.stack([scale, saturation, dropped, threshold.astype(scale.dtype)])
        return _kernels.masked_affine(x, bits, coefficients, channel_axis)
    if channel_axis is None:
        # Element-wise: comparing uint16 bits with a scalar and selecting a or 0 fuse into
        # the pass over x at next to no cost.
        unit_scale = mx.where(bits.reshape(x.shape) >= threshold, scale, 0.0)
    else:
        # Channel-wise: the scale is computed on the small mask before it is reshaped to
        # (N, 1, ..., C, ..., 1). The reshape is not element-wise, so it keeps this arithmetic
        # out of the pass over x, where it would be redone per element (measured 2.2x).
        unit_scale = mx.where(bits >= threshold, scale, 0.0).reshape(mask_shape)
    if x.dtype == mx.bfloat16:
        return cast(mx.array, _bfloat16_masked_affine(x, unit_scale, saturation, dropped))
    return _masked_affine(x, unit_scale, saturation, dropped)


_keyed_forward = mx.compile(_forward)


def _forward_from_global_generator(x: mx.array, *args: object) -> mx.array:
    return _forward(x, _mask.global_key(), *args)  # type: ignore[arg-type]


@cache
def _global_forward() -> Callable[..., mx.array]:
    """``_forward`` on a key from the global generator, compiled with the generator's state.

    Built on first use: reading ``mx.random.state`` creates the generator's key.
    """
    random_state = [mx.random.state]
    compiled = mx.compile(_forward_from_global_generator, inputs=random_state, outputs=random_state)
    return cast(Callable[..., mx.array], compiled)


def _masked_affine(
    x: mx.array, unit_scale: mx.array, saturation: mx.array, dropped: mx.array
) -> mx.array:
    """``(x - alpha') * s + d`` with ``s = a`` for kept units and ``0`` for dropped ones.

    Kept: ``a * (x - alpha') + a * alpha' * (1 - p) = a * x + b``; dropped: ``d``. One
    per-unit operand instead of a per-unit scale and shift: MLX's CPU backend vectorizes this
    broadcast pass and not the two-operand one. Its derivative is ``s``: for float32 and
    float64 the VJP MLX derives is the single multiply ``cotangent * s``.
    """
    compute = unit_scale.dtype
    return ((x.astype(compute) - saturation) * unit_scale + dropped).astype(x.dtype)


# For bfloat16 the derived VJP casts the cotangent to float32, multiplies and casts back: three
# passes, and MLX runs a VJP rule outside mx.compile. This one is a single bfloat16 multiply
# by s rounded to bfloat16 (the product of two bfloat16 values is exact in float32, so dx is
# that product rounded once). float16 keeps the derived rule: there the three float32 passes
# cost about what one float16 multiply does on a CPU without half-precision arithmetic.
_bfloat16_masked_affine = mx.custom_function(_masked_affine)


@_bfloat16_masked_affine.vjp
def _bfloat16_masked_affine_vjp(
    primals: tuple[mx.array, ...], cotangent: mx.array, output: mx.array
) -> tuple[mx.array, ...]:
    _, unit_scale, saturation, dropped = primals
    dx = cotangent * unit_scale.astype(cotangent.dtype)
    # The per-unit scale and the constants are not differentiable inputs.
    return dx, mx.zeros_like(unit_scale), mx.zeros_like(saturation), mx.zeros_like(dropped)


@_bfloat16_masked_affine.jvp
def _bfloat16_masked_affine_jvp(
    primals: tuple[mx.array, ...], tangents: tuple[mx.array | None, ...]
) -> mx.array:
    x, unit_scale, _, _ = primals
    if tangents[0] is None:
        return mx.zeros_like(x)
    return tangents[0] * unit_scale.astype(tangents[0].dtype)
