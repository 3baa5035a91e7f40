"""Watching a network self-normalize: activation statistics layer by layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, cast

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx.layers import AlphaDropout, FeatureAlphaDropout

__all__ = ["WATCHED_BY_DEFAULT", "LayerStatistics", "layer_statistics"]

#: The submodules whose outputs :func:`layer_statistics` records in a model by default: the
#: layers that make or move a SELU net's statistics.
WATCHED_BY_DEFAULT: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.SELU,
    AlphaDropout,
    FeatureAlphaDropout,
    nn.Dropout,
    nn.Dropout2d,
    nn.Dropout3d,
)


class LayerStatistics(NamedTuple):
    """Mean and variance of one layer's output, over every element of the batch.

    ``position`` is the order in which the call started in the forward pass, ``name`` the
    layer's class name (or function name), ``path`` where the layer sits in the model
    (``"layers.3.conv"``, as ``model.named_modules()`` names it; the index for a list of
    layers).
    """

    position: int
    name: str
    mean: float
    variance: float
    path: str = ""


def layer_statistics(
    model: nn.Module | Iterable[Callable[[mx.array], mx.array]],
    x: mx.array,
    *,
    watch: tuple[type[nn.Module], ...] | None = None,
) -> list[LayerStatistics]:
    """Run ``x`` through ``model`` and return the mean and variance of each layer's output.

    A self-normalizing network keeps every layer near mean 0 and variance 1; this makes the
    claim checkable. Layers run in whatever mode they are in (``.train()`` applies dropout,
    ``.eval()`` does not). Statistics are computed in float32 over all elements.

    - An ``mlx.nn.Sequential`` or a list of callables (without ``watch``): every layer, in
      order, each fed the previous one's output.
    - Any other ``mlx.nn.Module`` (or a ``Sequential`` with ``watch``): one forward pass,
      ``model(x)``, recording the output of every submodule, at any depth, whose type is in
      ``watch``. MLX has no forward hooks: for the duration of the call each watched
      submodule's class is swapped for a recording subclass (so inside the call
      ``type(module)`` is that subclass), and every class is restored afterwards, also when
      the forward pass raises. A submodule called twice gives two
      records with the same path; one reachable by several paths is named by the shortest
      (then the first in sorted order). Records follow the order in which the calls start,
      so a watched container comes before the layers it calls. Layers called as functions
      (``nn.selu(x)``) are not seen, nor is anything inside a forward pass that
      ``mx.compile`` has already traced: watch an uncompiled model.

    Args:
        model: An ``mlx.nn.Module``, or an iterable of callables (modules or functions) each
            taking and returning one array.
        x (mlx.core.array): The input of the model or of the first layer.
        watch (tuple[type, ...], optional): The module types to record in a model.
            Default: ``None``: ``lucid_mlx.monitor.WATCHED_BY_DEFAULT`` (Linear, Conv1d-3d,
            SELU, the alpha-dropout layers and MLX's dropout layers) for a model, and every
            layer for a ``Sequential`` or a list.

    Returns:
        list[LayerStatistics]: One ``(position, name, mean, variance, path)`` per layer
        call, in the order in which the calls start.

    Raises:
        TypeError: ``model`` is neither a module nor an iterable of callables, a layer is
            not callable or returns something other than an array, ``x`` is not an
            ``mlx.core.array``, or ``watch`` is not a non-empty tuple of module types.
    """
    if watch is not None and not (
        isinstance(watch, tuple)
        and watch
        and all(isinstance(t, type) and issubclass(t, nn.Module) for t in watch)
    ):
        raise TypeError(
            "[layer_statistics] 'watch' must be None or a non-empty tuple of mlx.nn.Module"
            f" types but got {watch!r}."
        )
    if not isinstance(x, mx.array):
        raise TypeError(
            f"[layer_statistics] 'x' must be an mlx.core.array but got {type(x).__name__}."
        )
    if isinstance(model, nn.Sequential) and watch is None:
        return _sequence(list(model.layers), x, [f"layers.{i}" for i in range(len(model.layers))])
    if isinstance(model, nn.Module):
        return _watched(model, x, WATCHED_BY_DEFAULT if watch is None else watch)
    if isinstance(model, Iterable) and not isinstance(model, (str, bytes, mx.array)):
        if watch is not None:
            raise TypeError(
                "[layer_statistics] 'watch' applies to a model (an mlx.nn.Module) but 'model'"
                f" is a {type(model).__name__} of layers, each of which is recorded."
            )
        layers = list(model)
        return _sequence(layers, x, [str(i) for i in range(len(layers))])
    raise TypeError(
        "[layer_statistics] 'model' must be an mlx.nn.Module or a list of layers but got"
        f" {type(model).__name__}."
    )


def _name(layer: object) -> str:
    if isinstance(layer, nn.Module):
        return type(layer).__name__
    return cast(str, getattr(layer, "__name__", type(layer).__name__))


def _statistics(outputs: list[tuple[str, str, mx.array]]) -> list[LayerStatistics]:
    """One record per (path, name, output), the reductions evaluated together."""
    moments = []
    for _, _, output in outputs:
        values = output.astype(mx.float32)
        moments.append((mx.mean(values), mx.var(values)))
    mx.eval(moments)
    return [
        LayerStatistics(
            position, name, cast(float, mean.item()), cast(float, variance.item()), path
        )
        for position, ((path, name, _), (mean, variance)) in enumerate(
            zip(outputs, moments, strict=True)
        )
    ]


def _sequence(layers: list[Any], x: mx.array, paths: list[str]) -> list[LayerStatistics]:
    outputs = []
    for index, (layer, path) in enumerate(zip(layers, paths, strict=True)):
        if not callable(layer):
            raise TypeError(
                f"[layer_statistics] every layer must be callable but layer {index} is"
                f" {type(layer).__name__}."
            )
        output = layer(x)
        if not isinstance(output, mx.array):
            raise TypeError(
                f"[layer_statistics] every layer must return an mlx.core.array but layer"
                f" {index} ({_name(layer)}) returned {type(output).__name__}."
            )
        x = output
        outputs.append((path, _name(layer), x))
        mx.eval(x)  # one layer at a time, as the layers run
    return _statistics(outputs)


def _watched(
    model: nn.Module, x: mx.array, watch: tuple[type[nn.Module], ...]
) -> list[LayerStatistics]:
    paths: dict[int, str] = {}
    modules: dict[int, nn.Module] = {}
    named = cast(list[tuple[str, nn.Module]], model.named_modules())  # type: ignore[no-untyped-call]
    for path, module in sorted(named, key=lambda item: (item[0].count("."), item[0])):
        if isinstance(module, watch) and id(module) not in paths:
            paths[id(module)] = path
            modules[id(module)] = module
    # One slot per call, taken when the call starts (so a container comes before what it
    # calls) and filled when it returns.
    slots: list[tuple[str, str, mx.array] | None] = []
    recording: dict[type, type] = {}

    def recording_class(cls: type) -> type:
        if cls not in recording:

            def __call__(self: nn.Module, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
                path = paths.get(id(self))
                if path is None:  # a copy made during the forward pass: not part of the model
                    return cls.__call__(self, *args, **kwargs)
                slot = len(slots)
                slots.append(None)
                output = cls.__call__(self, *args, **kwargs)
                if not isinstance(output, mx.array):
                    raise TypeError(
                        f"[layer_statistics] every watched layer must return an"
                        f" mlx.core.array but {path!r} ({cls.__name__}) returned"
                        f" {type(output).__name__}."
                    )
                slots[slot] = (path, cls.__name__, output)
                return output

            namespace = {"__call__": __call__, "__module__": cls.__module__}
            recording[cls] = type(cls.__name__, (cls,), namespace)
        return recording[cls]

    originals = [(module, type(module)) for module in modules.values()]
    try:
        try:
            for module, cls in originals:
                module.__class__ = recording_class(cls)
            model(x)
        finally:
            for module, cls in originals:
                module.__class__ = cls
        return _statistics([slot for slot in slots if slot is not None])
    finally:
        # The recording classes and their closures form a reference cycle: empty it so the
        # recorded activations are freed now, not at the next garbage collection.
        slots.clear()
        recording.clear()
