"""Bad input raises a clear error naming the argument, what is allowed and what was received."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from lucid_mlx import AlphaDropout, FeatureAlphaDropout, alpha_dropout, feature_alpha_dropout

X = mx.zeros((2, 3, 3, 4))


def _feature(p=0.5, **kwargs):
    return feature_alpha_dropout(kwargs.pop("x", X), p, **kwargs)


def _element(p=0.5, **kwargs):
    return alpha_dropout(kwargs.pop("x", X), p, **kwargs)


ENTRY_POINTS = [
    pytest.param(_feature, id="feature_alpha_dropout"),
    pytest.param(_element, id="alpha_dropout"),
    pytest.param(lambda p: FeatureAlphaDropout(p), id="FeatureAlphaDropout"),
    pytest.param(lambda p: AlphaDropout(p), id="AlphaDropout"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("p", "received"), [("0.5", "'0.5' (str)"), (None, "None"), (True, "True (bool)")]
)
def test_p_of_wrong_type_is_a_type_error(entry, p, received):
    with pytest.raises(TypeError, match=r"'p' must be a real number in \[0, 1\]") as info:
        entry(p)
    assert received in str(info.value)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("p", [math.nan, -0.1, 1.0000001, -math.inf])
def test_p_out_of_range_is_a_value_error(entry, p):
    with pytest.raises(ValueError, match=r"'p' must be in \[0, 1\] but got") as info:
        entry(p)
    assert repr(float(p)) in str(info.value)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("p", [5, -1, np.float32(1.5), np.int64(2), np.float64(math.nan)])
def test_p_out_of_range_is_quoted_as_given(entry, p):
    # FeatureAlphaDropout(5) must say "got 5", not the converted "got 5.0".
    with pytest.raises(ValueError, match=r"'p' must be in \[0, 1\]") as info:
        entry(p)
    assert str(info.value).endswith(f" but got {p!r}.")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("p", [0, 1, 0.25, np.float32(0.25), np.float64(1.0)])
def test_real_numbers_in_range_are_accepted(entry, p):
    entry(p)


def test_module_checks_p_again_when_changed_after_construction():
    layer = FeatureAlphaDropout(0.5)
    layer.p = 1.5
    with pytest.raises(ValueError, match=r"\[feature_alpha_dropout\] 'p' must be in \[0, 1\]"):
        layer(X)


@pytest.mark.parametrize("entry", [_feature, _element])
@pytest.mark.parametrize("x", [np.zeros((2, 3)), [[0.0, 1.0]], 1.0])
def test_non_mlx_input_is_a_type_error(entry, x):
    with pytest.raises(TypeError, match=r"'x' must be an mlx\.core\.array but got"):
        entry(x=x)


@pytest.mark.parametrize("entry", [_feature, _element])
@pytest.mark.parametrize("dtype", [mx.int32, mx.uint8, mx.bool_, mx.complex64])
def test_non_float_dtype_is_a_type_error(entry, dtype):
    with pytest.raises(TypeError, match=f"'x' must have a floating-point dtype .* but got {dtype}"):
        entry(x=mx.zeros((2, 4), dtype=dtype))


@pytest.mark.parametrize("shape", [(), (5,)])
def test_feature_variant_needs_two_dimensions(shape):
    with pytest.raises(ValueError, match=r"'x' must have at least 2 dimensions .* but got shape"):
        feature_alpha_dropout(mx.zeros(shape))


@pytest.mark.parametrize("axis", [4, -5, 10])
def test_channel_axis_out_of_range(axis):
    with pytest.raises(ValueError, match=rf"'channel_axis' must be in \[-4, 3\] .* but got {axis}"):
        feature_alpha_dropout(X, channel_axis=axis)


@pytest.mark.parametrize("axis", [0, -4])
def test_channel_axis_may_not_be_the_batch_axis(axis):
    with pytest.raises(ValueError, match=f"must not be the batch axis 0 but got {axis}"):
        feature_alpha_dropout(X, channel_axis=axis)


@pytest.mark.parametrize(
    ("make", "axis", "tail"),
    [
        (lambda axis: FeatureAlphaDropout(channel_axis=axis), np.int64(0), "."),
        (lambda axis: feature_alpha_dropout(X, channel_axis=axis), np.int32(0), "."),
        (lambda axis: feature_alpha_dropout(X, channel_axis=axis), np.int64(4), "."),
        (lambda axis: feature_alpha_dropout(X, channel_axis=axis), np.int16(-4), ", which"),
    ],
)
def test_channel_axis_is_quoted_as_given(make, axis, tail):
    with pytest.raises(ValueError, match="'channel_axis' must") as info:
        make(axis)
    assert f" but got {axis!r}{tail}" in str(info.value)


def test_channel_axis_accepts_numpy_integers_and_rejects_zero_at_construction():
    assert FeatureAlphaDropout(channel_axis=np.int64(3)).channel_axis == 3
    assert feature_alpha_dropout(X, 0.0, channel_axis=np.int32(1)) is X
    with pytest.raises(ValueError, match=r"\[FeatureAlphaDropout\] 'channel_axis' must not be"):
        FeatureAlphaDropout(channel_axis=0)


@pytest.mark.parametrize("axis", [1.0, "1", True, None])
def test_channel_axis_of_wrong_type(axis):
    with pytest.raises(TypeError, match="'channel_axis' must be an int but got"):
        feature_alpha_dropout(X, channel_axis=axis)
    with pytest.raises(TypeError, match=r"\[FeatureAlphaDropout\] 'channel_axis' must be an int"):
        FeatureAlphaDropout(channel_axis=axis)


def test_channel_axis_checked_against_the_input_at_call_time():
    layer = FeatureAlphaDropout(channel_axis=3)
    layer(X)
    with pytest.raises(ValueError, match="'channel_axis' must be in"):
        layer(mx.zeros((2, 4)))


@pytest.mark.parametrize("entry", [_feature, _element])
def test_training_must_be_bool(entry):
    with pytest.raises(TypeError, match="'training' must be a bool but got 1 \\(int\\)"):
        entry(training=1)


@pytest.mark.parametrize("entry", [_feature, _element])
def test_key_must_be_an_array(entry):
    with pytest.raises(TypeError, match=r"'key' must be None or a PRNG key .* but got int"):
        entry(key=0)


@pytest.mark.parametrize("entry", [_feature, _element])
@pytest.mark.parametrize(
    "key", [mx.zeros(2), mx.zeros((2, 2), dtype=mx.uint32), mx.zeros(3, dtype=mx.uint32)]
)
def test_key_must_be_a_prng_key(entry, key):
    with pytest.raises(
        ValueError, match=r"'key' must be a PRNG key .*uint32, shape \(2,\).* but got"
    ):
        entry(key=key)


@pytest.mark.parametrize("layer", [FeatureAlphaDropout, AlphaDropout])
def test_inplace_must_be_bool(layer):
    with pytest.raises(TypeError, match=rf"\[{layer.__name__}\] 'inplace' must be a bool"):
        layer(0.5, "yes")
