"""experiments/depth_study/: paired masks, the a*q*x rule, a --quick run, the committed files."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from lucid_mlx._math import SELU_SATURATION, realized_probability

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "depth_study"
SCRIPT = STUDY / "depth_study.py"
RESULTS = STUDY / "results"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(STUDY))
    try:
        import depth_study
        import protocol
        import report
    finally:
        sys.path.remove(str(STUDY))
    return SimpleNamespace(command=depth_study, protocol=protocol, report=report)


def _coefficients(p):
    """a, b and the dropped value d for the probability the masks use (docs/math.md)."""
    p_used = realized_probability(p)
    q = 1 - p_used
    a = (q * (1 + p_used * SELU_SATURATION**2)) ** -0.5
    return a, -a * SELU_SATURATION * p_used, a * SELU_SATURATION * q


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_dropout2d_and_alpha_arms_drop_the_same_units(study, p):
    x = mx.random.normal((32, 4, 4, 8), key=mx.random.key(1))
    alpha = study.protocol.PairedChannelDropout(p, "alpha")
    inverted = study.protocol.PairedChannelDropout(p, "dropout2d")
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
        a, b, d = _coefficients(p)
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
    layer = study.protocol.PairedChannelDropout(p, "alpha")
    mx.random.seed(11)
    # Every row is the same x; the channel-wise mask is drawn per (row, channel).
    outputs = np.array(layer(mx.broadcast_to(x, (masks, 1, 1, channels))))
    average = outputs.reshape(masks, channels).mean(axis=0)
    layer.eval()
    layer.eval_rule = "mean"
    rule = np.array(layer(x[None, None, None, :])).reshape(channels)
    a, _, _ = _coefficients(p)
    p_used = realized_probability(p)
    standard_error = (
        a * np.abs(np.array(x) - SELU_SATURATION) * math.sqrt(p_used * (1 - p_used) / masks)
    )
    z = (average - rule) / standard_error
    assert np.all(np.abs(z) < 6), z
    assert np.allclose(rule, a * (1 - p_used) * np.array(x), rtol=1e-6)
    identity_z = (average - np.array(x)) / standard_error
    assert np.max(np.abs(identity_z)) > 6  # the check can tell the two rules apart


def test_a_run_is_deterministic_per_seed(study):
    def run(seed):
        return study.protocol.train_mlx(
            study.protocol.TrainJob("mlx", "alpha", 0.2, "every", 2, seed, 1)
        )

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert other.epoch_log != first.epoch_log


def test_placements(study):
    dropped_blocks = study.protocol.dropped_blocks
    assert list(dropped_blocks(16, "every")) == list(range(16))
    assert list(dropped_blocks(16, "last")) == [15]
    assert list(dropped_blocks(16, "last_k")) == [12, 13, 14, 15]
    assert list(dropped_blocks(8, "last_k")) == [6, 7]


def test_committed_results_come_back_byte_for_byte(study, tmp_path):
    """The committed tables and CSV files, rebuilt from the records in results.json."""
    report = study.report
    committed = report.read_study(RESULTS)
    assert report.tables(committed).encode() == (RESULTS / "tables.md").read_bytes()
    report.write_csv(committed, tmp_path)
    for name in ("runs.csv", "epochs.csv", "init.csv", "parameter_difference.csv"):
        assert (tmp_path / name).read_bytes() == (RESULTS / name).read_bytes(), name
    entries = json.loads((RESULTS / "results.json").read_text())["results"]
    assert json.dumps([report.result_row(r) for r in committed.results]) == json.dumps(entries)


def test_quick_run_writes_every_part(study, tmp_path):
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
    differences = list(csv.DictReader((tmp_path / "parameter_difference.csv").open()))
    assert [(r["depth"], r["seed"]) for r in differences] == ([] if flags else [("4", "0")])
    summary = json.loads((tmp_path / "results.json").read_text())
    assert "bias_correction=False" in summary["protocol"]["optimizer"]
    assert len(summary["results"]) == len(runs) + len(inits)
    for figure in ("accuracy.png", "init_share.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    tables = (tmp_path / "tables.md").read_text()
    for heading in ("## 1.", "## 2.", "## 4.") if flags else ("## 1.", "## 2.", "## 3.", "## 4."):
        assert heading in tables
    # --tables-from rebuilds the same tables and both figures from the files alone.
    study.command.main(["--tables-from", str(tmp_path), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "tables.md").read_text() == tables
    assert {p.name for p in (tmp_path / "again").iterdir()} == {
        "tables.md",
        "accuracy.png",
        "init_share.png",
    }


def _parse_error(study, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        study.command.parse_args(flags)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--p", "0.1,1"], "every item must be a probability in (0, 1) but got '1' (in '0.1,1')"),
        (["--seeds", "0,0"], "must not repeat an item but got '0,0'"),
        (["--epochs", "0"], "must be a positive integer but got '0'"),
        (["--no-torch", "--out", str(SCRIPT)], f"must be a folder but {str(SCRIPT)!r} is a file"),
        (["--tables-from", str(STUDY)], f"no results.json in {str(STUDY)!r}"),
        (["--torch-p", "0.3"], "the PyTorch cells must be cells of the MLX grid"),
    ],
)
def test_bad_flag_is_a_one_line_error(study, capsys, flags, message):
    if "--torch-p" in flags:
        pytest.importorskip("torch", reason="the PyTorch cells are checked where torch is")
    assert _parse_error(study, capsys, flags).endswith(message)


def test_missing_torch_says_so_and_how_to_run_without_it(study, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    line = _parse_error(study, capsys, ["--quick"])
    assert line.endswith(
        "error: torch is not installed, and the PyTorch cross-check needs it: pass --no-torch"
        " to run without the cross-check, or install torch"
    )


def test_help_shows_every_default(study, capsys):
    with pytest.raises(SystemExit) as exit_info:
        study.command.parse_args(["--help"])
    assert exit_info.value.code == 0
    options = capsys.readouterr().out.split("options:", 1)[1]
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    missing = [e.split()[0] for e in entries if e.split()[0] not in ("-h,", "--no-torch", "--quick")
               and "default" not in e]  # fmt: skip
    assert len(entries) == 12
    assert not missing, missing
