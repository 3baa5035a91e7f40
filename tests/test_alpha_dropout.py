"""alpha_dropout (element-wise): exact mask recovery, special cases, gradient."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lucid_mlx import alpha_dropout
from tests.reference import (
    FLOAT_DTYPES,
    coefficients,
    normal_input,
    recover_keep,
    to_numpy,
    used_probability,
)


@pytest.mark.parametrize("shape", [(), (7,), (16, 33), (4, 5, 6, 7)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_every_element_is_kept_affine_or_dropped_value(shape, dtype):
    x = normal_input(shape, dtype=dtype, seed=1)
    y = alpha_dropout(x, 0.3, key=mx.random.key(0))
    recover_keep(x, y, 0.3, None)


def test_mask_is_element_wise_not_channel_wise():
    x = normal_input((8, 64, 64))
    keep = recover_keep(x, alpha_dropout(x, 0.5, key=mx.random.key(1)), 0.5, None)
    # Along the last axis, 64 independent draws: a constant row would mean a channel mask.
    rows_constant = (keep.all(axis=-1) | (~keep).all(axis=-1)).mean()
    assert rows_constant == 0.0


def test_special_cases():
    x = normal_input((4, 8))
    assert alpha_dropout(x, training=False) is x
    assert alpha_dropout(x, 0.0) is x
    empty = mx.zeros((0, 3))
    assert alpha_dropout(empty) is empty
    zeros = alpha_dropout(x.astype(mx.bfloat16), 1.0)
    assert zeros.dtype == mx.bfloat16
    assert not to_numpy(zeros).any()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_no_nan_or_inf_near_p_one(dtype):
    x = normal_input((64, 64), dtype=dtype)
    for p in (1e-12, 0.999, 1 - 2**-52):
        assert np.isfinite(to_numpy(alpha_dropout(x, p, key=mx.random.key(2)))).all()


def test_gradient_is_a_times_keep_exactly():
    x = normal_input((32, 48), seed=2)
    cotangent = normal_input((32, 48), seed=3)
    key = mx.random.key(5)
    (y,), (dx,) = mx.vjp(lambda x: alpha_dropout(x, 0.2, key=key), [x], [cotangent])
    keep = recover_keep(x, y, 0.2, None)
    a32 = np.float32(coefficients(used_probability(0.2))[0])
    np.testing.assert_array_equal(np.array(dx), np.where(keep, np.array(cotangent) * a32, 0))


def test_matches_pytorch_on_its_own_masks():
    torch = pytest.importorskip("torch", reason="torch is the optional reference")
    x = normal_input((64, 64), seed=6)
    torch.manual_seed(0)
    y = torch.nn.functional.alpha_dropout(torch.from_numpy(np.array(x)), p=0.3, training=True)
    recover_keep(x, mx.array(y.numpy()), 0.3, None, exact_dropped=False, quantized=False)
