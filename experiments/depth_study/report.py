"""The depth study's outputs: the CSV and JSON records, ``tables.md`` and the figures.

``write_outputs`` writes a finished run; ``read_study`` reads one back from its folder, so that
``tables`` and ``plot`` rebuild ``tables.md`` and the figures without training (``rebuild``).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from protocol import (
    INIT_INPUTS,
    INIT_MASKS,
    KIND_LABELS,
    KINDS,
    MC_PASSES,
    PLACEMENT_LABELS,
    PLACEMENTS,
    TORCH_PLACEMENT,
    Epoch,
    Grid,
    InitJob,
    InitResult,
    RuleMetrics,
    RunResult,
    TrainJob,
    protocol_description,
)

import lucid_mlx

RUN_COLUMNS = ["framework", "depth", "placement", "kind", "p", "seed", "epochs", "seconds"]
METRICS = ("accuracy", "nll", "ece")
# The file's name for each rule's variance: the Monte-Carlo rule's is one training-mode pass.
VARIANCE_KEYS = {"identity": "identity_variance", "mean": "mean_variance", "mc": "train_variance"}
DIFFERENCE_FILE = "parameter_difference.csv"


@dataclass(frozen=True)
class ParameterDifference:
    """MLX against PyTorch after training without dropout, from the same initial weights."""

    depth: int
    seed: int
    largest_difference: float  # over every parameter of the two trained nets
    largest_parameter: float  # the largest |parameter| of the MLX net


@dataclass(frozen=True)
class Study:
    """A finished run: what it covered, its records, and the frameworks' parameter comparison."""

    grid: Grid
    results: list[RunResult | InitResult]  # in the order they finished
    differences: list[ParameterDifference]

    @property
    def runs(self) -> list[RunResult]:
        return [r for r in self.results if isinstance(r, RunResult)]

    @property
    def inits(self) -> list[InitResult]:
        return [r for r in self.results if isinstance(r, InitResult)]


# ---- records as the files hold them ------------------------------------------------------


def result_row(result: RunResult | InitResult) -> dict[str, Any]:
    """One entry of ``results.json``'s ``results``; ``runs.csv`` holds a run's scalar entries."""
    if isinstance(result, InitResult):
        return {
            "part": "init",
            **asdict(result.job),
            "measured_share": result.measured_share,
            "closed_form_share": result.closed_form_share,
            "seconds": result.seconds,
        }
    run = result.job
    row = {"part": run.framework, "kind": run.kind, "p": run.p, "placement": run.placement}
    row |= {"depth": run.depth, "seed": run.seed, "epochs": run.epochs}
    if run.kind == "none":
        row["keep_parameters"] = run.keep_parameters
    row["framework"] = run.framework
    row["epochs_log"] = [asdict(epoch) for epoch in result.epoch_log]
    for rule, metrics in (("identity", result.identity), ("mean", result.mean), ("mc", result.mc)):
        if metrics is not None:
            row |= {f"{rule}_{name}": getattr(metrics, name) for name in METRICS}
            row[VARIANCE_KEYS[rule]] = metrics.variance
    row["seconds"] = result.seconds
    return row


def result_from_row(row: dict[str, Any]) -> RunResult | InitResult:
    """The record of a ``results.json`` entry: the inverse of ``result_row``."""
    if row["part"] == "init":
        job = InitJob(**{field.name: row[field.name] for field in fields(InitJob)})
        return InitResult(job, row["measured_share"], row["closed_form_share"], row["seconds"])

    def rule(name: str) -> RuleMetrics | None:
        if f"{name}_accuracy" not in row:
            return None
        return RuleMetrics(*(row[f"{name}_{m}"] for m in METRICS), row[VARIANCE_KEYS[name]])

    # keep_parameters is there for the nets without dropout only.
    run = TrainJob(
        **{field.name: row[field.name] for field in fields(TrainJob) if field.name in row}
    )
    epoch_log = tuple(Epoch(**epoch) for epoch in row["epochs_log"])
    identity = rule("identity")
    assert identity is not None, row
    return RunResult(run, epoch_log, identity, rule("mean"), rule("mc"), row["seconds"])


def parameter_differences(runs: list[RunResult]) -> list[ParameterDifference]:
    """For each PyTorch net without dropout, how far it ended from its MLX twin."""
    differences = []
    for torch_run in _select(runs, framework="torch", kind="none"):
        job = torch_run.job
        (mlx_run,) = _select(runs, framework="mlx", kind="none", depth=job.depth, seed=job.seed)
        pairs = zip(mlx_run.parameters, torch_run.parameters, strict=True)
        largest = max(float(np.abs(a - b).max()) for a, b in pairs)
        scale = max(float(np.abs(a).max()) for a in mlx_run.parameters)
        differences.append(ParameterDifference(job.depth, job.seed, largest, scale))
    return differences


def write_csv(study: Study, out: Path) -> None:
    """``runs.csv``, ``epochs.csv``, ``init.csv`` and ``parameter_difference.csv``."""
    runs = [result_row(r) for r in study.runs]
    metric_keys = sorted(
        {k for r in runs for k in r if k.split("_")[0] in ("identity", "mean", "mc", "train")}
    )
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_COLUMNS + metric_keys)
        writer.writerows([r.get(k, "") for k in RUN_COLUMNS + metric_keys] for r in runs)
    with open(out / "epochs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*RUN_COLUMNS[:6], *(field.name for field in fields(Epoch))])
        for r in runs:
            for epoch in r["epochs_log"]:
                writer.writerow([r[k] for k in RUN_COLUMNS[:6]] + list(epoch.values()))
    with open(out / "init.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["depth", "kind", "p", "seed", "measured_share", "closed_form_share"])
        for init in study.inits:
            job, shares = init.job, [init.measured_share, init.closed_form_share]
            writer.writerow([job.depth, job.kind, job.p, job.seed, *shares])
    with open(out / DIFFERENCE_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(field.name for field in fields(ParameterDifference))
        writer.writerows(asdict(d).values() for d in study.differences)


def write_outputs(study: Study, out: Path, wall: float) -> None:
    """Every file of a run: the CSV files, ``tables.md``, the figures and ``results.json``."""
    write_csv(study, out)
    (out / "tables.md").write_text(tables(study))
    plot(study, out)
    rows = [result_row(r) for r in study.results]
    write_summary(out, protocol_description(), asdict(study.grid), wall, rows)


def write_summary(
    out: Path, protocol: dict[str, str], grid: dict[str, Any], wall: float, rows: list[Any]
) -> None:
    """``results.json``: the protocol, the grid, the machine, the wall time and every row."""
    summary = {
        "protocol": protocol,
        "grid": grid,
        "environment": environment(),
        "wall_seconds": round(wall, 1),
        "results": rows,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")


def read_study(folder: Path) -> Study:
    """A finished run back from its ``results.json`` and ``parameter_difference.csv``."""
    summary = json.loads((folder / "results.json").read_text())
    differences = []
    if (folder / DIFFERENCE_FILE).exists():
        with open(folder / DIFFERENCE_FILE, newline="") as f:
            differences = [
                ParameterDifference(
                    int(row["depth"]),
                    int(row["seed"]),
                    float(row["largest_difference"]),
                    float(row["largest_parameter"]),
                )
                for row in csv.DictReader(f)
            ]
    results = [result_from_row(row) for row in summary["results"]]
    return Study(Grid(**summary["grid"]), results, differences)


def rebuild(folder: Path, out: Path) -> None:
    """``tables.md`` and the figures of the run in ``folder``, written to ``out``."""
    study = read_study(folder)
    (out / "tables.md").write_text(tables(study))
    plot(study, out)


def environment() -> dict[str, Any]:
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "torch": torch_version,
        "lucid_mlx": lucid_mlx.__version__,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "command": " ".join(sys.argv),
    }


# ---- tables ------------------------------------------------------------------------------


def _cell(values: Iterable[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _select(runs: list[RunResult], **where: Any) -> list[RunResult]:
    """The runs whose job has every given field value, by seed (stable)."""
    chosen = (r for r in runs if all(getattr(r.job, k) == v for k, v in where.items()))
    return sorted(chosen, key=lambda r: r.job.seed)


def _accuracy(runs: list[RunResult]) -> list[float]:
    return [r.identity.accuracy for r in runs]


def _mean(values: Iterable[float], digits: int) -> str:
    return f"{np.mean(list(values)):.{digits}f}"


def tables(study: Study) -> str:
    """``tables.md``: the four parts of the study as markdown tables."""
    grid = study.grid
    mlx_runs = [r for r in study.runs if r.job.framework == "mlx"]
    torch_runs = [r for r in study.runs if r.job.framework == "torch"]
    lines = [
        f"Test accuracy after {grid.epochs} epochs: mean (min-max) over {len(grid.seeds)} seeds. "
        "Paired: FeatureAlphaDropout minus Dropout2d on the same seed (same masks), mean, and "
        "in how many seeds FeatureAlphaDropout was at least as good.",
        "",
        "## 1. Placement x p x depth (MLX)",
        "",
        "| depth | placement | p | no dropout | Dropout2d | FeatureAlphaDropout |"
        " paired difference | FAD >= D2d |",
        "|---:|---|---:|---|---|---|---:|---:|",
    ]
    for depth in grid.depths:
        none = _accuracy(_select(mlx_runs, depth=depth, kind="none"))
        for placement in PLACEMENTS:
            for p in grid.p:
                arm = {"depth": depth, "p": p, "placement": placement}
                d2d = _accuracy(_select(mlx_runs, kind="dropout2d", **arm))
                fad = _accuracy(_select(mlx_runs, kind="alpha", **arm))
                diffs = [a - b for a, b in zip(fad, d2d, strict=True)]
                lines.append(
                    f"| {depth} | {PLACEMENT_LABELS[placement]} | {p} | {_cell(none)} |"
                    f" {_cell(d2d)} | {_cell(fad)} |"
                    f" {np.mean(diffs):+.3f} | {sum(d >= 0 for d in diffs)}/{len(diffs)} |"
                )
    lines += [
        "",
        "## 2. Evaluation rules (MLX)",
        "",
        f"Test accuracy / NLL / ECE under the identity (standard eval), `a*q*x` in place of each"
        f" alpha-dropout layer, and the average of {MC_PASSES} training-mode passes; the last"
        " block's variance on the test set under the identity, the `a*q*x` rule and one"
        " training-mode pass. Means over seeds.",
        "",
        "| depth | placement | p | dropout | identity acc / NLL / ECE | a*q*x acc / NLL / ECE |"
        f" MC-{MC_PASSES} acc / NLL / ECE | variance: identity / a*q*x / train |",
        "|---:|---|---:|---|---|---|---|---|",
    ]

    def rules(runs: list[RunResult]) -> str:
        """identity | a*q*x | MC cells, each accuracy / NLL / ECE, then the variances."""
        by_rule = [[r.identity for r in runs], [r.mean for r in runs], [r.mc for r in runs]]
        cells = [
            "-"
            if metrics[0] is None
            else " / ".join(_mean((getattr(m, name) for m in metrics), 3) for name in METRICS)
            for metrics in by_rule
        ]
        variances = [
            "-" if metrics[0] is None else _mean((m.variance for m in metrics), 2)
            for metrics in by_rule
        ]
        return " | ".join(cells) + " | " + " / ".join(variances)

    for depth in grid.depths:
        none = _select(mlx_runs, depth=depth, kind="none")
        lines.append(f"| {depth} | - | - | no dropout | {rules(none)} |")
        for placement in PLACEMENTS:
            for p in grid.p:
                for kind in KINDS:
                    runs = _select(mlx_runs, depth=depth, kind=kind, p=p, placement=placement)
                    lines.append(
                        f"| {depth} | {placement} | {p} | {KIND_LABELS[kind]} | {rules(runs)} |"
                    )
    if torch_runs:
        lines += _framework_tables(study, mlx_runs, torch_runs)
    lines += [
        "",
        "## 4. At initialization: share of the last block's variance that depends on the input",
        "",
        f"Measured over {INIT_MASKS} masks x {INIT_INPUTS} inputs (seed {grid.seeds[0]}'s"
        " initial weights, dropout after every block), against the closed forms"
        " (q / (1 + p alpha'^2))^depth for alpha dropout and q^depth for Dropout2d.",
        "",
        "| depth | p | Dropout2d measured | Dropout2d q^depth | FeatureAlphaDropout measured |"
        " FeatureAlphaDropout closed form |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    shares = {(r.job.depth, r.job.p, r.job.kind): r for r in study.inits}
    for depth in grid.depths:
        for p in grid.p:
            d, a = (shares[depth, p, kind] for kind in KINDS)
            lines.append(
                f"| {depth} | {p} | {d.measured_share:.3f} | {d.closed_form_share:.3f} |"
                f" {a.measured_share:.3f} | {a.closed_form_share:.2e} |"
            )
    return "\n".join(lines) + "\n"


def _framework_tables(
    study: Study, mlx_runs: list[RunResult], torch_runs: list[RunResult]
) -> list[str]:
    """Part 3: the same cells in MLX and PyTorch, and the no-dropout nets side by side."""
    lines = [
        "",
        "## 3. MLX and PyTorch, dropout after every block",
        "",
        "Same split, initial weights, batch order, optimizer (Adam without bias correction,"
        " cosine decay) in both; each framework draws its own masks. Test accuracy under"
        f" the identity, mean (min-max) over seeds; NLL mean; MC-{MC_PASSES} accuracy mean.",
        "",
        "| depth | dropout | p | MLX accuracy | PyTorch accuracy | MLX NLL | PyTorch NLL |"
        " MLX MC acc | PyTorch MC acc |",
        "|---:|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for depth in sorted({r.job.depth for r in torch_runs}):
        cells = [("none", 0.0)] + [(k, p) for p in study.grid.torch_p for k in KINDS]
        for kind, p in cells:
            arm = {"depth": depth, "kind": kind, "p": p}
            arm["placement"] = "none" if kind == "none" else TORCH_PLACEMENT
            m, t = _select(mlx_runs, **arm), _select(torch_runs, **arm)
            mc = [
                _mean((r.mc.accuracy for r in runs if r.mc), 3) if kind != "none" else "-"
                for runs in (m, t)
            ]
            lines.append(
                f"| {depth} | {KIND_LABELS[kind]} | {p if kind != 'none' else '-'} |"
                f" {_cell(_accuracy(m))} | {_cell(_accuracy(t))} |"
                f" {_mean((r.identity.nll for r in m), 3)} |"
                f" {_mean((r.identity.nll for r in t), 3)} | {mc[0]} | {mc[1]} |"
            )
    lines += ["", "No-dropout arms, the same seed in both frameworks:", ""]
    lines += [
        "| depth | seed | final train loss MLX / PyTorch | test accuracy MLX / PyTorch |"
        " largest parameter difference / largest parameter |",
        "|---:|---:|---|---|---|",
    ]
    differences = {(d.depth, d.seed): d for d in study.differences}
    for t in _select(torch_runs, kind="none"):
        depth, seed = t.job.depth, t.job.seed
        (m,) = _select(mlx_runs, kind="none", depth=depth, seed=seed)
        if (depth, seed) not in differences:
            raise ValueError(f"no parameter difference for depth {depth}, seed {seed}")
        d = differences[depth, seed]
        lines.append(
            f"| {depth} | {seed} |"
            f" {m.epoch_log[-1].train_loss:.5f} / {t.epoch_log[-1].train_loss:.5f} |"
            f" {m.identity.accuracy:.4f} / {t.identity.accuracy:.4f} |"
            f" {d.largest_difference:.2e} / {d.largest_parameter:.2f} |"
        )
    return lines


# ---- figures -----------------------------------------------------------------------------


def plot(study: Study, out: Path) -> None:
    """``accuracy.png`` (table 1 as curves) and ``init_share.png`` (table 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths, ps = study.grid.depths, study.grid.p
    mlx_runs = [r for r in study.runs if r.job.framework == "mlx"]
    fig, axes = plt.subplots(1, len(depths), figsize=(5.5 * len(depths), 4), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=True):
        none = _accuracy(_select(mlx_runs, depth=depth, kind="none"))
        ax.axhline(float(np.mean(none)), color="gray", linestyle=":", label="no dropout")
        for placement, color in zip(PLACEMENTS, ("C0", "C1", "C2"), strict=True):
            for kind, style in zip(KINDS, ("--", "-"), strict=True):
                arms = [
                    _select(mlx_runs, depth=depth, kind=kind, p=p, placement=placement) for p in ps
                ]
                means = [np.mean(_accuracy(runs)) for runs in arms]
                label = f"{KIND_LABELS[kind]}, {PLACEMENT_LABELS[placement]}"
                ax.plot(ps, means, style, color=color, marker="o", label=label)
        ax.set_title(f"{depth} blocks")
        ax.set_xlabel("p")
        ax.set_ylabel("test accuracy (eval mode), mean over seeds")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in zip(KINDS, ("s", "o"), strict=True):
        for depth, color in zip(depths, ("C0", "C1", "C2", "C3"), strict=False):
            rows = sorted(
                (r for r in study.inits if r.job.kind == kind and r.job.depth == depth),
                key=lambda r: r.job.p,
            )
            x = [r.job.p for r in rows]
            label = f"{KIND_LABELS[kind]}, {depth} blocks"
            measured = [max(r.measured_share, 1e-6) for r in rows]
            ax.plot(x, measured, marker=marker, color=color, label=f"{label}, measured")
            closed = [r.closed_form_share for r in rows]
            ax.plot(
                x, closed, ":", color=color, marker=marker, fillstyle="none",
                label=f"{label}, closed form",
            )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("p")
    ax.set_ylabel("input-dependent share of last-block variance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "init_share.png", dpi=100)
    plt.close(fig)
