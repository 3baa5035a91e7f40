"""What the example scripts share: flag types, and the digits data, model and training step.

Flag types take the flag's text and return the parsed value or raise
``argparse.ArgumentTypeError``; argparse then prints the usage line and
``error: argument --epochs: must be a positive integer but got '0'`` and exits with status 2:

    parser.add_argument("--epochs", type=positive_int, default=20)

The digits helpers are used by ``train_digits.py`` and ``train_distributed.py``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from lucid_mlx import SELU, AlphaDropout, FeatureAlphaDropout

# numpy's default_rng and scikit-learn's random_state take seeds up to 2**32 - 1.
MAX_SEED = 2**32 - 1


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} but got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (epochs, batch size, depth, widths)."""
    value = _integer(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer but got {text!r}")
    return value


def random_seed(text: str) -> int:
    """An integer in [0, 2**32 - 1], the range every generator the examples seed accepts."""
    value = _integer(text, f"an integer in [0, {MAX_SEED}]")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}] but got {text!r}")
    return value


def _real(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} but got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what} but got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite real number > 0 (learning rates)."""
    value = _real(text, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number but got {text!r}")
    return value


def dropout_probability(text: str) -> float:
    """A dropout probability in [0, 1): p = 1 drops everything, leaving nothing to train."""
    value = _real(text, "a probability in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1) but got {text!r}")
    return value


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def figure_path(text: str) -> Path:
    """Where to save a figure: a .png, .pdf or .svg file whose existing folders are folders.

    Missing folders are created when the figure is saved; a path through an existing file
    (``afile/x.png``) or onto a folder is refused here, before any work is done.
    """
    path = Path(text)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"must be a file name ending in {', '.join(FIGURE_SUFFIXES)} but got {text!r}"
        )
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a file name, not a folder, but got {text!r}")
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(
            f"must be inside a folder but {str(existing)!r} is a file (in {text!r})"
        )
    return path


# ---- the digits data, model and compiled training step --------------------------------


class DigitsCNN(nn.Module):
    """(N, 8, 8, 1) -> conv 16 -> conv 32 -> pool -> dense 128 -> 10 logits, all SELU."""

    def __init__(self, dropout: str = "feature_alpha", p: float = 0.1) -> None:
        super().__init__()

        def channel_dropout() -> nn.Module:
            if dropout == "feature_alpha":
                return FeatureAlphaDropout(p)
            if dropout == "dropout2d":
                return nn.Dropout2d(p)
            return nn.Identity()

        dense_dropout = AlphaDropout(p) if dropout == "feature_alpha" else nn.Identity()
        if dropout == "dropout2d":
            dense_dropout = nn.Dropout(p)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            SELU(),
            channel_dropout(),
            nn.Conv2d(16, 32, 3, padding=1),
            SELU(),
            channel_dropout(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(4 * 4 * 32, 128), SELU(), dense_dropout, nn.Linear(128, 10)
        )

    def __call__(self, x: mx.array) -> mx.array:
        features = self.features(x)
        return self.classifier(features.reshape(features.shape[0], -1))


def load_digits_split(seed: int) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """Standardized NHWC images and labels, stratified 80/20 train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=seed
    )
    # SELU wants zero-mean, unit-variance input; use the training set's statistics only.
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return (
        mx.array(x_train),
        mx.array(y_train.astype(np.int32)),
        mx.array(x_test),
        mx.array(y_test.astype(np.int32)),
    )


def make_optimizer(lr: float, total_steps: int) -> optim.Optimizer:
    # Cosine decay to zero: the last epochs settle instead of bouncing between minima.
    return optim.Adam(learning_rate=optim.cosine_decay(lr, total_steps))


def make_train_step(
    model: nn.Module,
    optimizer: optim.Optimizer,
    reduce_gradients: Callable[[Any], Any] = lambda grads: grads,
) -> tuple[Callable[[mx.array, mx.array], mx.array], list[Any]]:
    """A compiled training step and the state it reads and writes.

    ``mx.random.state`` is part of the compiled state, so each step draws new dropout masks
    (without it, the compiled graph would replay the first step's masks forever).
    ``reduce_gradients`` is applied before the update (``nn.average_gradients`` for
    data-parallel training).
    """

    def loss_fn(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        optimizer.update(model, reduce_gradients(grads))
        return loss

    return step, state


def accuracy(model: nn.Module, x: mx.array, y: mx.array) -> float:
    model.eval()
    correct = mx.sum(mx.argmax(model(x), axis=1) == y)
    model.train()
    return correct.item() / y.size
