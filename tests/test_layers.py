"""The module wrappers: configuration, repr, train/eval, forward, no parameters, gradient."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import lucid_mlx
from lucid_mlx import AlphaDropout, FeatureAlphaDropout, alpha_dropout, feature_alpha_dropout
from tests.reference import coefficients, normal_input, recover_keep, used_probability


def test_public_names():
    assert sorted(lucid_mlx.__all__) == sorted(
        ["AlphaDropout", "FeatureAlphaDropout", "LayerStatistics", "SELU", "__version__",
         "alpha_dropout", "feature_alpha_dropout", "init", "layer_statistics",
         "mean_and_variance", "selu", "set_eval_rule"]
    )  # fmt: skip
    for name in lucid_mlx.__all__:
        assert hasattr(lucid_mlx, name)
    assert isinstance(lucid_mlx.__version__, str)
    assert lucid_mlx.__version__ != "0+unknown", "the package should be installed for tests"


def test_repr_and_extra_repr():
    layer = FeatureAlphaDropout()
    assert layer.extra_repr() == "p=0.5, inplace=False, channel_axis=-1"
    assert layer._extra_repr() == layer.extra_repr()
    assert repr(layer) == "FeatureAlphaDropout(p=0.5, inplace=False, channel_axis=-1)"
    assert repr(AlphaDropout(0.1, True)) == "AlphaDropout(p=0.1, inplace=True)"
    assert (
        repr(FeatureAlphaDropout(0.2, channel_axis=1))
        == "FeatureAlphaDropout(p=0.2, inplace=False, channel_axis=1)"
    )
    # use_kernel only when set: None (automatic) is not part of the configuration shown.
    assert (
        repr(AlphaDropout(0.1, use_kernel=False))
        == "AlphaDropout(p=0.1, inplace=False, use_kernel=False)"
    )


def test_configuration_is_plain_python_and_not_parameters():
    layer = FeatureAlphaDropout(0.25, channel_axis=1)
    assert (layer.p, layer.inplace, layer.channel_axis, layer.use_kernel) == (0.25, False, 1, None)
    assert type(layer.p) is float
    assert layer.parameters() == {}
    assert layer.trainable_parameters() == {}
    element_wise = AlphaDropout(0.1, True, use_kernel=False)
    assert (element_wise.p, element_wise.inplace, element_wise.use_kernel) == (0.1, True, False)
    assert element_wise.parameters() == {}
    model = nn.Sequential(nn.Linear(4, 4), AlphaDropout(0.1))
    assert model.parameters()["layers"][1] == {}


@pytest.mark.parametrize(
    ("layer", "functional", "kwargs"),
    [
        (FeatureAlphaDropout(0.3, channel_axis=1), feature_alpha_dropout, {"channel_axis": 1}),
        (AlphaDropout(0.3), alpha_dropout, {}),
    ],
)
def test_call_and_forward_equal_the_functional_form(layer, functional, kwargs):
    x = normal_input((4, 8, 3, 3))
    key = mx.random.key(0)
    expected = functional(x, 0.3, key=key, **kwargs)
    assert mx.array_equal(layer(x, key), expected)
    assert mx.array_equal(layer(x, key=key), expected)
    assert mx.array_equal(layer.forward(x, key=key), expected)


@pytest.mark.parametrize(
    ("layer", "functional"),
    [(FeatureAlphaDropout(0.5), feature_alpha_dropout), (AlphaDropout(0.5), alpha_dropout)],
)
def test_training_mode_follows_mlx(layer, functional):
    x = normal_input((4, 3, 3, 8))
    key = mx.random.key(1)
    dropped = functional(x, 0.5, key=key)
    assert not mx.array_equal(dropped, x)
    assert layer.training  # a new module trains, as in MLX
    assert mx.array_equal(layer(x, key), dropped)
    layer.eval()
    assert not layer.training
    assert layer(x) is x
    assert layer(x, key) is x
    layer.train()
    assert mx.array_equal(layer(x, key), dropped)


@pytest.mark.parametrize(
    ("layer", "mask_axes"),
    [(FeatureAlphaDropout(0.2), (0, 3)), (AlphaDropout(0.2), None)],
    ids=["FeatureAlphaDropout", "AlphaDropout"],
)
def test_gradient_inside_a_model_goes_through_a_times_keep(layer, mask_axes):
    conv = nn.Conv2d(3, 8, 3)
    model = nn.Sequential(conv, nn.SELU(), layer)
    x = normal_input((2, 6, 6, 3))

    def loss(model, x):
        return model(x).square().mean()

    mx.random.seed(7)  # in a Sequential the layer draws its mask from the global generator
    value, grads = nn.value_and_grad(model, loss)(model, x)

    # The same draw again after the same seed, and the mask it gave recovered from the output.
    hidden = nn.selu(conv(x))
    mx.random.seed(7)
    y = layer(hidden)
    keep = recover_keep(hidden, y, 0.2, mask_axes)
    assert keep.any()
    assert not keep.all()
    assert mx.array_equal(value, y.square().mean())

    # The layer's derivative is a for a kept unit and 0 for a dropped one, so the weights'
    # gradient is the chain rule through selu(conv(x)) with cotangent dL/dy * a * keep.
    a = np.float32(coefficients(used_probability(0.2))[0])
    slope = mx.array(np.where(keep, a, np.float32(0)))
    cotangent = 2 * y / y.size * slope

    def hidden_of(weight, bias):
        return nn.selu(mx.conv2d(x, weight) + bias)

    _, (d_weight, d_bias) = mx.vjp(hidden_of, [conv.weight, conv.bias], [cotangent])
    assert grads["layers"][1] == {}
    assert grads["layers"][2] == {}
    for got, expected in [
        (grads["layers"][0]["weight"], d_weight),
        (grads["layers"][0]["bias"], d_bias),
    ]:
        assert got.shape == expected.shape
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-7)
