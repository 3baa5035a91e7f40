"""The keep mask: 16 random bits per unit against an integer threshold, keys and generator.

The mask is exact, so these tests are too: the recovered mask must equal the threshold rule
applied to the random bits, recomputed here from MLX's generator (``mx.random.split`` gives
raw uint32 bits). The drop fraction is statistical, with 5-sigma tolerances from the number
of independent draws.
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lucid_mlx import alpha_dropout, feature_alpha_dropout
from lucid_mlx._math import drop_threshold, realized_probability
from tests.reference import (
    coefficients,
    feature_mask_axes,
    normal_input,
    recover_keep,
    to_numpy,
    used_probability,
)

SIGMAS = 5.0


def sixteen_bit_draws(key: mx.array, count: int) -> np.ndarray:
    """``count`` uniform 16-bit integers from ``key``: the uint32 words of
    ``mx.random.split(key, ceil(count / 4))``, each split into its low and high halves."""
    words = np.array(mx.random.split(key, (count + 3) // 4)).astype(np.uint64).reshape(-1)
    halves = np.stack([words & 0xFFFF, words >> 16], axis=-1).reshape(-1)
    return halves[:count].astype(np.int64)


def expected_keep(key: mx.array, mask_shape: tuple[int, ...], p: float) -> np.ndarray:
    threshold = round(used_probability(p) * 2**16)
    return (sixteen_bit_draws(key, math.prod(mask_shape)) >= threshold).reshape(mask_shape)


# ---- the threshold -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "threshold"),
    [
        (0.5, 32768),
        (0.2, 13107),  # 0.2 * 2**16 = 13107.2
        (0.3, 19661),  # 19660.8
        (2.0**-16, 1),
        (1e-12, 1),  # p > 0 never becomes "no dropout"
        (2.0**-18, 1),
        (1 - 1e-12, 2**16 - 1),  # p < 1 never becomes "drop everything"
        (1 - 2.0**-18, 2**16 - 1),
    ],
)
def test_drop_threshold(p, threshold):
    assert drop_threshold(p) == threshold
    assert realized_probability(p) == threshold / 2**16 == used_probability(p)


@given(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))
def test_realized_probability_is_within_two_to_the_minus_16_of_p(p):
    realized = realized_probability(p)
    assert realized == used_probability(p)
    assert 0 < realized < 1
    # Nearest multiple of 2**-16, unless the clamp to [2**-16, 1 - 2**-16] applies.
    bound = 2.0**-16 if min(p, 1 - p) < 2.0**-17 else 2.0**-17
    assert abs(realized - p) <= bound


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5])
def test_drop_threshold_needs_p_strictly_between_0_and_1(p):
    with pytest.raises(ValueError, match=r"'p' must be in \(0, 1\)"):
        drop_threshold(p)


# ---- the mask is the threshold rule on the generator's bits, exactly ---------------------


@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 9, 7, 6), (1, 1)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.77])
def test_element_mask_is_the_threshold_on_sixteen_random_bits(shape, p):
    x, key = normal_input(shape, seed=1), mx.random.key(4)
    keep = recover_keep(x, alpha_dropout(x, p, key=key), p, None)
    np.testing.assert_array_equal(keep, expected_keep(key, shape, p))


@pytest.mark.parametrize(
    ("shape", "channel_axis"), [((8, 5, 4, 7), -1), ((8, 7, 5, 4), 1), ((3, 5, 9), 1)]
)
def test_feature_mask_is_the_threshold_on_sixteen_random_bits(shape, channel_axis):
    x, key, p = normal_input(shape, seed=2), mx.random.key(5), 0.35
    y = feature_alpha_dropout(x, p, key=key, channel_axis=channel_axis)
    keep = recover_keep(x, y, p, feature_mask_axes(x.ndim, channel_axis))
    np.testing.assert_array_equal(keep, expected_keep(key, keep.shape, p))


def test_feature_dropout_of_n_by_c_input_is_element_wise_dropout():
    # The mask has x's shape, and the same bits in the same order.
    x, key = normal_input((16, 24), seed=3), mx.random.key(6)
    assert mx.array_equal(feature_alpha_dropout(x, 0.3, key=key), alpha_dropout(x, 0.3, key=key))


@pytest.mark.parametrize("p", [0.01, 0.3, 0.9])
def test_drop_fraction_is_the_realized_probability(p):
    draws = 2**22
    # On zeros a kept unit is b > 0 and a dropped one d = a * alpha' * (1 - p) < 0.
    y = to_numpy(alpha_dropout(mx.zeros((draws,)), p, key=mx.random.key(7)))
    dropped = np.count_nonzero(y < 0) / draws
    realized = used_probability(p)
    assert abs(dropped - realized) <= SIGMAS * math.sqrt(realized * (1 - realized) / draws)


@pytest.mark.parametrize("p", [1e-9, 1e-6])
def test_a_tiny_p_drops_with_probability_two_to_the_minus_16(p):
    # 2**22 draws at probability 2**-16: 64 drops expected, none if p were taken literally.
    draws = 2**22
    x = normal_input((draws // 64, 64), seed=8)
    keep = recover_keep(x, alpha_dropout(x, p, key=mx.random.key(9)), p, None)
    dropped = draws - int(keep.sum())
    assert abs(dropped - 64) <= SIGMAS * math.sqrt(64)
    assert dropped > 0


def test_coefficients_follow_the_realized_probability():
    # At p = 1e-6 the coefficients of p itself and of 2**-16 differ far beyond rounding, so
    # only the realized probability's pass the exact recovery.
    x = normal_input((256, 64), seed=10)
    y = alpha_dropout(x, 1e-6, key=mx.random.key(11))
    recover_keep(x, y, 1e-6, None)
    with pytest.raises(AssertionError, match="neither a\\*x\\+b nor the dropped value"):
        recover_keep(x, y, 1e-6, None, quantized=False)
    assert coefficients(used_probability(1e-6))[1] > 10 * coefficients(1e-6)[1]


@pytest.mark.parametrize("p", [1e-4, 0.999])
def test_moments_hold_for_extreme_p(p):
    # Element-wise, 2**20 independent draws: mean 0 and variance 1 for the probability used.
    x = mx.array(np.random.default_rng(12).standard_normal(2**20), mx.float32)
    y = to_numpy(alpha_dropout(x, p, key=mx.random.key(13)))
    for values, expected in ((y, 0.0), (y**2, 1.0)):
        error = SIGMAS * values.std(ddof=1) / math.sqrt(values.size)
        assert abs(values.mean() - expected) <= error


# ---- where the key comes from --------------------------------------------------------------


def test_the_mlx_behaviour_the_mask_relies_on():
    """What lucid_mlx/_mask.py relies on and MLX does not document; see its docstring."""
    changed = "MLX changed a behaviour lucid_mlx/_mask.py relies on:"
    # 1. mx.random.split(key, m) gives m keys of two uint32 words of uniform random bits.
    keys = mx.random.split(mx.random.key(20), 2**18)
    assert (keys.shape, keys.dtype) == ((2**18, 2), mx.uint32), f"{changed} split's keys"
    bits = np.unpackbits(np.array(keys).view(np.uint8)).reshape(-1, 32).mean(axis=0)
    draws = 2 * 2**18  # per bit position
    assert np.all(np.abs(bits - 0.5) <= SIGMAS * 0.5 / math.sqrt(draws)), f"{changed} split bits"
    # 2. A call without a key uses the second half of split(state) and keeps the first.
    mx.random.seed(21)
    drawn = mx.random.uniform(shape=(4,))
    after = mx.random.uniform(shape=(4,))
    first, second = mx.random.split(mx.random.key(21))
    assert mx.array_equal(drawn, mx.random.uniform(shape=(4,), key=second)), f"{changed} key"
    assert mx.array_equal(after, mx.random.uniform(shape=(4,), key=mx.random.split(first)[1])), (
        f"{changed} the generator's next state"
    )
    # ... and an empty draw advances the state all the same.
    mx.random.seed(21)
    mx.random.uniform(shape=(0,))
    assert mx.array_equal(mx.random.uniform(shape=(4,)), after), f"{changed} an empty draw"


@pytest.mark.parametrize("dropout", [feature_alpha_dropout, alpha_dropout])
def test_global_generator_hands_out_a_key_like_any_mlx_random_call(dropout):
    # Without a key, the mask is drawn with the key MLX's own functions would get, and the
    # state advances exactly once.
    x = normal_input((8, 3, 3, 16), seed=14)
    mx.random.seed(21)
    y = dropout(x, 0.4)
    after = mx.random.uniform(shape=(4,))
    mx.random.seed(21)
    mx.random.uniform(shape=(0,))
    assert mx.array_equal(after, mx.random.uniform(shape=(4,)))
    assert mx.array_equal(y, dropout(x, 0.4, key=mx.random.split(mx.random.key(21))[1]))


def test_compiled_step_is_reproducible_after_seed():
    x = normal_input((16, 2, 2, 32), seed=15)
    state = [mx.random.state]
    step = partial(mx.compile, inputs=state, outputs=state)(lambda x: alpha_dropout(x, 0.5))
    mx.random.seed(3)
    first = [step(x) for _ in range(2)]
    mx.random.seed(3)
    again = [step(x) for _ in range(2)]
    assert all(mx.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not mx.array_equal(first[0], first[1])
    # ... and draws what the eager call draws from the same state.
    mx.random.seed(3)
    assert mx.array_equal(alpha_dropout(x, 0.5), first[0])


@pytest.mark.parametrize("dropout", [feature_alpha_dropout, alpha_dropout])
def test_vmap_without_a_key_gives_every_item_the_same_mask(dropout):
    # Documented: MLX's global generator is not batched, so mx.vmap draws one mask.
    xs = normal_input((3, 16, 2, 2, 8), seed=16)
    ys = mx.vmap(lambda x: dropout(x, 0.5))(xs)
    masks = [recover_keep(xs[i], ys[i], 0.5, (0, 3) if dropout is feature_alpha_dropout else None)
             for i in range(3)]  # fmt: skip
    assert np.array_equal(masks[0], masks[1])
    assert np.array_equal(masks[0], masks[2])


@pytest.mark.parametrize("dropout", [feature_alpha_dropout, alpha_dropout])
def test_vmap_over_split_keys_gives_each_item_its_own_mask(dropout):
    xs = normal_input((3, 16, 2, 2, 8), seed=17)
    keys = mx.random.split(mx.random.key(18), 3)
    ys = mx.vmap(lambda x, key: dropout(x, 0.5, key=key))(xs, keys)
    for i in range(3):
        assert mx.array_equal(ys[i], dropout(xs[i], 0.5, key=keys[i]))
    assert not mx.array_equal(ys[0], ys[1])


def test_shapeless_compile_is_refused_by_mlx():
    # Documented: MLX's random bits cannot infer output shapes, as for mlx.nn.Dropout.
    x = normal_input((4, 3, 3, 8), seed=19)
    shapeless = mx.compile(lambda x: feature_alpha_dropout(x, 0.5, key=mx.random.key(0)),
                           shapeless=True)  # fmt: skip
    with pytest.raises(ValueError, match="RandomBits cannot infer output shapes"):
        shapeless(x)
