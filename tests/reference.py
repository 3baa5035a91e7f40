"""An independent NumPy oracle for alpha dropout, and the helpers the tests share.

Nothing here imports lucid_mlx: the oracle restates the paper's formulas from scratch so the
tests compare the package against the math, not against itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

LAMBDA = 1.0507009873554804934193349852946
ALPHA = 1.6732632423543772848170429916717
ALPHA_PRIME = -LAMBDA * ALPHA

# Unit roundoff of each dtype's significand: the half-ulp relative error of one rounding.
UNIT_ROUNDOFF = {
    mx.float16: 2.0**-11,
    mx.bfloat16: 2.0**-8,
    mx.float32: 2.0**-24,
    mx.float64: 2.0**-53,
}
# Spacing of each dtype's subnormals: the absolute error of storing a value near zero.
SUBNORMAL_SPACING = {
    mx.float16: 2.0**-24,
    mx.bfloat16: 2.0**-133,
    mx.float32: 2.0**-149,
    mx.float64: 2.0**-1074,
}
FLOAT_DTYPES = [mx.float16, mx.bfloat16, mx.float32]


def coefficients(p: float) -> tuple[float, float, float]:
    """(a, b, dropped value) from Klambauer et al. 2017, eq. for alpha dropout."""
    q = 1.0 - p
    a = (q * (1.0 + p * ALPHA_PRIME**2)) ** -0.5
    b = -a * ALPHA_PRIME * p
    # a * alpha' + b, written without the cancellation that form suffers as p -> 1.
    dropped = a * ALPHA_PRIME * q
    return a, b, dropped


def used_probability(p: float) -> float:
    """The drop probability lucid_mlx's masks realize for ``p`` in ``(0, 1)``.

    Each unit draws 16 uniform random bits ``r`` and is dropped when ``r < t``, with ``t`` the
    nearest integer to ``p * 2**16`` kept within ``[1, 2**16 - 1]``; so the probability is
    exactly ``t / 2**16``.
    """
    levels = 2**16
    threshold = min(max(round(p * levels), 1), levels - 1)
    return threshold / levels


def to_numpy(x: mx.array) -> np.ndarray:
    """float64 copy of an MLX array of any float dtype (numpy has no bfloat16)."""
    if x.dtype == mx.float64:
        return np.array(x)
    return np.array(x.astype(mx.float32)).astype(np.float64)


def rounded(value: float, dtype: mx.Dtype) -> float:
    """``value`` as stored in ``dtype`` after computing in float32 (float64 for float64)."""
    if dtype == mx.float64:
        return value
    return float(mx.array(value, mx.float32).astype(dtype).astype(mx.float32).item())


def normal_input(
    shape: Sequence[int], dtype: mx.Dtype = mx.float32, seed: int = 0, margin: float = 0.05
) -> mx.array:
    """N(0, 1) input with no value within ``margin`` of alpha'.

    Near alpha' a kept unit a*x + b is indistinguishable from a dropped one; keeping inputs
    away from it makes mask recovery unambiguous for every single element.
    """
    x = np.random.default_rng(seed).standard_normal(shape)
    near = np.abs(x - ALPHA_PRIME) < margin
    x[near] += 2 * margin
    return mx.array(x.astype(np.float32)).astype(dtype)


def recover_keep(
    x: mx.array,
    y: mx.array,
    p: float,
    mask_axes: Sequence[int] | None,
    *,
    exact_dropped: bool = True,
    quantized: bool = True,
) -> np.ndarray:
    """Recover the keep mask from ``y = alpha_dropout(x)`` and check every element.

    Each element must be exactly the dropped value (as stored in the dtype) or ``a * x + b``
    to within the rounding of computing in float32 and storing in the dtype. ``mask_axes``
    are the axes the mask varies along (batch and channel for the feature variant, every
    axis for the element-wise one); every slice along the others must be all kept or all
    dropped. Returns the boolean mask with singleton axes where it is broadcast.

    ``a`` and ``b`` are those of :func:`used_probability` (``quantized=False``: of ``p``
    itself, for outputs of other libraries, which use ``p`` as given). ``exact_dropped=False``
    accepts a dropped value a few float32 roundings off, for outputs of other libraries that
    compute it with other float32 operations.
    """
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    a, b, dropped = coefficients(used_probability(p) if quantized else p)
    xs, ys = to_numpy(x), to_numpy(y)
    kept_value = a * xs + b
    u = UNIT_ROUNDOFF[x.dtype]
    # lucid_mlx computes a kept unit as ((x - alpha') * a + d) in float32 from float32-rounded
    # alpha', a and d, then rounds once to the dtype. Each of those six roundings moves the
    # result by at most 2**-24 times the size of what it rounds, so to first order the float32
    # value is within 2**-24 * (3a|x - alpha'| + a|alpha'| + |d| + |a x + b|) of a x + b
    # (other libraries' a x + b is within that bound too); storing in the dtype adds u|y|.
    # Twice that covers the second-order terms.
    err = u * np.abs(kept_value) + 2.0**-24 * (
        3 * a * np.abs(xs - ALPHA_PRIME) + a * abs(ALPHA_PRIME) + abs(dropped) + np.abs(kept_value)
    )
    tolerance = 2 * err + SUBNORMAL_SPACING[x.dtype]
    is_kept = np.abs(ys - kept_value) <= tolerance
    if exact_dropped:
        is_dropped = ys == rounded(dropped, x.dtype)
    else:
        is_dropped = np.abs(ys - dropped) <= 8 * 2.0**-24 * abs(dropped)
    assert not np.any(is_kept & is_dropped), "ambiguous test data: x too close to alpha'"
    bad = ~(is_kept | is_dropped)
    assert not bad.any(), (
        f"{int(bad.sum())} elements are neither a*x+b nor the dropped value;"
        f" first: x={xs[bad][0]!r}, y={ys[bad][0]!r}, a*x+b={kept_value[bad][0]!r}"
    )
    axes = range(x.ndim) if mask_axes is None else mask_axes
    other = tuple(i for i in range(x.ndim) if i not in {ax % x.ndim for ax in axes})
    keep = is_kept.all(axis=other, keepdims=True)
    all_dropped = is_dropped.all(axis=other, keepdims=True)
    assert np.all(keep ^ all_dropped), "a (sample, channel) slice is partly kept"
    return keep


def feature_mask_axes(ndim: int, channel_axis: int) -> tuple[int, int]:
    return (0, channel_axis % ndim)
