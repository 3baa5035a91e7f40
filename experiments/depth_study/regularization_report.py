"""Part two's outputs: ``runs.csv``, ``epochs.csv``, ``results.json`` and ``tables.md``.

Every comparison is paired by seed (the same initial weights, batches and, between the two
dropout arms, masks) and reported as the mean difference with its 95% t-interval over the
seeds; ``verdict`` turns an interval into words by one rule, stated in ``tables.md``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from protocol import MC_PASSES, RuleMetrics
from regularization import KIND_LABELS, PLACEMENT_LABELS, RULES, Epoch, Job, Result
from report import write_summary
from scipy import stats  # a dependency of scikit-learn, which the study needs anyway

JOB_COLUMNS = [field.name for field in fields(Job)]
METRICS = ("accuracy", "nll", "ece", "variance")
# "matches" needs the whole interval within +-MATCH_MARGIN of 0.
MATCH_MARGIN = {"accuracy": 0.01, "nll": 0.02, "ece": 0.01}
HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "ece": False}
RULE_LABELS = {"identity": "identity", "mean": "`a*q*x`", "mc": f"MC-{MC_PASSES}"}


@dataclass(frozen=True)
class Study:
    """A finished run: its settings, its records and each arm's learning rate."""

    grid: dict[str, Any]
    protocol: dict[str, str]
    results: list[Result]

    def chosen(self) -> list[Result]:
        """The runs at their arm's learning rate, the ones every table reports."""
        rates = chosen_rates(self.results, self.grid["tune_seeds"])
        return [r for r in self.results if rates[r.job.arm] == r.job.lr]


# ---- learning rates and statistics -------------------------------------------------------


def chosen_rates(results: Iterable[Result], tune_seeds: dict[str, list[int]]) -> dict[Job, float]:
    """Each arm's rate: the best mean validation accuracy over its family's tuning seeds, ties
    broken by the lower mean validation NLL, then by the lower rate."""
    scores: dict[Job, dict[float, list[tuple[float, float]]]] = {}
    for r in results:
        if r.job.seed in tune_seeds[r.job.family]:
            scores.setdefault(r.job.arm, {}).setdefault(r.job.lr, []).append(
                (-r.validation.accuracy, r.validation.nll)
            )

    def key(by_rate: dict[float, list[tuple[float, float]]], lr: float) -> tuple[float, ...]:
        # Rounded, so that equal accuracies averaged in another order still tie.
        return (*np.round(np.mean(by_rate[lr], axis=0), 9), lr)

    return {arm: min(by_rate, key=partial(key, by_rate)) for arm, by_rate in scores.items()}


@dataclass(frozen=True)
class Interval:
    """Mean paired difference over n seeds and its 95% t-interval."""

    mean: float
    low: float
    high: float
    n: int


def paired_interval(differences: Iterable[float]) -> Interval:
    values = np.asarray(list(differences), dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def verdict(interval: Interval, metric: str = "accuracy") -> str:
    """ "beats" or "trails" when the interval excludes 0 (in the metric's better direction),
    "matches" when it lies within +-MATCH_MARGIN, else "not distinguishable with n seeds"."""
    low, high = interval.low, interval.high
    if math.isnan(low):
        return f"not distinguishable with {interval.n} seed"
    if low > 0 or high < 0:
        return "beats" if (low > 0) == HIGHER_IS_BETTER[metric] else "trails"
    if -MATCH_MARGIN[metric] <= low and high <= MATCH_MARGIN[metric]:
        return "matches"
    return f"not distinguishable with {interval.n} seeds"


def pair(first: list[Result], second: list[Result], value: Callable[[Result], float]) -> Interval:
    """``value(first) - value(second)`` per seed, over the seeds both have."""
    by_seed = {r.job.seed: r for r in second}
    return paired_interval(value(r) - value(by_seed[r.job.seed]) for r in first)


def metric(rule: str, name: str) -> Callable[[Result], float]:
    def value(result: Result) -> float:
        metrics = getattr(result, rule) or result.identity  # no MC without dropout
        return float(getattr(metrics, name))

    return value


def _interval(interval: Interval, digits: int = 3) -> str:
    if math.isnan(interval.low):
        return f"{interval.mean:+.{digits}f}"
    return f"{interval.mean:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"


def _compare(first: list[Result], second: list[Result], rule: str, name: str) -> str:
    interval = pair(first, second, metric(rule, name))
    digits = 3
    return f"{_interval(interval, digits)} {verdict(interval, name)}"


# ---- records as the files hold them ------------------------------------------------------


def result_row(result: Result) -> dict[str, Any]:
    row: dict[str, Any] = asdict(result.job)
    row["epochs"] = result.epoch_log[-1].epoch
    row["seconds"] = result.seconds
    row["train_accuracy"] = result.epoch_log[-1].train_accuracy
    for rule in ("validation", *RULES):
        metrics = getattr(result, rule)
        if metrics is not None:
            row |= {f"{rule}_{name}": getattr(metrics, name) for name in METRICS}
    row["epochs_log"] = [asdict(epoch) for epoch in result.epoch_log]
    return row


def result_from_row(row: dict[str, Any]) -> Result:
    def rule(name: str) -> RuleMetrics | None:
        if f"{name}_accuracy" not in row:
            return None
        return RuleMetrics(*(row[f"{name}_{m}"] for m in METRICS))

    job = Job(**{name: row[name] for name in JOB_COLUMNS})
    log = tuple(Epoch(**epoch) for epoch in row["epochs_log"])
    validation, identity, mean = rule("validation"), rule("identity"), rule("mean")
    assert validation is not None, row
    assert identity is not None, row
    assert mean is not None, row
    return Result(job, log, validation, identity, mean, rule("mc"), row["seconds"])


def write_csv(study: Study, out: Path) -> None:
    """``runs.csv`` (one row per trained net, ``chosen`` marks its arm's rate) and
    ``epochs.csv`` (the logged epochs: every twelfth or so without dropout, the last one with)."""
    chosen = {id(r) for r in study.chosen()}
    rows = [result_row(r) | {"chosen": id(r) in chosen} for r in study.results]
    order = sorted(range(len(rows)), key=lambda i: [str(rows[i][k]) for k in JOB_COLUMNS])
    metric_keys = [f"{rule}_{name}" for rule in ("validation", *RULES) for name in METRICS]
    columns = [*JOB_COLUMNS, "chosen", "epochs", "seconds", "train_accuracy", *metric_keys]
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([rows[i].get(k, "") for k in columns] for i in order)
    with open(out / "epochs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*JOB_COLUMNS, *(field.name for field in fields(Epoch))])
        for i in order:
            for epoch in rows[i]["epochs_log"]:
                writer.writerow([rows[i][k] for k in JOB_COLUMNS] + list(epoch.values()))


def write_outputs(study: Study, out: Path, wall: float) -> None:
    write_csv(study, out)
    (out / "tables.md").write_text(tables(study))
    rows = [result_row(r) for r in study.results]
    write_summary(out, study.protocol, study.grid, wall, rows)


def read_study(folder: Path) -> Study:
    summary = json.loads((folder / "results.json").read_text())
    results = [result_from_row(row) for row in summary["results"]]
    return Study(summary["grid"], summary["protocol"], results)


# ---- tables ------------------------------------------------------------------------------


def _select(results: list[Result], **where: Any) -> list[Result]:
    chosen = (r for r in results if all(getattr(r.job, k) == v for k, v in where.items()))
    return sorted(chosen, key=lambda r: r.job.seed)


def _mean(results: list[Result], rule: str, name: str, digits: int = 3) -> str:
    if not results:
        return "-"
    return f"{np.mean([metric(rule, name)(r) for r in results]):.{digits}f}"


def _rate(results: list[Result]) -> str:
    return f"{results[0].job.lr:g}" if results else "-"


def _cells(chosen: list[Result], family: str) -> list[tuple[Any, ...]]:
    """(dataset, size, depth, bias_correction) of the family, in order."""
    return sorted(
        {
            (r.job.dataset, r.job.train_size, r.job.depth, r.job.bias_correction)
            for r in chosen
            if r.job.family == family
        }
    )


def _family_cells(chosen: list[Result]) -> list[tuple[str, tuple[Any, ...]]]:
    return [(family, cell) for family in ("conv", "mlp") for cell in _cells(chosen, family)]


def _adam(bias_correction: bool) -> str:
    return "bias-corrected" if bias_correction else "MLX default"


def tables(study: Study) -> str:
    chosen = study.chosen()
    seeds = study.grid["seeds"]
    lines = [
        "# Part two: small training sets, tuned learning rates",
        "",
        f"Seeds {seeds}; each arm at its learning rate (picked on validation from"
        f" {study.grid['lrs']}). Paired differences: mean [95% t-interval] over seeds. A"
        " difference **beats** or **trails** only when its interval excludes 0, **matches**"
        f" only when the interval lies within +-{MATCH_MARGIN['accuracy']} (accuracy, ECE) or"
        f" +-{MATCH_MARGIN['nll']} (NLL); otherwise it is not distinguishable with that many"
        " seeds. For NLL and ECE lower is better, and the verdict says so.",
        "",
    ]
    lines += _overfitting_table(chosen)
    for family in ("conv", "mlp"):
        lines += _arms_table(chosen, family, "accuracy")
        lines += _arms_table(chosen, family, "nll")
        lines += _rules_table(chosen, family)
    lines += _adam_table(chosen)
    return "\n".join(lines) + "\n"


def _overfitting_table(chosen: list[Result]) -> list[str]:
    lines = [
        "## 1. The nets without dropout overfit",
        "",
        "No dropout, at its chosen rate. Train accuracy after the last epoch; test and"
        " validation NLL at their lowest logged epoch and after the last, mean over seeds;"
        " the rise (last - lowest) with its interval; epochs.csv holds the curves.",
        "",
        "| family | dataset | n train | depth | Adam | lr | train acc | lowest test NLL (epoch)"
        " | last test NLL | test NLL rise | validation NLL rise |",
        "|---|---|---:|---:|---|---:|---:|---|---:|---|---|",
    ]
    for family, cell in _family_cells(chosen):
        runs = _arm_runs(chosen, family, cell)("none")
        if runs:
            dataset, size, depth, corrected = cell
            lowest = [min(r.epoch_log, key=lambda e: e.test_nll) for r in runs]
            test_rise = paired_interval(
                r.epoch_log[-1].test_nll - e.test_nll for r, e in zip(runs, lowest, strict=True)
            )
            validation_rise = paired_interval(
                r.epoch_log[-1].validation_nll - min(e.validation_nll for e in r.epoch_log)
                for r in runs
            )
            lines.append(
                f"| {family} | {dataset} | {size} | {depth} | {_adam(corrected)} | {_rate(runs)}"
                f" | {np.mean([r.epoch_log[-1].train_accuracy for r in runs]):.3f}"
                f" | {np.mean([e.test_nll for e in lowest]):.3f}"
                f" ({np.mean([e.epoch for e in lowest]):.0f} of {runs[0].epoch_log[-1].epoch})"
                f" | {np.mean([r.epoch_log[-1].test_nll for r in runs]):.3f}"
                f" | {_interval(test_rise)} | {_interval(validation_rise)} |"
            )
    return [*lines, ""]


def _arm_runs(chosen: list[Result], family: str, cell: tuple[Any, ...]) -> Callable[..., Any]:
    dataset, size, depth, corrected = cell
    base = {
        "family": family,
        "dataset": dataset,
        "train_size": size,
        "depth": depth,
        "bias_correction": corrected,
    }

    def runs(kind: str, p: float = 0.0, placement: str = "none") -> list[Result]:
        return _select(chosen, **base, kind=kind, p=p, placement=placement)

    return runs


def _dropout_arms(
    chosen: list[Result], family: str, cell: tuple[Any, ...]
) -> list[tuple[str, float]]:
    runs = _arm_runs(chosen, family, cell)
    arms = {
        (r.job.placement, r.job.p)
        for r in chosen
        if r.job.family == family and r.job.kind == "alpha"
    }
    return [
        (placement, p)
        for placement, p in sorted(arms, key=lambda a: (a[0] != "last", a[1]))
        if runs("alpha", p, placement)
    ]


def _arms_table(chosen: list[Result], family: str, name: str) -> list[str]:
    inverted, alpha = KIND_LABELS[(family, "dropout")], KIND_LABELS[(family, "alpha")]
    number = {("conv", "accuracy"): 2, ("conv", "nll"): 3, ("mlp", "accuracy"): 5}.get(
        (family, name), 6
    )
    what = {"conv": "SELU conv nets on digits subsets", "mlp": "self-normalizing MLPs on tables"}
    lines = [
        f"## {number}. {what[family]}: test {name.upper() if name == 'nll' else name}",
        "",
        f"Eval mode (the identity), mean over seeds; learning rates none / {inverted} / {alpha}."
        f" AD = {alpha}, D = {inverted}, none = no dropout.",
        "",
        f"| dataset | n train | depth | Adam | placement | p | lr | none | {inverted} | {alpha}"
        " | AD - D | AD - none | D - none |",
        "|---|---:|---:|---|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for cell in _cells(chosen, family):
        runs = _arm_runs(chosen, family, cell)
        none = runs("none")
        for placement, p in _dropout_arms(chosen, family, cell):
            d, a = runs("dropout", p, placement), runs("alpha", p, placement)
            rates = f"{_rate(none)} / {_rate(d)} / {_rate(a)}"
            dataset, size, depth, corrected = cell
            lines.append(
                f"| {dataset} | {size} | {depth} | {_adam(corrected)}"
                f" | {PLACEMENT_LABELS[placement]} | {p:g} | {rates}"
                f" | {_mean(none, 'identity', name)} | {_mean(d, 'identity', name)}"
                f" | {_mean(a, 'identity', name)} | {_compare(a, d, 'identity', name)}"
                f" | {_compare(a, none, 'identity', name)}"
                f" | {_compare(d, none, 'identity', name)} |"
            )
    return [*lines, ""]


def _rules_table(chosen: list[Result], family: str) -> list[str]:
    inverted, alpha = KIND_LABELS[(family, "dropout")], KIND_LABELS[(family, "alpha")]
    number = 4 if family == "conv" else 7
    lines = [
        f"## {number}. {alpha}: evaluation rules ({family})",
        "",
        f"Accuracy / NLL / ECE, mean over seeds, under the identity, `a*q*x`"
        f' (`set_eval_rule(model, "mean")`) and the mean of {MC_PASSES} training-mode passes;'
        f" paired differences of `a*q*x` and MC-{MC_PASSES} against the identity and of"
        f" MC-{MC_PASSES} against `a*q*x` (same nets),"
        f" and of {alpha} under `a*q*x` against {inverted} (eval mode). For {inverted},"
        " `a*q*x` is the identity: inverted dropout's training-mode mean is `x`.",
        "",
        "| dataset | n train | depth | Adam | placement | p | identity | `a*q*x` | MC"
        " | NLL: `a*q*x` - identity | NLL: MC - identity | NLL: MC - `a*q*x`"
        " | ECE: `a*q*x` - identity"
        " | acc: `a*q*x` - identity | acc: AD `a*q*x` - D | NLL: AD `a*q*x` - D |",
        "|---|---:|---:|---|---|---:|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in _cells(chosen, family):
        runs = _arm_runs(chosen, family, cell)
        for placement, p in _dropout_arms(chosen, family, cell):
            a, d = runs("alpha", p, placement), runs("dropout", p, placement)
            by_rule = [
                " / ".join(_mean(a, rule, m) for m in ("accuracy", "nll", "ece")) for rule in RULES
            ]
            dataset, size, depth, corrected = cell

            def against_identity(
                rule: str, name: str, runs: list[Result] = a, base: str = "identity"
            ) -> str:
                interval = paired_interval(
                    metric(rule, name)(r) - metric(base, name)(r) for r in runs
                )
                return f"{_interval(interval)} {verdict(interval, name)}"

            def against_inverted(name: str, a: list[Result] = a, d: list[Result] = d) -> str:
                by_seed = {r.job.seed: r for r in d}
                interval = paired_interval(
                    metric("mean", name)(r) - metric("identity", name)(by_seed[r.job.seed])
                    for r in a
                )
                return f"{_interval(interval)} {verdict(interval, name)}"

            lines.append(
                f"| {dataset} | {size} | {depth} | {_adam(corrected)}"
                f" | {PLACEMENT_LABELS[placement]} | {p:g} | {' | '.join(by_rule)}"
                f" | {against_identity('mean', 'nll')} | {against_identity('mc', 'nll')}"
                f" | {against_identity('mc', 'nll', base='mean')}"
                f" | {against_identity('mean', 'ece')} | {against_identity('mean', 'accuracy')}"
                f" | {against_inverted('accuracy')} | {against_inverted('nll')} |"
            )
    return [*lines, ""]


def _adam_table(chosen: list[Result]) -> list[str]:
    """Bias-corrected Adam against MLX's default, where the grid ran both."""
    lines = [
        "## 8. Adam with and without bias correction",
        "",
        "Test accuracy (identity), mean over seeds, each form at its own learning rate;"
        " paired difference bias-corrected - MLX default, and AD - D under each form.",
        "",
        "| family | dataset | n train | depth | arm | lr default / corrected | default"
        " | corrected | corrected - default | AD - D default | AD - D corrected |",
        "|---|---|---:|---:|---|---|---:|---:|---|---|---|",
    ]
    for family, (dataset, size, depth, corrected) in _family_cells(chosen):
        if corrected:  # the cells run with both forms
            default_runs = _arm_runs(chosen, family, (dataset, size, depth, False))
            corrected_runs = _arm_runs(chosen, family, (dataset, size, depth, True))
            arms = [("none", 0.0, "none")] + [
                (kind, p, placement)
                for placement, p in _dropout_arms(chosen, family, (dataset, size, depth, True))
                for kind in ("dropout", "alpha")
            ]
            for kind, p, placement in arms:
                before, after = default_runs(kind, p, placement), corrected_runs(kind, p, placement)
                label = KIND_LABELS[(family, kind)]
                if kind != "none":
                    label += f" {PLACEMENT_LABELS[placement]}, p {p:g}"
                gaps = ["-", "-"]
                if kind == "alpha":
                    gaps = [
                        _compare(
                            runs("alpha", p, placement),
                            runs("dropout", p, placement),
                            "identity",
                            "accuracy",
                        )
                        for runs in (default_runs, corrected_runs)
                    ]
                lines.append(
                    f"| {family} | {dataset} | {size} | {depth} | {label}"
                    f" | {_rate(before)} / {_rate(after)} | {_mean(before, 'identity', 'accuracy')}"
                    f" | {_mean(after, 'identity', 'accuracy')}"
                    f" | {_compare(after, before, 'identity', 'accuracy')}"
                    f" | {gaps[0]} | {gaps[1]} |"
                )
    return [*lines, ""]
