"""What a porter from PyTorch or mlx.nn meets: errors that say what to do, positional
``training``, ``p`` as written, and axis 0 as the batch even for 3-D input."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from lucid_mlx import AlphaDropout, FeatureAlphaDropout, alpha_dropout, feature_alpha_dropout


@pytest.mark.parametrize("function", [feature_alpha_dropout, alpha_dropout])
@pytest.mark.parametrize(
    ("value", "type_name"), [(np.zeros((2, 3), np.float32), "ndarray"), ([[0.0, 1.0]], "list")]
)
def test_an_array_like_input_says_how_to_convert_it(function, value, type_name):
    message = (
        f"[{function.__name__}] 'x' must be an mlx.core.array but got {type_name}."
        " Convert it with mx.array(x)."
    )
    with pytest.raises(TypeError) as error:
        function(value, 0.2)
    assert str(error.value) == message


def test_a_non_array_like_input_gets_no_conversion_hint():
    with pytest.raises(TypeError) as error:
        feature_alpha_dropout(None, 0.2)
    assert str(error.value).endswith("but got NoneType.")


def test_one_dimensional_input_says_to_add_a_batch_axis():
    with pytest.raises(ValueError, match=r"add a batch axis, e\.g\. x\[None\]\.$"):
        FeatureAlphaDropout(0.2)(mx.zeros((16,)))
    assert FeatureAlphaDropout(0.2)(mx.ones((16,))[None]).shape == (1, 16)


def test_an_int_second_argument_points_at_channel_axis():
    with pytest.raises(TypeError) as error:
        FeatureAlphaDropout(0.2, 1)
    assert str(error.value) == (
        "[FeatureAlphaDropout] 'inplace' must be a bool but got 1 (int). If you meant the"
        " channel axis, it is keyword-only: FeatureAlphaDropout(0.2, channel_axis=1)."
    )
    with pytest.raises(
        TypeError, match=r"keyword-only: FeatureAlphaDropout\(0.2, channel_axis=1\)"
    ):
        FeatureAlphaDropout(0.2, np.int64(1))
    # No such hint where it cannot be meant: a string, or 0 (the batch axis, never a channel).
    for inplace, shown in (("yes", "'yes' (str)"), (0, "0 (int)")):
        with pytest.raises(TypeError) as error:
            FeatureAlphaDropout(0.2, inplace)
        assert str(error.value) == (
            f"[FeatureAlphaDropout] 'inplace' must be a bool but got {shown}."
        )


def test_a_numpy_bool_is_named_as_such():
    with pytest.raises(TypeError) as error:
        feature_alpha_dropout(mx.zeros((2, 3)), 0.2, np.bool_(True))
    assert str(error.value).endswith("but got np.True_ (numpy.bool).")


@pytest.mark.parametrize("layer", [FeatureAlphaDropout, AlphaDropout])
def test_a_bool_passed_to_a_layer_call_points_at_train_and_eval(layer):
    with pytest.raises(TypeError) as error:
        layer(0.2)(mx.zeros((2, 3)), False)  # a ported F.alpha_dropout(x, p, self.training)
    assert str(error.value) == (
        f"[{layer.__name__}] 'key' must be None or a PRNG key from mlx.core.random.key but"
        " got False (bool). A layer's mode is set with .train() and .eval(), not by an"
        " argument of the call."
    )


def test_zero_dimensional_input_is_not_told_to_use_x_none():
    with pytest.raises(ValueError, match=r"with 0\. Axis 0 is always the batch") as error:
        feature_alpha_dropout(mx.array(1.0), 0.2)
    assert str(error.value).endswith(
        "Axis 0 is always the batch: reshape it to (batch, ...) with at least 2 dimensions."
    )


@pytest.mark.parametrize("function", [feature_alpha_dropout, alpha_dropout])
def test_training_may_be_given_by_position_as_in_pytorch(function):
    x = mx.random.normal((4, 3, 3, 8), key=mx.random.key(0))
    assert function(x, 0.2, False) is x  # a ported F.alpha_dropout(x, p, self.training)
    key = mx.random.key(1)
    assert mx.array_equal(function(x, 0.2, True, key=key), function(x, 0.2, key=key))
    with pytest.raises(TypeError, match=r"'training' must be a bool but got 1 \(int\)"):
        function(x, 0.2, 1)
    with pytest.raises(TypeError, match="positional argument"):
        function(x, 0.2, True, False, key)  # everything after inplace stays keyword-only


@pytest.mark.parametrize("function", [feature_alpha_dropout, alpha_dropout])
def test_pytorchs_functional_signature_is_accepted(function):
    # torch.nn.functional.alpha_dropout(input, p=0.5, training=False, inplace=False)
    x, key = mx.random.normal((4, 3, 3, 8), key=mx.random.key(0)), mx.random.key(1)
    expected = function(x, 0.2, key=key)
    assert mx.array_equal(function(x, 0.2, True, False, key=key), expected)
    assert mx.array_equal(function(x, 0.2, True, inplace=True, key=key), expected)
    with pytest.raises(TypeError, match=r"'inplace' must be a bool but got 'no' \(str\)\.$"):
        function(x, 0.2, True, "no")


def test_an_int_in_inplaces_place_points_at_channel_axis_in_the_function_too():
    with pytest.raises(TypeError) as error:
        feature_alpha_dropout(mx.zeros((2, 3, 4)), 0.2, True, 1)
    assert str(error.value) == (
        "[feature_alpha_dropout] 'inplace' must be a bool but got 1 (int). If you meant the"
        " channel axis, it is keyword-only: feature_alpha_dropout(x, 0.2, True, channel_axis=1)."
    )


@pytest.mark.parametrize("layer", [FeatureAlphaDropout, AlphaDropout])
def test_training_as_a_keyword_of_a_layer_call_points_at_train_and_eval(layer):
    with pytest.raises(TypeError) as error:
        layer(0.2)(mx.zeros((2, 3)), training=False)
    assert str(error.value) == (
        f"[{layer.__name__}] a call takes 'x' and 'key' only but got 'training'. A layer's mode"
        " is set with .train() and .eval(), not by an argument of the call."
    )
    with pytest.raises(TypeError, match=r"takes 'x' and 'key' only but got 'p'\.$"):
        layer(0.2)(mx.zeros((2, 3)), p=0.1)


@pytest.mark.parametrize("layer", [FeatureAlphaDropout, AlphaDropout])
@pytest.mark.parametrize(
    ("p", "shown"),
    [(np.float32(0.2), "0.2"), (np.float16(0.1), "0.1"), (np.float64(0.3), "0.3"), (0.25, "0.25")],
)
def test_p_is_shown_as_written(layer, p, shown):
    module = layer(p)
    assert module.p == float(shown)
    assert type(module.p) is float
    assert repr(module).startswith(f"{layer.__name__}(p={shown}, ")


def test_a_float32_p_is_still_checked():
    with pytest.raises(ValueError, match=r"'p' must be in \[0, 1\] but got np\.float32\(1\.5\)"):
        FeatureAlphaDropout(np.float32(1.5))


def test_three_dimensional_input_takes_axis_0_as_the_batch():
    """(A, B, C): one mask entry per (a, c), constant along B.

    ``mlx.nn.Dropout2d`` reads the same shape as one unbatched (H, W, C) image and draws one
    entry per channel only; this layer does not guess, so its masks differ along axis 0.
    """
    # Positive input: a kept unit is a*x + b > 0 and a dropped one d = a*alpha'*q < 0.
    x = mx.abs(mx.random.normal((64, 5, 8), key=mx.random.key(2))) + 0.1
    y = np.array(FeatureAlphaDropout(0.5)(x, key=mx.random.key(3)))
    dropped = y < 0
    assert np.all(y[dropped] == y[dropped][0])  # one dropped value
    assert np.all(dropped == dropped[:, :1, :])  # constant along B
    per_sample = dropped[:, 0, :]
    assert 0 < per_sample.mean() < 1
    assert not np.all(per_sample == per_sample[:1])  # samples differ: axis 0 is the batch
    mlx_view = np.array(nn.Dropout2d(0.5)(mx.ones((64, 5, 8)))) == 0
    assert np.all(mlx_view == mlx_view[:1, :1, :])  # Dropout2d: one (H, W, C) image
