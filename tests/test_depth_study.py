"""experiments/depth_study/depth_study.py: the paired masks, the a*q*x rule, and a --quick run."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "depth_study" / "depth_study.py"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import depth_study
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return depth_study


def _coefficients(study, p):
    """a, b and the dropped value d for the probability the masks use (docs/math.md)."""
    p_used = study.realized_p(p)
    q = 1 - p_used
    a = (q * (1 + p_used * study.SATURATION**2)) ** -0.5
    return a, -a * study.SATURATION * p_used, a * study.SATURATION * q


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_dropout2d_and_alpha_arms_drop_the_same_units(study, p):
    x = mx.random.normal((32, 4, 4, 8), key=mx.random.key(1))
    alpha, inverted = (
        study.PairedChannelDropout(p, "alpha"),
        study.PairedChannelDropout(p, "dropout2d"),
    )
    for seed in range(3):  # the arms' generators are seeded alike, as in training
        mx.random.seed(seed)
        y_alpha = np.array(alpha(x))
        mx.random.seed(seed)
        y_inverted = np.array(inverted(x))
        x_np = np.array(x)
        # Dropout2d's rule, exactly: kept units are (1 / (1 - p)) * x, dropped units 0.
        kept_inverted = y_inverted == np.array((1 / (1 - p)) * mx.ones_like(x) * x)
        assert np.all(kept_inverted | (y_inverted == 0))
        # The package's alpha dropout: kept units are a*x + b, dropped units d.
        a, b, d = _coefficients(study, p)
        kept_alpha = np.abs(y_alpha - (a * x_np + b)) <= 1e-5 * (1 + np.abs(a * x_np + b))
        dropped_alpha = np.abs(y_alpha - d) <= 1e-6
        assert np.all(kept_alpha ^ dropped_alpha)
        # The same (sample, channel) units, element for element, each wholly kept or dropped.
        assert np.array_equal(kept_alpha, kept_inverted)
        per_unit = kept_alpha.reshape(32, 16, 8)
        assert np.all(per_unit == per_unit[:, :1, :])
        assert 0 < kept_alpha.mean() < 1


def test_torch_dropout_arms_drop_the_same_units():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = torch.randn(64, 8, 4, 4) + 3  # no input near the saturation value
    torch.manual_seed(5)
    y_alpha = torch.nn.FeatureAlphaDropout(0.3)(x)
    torch.manual_seed(5)
    y_inverted = torch.nn.Dropout2d(0.3)(x)
    kept = y_inverted != 0
    dropped_value = y_alpha[~kept].unique()
    assert len(dropped_value) == 1  # every unit Dropout2d dropped is alpha's dropped value
    assert not torch.any(y_alpha[kept] == dropped_value)  # and no other unit is


def test_mean_rule_is_the_conditional_mean_of_training_mode(study):
    """a*q*x against the average of M training-mode outputs of the same x.

    Per unit, a training-mode output is a*x + b with probability q and d otherwise, so its
    variance is p*q*(a*x + b - d)^2 = p*q*a^2*(x - alpha')^2 and the mean of M independent
    masks has standard error a*|x - alpha'|*sqrt(p*q/M). Each of the C units' z-score must be
    below 6 (a false alarm about 2e-9 per unit). The identity rule (x instead of a*q*x) is
    off by (1 - a*q)*|x|, about 40 standard errors here, and fails.
    """
    p, masks, channels = 0.2, 20_000, 16
    x = mx.random.normal((channels,), key=mx.random.key(3))
    layer = study.PairedChannelDropout(p, "alpha")
    mx.random.seed(11)
    # Every row is the same x; the channel-wise mask is drawn per (row, channel).
    outputs = np.array(layer(mx.broadcast_to(x, (masks, 1, 1, channels))))
    average = outputs.reshape(masks, channels).mean(axis=0)
    layer.eval()
    layer.eval_rule = "mean"
    rule = np.array(layer(x[None, None, None, :])).reshape(channels)
    a, _, _ = _coefficients(study, p)
    p_used = study.realized_p(p)
    standard_error = (
        a * np.abs(np.array(x) - study.SATURATION) * math.sqrt(p_used * (1 - p_used) / masks)
    )
    z = (average - rule) / standard_error
    assert np.all(np.abs(z) < 6), z
    assert np.allclose(rule, study.mean_gain(p_used) * np.array(x), rtol=1e-6)
    identity_z = (average - np.array(x)) / standard_error
    assert np.max(np.abs(identity_z)) > 6  # the check can tell the two rules apart


def test_a_run_is_deterministic_per_seed(study):
    job = {"depth": 2, "kind": "alpha", "p": 0.2, "placement": "every", "epochs": 1}
    first, again = (study.train_mlx({**job, "seed": 7}) for _ in range(2))
    other = study.train_mlx({**job, "seed": 8})
    assert first == again
    assert other["epochs_log"] != first["epochs_log"]


def test_placements(study):
    assert list(study.dropped_blocks(16, "every")) == list(range(16))
    assert list(study.dropped_blocks(16, "last")) == [15]
    assert list(study.dropped_blocks(16, "last_k")) == [12, 13, 14, 15]
    assert list(study.dropped_blocks(8, "last_k")) == [6, 7]


def test_quick_run_writes_every_part(tmp_path):
    pytest.importorskip("matplotlib", reason="the examples extra (matplotlib) is not installed")
    pytest.importorskip("sklearn", reason="the examples extra (scikit-learn) is not installed")
    try:
        import torch  # noqa: F401

        flags = []
    except ImportError:
        flags = ["--no-torch"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--workers", "1", "--out", str(tmp_path), *flags],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    runs = list(csv.DictReader((tmp_path / "runs.csv").open()))
    arms = {(r["framework"], r["kind"], r["placement"]) for r in runs}
    expected = {("mlx", "none", "none")} | {
        ("mlx", kind, placement)
        for kind in ("dropout2d", "alpha")
        for placement in ("every", "last", "last_k")
    }
    if not flags:
        expected |= {("torch", "none", "none"), ("torch", "dropout2d", "every")}
        expected |= {("torch", "alpha", "every")}
    assert arms == expected
    for row in runs:
        numbers = [float(v) for k, v in row.items() if k.startswith(("identity", "mc")) and v]
        assert numbers
        assert all(math.isfinite(v) for v in numbers), row
        if row["kind"] == "alpha":
            assert row["mean_accuracy"]
            assert row["mc_accuracy"]
    inits = list(csv.DictReader((tmp_path / "init.csv").open()))
    assert {r["kind"] for r in inits} == {"dropout2d", "alpha"}
    assert all(0 <= float(r["closed_form_share"]) <= 1 for r in inits)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert "bias_correction=False" in summary["protocol"]["optimizer"]
    assert len(summary["results"]) == len(runs) + len(inits)
    for figure in ("accuracy.png", "init_share.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    tables = (tmp_path / "tables.md").read_text()
    for heading in ("## 1.", "## 2.", "## 4."):
        assert heading in tables


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--depths 8,0", "every item must be a positive integer but got '0' (in '8,0')"),
        ("--p 0.1,1", "every item must be a probability in (0, 1) but got '1' (in '0.1,1')"),
        ("--seeds 0,0", "must not repeat an item but got '0,0'"),
        ("--epochs 0", "must be a positive integer but got '0'"),
        ("--torch-p 0.3", "the PyTorch cells must be cells of the MLX grid"),
        ("--out pyproject.toml", "must be a folder but 'pyproject.toml' is a file"),
    ],
)
def test_bad_flag_is_a_one_line_error(flags, message):
    pytest.importorskip("torch", reason="the torch check runs before some of these")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *flags.split()],
        capture_output=True, text=True, timeout=60, check=False, cwd=SCRIPT.parents[2],
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(message)


def test_help_shows_every_default():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    options = result.stdout.split("options:", 1)[1]
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    missing = [e.split()[0] for e in entries if e.split()[0] not in ("-h,", "--no-torch", "--quick")
               and "default" not in e]  # fmt: skip
    assert len(entries) == 11
    assert not missing, missing
