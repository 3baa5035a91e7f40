#!/usr/bin/env python3
"""Train a small SELU CNN with FeatureAlphaDropout on real handwritten digits.

The data set is scikit-learn's ``load_digits``: 1,797 real 8x8 grayscale images of the digits
0-9 that ship inside scikit-learn (no download). A stratified 80/20 split holds out 360
images for testing. The network is NHWC throughout: two 3x3 SELU convolution blocks with
``FeatureAlphaDropout``, then a SELU dense layer with ``AlphaDropout``, LeCun-initialized
with ``lucid_mlx.init.selu_init``. The training step is compiled with
``inputs=state, outputs=state`` where ``state`` includes ``mx.random.state``, so every step
draws fresh dropout masks. One line per epoch; the last line is ``test accuracy: 0.xxxx``.

With ``--checkpoint-dir DIR`` it writes a checkpoint after every epoch, atomically (a
temporary file, fsync, rename): the model's weights, the optimizer's state, MLX's random state
(so the dropout masks after a resume are the ones an uninterrupted run draws) and the state of
the generator that orders the batches, with a SHA-256 of them all. ``--resume`` continues
from it, bit for bit; a checkpoint that is truncated, corrupted or from another run is an
error naming the file.

    python examples/train_digits.py                        # defaults: about 40 s on 2 CPU cores
    python examples/train_digits.py --dropout dropout2d    # compare with mlx.nn.Dropout2d
    python examples/train_digits.py --checkpoint-dir out/digits --resume   # survives a kill
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
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
from mlx.utils import tree_flatten, tree_unflatten

import lucid_mlx

CHECKPOINT = "checkpoint.safetensors"
PARTIAL = f".{CHECKPOINT}.partial.safetensors"  # written, flushed, then renamed to CHECKPOINT
# What a checkpoint must match to be resumed: everything that shapes the run.
RUN_ARGS = ("epochs", "batch_size", "lr", "p", "dropout", "seed")


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed; the message names the file."""


def _fsync(fd: int) -> None:
    """Flush a file or folder to the disk itself (on macOS fsync alone stops at the drive)."""
    full_fsync = getattr(fcntl, "F_FULLFSYNC", None)
    if full_fsync is None:
        os.fsync(fd)
    else:
        fcntl.fcntl(fd, full_fsync)


def _digest(arrays: dict[str, mx.array], metadata: dict[str, str]) -> str:
    """SHA-256 of every array's name, dtype, shape and bytes and of the metadata.

    safetensors has no checksum of its own: this catches bytes changed on the disk, which
    would otherwise load as slightly different weights.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        values = np.array(arrays[name])
        digest.update(f"{name}:{arrays[name].dtype}:{values.shape}:".encode())
        digest.update(values.tobytes())
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()


def save_checkpoint(
    directory: Path,
    epoch: int,
    model: nn.Module,
    optimizer: optim.Optimizer,
    order_rng: np.random.Generator,
    run: dict[str, Any],
) -> None:
    """Write everything a bit-for-bit resume needs, atomically: never a half-written file."""
    arrays = {f"model.{k}": v for k, v in tree_flatten(model.parameters())}
    arrays |= {f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)}
    # MLX's generator state is one key: the dropout masks of the following steps.
    arrays["random.key"] = mx.random.state[0]
    metadata = {
        "epoch": str(epoch),
        "run": json.dumps(run),
        "data_order": json.dumps(order_rng.bit_generator.state),
    }
    mx.eval(arrays)
    metadata["sha256"] = _digest(arrays, metadata)
    path, partial_path = directory / CHECKPOINT, directory / PARTIAL
    mx.save_safetensors(str(partial_path), arrays, metadata=metadata)
    with open(partial_path, "rb") as file:
        _fsync(file.fileno())
    os.replace(partial_path, path)  # atomic: the old checkpoint or the new one, never half
    folder = os.open(directory, os.O_RDONLY)
    try:
        _fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # MLX's messages may span lines


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: optim.Optimizer,
    order_rng: np.random.Generator,
    run: dict[str, Any],
) -> int:
    """Restore what :func:`save_checkpoint` wrote and return the last finished epoch."""
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
        # Past this check the file is one this script wrote, unchanged: its fields are trusted.
        written = metadata.pop("sha256", None)
        if _digest(arrays, metadata) != written:
            raise ValueError("its contents do not match the checksum written with them")
        epoch = int(metadata["epoch"])
        saved_run = json.loads(metadata["run"])
        order_state = json.loads(metadata["data_order"])
        key = arrays.pop("random.key")
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({_one_line(error)})") from None
    if saved_run != run:
        changed = ", ".join(
            f"--{k.replace('_', '-')} {saved_run.get(k)} (now {run[k]})"
            for k in RUN_ARGS
            if saved_run.get(k) != run[k]
        )
        raise CheckpointError(f"{path} belongs to another run: it was written with {changed}")
    weights = [(k.removeprefix("model."), v) for k, v in arrays.items() if k.startswith("model.")]
    state = [
        (k.removeprefix("optimizer."), v) for k, v in arrays.items() if k.startswith("optimizer.")
    ]
    try:
        model.load_weights(weights, strict=True)
        optimizer.state = tree_unflatten(state)
        optimizer.init(model.trainable_parameters())  # keeps the loaded moments
        order_rng.bit_generator.state = order_state
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} does not fit this model ({_one_line(error)})") from None
    # mx.random.key(s) is [s >> 32, s & 0xFFFFFFFF]: seeding with that s restores the key.
    high, low = (int(v) for v in key.tolist())
    mx.random.seed((high << 32) | low)
    return epoch


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=positive_int, default=20, help="passes over the data")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
    parser.add_argument(
        "--lr", type=positive_float, default=2e-3, help="initial Adam learning rate"
    )
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
    args = parser.parse_args(argv)
    if args.resume and args.checkpoint_dir is None:
        parser.error("argument --resume: needs --checkpoint-dir")
    if args.checkpoint_dir is not None and args.checkpoint_dir.exists():
        if not args.checkpoint_dir.is_dir():
            parser.error(
                f"argument --checkpoint-dir: must be a folder but {str(args.checkpoint_dir)!r}"
                " is a file"
            )
        if (args.checkpoint_dir / CHECKPOINT).exists() and not args.resume:
            parser.error(
                f"argument --checkpoint-dir: {str(args.checkpoint_dir / CHECKPOINT)!r} exists:"
                " give --resume to continue it, or another folder"
            )
    if args.cpu:
        mx.set_default_device(mx.cpu)
    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)

    x_train, y_train, x_test, y_test = load_digits_split(args.seed)
    if args.batch_size > x_train.shape[0]:
        parser.error(
            f"argument --batch-size: must be at most the {x_train.shape[0]} training images"
            f" but got {args.batch_size}"
        )
    model = lucid_mlx.init.selu_init(DigitsCNN(args.dropout, args.p))
    optimizer = make_optimizer(args.lr, args.epochs * (x_train.shape[0] // args.batch_size))
    run = {k: getattr(args, k) for k in RUN_ARGS}
    first_epoch = 1
    if args.checkpoint_dir is not None:
        try:  # before any training: a folder that cannot take a checkpoint is a flag error
            args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            (args.checkpoint_dir / PARTIAL).write_bytes(b"")
            (args.checkpoint_dir / PARTIAL).unlink()
        except OSError as error:
            parser.error(
                f"argument --checkpoint-dir: cannot write a checkpoint in"
                f" {str(args.checkpoint_dir)!r} ({error.strerror or error})"
            )
        path = args.checkpoint_dir / CHECKPOINT
        if args.resume and path.exists():
            try:
                first_epoch = load_checkpoint(path, model, optimizer, rng, run) + 1
            except CheckpointError as error:
                sys.exit(f"train_digits.py: error: {error}")
            print(f"resumed from {path} after epoch {first_epoch - 1}")
        elif args.resume:
            print(f"no checkpoint in {args.checkpoint_dir}: starting at epoch 1")
    # Built after a resume: the compiled step captures the restored state objects.
    step, state = make_train_step(model, optimizer)

    model.train()
    n = x_train.shape[0]
    for epoch in range(first_epoch, args.epochs + 1):
        start = time.perf_counter()
        order = mx.array(rng.permutation(n))
        losses = []
        for i in range(0, n - args.batch_size + 1, args.batch_size):
            batch = order[i : i + args.batch_size]
            losses.append(step(x_train[batch], y_train[batch]))
            mx.eval(state)
        train_loss = mx.mean(mx.stack(losses)).item()
        if args.checkpoint_dir is not None:
            save_checkpoint(args.checkpoint_dir, epoch, model, optimizer, rng, run)
        print(
            f"epoch {epoch:3d}  train loss {train_loss:.4f}"
            f"  test accuracy {accuracy(model, x_test, y_test):.4f}"
            f"  ({time.perf_counter() - start:.2f} s)",
            flush=True,
        )
    test_accuracy = accuracy(model, x_test, y_test)
    print(f"test accuracy: {test_accuracy:.4f}")
    return test_accuracy


if __name__ == "__main__":
    main()
