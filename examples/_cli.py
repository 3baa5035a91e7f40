"""Argument types shared by the example scripts: a bad flag value is a one-line argparse error.

Each function takes the flag's text and returns the parsed value or raises
``argparse.ArgumentTypeError``; argparse then prints the usage line and
``error: argument --epochs: must be a positive integer but got '0'`` and exits with status 2.

    parser.add_argument("--epochs", type=positive_int, default=20)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

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
