"""docs/porting.md's recipe, applied to a PyTorch SELU CNN: the converted MLX model computes
the same function in eval mode, and in training mode each output unit has the same mean and
variance over many dropout draws (masks differ between the generators; statistics must not).

The conversion is the guide's own code: ``torch_to_mlx`` is taken from its Python block."""

from __future__ import annotations

import ast
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from lucid_mlx import AlphaDropout, FeatureAlphaDropout

torch = pytest.importorskip("torch", reason="PyTorch is the model being ported")

try:  # the guide's SELU: exact constants, as torch.nn.SELU's
    from lucid_mlx import SELU

    EVAL_ATOL = 1e-5
except ImportError:  # mlx.nn.SELU's rounded constants: outputs off by about 1.6e-5 here
    SELU = nn.SELU
    EVAL_ATOL = 1e-4

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "porting.md"
C, H, W = 3, 8, 8  # input; two 3x3 valid convolutions leave 8 channels of (H - 4) x (W - 4)
FLAT = (8, H - 4, W - 4)


def _guide_function(name: str):
    """Define ``name`` exactly as the guide's Python block writes it (its demo is not run)."""
    text = GUIDE.read_text()
    block = next(b.split("```")[0] for b in text.split("```python\n")[1:] if f"def {name}(" in b)
    (node,) = [n for n in ast.parse(block).body if getattr(n, "name", None) == name]
    namespace = {"mx": mx, "np": np}
    exec(compile(ast.Module([node], []), str(GUIDE), "exec"), namespace)
    return namespace[name]


def _models():
    tnn = torch.nn
    torch.manual_seed(0)
    torch_model = tnn.Sequential(
        tnn.Conv2d(C, 8, 3), tnn.SELU(), tnn.FeatureAlphaDropout(0.2),
        tnn.Conv2d(8, 8, 3), tnn.SELU(), tnn.FeatureAlphaDropout(0.2),
        tnn.Flatten(),
        tnn.Linear(int(np.prod(FLAT)), 16), tnn.SELU(), tnn.AlphaDropout(0.1),
        tnn.Linear(16, 10),
    )  # fmt: skip
    for layer in torch_model:
        if isinstance(layer, (tnn.Conv2d, tnn.Linear)):  # SELU-scale activations: LeCun normal
            tnn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
    mlx_model = nn.Sequential(
        nn.Conv2d(C, 8, 3), SELU(), FeatureAlphaDropout(0.2),
        nn.Conv2d(8, 8, 3), SELU(), FeatureAlphaDropout(0.2),
        lambda x: x.reshape(x.shape[0], -1),
        nn.Linear(int(np.prod(FLAT)), 16), SELU(), AlphaDropout(0.1),
        nn.Linear(16, 10),
    )  # fmt: skip
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    torch_to_mlx = _guide_function("torch_to_mlx")
    weights = torch_to_mlx(state_dict, flatten_from={"7.weight": FLAT}, prefix="layers.")
    mlx_model.load_weights(list(weights.items()))
    return torch_model, mlx_model


def _hidden_and_output(torch_model, mlx_model, x: np.ndarray, n: int):
    """n draws of the 16 hidden units after AlphaDropout and the 10 outputs, per framework.

    One fixed NCHW input repeated n times: every row is an independent draw of the masks."""
    with torch.no_grad():
        hidden = torch_model[:-1](torch.from_numpy(x).expand(n, -1, -1, -1))
        torch_draws = np.concatenate([hidden.numpy(), torch_model[-1](hidden).numpy()], 1)
    x_nhwc = mx.broadcast_to(mx.array(x.transpose(0, 2, 3, 1)), (n, H, W, C))
    hidden = nn.Sequential(*mlx_model.layers[:-1])(x_nhwc)
    mlx_draws = np.concatenate([np.array(hidden), np.array(mlx_model.layers[-1](hidden))], 1)
    return torch_draws, mlx_draws


def test_the_converted_model_computes_the_same_function():
    torch_model, mlx_model = _models()
    torch_model.eval()
    mlx_model.eval()
    x = np.random.default_rng(1).standard_normal((32, C, H, W), np.float32)  # NCHW
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    actual = np.array(mlx_model(mx.array(x.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=EVAL_ATOL)


def _moments(draws: np.ndarray):
    """Per-unit mean, variance, and the standard errors of both (draws on axis 0)."""
    n = len(draws)
    mean, var = draws.mean(0), draws.var(0, ddof=1)
    m4 = ((draws - mean) ** 4).mean(0)
    return mean, var, np.sqrt(var / n), np.sqrt(np.maximum(m4 - var**2, 0) / n)


def test_training_mode_gives_each_unit_the_same_mean_and_variance():
    torch_model, mlx_model = _models()
    torch_model.train()
    mlx_model.train()
    torch.manual_seed(2)
    mx.random.seed(2)
    x = np.random.default_rng(3).standard_normal((1, C, H, W), np.float32)
    torch_draws, mlx_draws = _hidden_and_output(torch_model, mlx_model, x, n=20_000)
    t_mean, t_var, t_se_mean, t_se_var = _moments(torch_draws)
    m_mean, m_var, m_se_mean, m_se_var = _moments(mlx_draws)
    # 26 units x 2 moments = 52 z-scores, each close to N(0, 1) when the models agree (the
    # frameworks' draws are independent; n is large enough for the normal approximation).
    # At 5 sigma each has a two-sided tail of 5.7e-7, so the whole test raises a false alarm
    # with probability below 52 * 5.7e-7 = 3e-5 (Bonferroni, which needs no independence
    # between units). What it catches: p off by 0.05 in any layer, element-wise dropout in
    # place of channel-wise, or the wrong channel axis each gave some |z| from 6 to 36.
    z_mean = (t_mean - m_mean) / np.hypot(t_se_mean, m_se_mean)
    z_var = (t_var - m_var) / np.hypot(t_se_var, m_se_var)
    assert np.all(np.abs(z_mean) < 5), z_mean
    assert np.all(np.abs(z_var) < 5), z_var
