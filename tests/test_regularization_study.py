"""experiments/depth_study/ part two: paired masks, the interval rule, a --quick run, the files."""

from __future__ import annotations

import csv
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from scipy import stats

from lucid_mlx._math import mean_scale, realized_probability

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "depth_study"
SCRIPT = STUDY / "regularization_study.py"
RESULTS = STUDY / "results_regularization"


@pytest.fixture(scope="module")
def study():
    """The study's three modules, imported as its command imports them (from its folder)."""
    modules = {
        "command": "regularization_study",
        "protocol": "regularization",
        "report": "regularization_report",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(STUDY))
        return SimpleNamespace(**{k: importlib.import_module(v) for k, v in modules.items()})


@pytest.mark.parametrize(("channelwise", "shape"), [(True, (32, 4, 4, 8)), (False, (64, 48))])
def test_dropout_and_alpha_arms_drop_the_same_units(study, channelwise, shape):
    x = mx.random.normal(shape, key=mx.random.key(1)) + 3  # no input near the dropped value
    p = 0.2
    alpha = study.protocol.PairedDropout(p, "alpha", channelwise)
    inverted = study.protocol.PairedDropout(p, "dropout", channelwise)
    for seed in range(3):  # the arms' generators are seeded alike, as in training
        mx.random.seed(seed)
        y_alpha = np.array(alpha(x))
        mx.random.seed(seed)
        y_inverted = np.array(inverted(x))
        kept = y_inverted != 0
        # Inverted dropout's rule, exactly, on the kept units.
        assert np.array_equal(y_inverted[kept], np.array((1 / (1 - p)) * x)[kept])
        # Alpha dropout sets every unit inverted dropout dropped, and no other, to one value.
        dropped_values = np.unique(y_alpha[~kept])
        assert len(dropped_values) == 1
        assert not np.any(y_alpha[kept] == dropped_values[0])
        assert 0 < kept.mean() < 1
        if channelwise:  # each (sample, channel) unit wholly kept or dropped
            per_unit = kept.reshape(shape[0], -1, shape[-1])
            assert np.all(per_unit == per_unit[:, :1, :])


def test_eval_rules_of_the_paired_layers(study):
    """``set_eval_rule(model, "mean")`` gives a*q*x for alpha dropout, x for inverted."""
    import lucid_mlx

    x = mx.random.normal((4, 16), key=mx.random.key(2))
    job = study.protocol.Job("mlp", "wine", 0, 2, "alpha", 0.1, "every", False, 1e-3, 0)
    for kind, gain in (("alpha", mean_scale(realized_probability(0.1))), ("dropout", 1.0)):
        layer = study.protocol.PairedDropout(0.1, kind, False)
        layer.eval()
        assert np.array_equal(np.array(layer(x)), np.array(x))
        lucid_mlx.set_eval_rule(layer, "mean")
        assert np.allclose(np.array(layer(x)), gain * np.array(x), rtol=1e-6)
    net = study.protocol.build_net(job, 13, 3)
    assert sum(isinstance(m, study.protocol.PairedDropout) for m in net.drops) == 2


def test_arms_of_a_seed_start_alike(study):
    job = study.protocol.Job("conv", "digits", 100, 3, "none", 0.0, "none", False, 1e-3, 4)
    first = study.protocol.build_net(job, 1, 10)
    other = study.protocol.build_net(
        study.protocol.Job("conv", "digits", 100, 3, "alpha", 0.2, "every", True, 3e-3, 4), 1, 10
    )
    for a, b in zip(first.layers, other.layers, strict=True):
        assert np.array_equal(np.array(a.weight), np.array(b.weight))


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([0.002, -0.001, 0.003, 0.0, 0.001], "matches"),  # interval within +-0.01
        ([0.02, 0.03, 0.025, 0.02, 0.03], "beats"),
        ([-0.02, -0.03, -0.025, -0.02, -0.03], "trails"),
        ([0.001, 0.002, 0.0015, 0.001, 0.002], "beats"),  # excludes 0: beats, though small
        ([0.03, -0.02, 0.01, -0.01, 0.0], "not distinguishable with 5 seeds"),  # too wide
    ],
)
def test_verdict_rule(study, differences, expected):
    assert study.report.verdict(study.report.paired_interval(differences)) == expected


def test_interval_is_the_t_interval(study):
    values = [0.01, 0.03, -0.01, 0.02, 0.0, 0.04]
    interval = study.report.paired_interval(values)
    half = stats.t.ppf(0.975, 5) * np.std(values, ddof=1) / math.sqrt(6)
    assert interval.mean == pytest.approx(np.mean(values))
    assert interval.low == pytest.approx(np.mean(values) - half)
    assert interval.high == pytest.approx(np.mean(values) + half)
    assert stats.t.ppf(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    # Lower is better for NLL: a negative interval beats.
    nll = study.report.paired_interval([-0.1, -0.12, -0.09])
    assert study.report.verdict(nll, "nll") == "beats"


def test_learning_rate_is_picked_on_validation(study):
    protocol, report = study.protocol, study.report
    metrics = protocol.RuleMetrics

    def result(lr, seed, accuracy, nll):
        job = protocol.Job("mlp", "wine", 106, 2, "none", 0.0, "none", False, lr, seed)
        m = metrics(accuracy, nll, 0.0, 1.0)
        return protocol.Result(job, (), m, m, m, None)

    results = [
        result(1e-3, 0, 0.9, 0.3),
        result(1e-3, 1, 0.9, 0.3),
        result(3e-3, 0, 0.95, 0.2),
        result(3e-3, 1, 0.85, 0.2),  # the same mean accuracy, lower NLL
        result(1e-2, 0, 0.99, 0.1),
        result(1e-2, 1, 0.5, 0.1),
    ]
    (rate,) = report.chosen_rates(results, {"mlp": [0, 1], "conv": [0]}).values()
    assert rate == 3e-3
    (rate,) = report.chosen_rates(results, {"mlp": [0], "conv": [0]}).values()
    assert rate == 1e-2


def test_quick_run_writes_every_part(tmp_path):
    out = tmp_path / "quick"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _check_folder(out, quick=True)


def _check_folder(folder: Path, quick: bool) -> None:
    with open(folder / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for column in ("dataset", "train_size", "lr", "seed", "bias_correction", "chosen"):
        assert column in rows[0], column
    for rule in ("validation", "identity", "mean", "mc"):
        for name in ("accuracy", "nll", "ece", "variance"):
            assert f"{rule}_{name}" in rows[0]
    assert {r["family"] for r in rows} == {"conv", "mlp"}
    assert {r["kind"] for r in rows} == {"none", "dropout", "alpha"}
    assert {r["bias_correction"] for r in rows} == {"False", "True"}
    assert len({r["lr"] for r in rows}) >= 2
    for r in rows:
        assert (r["mc_accuracy"] == "") == (r["kind"] == "none")
        if r["kind"] == "dropout":  # a*q*x is the identity for inverted dropout
            assert r["mean_accuracy"] == r["identity_accuracy"]
            assert r["mean_nll"] == r["identity_nll"]
    # Every arm and seed has exactly one run at its chosen rate.
    chosen = [tuple(r[k] for k in r if k not in _RUN_ONLY) for r in rows if r["chosen"] == "True"]
    assert len(chosen) == len(set(chosen))
    with open(folder / "epochs.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    curves = [e for e in epochs if e["kind"] == "none"]
    assert len(curves) > 2 * sum(r["kind"] == "none" for r in rows)  # the curves
    assert {"train_accuracy", "validation_nll", "test_nll", "train_size", "lr"} <= set(epochs[0])
    summary = json.loads((folder / "results.json").read_text())
    assert {"protocol", "grid", "environment", "wall_seconds", "results"} <= set(summary)
    assert len(summary["results"]) == len(rows)
    text = (folder / "tables.md").read_text()
    for number in range(1, 9):
        assert f"## {number}. " in text
    assert ("not distinguishable with 2 seeds" in text) == quick


_RUN_ONLY = {"lr", "chosen", "epochs", "seconds", "train_accuracy"} | {
    f"{rule}_{name}"
    for rule in ("validation", "identity", "mean", "mc")
    for name in ("accuracy", "nll", "ece", "variance")
}


def test_committed_results_come_back_byte_for_byte(study, tmp_path):
    committed = study.report.read_study(RESULTS)
    assert study.report.tables(committed).encode() == (RESULTS / "tables.md").read_bytes()
    study.report.write_csv(committed, tmp_path)
    for name in ("runs.csv", "epochs.csv"):
        assert (tmp_path / name).read_bytes() == (RESULTS / name).read_bytes(), name
    _check_folder(RESULTS, quick=False)


def test_bad_flag_is_a_one_line_error(study, capsys):
    with pytest.raises(SystemExit):
        study.command.parse_args(["--conv-cells", "8x100,8x100"])
    assert "must not repeat an item" in capsys.readouterr().err
