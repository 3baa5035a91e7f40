"""lecun_normal and selu_init."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import lucid_mlx
from lucid_mlx.init import fan_in, lecun_normal, selu_init

SIGMAS = 5.0


@pytest.mark.parametrize(
    ("layer", "expected_fan_in"),
    [
        (nn.Linear(7, 5), 7),  # weight (out, in)
        (nn.Conv1d(3, 4, kernel_size=5), 5 * 3),  # (out, k, in)
        (nn.Conv2d(3, 4, kernel_size=(2, 3)), 2 * 3 * 3),  # (out, kh, kw, in)
        (nn.Conv3d(2, 4, kernel_size=3), 3 * 3 * 3 * 2),  # (out, kd, kh, kw, in)
    ],
)
def test_fan_in_for_mlx_weight_layouts(layer, expected_fan_in):
    assert fan_in(layer.weight.shape) == expected_fan_in


@pytest.mark.parametrize("shape", [(5,), ()])
def test_fan_in_needs_two_dimensions(shape):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fan_in(shape)


def test_fan_in_must_be_positive():
    with pytest.raises(ValueError, match="fan-in must be positive"):
        fan_in((4, 0))
    with pytest.raises(ValueError, match="must not have negative sizes but got"):
        fan_in((3, -2, -2))
    with pytest.raises(TypeError, match="'shape' must be a sequence of ints but got 'abc'"):
        fan_in("abc")
    # The shape is quoted as given, a list as a list.
    with pytest.raises(ValueError, match=r"must not have negative sizes but got \[3, -2\]\."):
        fan_in([3, -2])
    with pytest.raises(ValueError, match=r"fan-in must be positive but got shape \[4, 0\]\."):
        fan_in([4, 0])


@pytest.mark.parametrize("dtype", [mx.int32, "float32", None])
def test_lecun_normal_needs_a_float_dtype(dtype):
    with pytest.raises(TypeError, match=r"'dtype' must be a floating-point mlx\.core\.Dtype"):
        lecun_normal(dtype)


@pytest.mark.parametrize(
    ("a", "received"), [([[0.0, 0.0], [0.0, 0.0]], "list"), ((64, 32), "tuple"), (None, "NoneType")]
)
def test_lecun_normal_initializer_needs_an_array(a, received):
    with pytest.raises(
        TypeError,
        match=rf"\[lecun_normal\] 'a' must be an mlx\.core\.array .* but got {received}\.",
    ):
        lecun_normal()(a)


def test_bad_keys_are_named():
    with pytest.raises(TypeError, match=r"\[selu_init\] 'key' must be None or a PRNG key"):
        selu_init(nn.Linear(2, 2), key=3)
    with pytest.raises(TypeError, match=r"\[lecun_normal\] 'key' must be None or a PRNG key"):
        lecun_normal()(mx.zeros((2, 2)), key=3)


@pytest.mark.parametrize("shape", [(256, 1024), (128, 3, 3, 64)])
def test_lecun_normal_variance_is_one_over_fan_in(shape):
    w = np.array(lecun_normal()(mx.zeros(shape), key=mx.random.key(0))).astype(np.float64)
    n = w.size
    expected = 1.0 / fan_in(shape)
    # Sample variance of n normal draws has standard error var * sqrt(2 / (n - 1)).
    assert abs(w.var() - expected) <= SIGMAS * expected * math.sqrt(2 / (n - 1))
    assert abs(w.mean()) <= SIGMAS * math.sqrt(expected / n)


def test_lecun_normal_dtype_and_shape():
    w = lecun_normal(mx.bfloat16)(mx.zeros((8, 3, 3, 4)))
    assert w.dtype == mx.bfloat16
    assert w.shape == (8, 3, 3, 4)


# The package's SELU and MLX's: activations without parameters, which selu_init leaves alone.
@pytest.mark.parametrize("activation", [lucid_mlx.SELU, nn.SELU])
def test_selu_init_touches_every_linear_and_conv_and_zeroes_biases(activation):
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3),
        nn.Sequential(nn.Conv2d(4, 8, 3), activation()),
        nn.Conv3d(8, 8, 1, bias=False),
        nn.Linear(8, 3),
        nn.LayerNorm(3),
    )
    touched = [model.layers[0], model.layers[1].layers[0], model.layers[2], model.layers[3]]
    for layer in touched:  # make every weight recognisably old, so a skipped layer shows
        layer.weight = mx.full(layer.weight.shape, 7.0)
    norm_weight = model.layers[4].weight
    returned = selu_init(model, key=mx.random.key(1))
    assert returned is model
    for layer in touched:
        w = np.array(layer.weight)
        assert not (w == 7.0).any()
        # The sample std of n normal draws has relative standard error about 1/sqrt(2n).
        std = fan_in(w.shape) ** -0.5
        assert abs(w.std() - std) <= SIGMAS * std / math.sqrt(2 * w.size)
        if "bias" in layer:
            assert not np.array(layer.bias).any()
    assert "bias" not in model.layers[2]
    assert model.layers[4].weight is norm_weight  # LayerNorm is not a Linear/Conv: untouched
    assert type(model.layers[1].layers[1]) is activation


def test_selu_init_with_key_is_reproducible():
    a = selu_init(nn.Linear(16, 16), key=mx.random.key(3))
    b = selu_init(nn.Linear(16, 16), key=mx.random.key(3))
    assert mx.array_equal(a.weight, b.weight)


def test_selu_init_rejects_non_modules():
    with pytest.raises(TypeError, match=r"'model' must be an mlx\.nn\.Module but got list"):
        selu_init([nn.Linear(2, 2)])
