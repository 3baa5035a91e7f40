"""Statistical claims: mean 0 / variance 1 preserved, drop fraction p.

Tolerances are 5 standard errors, where the standard error comes from the independent draws:
for the channel-wise variant the N*C (sample, channel) slices, not the element count. Each
slice contributes its own mean of y and of y**2; the spread of those across slices gives the
standard error of their average.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lucid_mlx import alpha_dropout, feature_alpha_dropout
from lucid_mlx._math import alpha_dropout_coefficients
from tests.reference import ALPHA, LAMBDA, recover_keep, to_numpy

SIGMAS = 5.0


def selu(z: np.ndarray) -> np.ndarray:
    return LAMBDA * np.where(z > 0, z, ALPHA * np.expm1(np.minimum(z, 0)))


def _input(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal(shape)
    return selu(z) if kind == "selu" else z


def _assert_moments(per_draw: np.ndarray, expected: float, what: str) -> None:
    estimate = per_draw.mean()
    standard_error = per_draw.std(ddof=1) / np.sqrt(per_draw.size)
    assert abs(estimate - expected) <= SIGMAS * standard_error, (
        f"{what}: {estimate:.5f} vs {expected} (5 sigma = {SIGMAS * standard_error:.5f},"
        f" {per_draw.size} independent draws)"
    )


@pytest.mark.parametrize("kind", ["normal", "selu"])
@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_feature_alpha_dropout_keeps_mean_zero_and_variance_one(kind, p):
    shape = (512, 4, 4, 128)  # 65,536 independent (sample, channel) draws
    x = _input(kind, shape, seed=int(p * 100))
    y = to_numpy(feature_alpha_dropout(mx.array(x, mx.float32), p, key=mx.random.key(0)))
    # Per-slice averages are the independent draws.
    _assert_moments(y.mean(axis=(1, 2)).ravel(), 0.0, "mean")
    _assert_moments((y**2).mean(axis=(1, 2)).ravel(), 1.0, "second moment")


@pytest.mark.parametrize("kind", ["normal", "selu"])
def test_alpha_dropout_keeps_mean_zero_and_variance_one(kind):
    x = _input(kind, (1024, 1024), seed=1)
    y = to_numpy(alpha_dropout(mx.array(x, mx.float32), 0.2, key=mx.random.key(1))).ravel()
    _assert_moments(y, 0.0, "mean")
    _assert_moments(y**2, 1.0, "second moment")


def test_without_the_affine_correction_the_moments_would_fail():
    # Guards the test above against being unable to fail: a plain inverted dropout of the
    # same data (Dropout2d's rule, y = keep * x / q) breaks the second moment at 5 sigma.
    p = 0.2
    x = _input("selu", (512, 4, 4, 128), seed=3)
    keep = np.random.default_rng(4).random((512, 1, 1, 128)) >= p
    y = np.where(keep, x / (1 - p), 0.0)
    with pytest.raises(AssertionError, match="second moment"):
        _assert_moments((y**2).mean(axis=(1, 2)).ravel(), 1.0, "second moment")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_fraction_is_p(p):
    shape = (256, 3, 3, 64)  # N*C = 16,384 Bernoulli draws
    x = mx.array(np.random.default_rng(5).standard_normal(shape), mx.float32)
    keep = recover_keep(x, feature_alpha_dropout(x, p, key=mx.random.key(2)), p, (0, 3))
    draws = shape[0] * shape[3]
    assert keep.size == draws
    dropped_fraction = 1.0 - keep.mean()
    assert abs(dropped_fraction - p) <= SIGMAS * np.sqrt(p * (1 - p) / draws)


def test_analytic_moments_of_the_package_coefficients():
    # Exact math on lucid_mlx's own coefficients: for input with mean 0 and variance 1,
    # E[y] = 0 and Var[y] = 1, and the dropped value is a * alpha' + b.
    alpha_prime = -LAMBDA * ALPHA
    for p in (0.01, 0.1, 0.5, 0.9, 0.999):
        a, b, dropped = alpha_dropout_coefficients(p)
        q = 1 - p
        mean = a * p * alpha_prime + b
        second = a**2 * (q + p * alpha_prime**2) + 2 * a * b * p * alpha_prime + b**2
        assert abs(mean) < 1e-12
        assert abs(second - 1) < 1e-12
        assert abs(dropped - (a * alpha_prime + b)) < 1e-12
