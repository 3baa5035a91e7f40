#!/usr/bin/env python3
"""When does alpha dropout help? Part two: small training sets that overfit, tuned rates.

Trains, on training sets small enough that a net without dropout overfits:

1. SELU conv nets (the depth study's, 8 channels) on stratified subsets of scikit-learn's
   digits, with ``FeatureAlphaDropout``, ``mlx.nn.Dropout2d``'s rule or no dropout, after the
   last block or after every block;
2. self-normalizing MLPs (``lucid_mlx.SELU``, LeCun-normal init) on scikit-learn's breast
   cancer and wine tables (a stratified 60/20/20 split per seed), with ``AlphaDropout``,
   ``mlx.nn.Dropout``'s rule or no dropout after every hidden layer.

The two dropout arms of a seed drop the same units; every arm of a seed starts from the same
weights and sees the same batches. Each arm picks its learning rate from ``--lrs`` by
validation accuracy (conv nets: on the first seed; MLPs: the mean over every seed), then runs
the other seeds at that rate. Every net is evaluated under the identity, ``a*q*x``
(``lucid_mlx.set_eval_rule(model, "mean")``) and the mean of 16 training-mode passes.

    python experiments/depth_study/regularization_study.py            # the default grid
    python experiments/depth_study/regularization_study.py --quick    # seconds: the tests
    python experiments/depth_study/regularization_study.py --tables-from FOLDER --out OUT

Writes ``runs.csv``, ``epochs.csv``, ``results.json`` and ``tables.md`` into ``--out``
(default ``out/regularization``). ``regularization.py`` trains one net,
``regularization_report.py`` writes and reads the files.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import regularization_report as report
from depth_study import _checked, _list, _positive_int, _probability, _seed
from regularization import (
    BATCH_SIZE,
    KIND_LABELS,
    LOG_POINTS,
    MLP_WIDTH,
    TABULAR_SHARES,
    TRAIN_STEPS,
    VALIDATION_SIZE,
    Job,
    Result,
    tabular_train_size,
    train,
)


@dataclass(frozen=True)
class Grid:
    """What one run covers (``results.json``'s ``grid``)."""

    conv_cells: list[str]  # "depth x training-set size"
    conv_p: list[float]
    corrected_conv_cells: list[str]  # cells also run with bias-corrected Adam
    corrected_conv_p: list[float]
    mlp_datasets: list[str]
    mlp_depth: int
    mlp_p: list[float]
    seeds: list[int]
    lrs: list[float]
    steps: int
    workers: int

    @property
    def tune_seeds(self) -> dict[str, list[int]]:
        """The seeds whose validation accuracy picks each arm's rate."""
        return {"conv": self.seeds[:1], "mlp": self.seeds}


def _cell(text: str) -> tuple[int, int]:
    depth, size = text.split("x")
    return int(depth), int(size)


def arms(grid: Grid) -> list[Job]:
    """Every arm, at rate 0 and seed 0 (``Job.arm``)."""
    jobs = []
    for cells, p_values, corrected in (
        (grid.conv_cells, grid.conv_p, False),
        (grid.corrected_conv_cells, grid.corrected_conv_p, True),
    ):
        for cell in cells:
            depth, size = _cell(cell)
            arm = Job("conv", "digits", size, depth, "none", 0.0, "none", corrected, 0.0, 0)
            jobs.append(replace(arm, steps=grid.steps))
            jobs += [
                replace(arm, kind=kind, p=p, placement=placement, steps=grid.steps)
                for placement in ("last", "every")
                for p in p_values
                for kind in ("dropout", "alpha")
            ]
    for dataset in grid.mlp_datasets:
        for corrected in (False, True):
            size = tabular_train_size(dataset)
            arm = Job("mlp", dataset, size, grid.mlp_depth, "none", 0.0, "none", corrected, 0.0, 0)
            jobs.append(replace(arm, steps=grid.steps))
            jobs += [
                replace(arm, kind=kind, p=p, placement="every", steps=grid.steps)
                for p in grid.mlp_p
                for kind in ("dropout", "alpha")
            ]
    return jobs


def tuning_jobs(grid: Grid) -> list[Job]:
    """Every arm at every rate on its family's tuning seeds, the longest first."""
    jobs = [
        replace(arm, lr=lr, seed=seed)
        for arm in arms(grid)
        for seed in grid.tune_seeds[arm.family]
        for lr in grid.lrs
    ]
    return sorted(jobs, key=_cost, reverse=True)


def remaining_jobs(grid: Grid, rates: dict[Job, float]) -> list[Job]:
    """The other seeds of every arm at its chosen rate."""
    jobs = [
        replace(arm, lr=rates[arm], seed=seed)
        for arm in arms(grid)
        for seed in grid.seeds
        if seed not in grid.tune_seeds[arm.family]
    ]
    return sorted(jobs, key=_cost, reverse=True)


def _cost(job: Job) -> float:
    return job.depth * (10 if job.family == "conv" else 1) + (job.kind == "none")


def run_job(job: Job) -> Result:
    start = time.perf_counter()
    result = train(job)
    return replace(result, seconds=round(time.perf_counter() - start, 2))


def describe(job: Job) -> str:
    arm = "" if job.kind == "none" else f" p={job.p} {job.placement}"
    adam = " corrected" if job.bias_correction else ""
    return (
        f"{job.family} {job.dataset} n={job.train_size} depth {job.depth}{adam} lr={job.lr:g}"
        f" seed {job.seed}  {KIND_LABELS[(job.family, job.kind)]}{arm}"
    )


def protocol_description(grid: Grid) -> dict[str, str]:
    return {
        "data": "digits: part one's 360 test images, a fixed stratified validation split of"
        f" {VALIDATION_SIZE} of its 1,437 training images (random_state 0), and a stratified"
        " training subset of the other 1,077 drawn with the seed; breast cancer and wine:"
        f" stratified {TABULAR_SHARES} train/validation/test split drawn with the seed,"
        " standardized by the training part",
        "nets": "conv: depth x [conv 3x3, 8 channels -> lucid_mlx.SELU -> dropout where placed]"
        f" -> linear; mlp: depth x [linear, {MLP_WIDTH} units -> lucid_mlx.SELU -> dropout] ->"
        " linear; lucid_mlx.init.selu_init(key=mx.random.key(seed))",
        "training": f"mlx.optimizers.Adam(cosine_decay(lr, steps)), betas (0.9, 0.999), eps"
        f" 1e-8; batch {BATCH_SIZE}, full batches only, {grid.steps} steps rounded up to whole"
        " epochs; order from numpy default_rng(seed)",
        "masks": "one key per dropout call from MLX's generator seeded with the seed; the"
        " inverted-dropout arm applies (1/(1-p))*keep*x to the keep mask the alpha layer draws"
        " for that key (paired)",
        "learning rate": f"each arm picks from {grid.lrs} by validation accuracy (ties: lower"
        " validation NLL, then lower rate); conv on the first seed, mlp on the mean over seeds",
        "evaluation": "identity; set_eval_rule(model, 'mean'); mean of 16 training-mode"
        f" passes; ECE with 15 bins; {LOG_POINTS} or so logged epochs without dropout",
    }


# ---- flags -------------------------------------------------------------------------------

_cells = _list(_checked(lambda t: t if _cell(t) else None, lambda v: True, "DEPTHxSIZE"), "cells")
_rates = _list(_checked(float, lambda v: v > 0, "a positive number"), "rates")
_datasets = _list(
    _checked(str, lambda v: v in ("breast_cancer", "wine"), "breast_cancer or wine"), "tables"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    probabilities = _list(_probability, "probabilities")
    # fmt: off
    add("--conv-cells", type=_cells, default="8x100,8x300,16x100",
        help="conv nets: DEPTHxTRAINING_SIZE, comma-separated")
    add("--conv-p", type=probabilities, default="0.05,0.1,0.2", help="conv drop probabilities")
    add("--corrected-conv-cells", type=_cells, default="8x100",
        help="conv cells also run with bias-corrected Adam")
    add("--corrected-conv-p", type=probabilities, default="0.1",
        help="drop probabilities of the bias-corrected conv cells")
    add("--mlp-datasets", type=_datasets, default="breast_cancer,wine", help="tables")
    add("--mlp-depth", type=_positive_int, default=8, help="hidden layers of the MLPs")
    add("--mlp-p", type=probabilities, default="0.05,0.1", help="MLP drop probabilities")
    add("--seeds", type=_list(_seed, "seeds"), default="0,1,2,3,4", help="seeds")
    add("--lrs", type=_rates, default="0.0003,0.001,0.003", help="learning rates to pick from")
    add("--steps", type=_positive_int, default=TRAIN_STEPS, help="training steps per run")
    add("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1),
        help="processes running the grid")
    add("--out", type=Path, default=Path("out/regularization"), help="output folder (created)")
    add("--quick", action="store_true",
        help="conv depth 2 on 100 digits, 2-layer MLPs on wine, p 0.2, 2 seeds, 2 rates,"
        " 12 steps: every part in seconds")
    add("--tables-from", type=Path, metavar="FOLDER",
        help="train nothing: write tables.md of the finished run in FOLDER to --out")
    # fmt: on
    args = parser.parse_args(argv)
    if args.quick:
        args.conv_cells, args.conv_p, args.corrected_conv_cells = ["2x100"], [0.2], []
        args.mlp_datasets, args.mlp_depth, args.mlp_p = ["wine"], 2, [0.2]
        args.seeds, args.lrs, args.steps = [0, 1], [0.001, 0.003], 12
    if args.tables_from is not None and not (args.tables_from / "results.json").is_file():
        parser.error(f"argument --tables-from: no results.json in {str(args.tables_from)!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"argument --out: must be a folder but {str(args.out)!r} is a file")
    return args


def run(jobs: list[Job], workers: int, done: int, total: int) -> list[Result]:
    results = []
    if workers == 1:
        outcomes: Iterable[Result] = map(run_job, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        outcomes = pool.imap_unordered(run_job, jobs)
    for result in outcomes:
        results.append(result)
        done += 1
        print(
            f"[{done}/{total}] {describe(result.job)}: validation accuracy"
            f" {result.validation.accuracy:.4f}, test {result.identity.accuracy:.4f}"
            f" ({result.seconds:.1f} s)",
            flush=True,
        )
    if pool is not None:
        pool.close()
        pool.join()
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tables_from is not None:
        (args.out / "tables.md").write_text(report.tables(report.read_study(args.tables_from)))
        print(f"tables of {args.tables_from}: {args.out / 'tables.md'}", flush=True)
        return
    grid = Grid(
        **{name: getattr(args, name) for name in Grid.__dataclass_fields__ if name != "steps"},
        steps=args.steps,
    )
    tuning = tuning_jobs(grid)
    total = len(tuning) + len(remaining_jobs(grid, dict.fromkeys(arms(grid), 0.0)))
    print(f"{total} jobs on {args.workers} worker(s); results to {args.out}", flush=True)
    start = time.perf_counter()
    results = run(tuning, args.workers, 0, total)
    rates = report.chosen_rates(results, grid.tune_seeds)
    results += run(remaining_jobs(grid, rates), args.workers, len(results), total)
    wall = time.perf_counter() - start
    summary_grid: dict[str, Any] = asdict(grid) | {"tune_seeds": grid.tune_seeds}
    study = report.Study(summary_grid, protocol_description(grid), results)
    report.write_outputs(study, args.out, wall)
    print(f"done in {wall:.0f} s: {args.out / 'tables.md'}", flush=True)


if __name__ == "__main__":
    main()
