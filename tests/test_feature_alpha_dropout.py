"""feature_alpha_dropout: exact mask recovery, special cases, randomness, gradient."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import numpy as np
import pytest

from lucid_mlx import feature_alpha_dropout
from tests.reference import (
    FLOAT_DTYPES,
    coefficients,
    feature_mask_axes,
    normal_input,
    recover_keep,
    to_numpy,
    used_probability,
)

# (shape, channel_axis): every layout the package supports, channels-last and PyTorch-style.
LAYOUTS = [
    ((64, 32), -1),  # (N, C): one element per slice, i.e. element-wise
    ((8, 17, 12), -1),  # (N, L, C)
    ((4, 9, 7, 16), -1),  # (N, H, W, C)
    ((3, 4, 5, 6, 8), -1),  # (N, D, H, W, C)
    ((4, 16, 9, 7), 1),  # (N, C, H, W), the seed's layout
    ((3, 8, 4, 5, 6), 1),  # (N, C, D, H, W)
    ((4, 9, 16, 7), 2),  # channels in the middle
    ((4, 9, 16, 7), -2),  # the same axis, negative
]


@pytest.mark.parametrize(("shape", "channel_axis"), LAYOUTS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_every_element_is_kept_affine_or_dropped_value(shape, channel_axis, p):
    x = normal_input(shape, seed=1)
    y = feature_alpha_dropout(x, p, key=mx.random.key(3), channel_axis=channel_axis)
    keep = recover_keep(x, y, p, feature_mask_axes(x.ndim, channel_axis))
    # At least 64 draws at p in [0.1, 0.9] with a fixed key: both outcomes occur.
    assert 0 < keep.sum() < keep.size


@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, mx.float64])
def test_dtype_is_kept_and_values_exact_to_dtype_rounding(dtype):
    # MLX has float64 on the CPU only; on a GPU machine that case runs on the CPU stream.
    with mx.stream(mx.cpu if dtype == mx.float64 else mx.default_device()):
        x = normal_input((8, 6, 5, 32), dtype=dtype, seed=2)
        y = feature_alpha_dropout(x, 0.3, key=mx.random.key(0))
        assert y.dtype == dtype
        recover_keep(x, y, 0.3, (0, 3))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", [1e-12, 1e-3, 0.5, 0.999, 1 - 1e-9, 1 - 2**-52, 1.0])
def test_no_nan_or_inf_for_any_p(dtype, p):
    x = normal_input((16, 4, 4, 64), dtype=dtype, seed=3)
    y = to_numpy(feature_alpha_dropout(x, p, key=mx.random.key(1)))
    assert np.isfinite(y).all()


def test_eval_mode_and_p_zero_return_the_input_itself():
    x = normal_input((4, 3, 3, 8))
    assert feature_alpha_dropout(x, 0.5, training=False) is x
    assert feature_alpha_dropout(x, 0.0) is x
    assert feature_alpha_dropout(x, 0) is x


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_p_one_gives_zeros_of_same_shape_and_dtype(dtype):
    x = normal_input((4, 3, 3, 8), dtype=dtype)
    y = feature_alpha_dropout(x, 1.0)
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert not to_numpy(y).any()


@pytest.mark.parametrize("p", [0.99, 0.9999, 0.999999])
def test_output_tends_to_zero_as_p_tends_to_one(p):
    # p == 1 returns the limit of the map: the dropped value a * alpha' * (1 - p) shrinks like
    # sqrt(1 - p), down to the mask's resolution (the probability used stops at 1 - 2**-16).
    x = normal_input((64, 4, 4, 64), seed=7)
    y = to_numpy(feature_alpha_dropout(x, p, key=mx.random.key(4)))
    keep = recover_keep(x, feature_alpha_dropout(x, p, key=mx.random.key(4)), p, (0, 3))
    dropped = y[np.broadcast_to(~keep, y.shape)]
    assert dropped.size > 0
    assert np.abs(dropped).max() < 2 * (1 - used_probability(p)) ** 0.5


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 3, 3, 8), (2, 3, 0, 8)])
def test_empty_input_is_returned_as_is(shape):
    x = mx.zeros(shape)
    assert feature_alpha_dropout(x, 0.5) is x


def test_same_key_same_mask_and_global_state_untouched():
    x = normal_input((8, 4, 4, 16))
    state_before = np.array(mx.random.state[0])
    y1 = feature_alpha_dropout(x, 0.5, key=mx.random.key(7))
    y2 = feature_alpha_dropout(x, 0.5, key=mx.random.key(7))
    y3 = feature_alpha_dropout(x, 0.5, key=mx.random.key(8))
    mx.eval(y1, y2, y3)
    assert np.array_equal(np.array(mx.random.state[0]), state_before)
    assert mx.array_equal(y1, y2)
    assert not mx.array_equal(y1, y3)


def test_keyed_mask_depends_only_on_key_shape_and_p():
    x1 = normal_input((8, 4, 4, 16), seed=1)
    x2 = normal_input((8, 4, 4, 16), seed=2)
    key = mx.random.key(11)
    keep1 = recover_keep(x1, feature_alpha_dropout(x1, 0.4, key=key), 0.4, (0, 3))
    mx.random.seed(99)  # the global generator must not matter when a key is given
    keep2 = recover_keep(x2, feature_alpha_dropout(x2, 0.4, key=key), 0.4, (0, 3))
    assert np.array_equal(keep1, keep2)


def test_global_generator_is_reproducible_after_seed_and_advances():
    x = normal_input((8, 4, 4, 16))
    mx.random.seed(5)
    first = feature_alpha_dropout(x, 0.5)
    second = feature_alpha_dropout(x, 0.5)
    mx.random.seed(5)
    again = feature_alpha_dropout(x, 0.5)
    assert mx.array_equal(first, again)
    assert not mx.array_equal(first, second)


def test_compiled_step_with_random_state_draws_a_fresh_mask_each_call():
    x = normal_input((16, 2, 2, 32))
    state = [mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x):
        return feature_alpha_dropout(x, 0.5)

    masks = [recover_keep(x, step(x), 0.5, (0, 3)) for _ in range(3)]
    # 512 independent draws per call: equal masks would mean the state was frozen.
    assert not np.array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[1], masks[2])


def test_compiled_step_without_random_state_repeats_the_mask():
    # Pins the MLX behaviour the README warns about: capture mx.random.state in compile.
    x = normal_input((16, 2, 2, 32))
    step = mx.compile(lambda x: feature_alpha_dropout(x, 0.5))
    assert mx.array_equal(step(x), step(x))


@pytest.mark.parametrize(("shape", "channel_axis"), [((6, 5, 4, 16), -1), ((6, 16, 5, 4), 1)])
def test_gradient_is_a_times_keep_exactly(shape, channel_axis):
    x = normal_input(shape, seed=4)
    cotangent = normal_input(shape, seed=5)
    key = mx.random.key(2)
    p = 0.4

    def f(x):
        return feature_alpha_dropout(x, p, key=key, channel_axis=channel_axis)

    (y,), (dx,) = mx.vjp(f, [x], [cotangent])
    keep = recover_keep(x, y, p, feature_mask_axes(x.ndim, channel_axis))
    a32 = np.float32(coefficients(used_probability(p))[0])
    expected = np.where(keep, np.array(cotangent) * a32, np.float32(0))
    assert dx.dtype == mx.float32
    np.testing.assert_array_equal(np.array(dx), expected)

    grad = mx.grad(lambda x: f(x).sum())(x)
    np.testing.assert_array_equal(np.array(grad), np.broadcast_to(np.where(keep, a32, 0), shape))


def test_gradient_inside_compile():
    x = normal_input((6, 3, 3, 16))
    key = mx.random.key(4)
    loss = mx.compile(mx.grad(lambda x: feature_alpha_dropout(x, 0.5, key=key).sum()))
    eager = mx.grad(lambda x: feature_alpha_dropout(x, 0.5, key=key).sum())
    assert mx.array_equal(loss(x), eager(x))


def test_matches_pytorch_on_its_own_masks():
    # PyTorch draws its own masks, so compare values: every element of torch's output must be
    # our a*x+b or our dropped value, channel by channel (checks a, b against torch's constants
    # to float32 rounding).
    torch = pytest.importorskip("torch", reason="torch is the optional reference")
    x = normal_input((16, 32, 5, 5), seed=6)
    torch.manual_seed(0)
    y = torch.nn.functional.feature_alpha_dropout(
        torch.from_numpy(np.array(x)), p=0.3, training=True
    )
    keep = recover_keep(x, mx.array(y.numpy()), 0.3, (0, 1), exact_dropped=False, quantized=False)
    assert 0 < keep.sum() < keep.size


def test_non_finite_input():
    # Kept units follow a * x + b (inf stays inf, NaN stays NaN). A dropped unit is
    # (x - alpha') * 0 + d on the ops path, which is NaN where x is infinite or NaN, as in
    # PyTorch (documented; the GPU kernel computes the same).
    x = np.array(normal_input((16, 5, 32), seed=9))
    x[:, 0, :] = np.inf
    x[:, 1, :] = -np.inf
    x[:, 2, :] = np.nan
    key = mx.random.key(6)
    y = np.array(feature_alpha_dropout(mx.array(x), 0.5, key=key, channel_axis=-1))
    finite = slice(3, None)
    keep = recover_keep(mx.array(x[:, finite]), mx.array(y[:, finite]), 0.5, (0, 2))[:, 0, :]
    assert 0 < keep.sum() < keep.size
    np.testing.assert_array_equal(y[:, 0, :], np.where(keep, np.inf, np.nan))
    np.testing.assert_array_equal(y[:, 1, :], np.where(keep, -np.inf, np.nan))
    assert np.isnan(y[:, 2, :]).all()


@pytest.mark.parametrize("p", [1 - 1e-10, 1 - 2**-52])
def test_float16_stays_finite_as_p_tends_to_one(p):
    # The probability used stops at 1 - 2**-16, where a = 126.6 and b = 222.5: a kept unit
    # of float16 overflows only where |x| > 515, as under any scaling (before the 16-bit
    # threshold, b passed float16's 65504 once 1 - p < 1.8e-10).
    a, b, _ = coefficients(used_probability(p))
    assert a < 127
    assert b < 223
    assert a * 515 + b < 65504
    x = normal_input((1024, 1024), dtype=mx.float16, seed=10)
    y = feature_alpha_dropout(x, p, key=mx.random.key(11))
    assert np.isfinite(to_numpy(y)).all()
    keep = recover_keep(x, y, p, (0, 1))
    assert 0 < keep.sum() < 64  # 2**20 draws at probability 2**-16 of keeping: about 16 kept
