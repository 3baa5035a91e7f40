"""``eval_rule="mean"``: outside training, ``a q x``, the train-mode output's mean given x."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from lucid_mlx import (
    AlphaDropout,
    FeatureAlphaDropout,
    alpha_dropout,
    feature_alpha_dropout,
    set_eval_rule,
)
from tests.reference import (
    ALPHA_PRIME,
    SUBNORMAL_SPACING,
    UNIT_ROUNDOFF,
    coefficients,
    normal_input,
    to_numpy,
    used_probability,
)

SIGMAS = 5.0
DTYPES = [mx.float16, mx.bfloat16, mx.float32, mx.float64]


def mean_of_train_mode(p: float) -> float:
    """a q for the probability the mask uses, in float64, from the paper's formulas."""
    realized = used_probability(p)
    return coefficients(realized)[0] * (1.0 - realized)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1e-6, 0.1, 0.3, 0.999])
def test_mean_rule_is_a_q_x_to_the_dtypes_rounding(p, dtype):
    x = normal_input((4, 5, 6), dtype=dtype, seed=1) * 30
    expected = mean_of_train_mode(p) * to_numpy(x)
    # a q rounded to the compute dtype, one product in it, one rounding to the dtype.
    compute = UNIT_ROUNDOFF[mx.float64 if dtype == mx.float64 else mx.float32]
    tolerance = (2 * compute + UNIT_ROUNDOFF[dtype]) * np.abs(expected) + SUBNORMAL_SPACING[dtype]
    for dropout in (feature_alpha_dropout, alpha_dropout):
        y = dropout(x, p, training=False, eval_rule="mean")
        assert (y.dtype, y.shape) == (dtype, x.shape)
        assert np.all(np.abs(to_numpy(y) - expected) <= tolerance)


@pytest.mark.parametrize("dropout", [feature_alpha_dropout, alpha_dropout])
def test_mean_rule_edge_cases_and_training_ignores_it(dropout):
    x = normal_input((4, 3, 8))
    assert dropout(x, 0.0, False, eval_rule="mean") is x
    assert mx.array_equal(dropout(x, 1.0, False, eval_rule="mean"), mx.zeros_like(x))
    empty = mx.zeros((0, 3))
    assert dropout(empty, 0.2, False, eval_rule="mean") is empty
    assert dropout(x, 0.2, False) is x  # the default: identity
    key = mx.random.key(2)
    trained = dropout(x, 0.2, key=key, eval_rule="mean")
    assert mx.array_equal(trained, dropout(x, 0.2, key=key))


@pytest.mark.parametrize("dropout", [feature_alpha_dropout, alpha_dropout])
def test_mean_rule_is_the_average_of_train_mode_over_many_masks(dropout):
    # One (1, 4, 4, 8) input repeated over a batch of draws; each sample draws its own mask,
    # so each element's train-mode outputs over the batch are independent given x.
    draws, p = 4096, 0.2
    x = normal_input((1, 4, 4, 8), seed=3)
    ys = to_numpy(dropout(mx.broadcast_to(x, (draws, 4, 4, 8)), p, key=mx.random.key(4)))
    expected = to_numpy(dropout(x, p, False, eval_rule="mean"))[0]
    realized = used_probability(p)
    a = coefficients(realized)[0]
    # Given x, y is a x + b with probability q and a alpha' + b otherwise: its standard
    # deviation is a |x - alpha'| sqrt(p q). 5 sigma over 128 elements fails by chance with
    # probability below 1e-4.
    sigma = a * np.abs(to_numpy(x)[0] - ALPHA_PRIME) * math.sqrt(realized * (1 - realized))
    assert np.all(np.abs(ys.mean(axis=0) - expected) <= SIGMAS * sigma / math.sqrt(draws))


@pytest.mark.parametrize("layer", [FeatureAlphaDropout, AlphaDropout])
def test_layers_take_the_rule_and_show_it_when_not_the_default(layer):
    module = layer(0.2, eval_rule="mean")
    assert repr(module).endswith("eval_rule='mean')")
    assert "eval_rule" not in repr(layer(0.2))
    x = normal_input((2, 3, 4))
    module.eval()
    assert mx.array_equal(module(x), feature_alpha_dropout(x, 0.2, False, eval_rule="mean"))
    module.train()
    key = mx.random.key(5)
    assert mx.array_equal(module(x, key), layer(0.2)(x, key))


def test_a_bad_rule_names_the_argument():
    for call, where in (
        (lambda: feature_alpha_dropout(mx.zeros((2, 3)), eval_rule="avg"), "feature_alpha_dropout"),
        (lambda: alpha_dropout(mx.zeros((2, 3)), eval_rule=None), "alpha_dropout"),
        (lambda: AlphaDropout(eval_rule="Mean"), "AlphaDropout"),
        (lambda: set_eval_rule(nn.Sequential(), "avg"), "set_eval_rule"),
    ):
        with pytest.raises(ValueError, match=rf"\[{where}\] 'eval_rule' must be 'identity' or"):
            call()
    with pytest.raises(ValueError, match="eval_rule") as error:
        FeatureAlphaDropout(eval_rule="avg")
    assert str(error.value).endswith(
        "'eval_rule' must be 'identity' or 'mean' but got 'avg' (str)."
    )
    with pytest.raises(TypeError, match=r"\[set_eval_rule\] 'model' must be an mlx.nn.Module"):
        set_eval_rule([FeatureAlphaDropout()], "mean")


def test_set_eval_rule_switches_every_alpha_dropout_layer():
    inner = nn.Sequential(nn.Linear(4, 4), AlphaDropout(0.1))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), FeatureAlphaDropout(0.2), nn.Dropout(0.5), inner)
    assert set_eval_rule(model, "mean") is model
    assert (model.layers[1].eval_rule, inner.layers[1].eval_rule) == ("mean", "mean")
    set_eval_rule(model, "identity")
    assert (model.layers[1].eval_rule, inner.layers[1].eval_rule) == ("identity", "identity")
    layer = FeatureAlphaDropout()
    assert set_eval_rule(layer, "mean").eval_rule == "mean"  # the model itself counts


def test_a_compiled_function_keeps_the_rule_it_was_traced_with():
    # Documented: the rule, like the training mode, is Python state that mx.compile reads once
    # while tracing, and MLX reuses the trace of a callable it has compiled before. A new
    # function compiled after switching traces the new rule.
    model = FeatureAlphaDropout(0.2)
    model.eval()
    x = normal_input((2, 3, 4))
    compiled = mx.compile(model)
    assert mx.array_equal(compiled(x), x)
    set_eval_rule(model, "mean")
    assert mx.array_equal(compiled(x), x)  # the traced identity
    assert mx.array_equal(mx.compile(model)(x), x)  # the same callable: the same trace
    expected = feature_alpha_dropout(x, 0.2, False, eval_rule="mean")
    assert mx.array_equal(mx.compile(lambda x: model(x))(x), expected)
