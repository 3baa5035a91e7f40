"""SELU with full-precision constants and a gradient that is finite for every finite input.

MLX's own ``mlx.nn.selu`` computes ``where(x > 0, x, alpha * (exp(x) - 1))`` with ``lambda``
and ``alpha`` rounded to 1.0507 and 1.67326. The discarded branch still runs, so where
``exp(x)`` overflows (``x`` above about 88.7 in float32 and bfloat16, 11.1 in float16) its
gradient is ``0 * inf``, NaN; and the rounded constants move the saturation value by 5e-6.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx._math import SELU_ALPHA, SELU_LAMBDA
from lucid_mlx._validation import check_input

__all__ = ["SELU", "selu"]

# Half-precision inputs are computed in float32 and rounded once at the end: that gives the
# correctly rounded result (within 0.5 ulp, where half-precision arithmetic is off by up to
# 1.6 ulps: lambda and lambda * alpha themselves round to 8 or 11 bits), and under mx.compile
# the casts fuse into the same elementwise kernel, so they cost no extra memory traffic.
_HALF_DTYPES = (mx.float16, mx.bfloat16)


@partial(mx.compile, shapeless=True)
def _selu(x: mx.array) -> mx.array:
    work = x.astype(mx.float32) if x.dtype in _HALF_DTYPES else x
    positive = work > 0
    # The negative branch sees 0 where x > 0, so exp never overflows and the gradient that
    # where() sends it there is 0 * finite. where(), not minimum(): at x == 0 the gradient
    # is lambda * alpha (the x <= 0 case, as in PyTorch and mlx.nn.selu), where minimum's
    # tie rule would give 0.
    negative = mx.where(positive, 0, work)
    # Value from expm1 (accurate near 0, where exp(x) - 1 cancels), derivative from exp:
    # MLX differentiates expm1 as expm1(x) + 1, which is 0 below x = -17 in float32. The
    # added term is exactly 0 (exp of x <= 0 is finite) but carries exp's gradient.
    exp_negative = mx.exp(negative)
    expm1_negative = mx.stop_gradient(mx.expm1(negative)) + (
        exp_negative - mx.stop_gradient(exp_negative)
    )
    # lambda * alpha is rounded once, as one constant.
    y = mx.where(positive, SELU_LAMBDA * work, (SELU_LAMBDA * SELU_ALPHA) * expm1_negative)
    return y.astype(x.dtype)


def selu(x: mx.array) -> mx.array:
    r"""Applies the Scaled Exponential Linear Unit (Klambauer et al. 2017).

    .. math::

        \text{selu}(x) = \begin{cases}
        \lambda x & \text{if } x > 0 \\
        \lambda \alpha (\exp(x) - 1) & \text{if } x \leq 0
        \end{cases}

    with the full-precision constants :math:`\lambda = 1.0507009873554804934\ldots` and
    :math:`\alpha = 1.6732632423543772848\ldots` (https://arxiv.org/abs/1706.02515), so the
    output saturates at exactly :math:`\alpha' = -\lambda\alpha`, the value the alpha-dropout
    layers set dropped units to. Unlike ``mlx.nn.selu``, the gradient is finite for every
    finite input (MLX's is NaN above about 88.7 in float32 and bfloat16 and 11.1 in float16),
    and the negative branch is computed with ``expm1`` (accurate near 0). float16 and
    bfloat16 inputs are computed in float32 and rounded once to their dtype.

    Args:
        x (mlx.core.array): Floating-point input of any shape. Integer input is refused
            (``mlx.nn.selu`` would return float32); convert it with ``x.astype(...)``.

    Returns:
        mlx.core.array: An array of ``x``'s shape and dtype. It is infinite only where
        :math:`\lambda x` exceeds the dtype's largest value.

    Raises:
        TypeError: If ``x`` is not an ``mlx.core.array`` of a floating-point dtype.
    """
    return _selu(check_input(x, "selu", min_ndim=0))


class SELU(nn.Module):
    r"""Applies the Scaled Exponential Linear Unit, with a finite gradient everywhere.

    A drop-in replacement for ``mlx.nn.SELU``: full-precision constants, saturation at
    exactly :math:`\alpha' = -\lambda\alpha`, and no NaN gradient where ``exp(x)`` overflows.

    See :func:`selu` for the functional equivalent.

    Shape:
        - Input: any shape, floating-point.
        - Output: the same shape and dtype as the input.
    """

    def __call__(self, x: mx.array) -> mx.array:
        return selu(x)
