"""Argument checks shared by every entry point.

Each check runs once per call of a public function or constructor, and every message has the
same shape: ``[where] 'argument' must be <what is allowed> but got <what was received>.``
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast

import mlx.core as mx


def _describe(value: object) -> str:
    kind = type(value)
    # Qualify types from other libraries: np.True_ is a numpy.bool, not a Python bool.
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return f"{value!r} ({name})"


def check_probability(p: object, where: str) -> float:
    """Return ``p`` as a float after checking it is a real number in ``[0, 1]``.

    A NumPy float32 or float16 is read as the decimal it prints as (``np.float32(0.2)`` gives
    ``0.2``, not ``0.20000000298023224``).
    """
    if type(p) is float and 0.0 <= p <= 1.0:  # the common case, without the ABC checks
        return p
    # bool is a numbers.Real subclass; dropout(x, True) is a bug, not a probability.
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"[{where}] 'p' must be a real number in [0, 1] but got {_describe(p)}.")
    value = float(p)
    if not isinstance(p, (int, float)):
        # A lower-precision float (np.float32(0.2) is 0.20000000298...) means the decimal it
        # prints as: keep that, so the layer's repr and its p show what the user wrote.
        try:
            shortest = float(str(p))
        except ValueError:
            shortest = value
        if cast(Any, type(p))(shortest) == p:
            value = shortest
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        # Quote p as given (5, not the converted 5.0): the message shows what the caller wrote.
        raise ValueError(f"[{where}] 'p' must be in [0, 1] but got {p!r}.")
    return value


def check_bool(value: object, name: str, where: str, hint: str = "") -> bool:
    """Check that ``value`` is a Python bool; ``hint`` is appended to the message."""
    if not isinstance(value, bool):
        raise TypeError(f"[{where}] '{name}' must be a bool but got {_describe(value)}.{hint}")
    return value


def check_inplace(inplace: object, where: str, call: str) -> bool:
    """``inplace`` as PyTorch takes it (no effect here); an integer in its place is likely a
    channel axis given by position, as ``call`` (``"FeatureAlphaDropout(0.2, "``) shows."""
    hint = (
        f" If you meant the channel axis, it is keyword-only: {call}channel_axis={int(inplace)})."
        if isinstance(inplace, numbers.Integral) and not isinstance(inplace, bool) and inplace
        else ""
    )
    return check_bool(inplace, "inplace", where, hint)


EVAL_RULES = ("identity", "mean")


def check_eval_rule(eval_rule: object, where: str) -> str:
    if not isinstance(eval_rule, str) or eval_rule not in EVAL_RULES:
        raise ValueError(
            f"[{where}] 'eval_rule' must be 'identity' or 'mean' but got {_describe(eval_rule)}."
        )
    return eval_rule


def check_optional_bool(value: object, name: str, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            f"[{where}] '{name}' must be None, True or False but got {_describe(value)}."
        )
    return value


def check_input(x: object, where: str, *, min_ndim: int, name: str = "x") -> mx.array:
    """Check that ``x`` is a floating-point ``mx.array`` with at least ``min_ndim`` axes;
    ``name`` is the argument's name in the messages."""
    if not isinstance(x, mx.array):
        # NumPy arrays, torch tensors, lists and numbers all convert with mx.array(x).
        convertible = hasattr(x, "__array__") or isinstance(x, (list, tuple, numbers.Number))
        hint = f" Convert it with mx.array({name})." if convertible else ""
        raise TypeError(
            f"[{where}] '{name}' must be an mlx.core.array but got {type(x).__name__}.{hint}"
        )
    if not mx.issubdtype(x.dtype, mx.floating):
        raise TypeError(
            f"[{where}] '{name}' must have a floating-point dtype (float16, bfloat16, float32"
            f" or float64) but got {x.dtype}."
        )
    if x.ndim < min_ndim:
        hint = (
            f"add a batch axis, e.g. {name}[None]."
            if x.ndim == min_ndim - 1
            else f"reshape it to (batch, ...) with at least {min_ndim} dimensions."
        )
        raise ValueError(
            f"[{where}] '{name}' must have at least {min_ndim} dimensions (batch first) but got"
            f" shape {tuple(x.shape)} with {x.ndim}. Axis 0 is always the batch: {hint}"
        )
    return x


def check_channel_axis(channel_axis: object, where: str) -> int:
    """Check that ``channel_axis`` is an integer other than 0 (its range depends on x)."""
    if type(channel_axis) is int and channel_axis != 0:  # the common case, without ABC checks
        return channel_axis
    # Any integral number (int, numpy integers); bool is excluded like for ``p``.
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise TypeError(
            f"[{where}] 'channel_axis' must be an int but got {_describe(channel_axis)}."
        )
    axis = int(channel_axis)
    if axis == 0:
        raise ValueError(
            f"[{where}] 'channel_axis' must not be the batch axis 0 but got {channel_axis!r}."
        )
    return axis


def resolve_channel_axis(channel_axis: object, ndim: int, where: str) -> int:
    """Return ``channel_axis`` as a non-negative axis of an ``ndim``-dimensional input."""
    axis = check_channel_axis(channel_axis, where)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"[{where}] 'channel_axis' must be in [{-ndim}, {ndim - 1}] for an input with"
            f" {ndim} dimensions but got {channel_axis!r}."
        )
    resolved = axis % ndim
    if resolved == 0:
        raise ValueError(
            f"[{where}] 'channel_axis' must not be the batch axis 0 but got {channel_axis!r},"
            f" which resolves to axis 0 for an input with {ndim} dimensions."
        )
    return resolved


def check_key(key: object, where: str) -> mx.array | None:
    """Check that ``key`` is None or a PRNG key as ``mx.random.key`` makes: uint32, shape (2,)."""
    if key is None:
        return None
    if not isinstance(key, mx.array):
        raise TypeError(
            f"[{where}] 'key' must be None or a PRNG key from mlx.core.random.key but got"
            f" {type(key).__name__}."
        )
    if key.dtype != mx.uint32 or tuple(key.shape) != (2,):
        raise ValueError(
            f"[{where}] 'key' must be a PRNG key from mlx.core.random.key (uint32, shape (2,))"
            f" but got an array of {key.dtype} with shape {tuple(key.shape)}."
        )
    return key
