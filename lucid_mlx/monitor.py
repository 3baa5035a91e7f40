"""Watching a network self-normalize: activation statistics layer by layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, cast

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx._validation import check_input
from lucid_mlx.activations import SELU
from lucid_mlx.layers import AlphaDropout, FeatureAlphaDropout

__all__ = ["WATCHED_BY_DEFAULT", "LayerStatistics", "layer_statistics", "mean_and_variance"]

#: The submodules whose outputs :func:`layer_statistics` records in a model by default: the
#: layers that make or move a SELU net's statistics.
WATCHED_BY_DEFAULT: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.SELU,
    SELU,
    AlphaDropout,
    FeatureAlphaDropout,
    nn.Dropout,
    nn.Dropout2d,
    nn.Dropout3d,
)


#: The most terms :func:`_blocked_sum` adds one after another.
_BLOCK = 16

#: What ``mx.compile`` returns, for a function and for a module alike (``mx.vmap``,
#: ``mx.grad`` and ``mx.checkpoint`` return the same type). Wrapping a module, it passes
#: ``isinstance(..., nn.Module)``.
_TRANSFORMED = type(mx.compile(lambda x: x))


def mean_and_variance(x: mx.array) -> tuple[float, float]:
    r"""The mean and the (population) variance of every element of ``x``, accurate at any size.

    MLX's CPU reductions add float32 terms one after another, so ``mx.mean`` and ``mx.var``
    lose accuracy as arrays grow: on the CPU, ``mx.var`` gives 0.977 for a standard-normal
    ``(8, 224, 224, 32)`` activation, and about 230 once its mean is 100. Here, in float32 on
    every backend, sums add at most 16 terms at a time (blocks of 16, then blocks of their
    sums, and so on), and the variance comes from the deviations from the mean, corrected by
    their own mean:

    .. math::

        \bar{x} = m + \bar{d}, \quad \sigma^2 = \overline{d^2} - \bar{d}^{\,2},
        \quad d_i = x_i - m, \quad m = \frac{1}{n} \sum_i x_i

    At 10^7 elements the error of the mean stays near 1e-7 of the standard deviation, and
    that of the variance near 1e-7 of the variance, whatever the mean, in about the time
    ``mx.mean`` and ``mx.var`` take together. Inputs are read as float32 (float64 as float64);
    complex input is refused.

    Args:
        x (mlx.core.array): Any shape; an empty array gives ``nan`` for both.

    Returns:
        tuple[float, float]: ``(mean, variance)``, the variance without Bessel's correction
        (``ddof=0``, as ``mx.var`` and ``numpy.var`` default to).

    Raises:
        TypeError: ``x`` is not an ``mlx.core.array``, or is complex.
    """
    if not isinstance(x, mx.array):  # any real dtype will do, so check_input only for the type
        check_input(x, "mean_and_variance", min_ndim=0)
    if x.dtype == mx.complex64:
        raise TypeError(
            "[mean_and_variance] 'x' must be a real array (bool, integer or floating) but got"
            " complex64: take x.real or mx.abs(x) first."
        )
    return _read(_moments(x))


def _moments(x: mx.array) -> mx.array:
    """``[shift, residual, variance]``, unevaluated (so that several are evaluated together).

    The mean is ``shift + residual``: :func:`_read` adds them in float64.
    """
    # float32 on every backend (Metal has no float64); float64 input stays float64.
    values = x.astype(mx.float64 if x.dtype == mx.float64 else mx.float32).reshape(-1)
    count = values.size
    shift = _blocked_sum(values) / count
    deviations = values - shift
    # The shift is the mean to float32 precision; the deviations' own mean is what it missed.
    # Uncorrected, a mean 10^4 times the standard deviation (or more) would add that miss,
    # squared, to the variance.
    residual = _blocked_sum(deviations) / count
    spread = _blocked_sum(mx.square(deviations)) / count
    return mx.stack([shift, residual, mx.maximum(spread - mx.square(residual), 0.0)])


def _read(moments: mx.array) -> tuple[float, float]:
    """``(mean, variance)`` from what :func:`_moments` gives, evaluated if it is not yet."""
    shift, residual, variance = cast(list[float], moments.tolist())
    return shift + residual, variance


def _blocked_sum(values: mx.array) -> mx.array:
    """The sum of a 1-D float32 array, adding at most ``_BLOCK`` terms at a time.

    A sum of ``n`` terms added one after another carries up to ``n - 1`` roundings; here it
    carries at most ``(_BLOCK - 1) * L``, with ``L = ceil(log(n) / log(_BLOCK))`` levels
    (6 for 10^7 elements, 10 for 2^40).
    """
    while values.size > _BLOCK:
        whole = values.size - values.size % _BLOCK
        sums = values[:whole].reshape(-1, _BLOCK).sum(axis=1)
        if whole < values.size:  # the last, shorter block
            sums = mx.concatenate([sums, values[whole:].sum(keepdims=True)])
        values = sums
    return values.sum()


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
    /,
    *args: Any,
    watch: tuple[type[nn.Module], ...] | None = None,
    **kwargs: Any,
) -> list[LayerStatistics]:
    """Run ``model`` on its inputs and return the mean and variance of each layer's output.

    A self-normalizing network keeps every layer near mean 0 and variance 1; this makes the
    claim checkable. Layers run in whatever mode they are in (``.train()`` applies dropout,
    ``.eval()`` does not). Each mean and variance is that of :func:`mean_and_variance`, over
    every element of the output, accurate at any size.

    - An ``mlx.nn.Sequential`` or a list of callables (without ``watch``): every layer, in
      order, each fed the previous one's output, starting from one array ``x``.
    - Any other ``mlx.nn.Module`` (or a ``Sequential`` with ``watch``): one forward pass,
      ``model(*args, **kwargs)``, so a forward pass with several inputs or keyword inputs is
      watched as it is called (``layer_statistics(model, x_omic=x, mask=m)`` runs
      ``model(x_omic=x, mask=m)``), recording the output of every submodule, at any depth,
      whose type is in ``watch``. MLX has no forward hooks: for the duration of the call each
      watched submodule's class is swapped for a recording subclass (so inside the call
      ``type(module)`` is that subclass), and every class is restored afterwards, also when
      the forward pass raises. A submodule called twice gives two records with the same
      path; one reachable by several paths is named by the shortest (then the first in
      sorted order). Records follow the order in which the calls start, so a watched
      container comes before the layers it calls. Layers called as functions
      (``nn.selu(x)``) are not seen, nor is anything inside a forward pass that
      ``mx.compile`` has traced: pass the model itself, not ``mx.compile(model)``.

    Args:
        model: An ``mlx.nn.Module``, or an iterable of callables (modules or functions) each
            taking and returning one array. Positional only.
        *args: The positional inputs of the model: for a ``Sequential`` or a list, the one
            array ``x`` its first layer takes.
        watch (tuple[type, ...], optional): The module types to record in a model.
            Default: ``None``: ``lucid_mlx.monitor.WATCHED_BY_DEFAULT`` (Linear, Conv1d-3d,
            MLX's SELU and this package's, the alpha-dropout layers and MLX's dropout
            layers) for a model, and every
            layer for a ``Sequential`` or a list. A keyword input of the model named
            ``watch`` cannot be passed through.
        **kwargs: The keyword inputs of the model's forward pass (a model only).

    Returns:
        list[LayerStatistics]: One ``(position, name, mean, variance, path)`` per layer
        call, in the order in which the calls start.

    Raises:
        TypeError: ``model`` is neither a module nor an iterable of callables, or is what
            ``mx.compile`` (or another MLX transformation) returns; a layer is not callable
            or returns something other than an array; an input is an array of another
            library (NumPy, PyTorch), or, for a ``Sequential`` or a list, the inputs are not
            one ``mlx.core.array``; or ``watch`` is not a non-empty tuple of module types.
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
    if isinstance(model, _TRANSFORMED):  # before the module check, which it passes
        raise TypeError(
            "[layer_statistics] 'model' must be a model or a list of layers, not a function"
            " transformed by MLX (mx.compile, mx.vmap, mx.grad and mx.checkpoint return one):"
            " a compiled function runs a traced graph, in which no layer can be watched. Pass"
            " the model itself: layer_statistics(model, x)."
        )
    if isinstance(model, nn.Sequential) and watch is None:
        x = _single_input(args, kwargs)
        return _sequence(list(model.layers), x, [f"layers.{i}" for i in range(len(model.layers))])
    if isinstance(model, nn.Module):
        for index, value in enumerate(args):
            _check_input(value, "x" if index == 0 else f"args[{index}]")
        for keyword, value in kwargs.items():
            _check_input(value, keyword)
        return _watched(model, args, kwargs, WATCHED_BY_DEFAULT if watch is None else watch)
    if isinstance(model, Iterable) and not isinstance(model, (str, bytes, mx.array)):
        if watch is not None:
            raise TypeError(
                "[layer_statistics] 'watch' applies to a model (an mlx.nn.Module) but 'model'"
                f" is a {type(model).__name__} of layers, each of which is recorded."
            )
        x = _single_input(args, kwargs)
        layers = list(model)
        return _sequence(layers, x, [str(i) for i in range(len(layers))])
    raise TypeError(
        "[layer_statistics] 'model' must be an mlx.nn.Module or a list of layers but got"
        f" {type(model).__name__}."
    )


def _check_input(value: object, name: str) -> None:
    """Refuse an array of another library (NumPy, PyTorch), which MLX layers cannot take."""
    if hasattr(value, "__array__") and not isinstance(value, mx.array):
        check_input(value, "layer_statistics", min_ndim=0, name=name)


def _single_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> mx.array:
    """The one array ``x`` that a Sequential or a list of layers passes from layer to layer."""
    if not args and list(kwargs) == ["x"]:
        args = (kwargs["x"],)
    elif kwargs or len(args) != 1:
        keywords = f" ({', '.join(kwargs)})" if kwargs else ""
        raise TypeError(
            "[layer_statistics] a Sequential or a list of layers takes one input, 'x', passed"
            f" from layer to layer, but got {len(args)} positional and {len(kwargs)} keyword"
            f" inputs{keywords}. A model whose forward pass takes several inputs is watched"
            " as a whole: pass that model."
        )
    x = args[0]
    # For anything but an mx.array check_input raises, naming the conversion where one exists.
    return x if isinstance(x, mx.array) else check_input(x, "layer_statistics", min_ndim=0)


def _name(layer: object) -> str:
    if isinstance(layer, nn.Module):
        return type(layer).__name__
    return cast(str, getattr(layer, "__name__", type(layer).__name__))


def _statistics(outputs: list[tuple[str, str, mx.array]]) -> list[LayerStatistics]:
    """One record per (path, name, output), the reductions evaluated together."""
    moments = [_moments(output) for _, _, output in outputs]
    mx.eval(moments)
    return [
        LayerStatistics(position, name, *_read(layer_moments), path)
        for position, ((path, name, _), layer_moments) in enumerate(
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
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    watch: tuple[type[nn.Module], ...],
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
            model(*args, **kwargs)
        finally:
            for module, cls in originals:
                module.__class__ = cls
        return _statistics([slot for slot in slots if slot is not None])
    finally:
        # The recording classes and their closures form a reference cycle: empty it so the
        # recorded activations are freed now, not at the next garbage collection.
        slots.clear()
        recording.clear()
