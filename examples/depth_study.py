#!/usr/bin/env python3
"""Depth study: SELU conv nets on real digits with no dropout, Dropout2d or FeatureAlphaDropout.

The self-normalizing claim is about depth: without normalization layers, a SELU net stays
trainable only while nothing breaks its mean-0 / variance-1 fixed point. This trains the same
architecture at several depths under three kinds of channel dropout and records what happens.

Data: scikit-learn's ``load_digits`` (1,797 real 8x8 images, no download), one fixed stratified
80/20 split (1,437 training / 360 test images) for every run, standardized with the training
set's statistics (``train_digits.load_digits_split``).

Model (NHWC, no normalization layers): ``depth`` blocks of 3x3 conv (``WIDTH`` channels,
padding 1) -> SELU -> dropout, then a linear layer from the flattened last block to 10
logits. LeCun-normal weights and zero biases (``lucid_mlx.init.selu_init``).

Arms, for every depth and seed: no dropout; for every p, ``mlx.nn.Dropout2d(p)`` and
``lucid_mlx.FeatureAlphaDropout(p)`` after every block. The protocol is fixed and the same
for every arm: Adam, learning rate ``LR`` with cosine decay to 0 over the run, batch
``BATCH_SIZE``, cross-entropy loss. The training step is compiled with ``mx.random.state`` in
its state (``train_digits.make_train_step``).

Deterministic per seed: the seed fixes the initial weights (the same for every arm of a depth),
the batch order and the dropout masks (the arms of one seed draw the same keep/drop pattern).

Recorded per epoch: mean training loss over the epoch's steps, test accuracy (eval mode), and
the mean and variance of the last block's output on a fixed batch (the first ``PROBE_SIZE``
training images) with ``lucid_mlx.layer_statistics``, once in training mode (dropout active,
the same masks every epoch) and once in eval mode (dropout off).

Writes ``metrics.csv`` (one row per run and epoch; ``nan`` where a run diverged),
``metrics.json`` (the same rows, ``null`` for ``nan``, plus the protocol, grid, machine and
timings), ``table.md`` (final-epoch summary over seeds) and
``depth_study.png`` into ``--out``.

    python examples/depth_study.py                   # default grid (timed in README)
    python examples/depth_study.py --quick           # a reduced grid, for the test suite
    python examples/depth_study.py --full            # a larger grid, meant for an Apple GPU
    python examples/depth_study.py --depths 4,32 --p 0.2 --seeds 0 --epochs 3
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from _cli import comma_list, nonzero_dropout_probability, positive_int, random_seed
from train_digits import accuracy, load_digits_split, make_optimizer, make_train_step

import lucid_mlx
from lucid_mlx import FeatureAlphaDropout

# The protocol: the same for every arm, fixed before the grid was run (README says what a
# pilot run changed).
WIDTH = 8  # channels per block
BATCH_SIZE = 64
LR = 1e-3  # Adam, cosine decay to 0 over the run
SPLIT_SEED = 0  # one train/test split for every run
PROBE_SIZE = 128  # the fixed batch whose last-block statistics are recorded
# Masks for the training-mode statistics: one fixed stream, outside the training streams
# (seed * 2**20 + epoch for seeds < 2**32), so measuring does not change training.
PROBE_SEED = 2**63

DROPOUT_KINDS: dict[str, Callable[[float], nn.Module]] = {
    "none": lambda p: nn.Identity(),
    "dropout2d": nn.Dropout2d,
    "feature_alpha": FeatureAlphaDropout,
}
LABELS = {
    "none": "no dropout",
    "dropout2d": "mlx.nn.Dropout2d",
    "feature_alpha": "FeatureAlphaDropout",
}
FIELDS = [
    "depth",
    "dropout",
    "p",
    "seed",
    "epoch",
    "train_loss",
    "test_accuracy",
    "train_mode_mean",
    "train_mode_variance",
    "eval_mode_mean",
    "eval_mode_variance",
    "seconds",
]


@dataclass(frozen=True)
class Grid:
    depths: list[int]
    p: list[float]
    seeds: list[int]
    epochs: int

    def __str__(self) -> str:
        def join(values: list[int] | list[float]) -> str:
            return ",".join(f"{v:g}" for v in values)

        return (
            f"depths {join(self.depths)}, p {join(self.p)}, seeds {join(self.seeds)},"
            f" {self.epochs} epoch(s)"
        )

    def arms(self) -> list[tuple[str, float]]:
        """(dropout kind, p) pairs: no dropout once, then both dropouts at every p."""
        return [("none", 0.0)] + [
            (kind, p) for p in self.p for kind in ("dropout2d", "feature_alpha")
        ]

    def runs(self) -> list[tuple[int, str, float, int]]:
        return [
            (depth, kind, p, seed)
            for depth in self.depths
            for kind, p in self.arms()
            for seed in self.seeds
        ]


GRIDS = {
    "quick": Grid(depths=[2, 4], p=[0.2], seeds=[0, 1], epochs=1),
    "default": Grid(depths=[4, 8, 16], p=[0.1, 0.2], seeds=[0, 1, 2], epochs=4),
    "full": Grid(depths=[4, 8, 16, 32], p=[0.1, 0.2], seeds=[0, 1, 2, 3, 4], epochs=15),
}


class DepthNet(nn.Module):
    """(N, 8, 8, 1) -> ``depth`` x [conv 3x3 -> SELU -> dropout] -> flatten -> 10 logits."""

    def __init__(self, depth: int, width: int, dropout: str, p: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for block in range(depth):
            in_channels = 1 if block == 0 else width
            layers += [
                nn.Conv2d(in_channels, width, 3, padding=1),
                nn.SELU(),
                DROPOUT_KINDS[dropout](p),
            ]
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(8 * 8 * width, 10)

    def __call__(self, x: mx.array) -> mx.array:
        features = self.blocks(x)
        return self.head(features.reshape(features.shape[0], -1))


def last_block_statistics(model: DepthNet, probe: mx.array, training: bool) -> tuple[float, float]:
    """Mean and variance of the last block's output on ``probe``, in the given mode."""
    model.train(training)
    mx.random.seed(PROBE_SEED)  # the same training-mode masks at every measurement
    last = lucid_mlx.layer_statistics(model.blocks, probe)[-1]
    model.train()
    return last.mean, last.variance


def train_run(
    data: tuple[mx.array, mx.array, mx.array, mx.array],
    depth: int,
    dropout: str,
    p: float,
    seed: int,
    epochs: int,
) -> list[dict[str, Any]]:
    """Train one arm with one seed; one record per epoch, one progress line per epoch."""
    x_train, y_train, x_test, y_test = data
    probe = x_train[:PROBE_SIZE]
    model = DepthNet(depth, WIDTH, dropout, p)
    lucid_mlx.init.selu_init(model, key=mx.random.key(seed))
    n = x_train.shape[0]
    steps = n // BATCH_SIZE
    optimizer = make_optimizer(LR, epochs * steps)
    step, state = make_train_step(model, optimizer)
    order_rng = np.random.default_rng(seed)
    model.train()
    records = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        mx.random.seed(seed * 2**20 + epoch)  # this epoch's dropout masks
        order = mx.array(order_rng.permutation(n))
        losses = []
        for i in range(steps):
            batch = order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
            losses.append(step(x_train[batch], y_train[batch]))
            mx.eval(state)
        train_loss = mx.mean(mx.stack(losses)).item()
        test_accuracy = accuracy(model, x_test, y_test)
        train_mean, train_variance = last_block_statistics(model, probe, training=True)
        eval_mean, eval_variance = last_block_statistics(model, probe, training=False)
        seconds = time.perf_counter() - start
        records.append(
            {
                "depth": depth,
                "dropout": dropout,
                "p": p,
                "seed": seed,
                "epoch": epoch,
                "train_loss": train_loss,
                "test_accuracy": test_accuracy,
                "train_mode_mean": train_mean,
                "train_mode_variance": train_variance,
                "eval_mode_mean": eval_mean,
                "eval_mode_variance": eval_variance,
                "seconds": seconds,
            }
        )
        print(
            f"    epoch {epoch}/{epochs}  train loss {train_loss:.4f}"
            f"  test accuracy {test_accuracy:.4f}"
            f"  last block: train mode mean {train_mean:+.3f} var {train_variance:.3f},"
            f" eval mode mean {eval_mean:+.3f} var {eval_variance:.3f}  ({seconds:.1f} s)",
            flush=True,
        )
    return records


def arm_label(dropout: str, p: float) -> str:
    return LABELS[dropout] if dropout == "none" else f"{LABELS[dropout]} p={p:g}"


def final_rows(
    records: list[dict[str, Any]], grid: Grid
) -> Iterable[tuple[int, str, float, list[dict[str, Any]]]]:
    """(depth, dropout, p, the final-epoch records of every seed) per arm, in grid order."""
    for depth in grid.depths:
        for dropout, p in grid.arms():
            finals = [
                r
                for r in records
                if r["depth"] == depth
                and r["dropout"] == dropout
                and r["p"] == p
                and r["epoch"] == grid.epochs
            ]
            yield depth, dropout, p, finals


def summary_table(records: list[dict[str, Any]], grid: Grid) -> str:
    """Markdown: final-epoch test accuracy (mean, min-max over seeds), loss and variances.

    Loss and variances are means over the seeds whose values are finite; a run whose loss
    became NaN is counted as diverged in each cell it leaves out.
    """
    lines = [
        "| depth | dropout | test accuracy: mean (min-max) | train loss | "
        "last-block variance, train mode | eval mode |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for depth, dropout, p, finals in final_rows(records, grid):
        accuracies = [r["test_accuracy"] for r in finals]
        cells = [
            f"{np.mean(accuracies):.3f} ({min(accuracies):.3f}-{max(accuracies):.3f})",
            *(
                mean_of_finite([r[field] for r in finals])
                for field in ("train_loss", "train_mode_variance", "eval_mode_variance")
            ),
        ]
        lines.append(f"| {depth} | {arm_label(dropout, p)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_of_finite(values: list[float]) -> str:
    """The mean over the finite values, saying how many runs diverged (NaN or infinite)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "diverged"
    text = f"{np.mean(finite):.3f}"
    return text if len(finite) == len(values) else f"{text} ({len(values) - len(finite)} diverged)"


def plot(records: list[dict[str, Any]], grid: Grid, path: Path) -> None:
    """Rows: loss, accuracy, variance in train and eval mode; columns: depths.

    Each line is the mean over seeds; the band spans the seeds' minimum to maximum. NaN
    values (a diverged run) are left out of both.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"none": "black", "dropout2d": "tab:orange", "feature_alpha": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    metrics = [
        ("train_loss", "training loss", True),
        ("test_accuracy", "test accuracy", False),
        ("train_mode_variance", "last-block variance\n(train mode)", True),
        ("eval_mode_variance", "last-block variance\n(eval mode)", True),
    ]
    fig, axes = plt.subplots(
        len(metrics),
        len(grid.depths),
        figsize=(3.4 * len(grid.depths) + 1, 2.3 * len(metrics) + 1),
        sharex=True,
        sharey="row",
        squeeze=False,
        constrained_layout=True,
    )
    epochs = np.arange(1, grid.epochs + 1)
    for column, depth in enumerate(grid.depths):
        axes[0][column].set_title(f"{depth} blocks")
        for dropout, p in grid.arms():
            runs = [r for r in records if (r["depth"], r["dropout"], r["p"]) == (depth, dropout, p)]
            style = "-" if dropout == "none" else styles[grid.p.index(p) % len(styles)]
            for row, (field, label, log) in enumerate(metrics):
                values = np.full((len(grid.seeds), grid.epochs), np.nan)
                for r in runs:
                    values[grid.seeds.index(r["seed"]), r["epoch"] - 1] = r[field]
                mean, low, high = seed_band(values)
                ax = axes[row][column]
                ax.plot(
                    epochs,
                    mean,
                    style,
                    color=colors[dropout],
                    marker=".",
                    label=arm_label(dropout, p),
                )
                ax.fill_between(
                    epochs,
                    low,
                    high,
                    color=colors[dropout],
                    alpha=0.12,
                    lw=0,
                )
                if log:
                    ax.set_yscale("log")
                if column == 0:
                    ax.set_ylabel(label)
                if field.endswith("variance"):
                    ax.axhline(1.0, color="grey", lw=0.6)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(
        f"SELU conv nets on scikit-learn digits: {WIDTH} channels, no normalization,"
        f" Adam lr {LR:g} (cosine), batch {BATCH_SIZE}\n"
        f"line: mean over {len(grid.seeds)} seed(s), band: min to max"
        " (a run that diverged to NaN drops out from there on)"
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)


def seed_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, minimum and maximum over seeds (axis 0) per epoch, ignoring NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # epochs where every seed is NaN
        return np.nanmean(values, axis=0), np.nanmin(values, axis=0), np.nanmax(values, axis=0)


def environment() -> dict[str, Any]:
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "command": " ".join(sys.argv),
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else []


def parse_args(argv: list[str] | None) -> tuple[Grid, str, Path, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help=f"reduced grid for the test suite: {GRIDS['quick']}"
    )
    size.add_argument(
        "--full", action="store_true", help=f"larger grid, for an Apple GPU: {GRIDS['full']}"
    )
    parser.add_argument(
        "--depths",
        type=comma_list(positive_int, "depths"),
        help="comma-separated numbers of blocks, e.g. 4,8,16 (overrides the grid's)",
    )
    parser.add_argument(
        "--p",
        type=comma_list(nonzero_dropout_probability, "probabilities"),
        help="comma-separated dropout probabilities in (0, 1), used by both dropouts",
    )
    parser.add_argument(
        "--seeds",
        type=comma_list(random_seed, "seeds"),
        help="comma-separated seeds, e.g. 0,1,2 (each run is deterministic per seed)",
    )
    parser.add_argument("--epochs", type=positive_int, help="epochs per run")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("depth_study_results"),
        help="folder for metrics.csv, metrics.json, table.md and depth_study.png (created;"
        " default: ./depth_study_results)",
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU exists")
    parser.epilog = f"Without --quick or --full the default grid runs: {GRIDS['default']}."
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "default"
    base = GRIDS[name]
    grid = Grid(
        depths=args.depths or base.depths,
        p=args.p or base.p,
        seeds=args.seeds if args.seeds is not None else base.seeds,
        epochs=args.epochs or base.epochs,
    )
    overridden = grid != base
    return (
        grid,
        f"{name} grid, changed by flags" if overridden else f"{name} grid",
        args.out,
        args.cpu,
    )


def main(argv: list[str] | None = None) -> None:
    grid, name, out, cpu = parse_args(argv)
    if cpu:
        mx.set_default_device(mx.cpu)
    out.mkdir(parents=True, exist_ok=True)
    runs = grid.runs()
    load_before = load_average()
    print(
        f"{name}: {grid}: {len(grid.arms())} arms x {len(grid.depths)} depths"
        f" x {len(grid.seeds)} seeds = {len(runs)} runs; load average {load_before}",
        flush=True,
    )
    data = load_digits_split(SPLIT_SEED)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for index, (depth, dropout, p, seed) in enumerate(runs, start=1):
        elapsed = time.perf_counter() - start
        print(
            f"[run {index}/{len(runs)}] depth {depth}, {arm_label(dropout, p)}, seed {seed}"
            f"  (elapsed {elapsed / 60:.1f} min)",
            flush=True,
        )
        records += train_run(data, depth, dropout, p, seed, grid.epochs)
    wall = time.perf_counter() - start
    load_after = load_average()

    table = summary_table(records, grid)
    print(table, end="")
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(records)
    report = {
        "protocol": {
            "width": WIDTH,
            "batch_size": BATCH_SIZE,
            "optimizer": "Adam",
            "learning_rate": LR,
            "schedule": "cosine decay to 0 over the run",
            "split_seed": SPLIT_SEED,
            "probe_size": PROBE_SIZE,
            "grid_name": name,
        },
        "grid": asdict(grid),
        "environment": environment(),
        "wall_seconds": round(wall, 1),
        "load_average_before": load_before,
        "load_average_after": load_after,
        # Strict JSON has no NaN: a diverged value is null here and "nan" in the CSV.
        "rows": [
            {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
            for r in records
        ],
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "table.md").write_text(table)
    plot(records, grid, out / "depth_study.png")
    if not all(math.isfinite(r[field]) for r in records for field in FIELDS[5:]):
        print("note: some values are not finite (a run diverged); see metrics.csv")
    print(
        f"{len(runs)} runs in {wall / 60:.1f} min; load average before {load_before},"
        f" after {load_after}"
    )
    for file in ("metrics.csv", "metrics.json", "table.md", "depth_study.png"):
        print(f"wrote {(out / file).resolve()}")


if __name__ == "__main__":
    main()
