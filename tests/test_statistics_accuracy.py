"""mean_and_variance against NumPy in float64, on activations of a realistic size."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from lucid_mlx import layer_statistics
from lucid_mlx.monitor import mean_and_variance

# 12.8 million elements: a (batch, height, width, channels) activation early in an image net.
SHAPE = (8, 224, 224, 32)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)


def _relative_errors(x: mx.array) -> tuple[float, float]:
    """The errors of mean_and_variance(x) against the float64 statistics of x's own values
    (a float16 or bfloat16 x holds rounded values; those are the ones to describe): the
    mean's relative to the standard deviation (stricter than to the mean when it is larger),
    the variance's relative to itself."""
    given = np.asarray(x.astype(mx.float32), dtype=np.float64)
    mean, variance = given.mean(), given.var()
    got_mean, got_variance = mean_and_variance(x)
    return abs(got_mean - mean) / math.sqrt(variance), abs(got_variance - variance) / variance


@pytest.mark.parametrize("shift", [0.0, 100.0])
@pytest.mark.parametrize(
    "dtype", [mx.float32, mx.float16, mx.bfloat16], ids=["float32", "float16", "bfloat16"]
)
def test_matches_float64_at_ten_million_elements(normal, dtype, shift):
    x = mx.array(normal + np.float32(shift)).astype(dtype)
    mean_error, variance_error = _relative_errors(x)
    assert mean_error < TOLERANCE
    assert variance_error < TOLERANCE


def test_layer_statistics_reports_the_same(normal):
    x = mx.array(normal + np.float32(100.0))
    (record,) = layer_statistics([nn.Identity()], x)
    assert (record.mean, record.variance) == mean_and_variance(x)


def test_a_mean_far_larger_than_the_spread():
    # Two float32 neighbours, alternating: the mean lies halfway, so a float32 mean misses it
    # by the whole standard deviation, which squared would double the variance uncorrected.
    low = np.float32(1e4)
    high = np.nextafter(low, np.float32(np.inf))
    x = mx.array(np.tile([low, high], 10**6 // 2))
    mean, variance = mean_and_variance(x)
    assert mean == (float(low) + float(high)) / 2
    assert variance == pytest.approx(((float(high) - float(low)) / 2) ** 2, rel=TOLERANCE)
    rng = np.random.default_rng(1)
    mean_error, variance_error = _relative_errors(
        mx.array((1e4 + 1e-2 * rng.standard_normal(10**6)).astype(np.float32))
    )
    assert mean_error < TOLERANCE
    assert variance_error < TOLERANCE


def test_a_constant_has_variance_zero():
    assert mean_and_variance(mx.full((10**6 + 3,), 0.1)) == (pytest.approx(0.1, rel=1e-7), 0.0)


def test_integers_and_empty_arrays():
    assert mean_and_variance(mx.arange(10)) == (4.5, 8.25)
    assert all(math.isnan(value) for value in mean_and_variance(mx.zeros((0, 3))))


def test_a_numpy_array_is_refused_with_the_conversion():
    with pytest.raises(
        TypeError,
        match=r"\[mean_and_variance\] 'x' must be an mlx\.core\.array but got ndarray\."
        r" Convert it with mx\.array\(x\)\.",
    ):
        mean_and_variance(np.zeros(3))


def test_complex_is_refused_and_float64_is_computed_in_float64():
    with pytest.raises(TypeError, match=r"'x' must be a real array .* but got complex64"):
        mean_and_variance(mx.array([1 + 2j, 3 - 1j]))
    # 1 + 1e-12 and 1 - 1e-12 are the same number in float32.
    x = mx.array(np.tile([1 + 1e-12, 1 - 1e-12], 500), dtype=mx.float64)
    mean, variance = mean_and_variance(x)
    assert mean == pytest.approx(1.0, abs=1e-15)
    assert variance == pytest.approx(1e-24, rel=1e-6)
