"""Watching a network self-normalize: activation statistics layer by layer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

import mlx.core as mx
import mlx.nn as nn

__all__ = ["LayerStatistics", "layer_statistics"]


class LayerStatistics(NamedTuple):
    """Mean and variance of one layer's output, over every element of the batch."""

    position: int
    name: str
    mean: float
    variance: float


def layer_statistics(
    layers: nn.Sequential | Iterable[nn.Module], x: mx.array
) -> list[LayerStatistics]:
    """Run ``x`` through ``layers`` in order and return each output's mean and variance.

    A self-normalizing network keeps every layer near mean 0 and variance 1; this makes the
    claim checkable. Layers run in whatever mode they are in (``.train()`` applies dropout,
    ``.eval()`` does not). Statistics are computed in float32 over all elements.

    Args:
        layers: An ``mlx.nn.Sequential`` or any iterable of callables (modules or functions)
            each taking and returning one array.
        x (mlx.core.array): The input to the first layer.

    Returns:
        list[LayerStatistics]: One ``(position, name, mean, variance)`` per layer, ``name`` being
        the layer's class name (or function name).
    """
    if isinstance(layers, nn.Sequential):
        sequence = list(layers.layers)
    elif isinstance(layers, nn.Module) or not isinstance(layers, Iterable):
        # A single Module is a dict: iterating it would walk its attribute names.
        raise TypeError(
            "[layer_statistics] 'layers' must be an mlx.nn.Sequential or a list of layers but"
            f" got {type(layers).__name__}."
        )
    else:
        sequence = list(layers)
    if not isinstance(x, mx.array):
        raise TypeError(
            f"[layer_statistics] 'x' must be an mlx.core.array but got {type(x).__name__}."
        )
    statistics = []
    for index, layer in enumerate(sequence):
        if not callable(layer):
            raise TypeError(
                f"[layer_statistics] every layer must be callable but layer {index} is"
                f" {type(layer).__name__}."
            )
        name = (
            type(layer).__name__
            if isinstance(layer, nn.Module)
            else getattr(layer, "__name__", type(layer).__name__)
        )
        output = layer(x)
        if not isinstance(output, mx.array):
            raise TypeError(
                f"[layer_statistics] every layer must return an mlx.core.array but layer"
                f" {index} ({name}) returned {type(output).__name__}."
            )
        x = output
        values = x.astype(mx.float32)
        mean, variance = mx.mean(values), mx.var(values)
        mx.eval(x, mean, variance)
        statistics.append(
            LayerStatistics(index, name, cast(float, mean.item()), cast(float, variance.item()))
        )
    return statistics
