"""Property tests over shapes, p, channel axes and dtypes, plus the math helper."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lucid_mlx import alpha_dropout, feature_alpha_dropout
from lucid_mlx._math import SELU_ALPHA, SELU_LAMBDA, alpha_dropout_coefficients
from tests.reference import (
    ALPHA,
    FLOAT_DTYPES,
    LAMBDA,
    coefficients,
    feature_mask_axes,
    normal_input,
    recover_keep,
)

probabilities = st.one_of(
    st.floats(0.0, 1.0, exclude_max=False),
    st.sampled_from([0.0, 1e-9, 0.5, 1 - 1e-9, 1.0]),
)


@st.composite
def shapes_and_axes(draw):
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(1, ndim - 1))
    negative = draw(st.booleans())
    return shape, axis - ndim if negative else axis


@settings(max_examples=60, deadline=None)
@given(shapes_and_axes(), probabilities, st.sampled_from(FLOAT_DTYPES), st.integers(0, 2**31))
def test_feature_alpha_dropout_properties(shape_axis, p, dtype, seed):
    shape, channel_axis = shape_axis
    x = normal_input(shape, dtype=dtype, seed=seed % 1000)
    y = feature_alpha_dropout(x, p, key=mx.random.key(seed), channel_axis=channel_axis)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    if p == 0.0:
        assert y is x
    elif p == 1.0:
        assert not np.array(y.astype(mx.float32)).any()
    else:
        recover_keep(x, y, p, feature_mask_axes(x.ndim, channel_axis))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=0, max_size=4),
    probabilities,
    st.sampled_from(FLOAT_DTYPES),
    st.integers(0, 2**31),
)
def test_alpha_dropout_properties(shape, p, dtype, seed):
    x = normal_input(shape, dtype=dtype, seed=seed % 1000)
    y = alpha_dropout(x, p, key=mx.random.key(seed))
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    if x.size and 0.0 < p < 1.0:
        recover_keep(x, y, p, None)


def test_full_precision_constants():
    assert SELU_LAMBDA == LAMBDA
    assert SELU_ALPHA == ALPHA
    assert repr(SELU_LAMBDA) == "1.0507009873554805"
    assert repr(SELU_ALPHA) == "1.6732632423543772"


@given(st.floats(0.0, 1.0, exclude_max=True))
def test_coefficients_match_the_oracle(p):
    assert alpha_dropout_coefficients(p) == pytest.approx(coefficients(p), rel=1e-14, abs=0)


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_coefficients_reject_p_without_finite_map(p):
    with pytest.raises(ValueError, match="'p' must be in \\[0, 1\\)"):
        alpha_dropout_coefficients(p)
