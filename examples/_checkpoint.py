"""Checkpoints that let a training run be killed at any moment and resumed bit for bit.

A checkpoint is one safetensors file: the model's weights, the optimizer's state, MLX's random
key (so a resumed run draws the dropout masks an uninterrupted run draws), the state of the
numpy generator that orders the batches, and a SHA-256 of them all. It is written aside,
flushed to the disk and renamed over the last one, so a kill or a power cut leaves the old
checkpoint or the new one, never half of either. ``run`` holds the flags that shape the run; a
checkpoint written with other values is refused.

    check_folder(folder, resume)  # before training: a ValueError says what is wrong
    epoch = load(folder, model, optimizer, order_rng, run)  # 0 when there is none yet
    save(folder, epoch, model, optimizer, order_rng, run)  # after every epoch

A checkpoint that cannot be resumed raises :class:`CheckpointError` with one line that names
the file and says what to do.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

CHECKPOINT = "checkpoint.safetensors"
PARTIAL = f".{CHECKPOINT}.partial.safetensors"  # written and flushed, then renamed
START_OVER = "delete it to start over, or point --checkpoint-dir at another folder"


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed; the message names the file and the next step."""


def check_folder(folder: Path, resume: bool) -> None:
    """Create ``folder`` and make sure a checkpoint can be written there, before any training."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"must be a folder but {str(folder)!r} is a file")
    if (folder / CHECKPOINT).exists() and not resume:
        raise ValueError(
            f"{str(folder / CHECKPOINT)!r} exists: give --resume to continue it, or another folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PARTIAL).write_bytes(b"")
        (folder / PARTIAL).unlink()
    except OSError as error:
        raise ValueError(
            f"cannot write a checkpoint in {str(folder)!r} ({error.strerror or error})"
        ) from None


def _sync(fd: int) -> None:
    # On macOS fsync stops at the drive's cache; F_FULLFSYNC reaches the disk itself.
    if hasattr(fcntl, "F_FULLFSYNC"):
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


def _digest(arrays: dict[str, mx.array], metadata: dict[str, str]) -> str:
    # safetensors has no checksum: a changed byte would load as slightly different weights.
    digest = hashlib.sha256()
    for name in sorted(arrays):
        values = np.array(arrays[name])
        digest.update(f"{name}:{arrays[name].dtype}:{values.shape}:".encode())
        digest.update(values.tobytes())
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()


def save(
    folder: Path,
    epoch: int,
    model: nn.Module,
    optimizer: optim.Optimizer,
    order_rng: np.random.Generator,
    run: dict[str, Any],
) -> None:
    """Write everything a bit-for-bit resume needs after ``epoch``, atomically."""
    arrays = {f"model.{k}": v for k, v in tree_flatten(model.parameters())}
    arrays |= {f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)}
    arrays["random.key"] = mx.random.state[0]  # all of MLX's generator state
    metadata = {
        "epoch": str(epoch),
        "run": json.dumps(run),
        "data_order": json.dumps(order_rng.bit_generator.state),
    }
    mx.eval(arrays)
    metadata["sha256"] = _digest(arrays, metadata)
    mx.save_safetensors(str(folder / PARTIAL), arrays, metadata=metadata)
    with open(folder / PARTIAL, "rb") as file:
        _sync(file.fileno())
    os.replace(folder / PARTIAL, folder / CHECKPOINT)
    directory = os.open(folder, os.O_RDONLY)
    try:
        _sync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def load(
    folder: Path,
    model: nn.Module,
    optimizer: optim.Optimizer,
    order_rng: np.random.Generator,
    run: dict[str, Any],
) -> int:
    """Restore what :func:`save` wrote; return its epoch, or 0 if ``folder`` has no checkpoint."""
    path = folder / CHECKPOINT
    if not path.exists():
        return 0
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
        written = metadata.pop("sha256", None)
        if _digest(arrays, metadata) != written:
            raise ValueError("its contents do not match the checksum written with them")
        # Past the checksum the file is one save() wrote, unchanged: its fields are trusted.
        _check_same_run(path, json.loads(metadata["run"]), run)
        model.load_weights(_part(arrays, "model."), strict=True)
        optimizer.state = tree_unflatten(_part(arrays, "optimizer."))
        optimizer.init(model.trainable_parameters())  # keeps the loaded moments
        order_rng.bit_generator.state = json.loads(metadata["data_order"])
        # mx.random.key(s) is [s >> 32, s & 0xFFFFFFFF]: seeding with that s restores the key.
        high, low = (int(v) for v in arrays["random.key"].tolist())
        mx.random.seed((high << 32) | low)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())  # MLX's messages may span lines
        raise CheckpointError(f"{path} cannot be resumed ({reason}): {START_OVER}") from None
    return int(metadata["epoch"])


def _part(arrays: dict[str, mx.array], prefix: str) -> list[tuple[str, mx.array]]:
    return [(k.removeprefix(prefix), v) for k, v in arrays.items() if k.startswith(prefix)]


def _check_same_run(path: Path, saved: dict[str, Any], run: dict[str, Any]) -> None:
    changed = [k for k in run if saved.get(k) != run[k]]
    if not changed:
        return
    flags = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)} (now {run[k]})" for k in changed)
    if "epochs" in changed:
        # The learning rate decays over epochs * steps per epoch: a longer run takes other
        # steps from its first epoch on, so it cannot continue this one.
        next_step = (
            "the epoch count must match, because the learning-rate schedule depends on the"
            " total number of steps, so a run cannot be extended; to train for"
            f" {run['epochs']} epochs, start a new run with --epochs {run['epochs']} in"
            " another --checkpoint-dir"
        )
    else:
        next_step = (
            "resume with the flags it was written with, or point --checkpoint-dir at another"
            " folder for a new run"
        )
    raise CheckpointError(f"{path} was written with {flags}: {next_step}")
