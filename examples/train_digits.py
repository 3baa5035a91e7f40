#!/usr/bin/env python3
"""Train a small SELU CNN with FeatureAlphaDropout on real handwritten digits.

The data set is scikit-learn's ``load_digits``: 1,797 real 8x8 grayscale images of the digits
0-9 that ship inside scikit-learn (no download). A stratified 80/20 split holds out 360
images for testing. The network is NHWC throughout: two 3x3 SELU convolution blocks with
``FeatureAlphaDropout``, then a SELU dense layer with ``AlphaDropout``, LeCun-initialized
with ``lucid_mlx.init.selu_init``. The training step is compiled with
``inputs=state, outputs=state`` where ``state`` includes ``mx.random.state``, so every step
draws fresh dropout masks. One line per epoch; the last line is ``test accuracy: 0.xxxx``.

With ``--checkpoint-dir DIR`` it writes a checkpoint after every epoch and ``--resume``
continues from it, bit for bit, after a kill (see ``_checkpoint.py``).

    python examples/train_digits.py                        # the defaults
    python examples/train_digits.py --dropout dropout2d    # compare with mlx.nn.Dropout2d
    python examples/train_digits.py --checkpoint-dir out/digits --resume   # survives a kill
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _checkpoint
import mlx.core as mx
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

import lucid_mlx

parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
)
parser.add_argument("--epochs", type=positive_int, default=20, help="passes over the data")
parser.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
parser.add_argument("--lr", type=positive_float, default=2e-3, help="initial Adam learning rate")
parser.add_argument(
    "--p", type=dropout_probability, default=0.1, help="dropout probability, in [0, 1)"
)
parser.add_argument(
    "--dropout",
    choices=["feature_alpha", "dropout2d", "none"],
    default="feature_alpha",
    help="FeatureAlphaDropout + AlphaDropout, mlx.nn.Dropout2d + Dropout, or none",
)
parser.add_argument(
    "--seed", type=random_seed, default=0, help="seeds the weights, split, batches, masks"
)
parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU exists")
parser.add_argument(
    "--checkpoint-dir",
    type=Path,
    default=None,
    help="write a checkpoint here after every epoch (the folder is created)",
)
parser.add_argument(
    "--resume",
    action="store_true",
    help="continue from the checkpoint in --checkpoint-dir (start at epoch 1 if none)",
)
# The flags that shape a run: a checkpoint resumes only a run with the same values.
RUN_FLAGS = ("epochs", "batch_size", "lr", "p", "dropout", "seed")


def main(args: argparse.Namespace) -> None:
    mx.random.seed(args.seed)
    order_rng = np.random.default_rng(args.seed)  # the order of the batches

    x_train, y_train, x_test, y_test = load_digits_split(args.seed)
    n = x_train.shape[0]
    if args.batch_size > n:
        parser.error(
            f"argument --batch-size: must be at most the {n} training images"
            f" but got {args.batch_size}"
        )
    model = lucid_mlx.init.selu_init(DigitsCNN(args.dropout, args.p))
    optimizer = make_optimizer(args.lr, args.epochs * (n // args.batch_size))

    folder = args.checkpoint_dir
    run = {k: getattr(args, k) for k in RUN_FLAGS}
    done = 0  # epochs finished
    if folder is not None:
        try:
            _checkpoint.check_folder(folder, args.resume)
        except ValueError as error:
            parser.error(f"argument --checkpoint-dir: {error}")
    if args.resume:
        try:
            done = _checkpoint.load(folder, model, optimizer, order_rng, run)
        except _checkpoint.CheckpointError as error:
            sys.exit(f"train_digits.py: error: {error}")
        if done:
            print(f"resumed from {folder} after epoch {done}")
        else:
            print(f"no checkpoint in {folder}: starting at epoch 1")
    # Built after a resume: the compiled step captures the restored state.
    step, state = make_train_step(model, optimizer)

    model.train()
    for epoch in range(done + 1, args.epochs + 1):
        tic = time.perf_counter()
        order = mx.array(order_rng.permutation(n))
        losses = []
        for i in range(0, n - args.batch_size + 1, args.batch_size):
            batch = order[i : i + args.batch_size]
            losses.append(step(x_train[batch], y_train[batch]))
            mx.eval(state)
        if folder is not None:
            _checkpoint.save(folder, epoch, model, optimizer, order_rng, run)
        train_loss = mx.mean(mx.stack(losses)).item()
        test_accuracy = accuracy(model, x_test, y_test)
        toc = time.perf_counter()
        print(
            f"epoch {epoch:3d}  train loss {train_loss:.4f}  test accuracy {test_accuracy:.4f}"
            f"  ({toc - tic:.2f} s)",
            flush=True,
        )
    print(f"test accuracy: {accuracy(model, x_test, y_test):.4f}")


if __name__ == "__main__":
    args = parser.parse_args()
    if args.resume and args.checkpoint_dir is None:
        parser.error("argument --resume: needs --checkpoint-dir")
    if args.cpu:
        mx.set_default_device(mx.cpu)
    main(args)
