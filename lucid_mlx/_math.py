"""The one place that owns the alpha-dropout arithmetic.

Everything else in the package asks :func:`alpha_dropout_coefficients` for the affine map and
:func:`drop_threshold` for the mask's resolution; no other module spells out the SELU
constants, the formulas for ``a`` and ``b``, or how ``p`` is quantized.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# Full-precision SELU constants (Klambauer et al. 2017). MLX's own ``nn.selu`` rounds them to
# eight digits, which is why they are not imported from there.
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
#: The SELU saturation value ``alpha' = -lambda * alpha`` that dropped units are set to.
SELU_SATURATION = -SELU_LAMBDA * SELU_ALPHA


class AlphaDropoutCoefficients(NamedTuple):
    """The affine map of alpha dropout, in double precision.

    A kept unit becomes ``scale * x + shift``; a dropped unit becomes ``dropped``,
    which equals ``scale * alpha' + shift``.
    """

    scale: float
    shift: float
    dropped: float


def alpha_dropout_coefficients(p: float) -> AlphaDropoutCoefficients:
    r"""Return ``(a, b, a * alpha' + b)`` for drop probability ``p`` in ``[0, 1)``.

    .. math::

        q = 1 - p, \quad
        a = \bigl(q\,(1 + p\,\alpha'^2)\bigr)^{-1/2}, \quad
        b = -a\,\alpha'\,p

    so that zero-mean, unit-variance input keeps mean 0 and variance 1 after dropout.
    ``p == 1`` has no finite coefficients (the output is its limit, zero) and is handled by
    the callers; asking for it here raises ``ValueError``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"alpha_dropout_coefficients: 'p' must be in [0, 1) but got {p!r}.")
    keep_prob = 1.0 - p
    scale = 1.0 / math.sqrt(keep_prob * (1.0 + p * SELU_SATURATION**2))
    shift = -scale * SELU_SATURATION * p
    # a * alpha' + b simplifies to a * alpha' * q; the simplified form loses no precision.
    dropped = scale * SELU_SATURATION * keep_prob
    return AlphaDropoutCoefficients(scale, shift, dropped)


#: The keep mask compares 16 random bits per (sample, channel) or per element with an integer
#: threshold, so the drop probability actually used is a multiple of ``2**-16``.
MASK_BITS = 16
MASK_LEVELS = 1 << MASK_BITS


def drop_threshold(p: float) -> int:
    """The integer threshold ``t`` for drop probability ``p`` in ``(0, 1)``: drop when bits < t.

    With 16 uniform random bits per unit the drop probability is exactly ``t / 2**16``.
    ``t`` is ``p * 2**16`` rounded to the nearest integer and clamped to ``[1, 2**16 - 1]``:
    the probability used is within ``2**-17`` of ``p``, or within ``2**-16`` where the clamp
    applies (``p < 2**-17`` or ``p > 1 - 2**-17``), so a ``p > 0`` never becomes "no dropout"
    and a ``p < 1`` never becomes "drop everything".
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"drop_threshold: 'p' must be in (0, 1) but got {p!r}.")
    return min(max(round(p * MASK_LEVELS), 1), MASK_LEVELS - 1)


def realized_probability(p: float) -> float:
    """The drop probability the mask actually uses for ``p`` in ``(0, 1)``: ``t / 2**16``."""
    return drop_threshold(p) / MASK_LEVELS


def mean_scale(p: float) -> float:
    """``a * q``, for the drop probability the mask uses: alpha dropout's train-mode mean.

    Given ``x``, a kept unit is ``a x + b`` (probability ``q``) and a dropped one
    ``a alpha' + b`` (probability ``p``), so ``E[y | x] = a q x + b + a alpha' p = a q x``.
    ``p`` is taken as given, in ``[0, 1]``; at ``p == 1`` the limit is 0.
    """
    if p == 1.0:
        return 0.0
    return alpha_dropout_coefficients(p).scale * (1.0 - p)
