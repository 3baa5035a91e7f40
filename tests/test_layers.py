"""The module wrappers: configuration, repr, train/eval, forward, no parameters."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

import lucid_mlx
from lucid_mlx import AlphaDropout, FeatureAlphaDropout, alpha_dropout, feature_alpha_dropout
from tests.reference import normal_input


def test_public_names():
    assert sorted(lucid_mlx.__all__) == sorted(
        ["AlphaDropout", "FeatureAlphaDropout", "LayerStatistics", "__version__",
         "alpha_dropout", "feature_alpha_dropout", "init", "layer_statistics"]
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
    assert repr(FeatureAlphaDropout(0.2, channel_axis=1)).startswith("FeatureAlphaDropout(p=0.2")


def test_configuration_is_plain_python_and_not_parameters():
    layer = FeatureAlphaDropout(0.25, channel_axis=1)
    assert (layer.p, layer.inplace, layer.channel_axis) == (0.25, False, 1)
    assert type(layer.p) is float
    assert layer.parameters() == {}
    assert layer.trainable_parameters() == {}
    model = nn.Sequential(nn.Linear(4, 4), AlphaDropout(0.1))
    assert set(model.parameters()["layers"][1]) == set()


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


@pytest.mark.parametrize("layer", [FeatureAlphaDropout(0.5), AlphaDropout(0.5)])
def test_training_mode_follows_mlx(layer):
    x = normal_input((4, 3, 3, 8))
    assert layer.training
    assert not mx.array_equal(layer(x), x)
    layer.eval()
    assert layer(x) is x
    layer.train()
    assert not mx.array_equal(layer(x), x)


def test_inside_a_model_with_value_and_grad():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SELU(), FeatureAlphaDropout(0.2))
    x = normal_input((2, 6, 6, 3))

    def loss(model, x):
        return model(x).square().mean()

    value, grads = nn.value_and_grad(model, loss)(model, x)
    assert value.item() > 0
    assert grads["layers"][0]["weight"].shape == (8, 3, 3, 3)
