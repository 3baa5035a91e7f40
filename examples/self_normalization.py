#!/usr/bin/env python3
"""Does a deep SELU conv net stay normalized under dropout? A per-layer comparison.

Builds one deep stack of 3x3 convolutions + SELU in MLX's NHWC layout with LeCun-normal
weights (``lucid_mlx.init.selu_init``), feeds it N(0, 1) input, and measures the mean and
variance after every block with ``lucid_mlx.layer_statistics`` under four kinds of dropout at
the same p: none, ``mlx.nn.Dropout2d``, ``lucid_mlx.AlphaDropout`` and
``lucid_mlx.FeatureAlphaDropout``. All four share the same weights and input. Prints a table
and saves a plot (``--no-plot`` skips it; matplotlib comes with the ``examples`` extra).

Without dropout SELU holds mean 0 / variance 1; inverted dropout (Dropout2d) shifts the
mean and inflates the variance, and the error compounds with depth; the alpha-dropout
variants keep the fixed point.

    python examples/self_normalization.py              # the figure goes to out/
    python examples/self_normalization.py --plot examples/self_normalization.png   # README's figure
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from _common import dropout_probability, figure_path, positive_int, random_seed

import lucid_mlx
from lucid_mlx import AlphaDropout, FeatureAlphaDropout

DROPOUTS: dict[str, Callable[[float], nn.Module]] = {
    "no dropout": lambda p: nn.Identity(),
    "mlx.nn.Dropout2d": nn.Dropout2d,
    "AlphaDropout": AlphaDropout,
    "FeatureAlphaDropout": FeatureAlphaDropout,
}


def selu_stack(depth: int, channels: int, dropout: nn.Module, seed: int) -> nn.Sequential:
    """``depth`` blocks of conv 3x3 -> SELU -> dropout, LeCun-initialized from ``seed``."""
    blocks: list[nn.Module] = []
    for _ in range(depth):
        blocks += [nn.Conv2d(channels, channels, 3, padding=1), lucid_mlx.SELU(), dropout]
    model = nn.Sequential(*blocks)
    return lucid_mlx.init.selu_init(model, key=mx.random.key(seed))


def block_statistics(
    depth: int, channels: int, p: float, batch: int, size: int, seed: int
) -> dict[str, list[tuple[float, float]]]:
    """(mean, variance) after each block, for every kind of dropout."""
    x = mx.random.normal((batch, size, size, channels), key=mx.random.key(seed + 1))
    results = {}
    for index, (name, make) in enumerate(DROPOUTS.items(), start=1):
        start = time.perf_counter()
        mx.random.seed(seed + 2)  # the same dropout stream for every variant
        model = selu_stack(depth, channels, make(p), seed)
        stats = lucid_mlx.layer_statistics(model, x)
        results[name] = [(s.mean, s.variance) for s in stats[2::3]]  # after each dropout
        print(
            f"[{index}/{len(DROPOUTS)}] {name}: {depth} blocks measured"
            f" ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return results


def plot(results: dict[str, list[tuple[float, float]]], p: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mean, ax_var) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, values in results.items():
        blocks = range(1, len(values) + 1)
        ax_mean.plot(blocks, [m for m, _ in values], marker=".", label=name)
        ax_var.plot(blocks, [v for _, v in values], marker=".", label=name)
    ax_mean.axhline(0.0, color="grey", lw=0.8)
    ax_var.axhline(1.0, color="grey", lw=0.8)
    ax_mean.set(xlabel="block (conv 3x3, SELU, dropout)", ylabel="mean of activations")
    ax_var.set(xlabel="block (conv 3x3, SELU, dropout)", ylabel="variance of activations")
    ax_var.legend()
    fig.suptitle(f"Deep SELU conv net, NHWC, LeCun init, N(0,1) input, dropout p={p}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure saved to {path.resolve()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--depth", type=positive_int, default=32, help="number of conv blocks")
    parser.add_argument("--channels", type=positive_int, default=32, help="channels per block")
    parser.add_argument(
        "--size", type=positive_int, default=32, help="height and width of the input"
    )
    parser.add_argument("--batch", type=positive_int, default=8, help="input batch size")
    parser.add_argument(
        "--p", type=dropout_probability, default=0.2, help="dropout probability for all, in [0, 1)"
    )
    parser.add_argument("--seed", type=random_seed, default=0, help="seeds weights, input, masks")
    figure = parser.add_mutually_exclusive_group()
    figure.add_argument(
        "--plot",
        type=figure_path,
        default=Path("out/self_normalization.png"),
        help="where to save the figure (.png, .pdf or .svg; missing folders are created)",
    )
    figure.add_argument("--no-plot", action="store_true", help="skip the figure")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU exists")
    args = parser.parse_args()
    if args.cpu:
        mx.set_default_device(mx.cpu)

    print(
        f"{args.depth} blocks, input ({args.batch}, {args.size}, {args.size}, {args.channels}),"
        f" p = {args.p}: measuring {len(DROPOUTS)} kinds of dropout",
        flush=True,
    )
    results = block_statistics(args.depth, args.channels, args.p, args.batch, args.size, args.seed)
    names = list(results)
    print("block  " + "  ".join(f"{name:>21}" for name in names))
    print("       " + "  ".join(f"{'mean':>10} {'var':>10}" for _ in names))
    for block in range(args.depth):
        cells = [f"{results[n][block][0]:+10.3f} {results[n][block][1]:10.3f}" for n in names]
        print(f"{block + 1:>5}  " + "  ".join(cells))
    final = "; ".join(
        f"{n}: mean {results[n][-1][0]:+.3f}, variance {results[n][-1][1]:.3f}" for n in names
    )
    print(f"final block: {final}")
    if not args.no_plot:
        plot(results, args.p, args.plot)


if __name__ == "__main__":
    main()
