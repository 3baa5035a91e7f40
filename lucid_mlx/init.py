"""Initialization for self-normalizing networks, in the style of :mod:`mlx.nn.init`."""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx._validation import check_key

__all__ = ["fan_in", "lecun_normal", "selu_init"]

# Layers whose weight is (out, in) or (out, *kernel, in). Transposed convolutions are left
# out on purpose: their fan-in is not the product of the weight's trailing axes.
_SELU_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fan_in(shape: tuple[int, ...] | list[int]) -> int:
    """Inputs feeding one output unit of an MLX weight: the product of all but the first axis.

    That is ``in`` for ``Linear`` weights ``(out, in)`` and ``prod(kernel) * in`` for
    ``ConvNd`` weights ``(out, *kernel, in)`` (MLX keeps input channels last).
    """
    if isinstance(shape, str) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in shape
    ):
        raise TypeError(f"[fan_in] 'shape' must be a sequence of ints but got {shape!r}.")
    if any(n < 0 for n in shape):
        raise ValueError(f"[fan_in] 'shape' must not have negative sizes but got {shape!r}.")
    if len(shape) < 2:
        raise ValueError(
            "[fan_in] the weight must have at least 2 dimensions, (out, in) or"
            f" (out, *kernel, in), but got shape {shape!r}."
        )
    fan = math.prod(shape[1:])
    if fan == 0:
        raise ValueError(f"[fan_in] the weight's fan-in must be positive but got shape {shape!r}.")
    return fan


def lecun_normal(dtype: mx.Dtype = mx.float32) -> Callable[..., mx.array]:
    r"""An initializer drawing from :math:`\mathcal{N}(0, 1/\text{fan\_in})` (LeCun normal).

    This is the initialization SELU networks need to self-normalize (Klambauer et al. 2017).
    Like the functions of :mod:`mlx.nn.init`, it returns a function that takes an array and
    returns a new array of the same shape; the input's values are ignored.

    Args:
        dtype (mlx.core.Dtype): The dtype of the result. Default: ``mlx.core.float32``.

    Returns:
        Callable[[mlx.core.array, mlx.core.array | None], mlx.core.array]: ``init(a, key=None)``.

    Example:
        >>> weight = lucid_mlx.init.lecun_normal()(mx.zeros((64, 3, 3, 32)))  # std 1/sqrt(288)
    """

    if not isinstance(dtype, mx.Dtype) or not mx.issubdtype(dtype, mx.floating):
        raise TypeError(
            f"[lecun_normal] 'dtype' must be a floating-point mlx.core.Dtype but got {dtype!r}."
        )

    def initializer(a: mx.array, key: mx.array | None = None) -> mx.array:
        if not isinstance(a, mx.array):
            # Like mlx.nn.init's initializers, it takes the array it replaces (for its shape).
            raise TypeError(
                f"[lecun_normal] 'a' must be an mlx.core.array (the array to replace) but got"
                f" {type(a).__name__}."
            )
        key = check_key(key, "lecun_normal")
        std = 1.0 / math.sqrt(fan_in(a.shape))
        return mx.random.normal(a.shape, dtype=dtype, scale=std, key=key)

    return initializer


def selu_init(model: nn.Module, *, key: mx.array | None = None) -> nn.Module:
    """Re-initialize ``model`` for SELU: LeCun-normal weights and zero biases.

    Every ``Linear``, ``Conv1d``, ``Conv2d`` and ``Conv3d`` in ``model`` (at any depth) gets
    a weight drawn from :func:`lecun_normal` in the weight's own dtype and, if it has a bias,
    a bias of zeros. Other modules are untouched: transposed convolutions on purpose (their
    fan-in is not the product of the weight's trailing axes), norms and embeddings. The model
    is changed in place and returned.

    Args:
        model (mlx.nn.Module): The model to re-initialize.
        key (mlx.core.array, optional): PRNG key; split once per layer. Default: ``None``
            (MLX's global generator).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"[selu_init] 'model' must be an mlx.nn.Module but got {type(model).__name__}."
        )
    key = check_key(key, "selu_init")
    layers = [
        module
        for module in model.modules()  # type: ignore[no-untyped-call]
        if isinstance(module, _SELU_LAYERS)
    ]
    keys = mx.random.split(key, len(layers)) if key is not None and layers else None
    for index, layer in enumerate(layers):
        layer_key = None if keys is None else keys[index]
        layer.weight = lecun_normal(layer.weight.dtype)(layer.weight, key=layer_key)
        if "bias" in layer:
            layer.bias = mx.zeros_like(layer.bias)
    return model
