#!/usr/bin/env python3
"""When does channel-wise alpha dropout help a SELU conv net? Placement, p, depth, eval rules.

Trains SELU conv nets (NHWC, no normalization layers) on scikit-learn's digits (1,797 real
8x8 images, no download; one stratified 80/20 split) and compares, for every depth, seed,
placement and p: no dropout, ``mlx.nn.Dropout2d``'s rule and ``lucid_mlx.feature_alpha_dropout``.
The two dropout arms of a seed drop the same (sample, channel) units at every step: both masks
come from the same key, drawn from MLX's generator, so the comparison is paired.

Four parts, written to one output folder from one run:

1. MLX grid: placement (after every block, after the last block, after the last ``depth // 4``
   blocks) x p x depth x seed, with the no-dropout arm beside each.
2. PyTorch cross-check: the same protocol with ``torch.nn.Dropout2d`` and
   ``torch.nn.FeatureAlphaDropout`` (dropout after every block): same split, same initial
   weights (converted from MLX), same batch order, and an optimizer matched to MLX's ``Adam``
   (no bias correction, MLX's default) with the same schedule.
3. Evaluation rules, for every trained net: the identity (standard eval mode),
   ``y = a*q*x`` in place of each alpha-dropout layer (its conditional mean in training), and
   the Monte-Carlo average of ``MC_PASSES`` training-mode passes; test accuracy, NLL, ECE and
   the last block's variance under each.
4. At initialization: the share of the last block's variance that depends on the input,
   measured over masks and inputs, against the closed forms (q / (1 + p alpha'^2))^depth and
   q^depth.

    python experiments/depth_study/depth_study.py                  # the default grid
    python experiments/depth_study/depth_study.py --quick          # seconds: what the tests run
    python experiments/depth_study/depth_study.py --out experiments/depth_study/results
    python experiments/depth_study/depth_study.py --no-torch       # without the PyTorch part

Writes ``runs.csv`` (one row per trained net), ``epochs.csv`` (one row per epoch),
``init.csv``, ``parameter_difference.csv`` (MLX against PyTorch, without dropout),
``results.json`` (all rows, protocol, machine, versions, wall time), ``tables.md`` and two
figures into ``--out`` (default ``out/depth_study``). ``--tables-from FOLDER`` rewrites
``tables.md`` and the figures of a finished run without training.

This file runs the grid; ``protocol.py`` trains and evaluates one net, ``report.py`` writes
and reads the files.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import report
from protocol import (
    KIND_LABELS,
    KINDS,
    PLACEMENTS,
    TORCH_PLACEMENT,
    Grid,
    InitJob,
    InitResult,
    RunResult,
    TrainJob,
    init_share,
    train_mlx,
    train_torch,
)

Job = TrainJob | InitJob
Result = RunResult | InitResult


def make_jobs(grid: Grid) -> list[Job]:
    """Every net and estimate of the grid, the longest first so that the workers end together."""
    jobs: list[Job] = []
    for depth in grid.depths:
        for seed in grid.seeds:
            run = partial(TrainJob, depth=depth, seed=seed, epochs=grid.epochs)
            jobs.append(run("mlx", "none", 0.0, "none", keep_parameters=not grid.no_torch))
            jobs += [
                run("mlx", kind, p, placement)
                for placement in PLACEMENTS
                for p in grid.p
                for kind in KINDS
            ]
            if not grid.no_torch and depth in grid.torch_depths:
                jobs.append(run("torch", "none", 0.0, "none", keep_parameters=True))
                jobs += [
                    run("torch", kind, p, TORCH_PLACEMENT) for p in grid.torch_p for kind in KINDS
                ]
        jobs += [InitJob(kind, p, depth, grid.seeds[0]) for p in grid.p for kind in KINDS]
    return sorted(jobs, key=_cost, reverse=True)


def _cost(job: Job) -> int:
    if isinstance(job, InitJob):
        return 0
    return job.depth * job.epochs + (job.framework == "torch")


def run_job(job: Job) -> Result:
    start = time.perf_counter()
    if isinstance(job, InitJob):
        result: Result = init_share(job)
    else:
        result = (train_mlx if job.framework == "mlx" else train_torch)(job)
    return replace(result, seconds=round(time.perf_counter() - start, 2))


def describe(job: Job) -> str:
    if isinstance(job, InitJob):
        return f"init  depth {job.depth:>2}  {KIND_LABELS[job.kind]} p={job.p}"
    arm = "" if job.kind == "none" else f" p={job.p} {job.placement}"
    return f"{job.framework:<5} depth {job.depth:>2}  seed {job.seed}  {KIND_LABELS[job.kind]}{arm}"


# ---- flags -------------------------------------------------------------------------------


def _checked(convert: Callable[[str], Any], valid: Callable[[Any], bool], what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"must be {what} but got {text!r}")
        return value

    parse.__name__ = what
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_probability = _checked(float, lambda v: 0 < v < 1, "a probability in (0, 1)")
_seed = _checked(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1]")


def _list(item: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list but got {text!r}")
        try:
            values = [item(part) for part in parts]
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"every item {error} (in {text!r})") from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must not repeat an item but got {text!r}")
        return sorted(values)

    parse.__name__ = f"list of {what}"
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    depths, probabilities = _list(_positive_int, "depths"), _list(_probability, "probabilities")
    # fmt: off
    add("--depths", type=depths, default="8,16", help="numbers of conv blocks, comma-separated")
    add("--p", type=probabilities, default="0.05,0.1,0.2",
        help="drop probabilities, comma-separated")
    add("--seeds", type=_list(_seed, "seeds"), default="0,1,2", help="seeds, comma-separated")
    add("--epochs", type=_positive_int, default=4, help="epochs per run")
    add("--torch-depths", type=depths, default="8,16",
        help="depths of the PyTorch cross-check, comma-separated")
    add("--torch-p", type=probabilities, default="0.1,0.2",
        help="p of the PyTorch cross-check, comma-separated")
    add("--no-torch", action="store_true", help="skip the PyTorch cross-check")
    add("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1),
        help="processes running the grid")
    add("--out", type=Path, default=Path("out/depth_study"), help="output folder (created)")
    add("--quick", action="store_true",
        help="depth 4, p 0.2, seed 0, 1 epoch: every part in seconds")
    add("--tables-from", type=Path, metavar="FOLDER",
        help="train nothing: write tables.md and the figures of the finished run in FOLDER"
        " (its results.json and parameter_difference.csv) to --out")
    # fmt: on
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.p, args.seeds, args.epochs = [4], [0.2], [0], 1
        args.torch_depths, args.torch_p = [4], [0.2]
    if args.tables_from is not None:
        if not (args.tables_from / "results.json").is_file():
            parser.error(f"argument --tables-from: no results.json in {str(args.tables_from)!r}")
    elif not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            parser.error(
                "torch is not installed, and the PyTorch cross-check needs it: pass --no-torch"
                " to run without the cross-check, or install torch"
            )
        if not set(args.torch_p) <= set(args.p) or not set(args.torch_depths) <= set(args.depths):
            parser.error("argument --torch-p: the PyTorch cells must be cells of the MLX grid")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"argument --out: must be a folder but {str(args.out)!r} is a file")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tables_from is not None:
        report.rebuild(args.tables_from, args.out)
        print(f"tables and figures of {args.tables_from}: {args.out / 'tables.md'}", flush=True)
        return
    grid = Grid(**{field.name: getattr(args, field.name) for field in fields(Grid)})
    jobs = make_jobs(grid)
    print(f"{len(jobs)} jobs on {args.workers} worker(s); results to {args.out}", flush=True)
    start = time.perf_counter()
    results = []
    if args.workers == 1:
        outcomes: Iterable[Result] = map(run_job, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(args.workers)
        outcomes = pool.imap_unordered(run_job, jobs)
    for done, result in enumerate(outcomes, 1):
        results.append(result)
        metric = (
            f"share {result.measured_share:.3f}"
            if isinstance(result, InitResult)
            else f"test accuracy {result.identity.accuracy:.4f}"
        )
        print(
            f"[{done}/{len(jobs)}] {describe(result.job)}: {metric} ({result.seconds:.1f} s)",
            flush=True,
        )
    if pool is not None:
        pool.close()
        pool.join()
    wall = time.perf_counter() - start
    runs = [r for r in results if isinstance(r, RunResult)]
    study = report.Study(grid, results, report.parameter_differences(runs))
    report.write_outputs(study, args.out, wall)
    print(f"done in {wall:.0f} s: {args.out / 'tables.md'}", flush=True)


if __name__ == "__main__":
    main()
