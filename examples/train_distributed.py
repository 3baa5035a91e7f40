#!/usr/bin/env python3
"""Data-parallel training of the digits SELU CNN with ``mx.distributed``.

Every process (rank) builds the same model from the same seed, trains on its own shard of the
training set, and averages gradients across ranks with ``mlx.nn.average_gradients`` before
each optimizer step, so the parameters stay identical everywhere. Dropout must *not* be
identical: each rank seeds MLX's generator with its rank, so the ranks draw different
FeatureAlphaDropout masks. The script checks both claims and exits non-zero if either fails:

1. before training, each rank draws a dropout mask from the generator the training step uses;
   the masks are gathered and must differ between every pair of ranks;
2. after training, the flattened parameters are gathered and must be bit-identical across
   ranks.

On one machine, two processes over loopback with the ring backend:

    mlx.launch --backend ring -n 2 examples/train_distributed.py

Across machines, list the hosts (one per line, or JSON as ``mlx.distributed_config`` writes
it) in a hostfile, make the same Python environment and this repository available on each
at the same path, and launch from one of them:

    mlx.launch --backend ring --hostfile hosts.json examples/train_distributed.py

Run without ``mlx.launch`` it trains as a single process, and there is nothing to compare.
"""

from __future__ import annotations

import argparse
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from _common import (
    DigitsCNN,
    accuracy,
    dropout_probability,
    load_digits_split,
    make_optimizer,
    make_train_step,
    positive_float,
    positive_int,
    random_seed,
)
from mlx.utils import tree_flatten

import lucid_mlx


def gather_rows(group: mx.distributed.Group, row: mx.array) -> np.ndarray:
    """Every rank's ``row`` (1-D), stacked in rank order: shape (size, len(row))."""
    return np.array(mx.distributed.all_gather(row[None], group=group))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=positive_int, default=20, help="passes over each shard")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="per rank")
    parser.add_argument(
        "--lr", type=positive_float, default=2e-3, help="initial Adam learning rate"
    )
    parser.add_argument(
        "--p", type=dropout_probability, default=0.1, help="dropout probability, in [0, 1)"
    )
    parser.add_argument(
        "--seed", type=random_seed, default=0, help="seeds the model and the data split"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU exists")
    parser.add_argument(
        "--same-dropout-seed",
        action="store_true",
        help="seed every rank's dropout alike: a deliberate mistake, to see the check fail",
    )
    args = parser.parse_args()
    if args.cpu:
        mx.set_default_device(mx.cpu)

    group = mx.distributed.init()
    rank, size = group.rank(), group.size()

    def log(message: str) -> None:
        if rank == 0:
            print(message, flush=True)

    x_train, y_train, x_test, y_test = load_digits_split(args.seed)
    # Equal shards, so that every rank takes the same number of steps (each step all-reduces).
    shard = x_train.shape[0] // size
    x_train = x_train[rank * shard : (rank + 1) * shard]
    y_train = y_train[rank * shard : (rank + 1) * shard]

    # The same weights on every rank: initialize from the shared seed ...
    model = lucid_mlx.init.selu_init(
        DigitsCNN("feature_alpha", args.p), key=mx.random.key(args.seed)
    )
    # ... then different dropout masks on every rank: seed the global generator by rank.
    dropout_seed = args.seed * 1_000 + (0 if args.same_dropout_seed else rank)
    mx.random.seed(dropout_seed)
    rng = np.random.default_rng(dropout_seed)

    # A mask's worth of (sample, channel) draws: a kept 0 becomes b > 0, a dropped one
    # a * alpha' + b < 0, so the sign of the output is the mask.
    probe = mx.zeros((16, 1, 1, 32))
    mask = lucid_mlx.feature_alpha_dropout(probe, args.p) > 0
    masks = gather_rows(group, mask.reshape(-1).astype(mx.uint8))
    masks_differ = all(
        not np.array_equal(masks[i], masks[j]) for i in range(size) for j in range(i + 1, size)
    )

    steps_per_epoch = shard // args.batch_size
    if steps_per_epoch == 0:
        parser.error(
            f"argument --batch-size: must be at most the {shard} training images of each of"
            f" {size} rank(s) but got {args.batch_size}"
        )
    optimizer = make_optimizer(args.lr, args.epochs * steps_per_epoch)
    # Gradients are averaged across ranks inside the compiled step.
    step, state = make_train_step(model, optimizer, reduce_gradients=nn.average_gradients)

    log(f"{size} process(es), {shard} training images each, {steps_per_epoch} steps per epoch")
    model.train()
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        order = mx.array(rng.permutation(shard))
        losses = []
        for i in range(steps_per_epoch):
            batch = order[i * args.batch_size : (i + 1) * args.batch_size]
            losses.append(step(x_train[batch], y_train[batch]))
            mx.eval(state)
        mean_loss = mx.distributed.all_sum(mx.mean(mx.stack(losses)), group=group) / size
        log(
            f"epoch {epoch:3d}  train loss {mean_loss.item():.4f}"
            f"  test accuracy {accuracy(model, x_test, y_test):.4f}"
            f"  ({time.perf_counter() - start:.2f} s)"
        )

    parameters = mx.concatenate([v.reshape(-1) for _, v in tree_flatten(model.parameters())])
    gathered = gather_rows(group, parameters)
    parameters_equal = all(np.array_equal(gathered[0], gathered[r]) for r in range(size))

    log(f"test accuracy: {accuracy(model, x_test, y_test):.4f}")
    if size == 1:
        log("single process: no other rank to compare masks and parameters with")
        return 0
    log(f"dropout masks differ across ranks: {'yes' if masks_differ else 'NO'}")
    log(f"parameters identical across ranks: {'yes' if parameters_equal else 'NO'}")
    return 0 if masks_differ and parameters_equal else 1


if __name__ == "__main__":
    sys.exit(main())
