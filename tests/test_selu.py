"""selu and SELU: accuracy and finite gradients in every float dtype, and MLX's own selu."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

import lucid_mlx
from lucid_mlx import SELU, selu
from tests.reference import (
    ALPHA,
    ALPHA_PRIME,
    FLOAT_DTYPES,
    LAMBDA,
    SUBNORMAL_SPACING,
    UNIT_ROUNDOFF,
    rounded,
    to_numpy,
)

#: Where mlx.nn.selu's gradient is NaN: exp(x) overflows on its discarded branch (above
#: log(65504) = 11.09 in float16, above log(2**128) = 88.72 in float32 and bfloat16).
MLX_NAN_POINTS = {
    mx.float32: [89.0, 100.0, 1e4],
    mx.float16: [12.0, 100.0],
    mx.bfloat16: [100.0],
}

#: MLX's exp returns 0 where its result would be below float32's smallest normal, 2**-126
#: (x < -87.3); a derivative lambda * alpha * exp(x) below this can come out as 0.
EXP_FLUSH = -ALPHA_PRIME * 2.0**-126


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """selu and its derivative in float64 (the x <= 0 case at 0, as in the definition)."""
    negative = np.minimum(x, 0.0)
    value = np.where(x > 0, LAMBDA * x, LAMBDA * ALPHA * np.expm1(negative))
    derivative = np.where(x > 0, LAMBDA, LAMBDA * ALPHA * np.exp(negative))
    return value, derivative


def tolerance(expected: np.ndarray, x: np.ndarray, dtype: mx.Dtype, derivative: bool) -> np.ndarray:
    """How far a result computed as lucid_mlx does may be from the exact ``expected``.

    The float32 work rounds the constant and the product (2**-24 relative each) and, for
    x <= 0, takes expm1 (value) or exp (derivative). MLX's expm1 is within 1 ulp
    (2 * 2**-24); its exp rounds x * log2(e) to float32 first, so its relative error grows
    with |x|, measured within 1.2 * (|x| + 1) * 2**-24; twice that is allowed. A result is
    then rounded to its dtype (UNIT_ROUNDOFF, or half the subnormal spacing near zero; for
    float32 a second allowance for the product's rounding). A derivative below EXP_FLUSH
    may be 0.
    """
    magnitude = np.abs(expected)
    exp_error = 2 * (np.abs(x) + 1) if derivative else np.full_like(x, 2.0)
    work = (2 + np.where(x > 0, 0.0, exp_error)) * 2.0**-24 * magnitude
    stored = UNIT_ROUNDOFF[dtype] * magnitude + SUBNORMAL_SPACING[dtype] / 2
    return work + stored + (EXP_FLUSH if derivative else 0.0)


def ulps(got: np.ndarray, expected: np.ndarray, dtype: mx.Dtype) -> np.ndarray:
    """How many of the dtype's spacings at ``expected`` separate ``got`` from it."""
    exponent = np.floor(np.log2(np.maximum(np.abs(expected), 1e-300)))
    spacing = np.maximum(2 * UNIT_ROUNDOFF[dtype] * 2.0**exponent, SUBNORMAL_SPACING[dtype])
    return np.abs(got - expected) / spacing


def every_finite(dtype: mx.Dtype) -> mx.array:
    """All finite values of a 16-bit float dtype, from its bit patterns."""
    bits = np.arange(2**16, dtype=np.uint16)
    with np.errstate(invalid="ignore"):  # the NaN patterns
        finite = np.isfinite(to_numpy(mx.view(mx.array(bits), dtype)))
    return mx.view(mx.array(bits[finite]), dtype)


def sweep(dtype: mx.Dtype) -> mx.array:
    """-1e4 to 1e4, dense near 0 and logarithmic out to the ends, plus MLX's NaN points."""
    magnitudes = np.concatenate(
        [np.linspace(0.0, 10.0, 40001), np.logspace(-10, 4, 8001), MLX_NAN_POINTS[mx.float32]]
    )
    values = np.concatenate([magnitudes, -magnitudes]).astype(np.float32)
    return mx.array(np.unique(values)).astype(dtype)


def inputs(dtype: mx.Dtype) -> mx.array:
    """Every finite value of a 16-bit dtype; the sweep for float32."""
    return sweep(dtype) if dtype == mx.float32 else every_finite(dtype)


def value_and_derivative(f, x: mx.array) -> tuple[np.ndarray, np.ndarray]:
    """``f(x)`` and its derivative as float64 NumPy arrays, after checking their dtype."""
    (y,), (dx,) = mx.vjp(f, [x], [mx.ones_like(x)])
    assert (y.dtype, dx.dtype) == (x.dtype, x.dtype)
    return to_numpy(y), to_numpy(dx)


def assert_close(got, x, dtype, derivative: bool) -> None:
    expected = reference(x)[1 if derivative else 0]
    error = np.abs(got - expected)
    bad = ~(error <= tolerance(expected, x, dtype, derivative))  # NaN is bad too
    worst = int(np.argmax(np.where(bad, np.nan_to_num(error, nan=np.inf), -1)))
    assert not bad.any(), (
        f"{'derivative' if derivative else 'value'} in {dtype}: {int(bad.sum())} off, worst at"
        f" x={x[worst]!r}: got {got[worst]!r}, expected {expected[worst]!r}"
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_value_and_derivative_match_float64(dtype):
    x = inputs(dtype)
    xs = to_numpy(x)
    y, dx = value_and_derivative(selu, x)
    assert np.isfinite(dx).all()
    assert_close(dx, xs, dtype, derivative=True)
    # The value overflows only where lambda * x is beyond the dtype's range.
    overflowed = np.isinf(y)
    assert (y[overflowed] == np.inf).all()
    assert (reference(xs)[0][overflowed] > mx.finfo(dtype).max).all()
    assert_close(y[~overflowed], xs[~overflowed], dtype, derivative=False)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_error_in_ulps(dtype):
    """The figures the docs quote.

    float16 and bfloat16: correctly rounded, within half an ulp (and the float32 work's
    error, a few 2**-13 or 2**-16 of an ulp). float32: the value within 2 ulps; the
    derivative within 2 ulps for x >= -1 and, below, as exact as MLX's exp, whose error
    grows about |x| / 2 ulps (4.1 ulps at x = -4, where the derivative is 0.03).
    """
    x = inputs(dtype)
    xs = to_numpy(x)
    y, dx = value_and_derivative(selu, x)
    expected_y, expected_dx = reference(xs)
    finite = np.isfinite(y)  # overflowed: checked above
    value_ulps = ulps(y[finite], expected_y[finite], dtype)
    # Where MLX's exp flushes to 0 the derivative is checked above, not in ulps.
    checked = expected_dx >= EXP_FLUSH * 2**24
    derivative_ulps = ulps(dx[checked], expected_dx[checked], dtype)
    if dtype == mx.float32:
        assert value_ulps.max() <= 2.0
        assert derivative_ulps[xs[checked] >= -1].max() <= 2.0
        assert (derivative_ulps <= 2.0 + np.abs(xs[checked])).all()
    else:
        assert value_ulps.max() <= 0.5 + 2.0**-8
        assert derivative_ulps.max() <= 0.5 + 2.0**-8


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_finite_where_mlx_selu_gradient_is_nan(dtype):
    x = mx.array(MLX_NAN_POINTS[dtype], dtype=dtype)
    y, dx = value_and_derivative(selu, x)
    assert (dx == rounded(LAMBDA, dtype)).all()
    assert_close(y, to_numpy(x), dtype, derivative=False)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_derivative_is_finite_at_the_ends_of_the_range(dtype):
    largest = mx.finfo(dtype).max
    y, dx = value_and_derivative(selu, mx.array([-largest, -np.inf, largest, np.inf], dtype))
    saturation = rounded(ALPHA_PRIME, dtype)
    assert y.tolist() == [saturation, saturation, np.inf, np.inf]
    assert dx.tolist() == [0.0, 0.0, rounded(LAMBDA, dtype), rounded(LAMBDA, dtype)]


def test_nan_propagates():
    y, dx = value_and_derivative(selu, mx.array([np.nan, 1.0]))
    assert np.isnan(y[0])
    assert np.isnan(dx[0])
    assert y[1] == rounded(LAMBDA, mx.float32)


def test_derivative_at_zero_is_the_negative_branch():
    # lambda * alpha, as in PyTorch and mlx.nn.selu (the x <= 0 case of the definition).
    _, dx = value_and_derivative(selu, mx.array([0.0, -0.0]))
    assert dx.tolist() == [rounded(-ALPHA_PRIME, mx.float32)] * 2


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_saturates_at_exactly_minus_lambda_alpha(dtype):
    saturation = rounded(ALPHA_PRIME, dtype)
    # The value alpha dropout sets dropped units to, as the package computes it.
    assert saturation == rounded(lucid_mlx._math.SELU_SATURATION, dtype)
    very_negative = mx.array([-30.0, -100.0, -1e4, -np.inf], dtype)
    assert to_numpy(selu(very_negative)).tolist() == [saturation] * 4
    # Approached from above, never passed: lambda * alpha * exp(x) away down to x = -30.
    approach = to_numpy(selu(mx.arange(-1, -31, -1).astype(dtype)))
    assert (np.diff(approach) <= 0).all()
    assert (approach >= saturation).all()
    assert approach[0] > approach[-1] == saturation


def test_float64_stays_float64():
    with mx.stream(mx.cpu):  # MLX has float64 on the CPU only
        x = mx.array([-3.0, -1e-9, 0.5, 100.0], dtype=mx.float64)
        y, dx = value_and_derivative(selu, x)
        expected_y, expected_dx = reference(to_numpy(x))
        np.testing.assert_allclose(y, expected_y, rtol=4 * 2.0**-53)
        # MLX's float64 exp is accurate to about 3e-6 only.
        np.testing.assert_allclose(dx, expected_dx, rtol=1e-5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_pytorch(dtype):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for this comparison")
    x = inputs(dtype)
    xs = to_numpy(x)
    y, dx = value_and_derivative(selu, x)
    torch_dtype = {mx.float32: torch.float32, mx.float16: torch.float16}.get(dtype, torch.bfloat16)
    tx = torch.tensor(xs).to(torch_dtype).requires_grad_()
    ty = torch.nn.functional.selu(tx)
    ty.backward(torch.ones_like(ty))
    torch_y = ty.detach().double().numpy()
    torch_dx = tx.grad.double().numpy()
    assert (np.isinf(y) == np.isinf(torch_y)).all()  # both overflow where lambda * x does
    finite = np.isfinite(y)
    # Each is within tolerance() of the exact value, so within twice that of each other.
    expected_y, expected_dx = reference(xs)
    value_gap = np.abs(y[finite] - torch_y[finite])
    value_tolerance = tolerance(expected_y, xs, dtype, derivative=False)[finite]
    assert (value_gap <= 2 * value_tolerance).all()
    derivative_gap = np.abs(dx - torch_dx)
    assert (derivative_gap <= 2 * tolerance(expected_dx, xs, dtype, derivative=True)).all()


# What MLX's own selu does today. These tests document MLX's behaviour, not lucid_mlx's:
# when one fails, MLX has changed, and the README's comparison with it needs updating.


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_mlx_behaviour_selu_gradient_is_nan_where_exp_overflows(dtype):
    x = mx.array(MLX_NAN_POINTS[dtype], dtype=dtype)
    _, dx = value_and_derivative(nn.selu, x)
    finite = [point for point, d in zip(MLX_NAN_POINTS[dtype], dx, strict=True) if not np.isnan(d)]
    if finite:
        pytest.fail(
            f"MLX fixed it: mlx.nn.selu's gradient in {dtype} is no longer NaN at x = {finite}"
            f" (mlx {mx.__version__}). Update the README's claim that its gradient is NaN"
            " where exp(x) overflows, and this test."
        )


def test_mlx_behaviour_selu_saturation_is_rounded():
    mlx_saturation = nn.selu(mx.array(-1e4)).item()
    offset = abs(mlx_saturation - ALPHA_PRIME)
    if offset < 1e-6:
        pytest.fail(
            f"MLX fixed it: mlx.nn.selu saturates at {mlx_saturation!r}, within 1e-6 of"
            f" -lambda * alpha = {ALPHA_PRIME!r} (mlx {mx.__version__}). Update the README's"
            " claim that its constants are rounded, and this test."
        )
    # 1.0507 * 1.67326 is 5.06e-6 short of lambda * alpha; float32 rounding adds a little.
    assert offset == pytest.approx(LAMBDA * ALPHA - 1.0507 * 1.67326, abs=3e-7)


def test_module_is_the_function():
    layer = SELU()
    assert isinstance(layer, nn.Module)
    assert repr(layer) == "SELU()"
    assert layer.parameters() == {}
    x = mx.array(np.linspace(-5, 100, 101).astype(np.float32))
    expected = selu(x)
    assert mx.array_equal(layer(x), expected)
    layer.eval()
    assert mx.array_equal(layer(x), expected)
    model = nn.Sequential(nn.Linear(4, 4), SELU())
    assert mx.array_equal(model(mx.ones((2, 4))), selu(model.layers[0](mx.ones((2, 4)))))


@pytest.mark.parametrize("call", [selu, SELU()], ids=["selu", "SELU"])
@pytest.mark.parametrize(
    ("x", "message"),
    [
        ([1.0, -1.0], r"\[selu\] 'x' must be an mlx\.core\.array but got list\. Convert it"),
        (np.ones(3), r"\[selu\] 'x' must be an mlx\.core\.array but got ndarray\. Convert it"),
        (None, r"\[selu\] 'x' must be an mlx\.core\.array but got NoneType\.$"),
        (
            mx.array([1, -1]),
            r"\[selu\] 'x' must have a floating-point dtype .* but got mlx\.core\.int32\.",
        ),
        (
            mx.array([True]),
            r"\[selu\] 'x' must have a floating-point dtype .* but got mlx\.core\.bool\.",
        ),
    ],
)
def test_input_is_checked(call, x, message):
    with pytest.raises(TypeError, match=message):
        call(x)


def test_any_shape_and_shapeless_compile():
    assert selu(mx.array(-1.0)).shape == ()
    assert selu(mx.zeros((2, 3, 4, 5))).shape == (2, 3, 4, 5)
    compiled = mx.compile(lambda x: mx.grad(lambda x: selu(x).sum())(x), shapeless=True)
    for shape in [(3,), (5, 7), (2, 3, 4)]:
        x = mx.random.normal(shape, key=mx.random.key(0)) * 50
        assert mx.array_equal(compiled(x), mx.grad(lambda x: selu(x).sum())(x))
    assert selu(mx.zeros((0, 3))).shape == (0, 3)


def test_compiled_training_step_with_large_activations():
    """A compiled step matches the eager one and stays finite with pre-activations in the
    hundreds (where mlx.nn.SELU's gradient is NaN: see the mlx_behaviour tests)."""

    def loss_fn(model, x, y):
        return nn.losses.mse_loss(model(x), y)

    def train(compiled):
        mx.random.seed(0)
        model = nn.Sequential(nn.Linear(8, 16), SELU(), nn.Linear(16, 1))
        optimizer = optim.SGD(learning_rate=1e-9)
        state = [model.state, optimizer.state]

        def step(x, y):
            loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
            optimizer.update(model, grads)
            return loss

        if compiled:
            step = mx.compile(step, inputs=state, outputs=state)
        x = mx.random.normal((32, 8), key=mx.random.key(1)) * 1000
        y = mx.random.normal((32, 1), key=mx.random.key(2))
        losses = [step(x, y).item() for _ in range(3)]
        return losses, np.array(model.layers[0].weight)

    losses, weights = train(compiled=True)
    assert np.isfinite(weights).all()
    assert losses[-1] < losses[0]
    eager_losses, eager_weights = train(compiled=False)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    np.testing.assert_allclose(weights, eager_weights, rtol=1e-5, atol=1e-6)
