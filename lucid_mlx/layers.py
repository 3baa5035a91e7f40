"""Module wrappers: each ``__call__`` is one call of the functional form."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx._validation import (
    check_channel_axis,
    check_eval_rule,
    check_inplace,
    check_optional_bool,
    check_probability,
)
from lucid_mlx.functional import alpha_dropout, feature_alpha_dropout

__all__ = ["AlphaDropout", "FeatureAlphaDropout", "set_eval_rule"]


class _AlphaDropoutBase(nn.Module):
    """Configuration and repr shared by the two layers; subclasses define ``__call__``."""

    def __init__(self, p: float, inplace: bool, use_kernel: bool | None, eval_rule: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        where = type(self).__name__
        # Plain Python attributes: MLX registers only arrays, lists and dicts as parameters.
        self.p = check_probability(p, where)
        self.inplace = check_inplace(inplace, where, f"{where}({self.p!r}, ")
        self.use_kernel = check_optional_bool(use_kernel, "use_kernel", where)
        self.eval_rule = check_eval_rule(eval_rule, where)

    def _fields(self) -> list[str]:
        return [f"p={self.p}", f"inplace={self.inplace}"]

    def _check_call(self, key: object, unexpected: dict[str, object]) -> None:
        """``layer(x, False)`` or ``layer(x, training=False)``: a ported functional call."""
        where = type(self).__name__
        mode = "A layer's mode is set with .train() and .eval(), not by an argument of the call."
        if isinstance(key, bool):
            raise TypeError(
                f"[{where}] 'key' must be None or a PRNG key from mlx.core.random.key but got"
                f" {key!r} (bool). {mode}"
            )
        if unexpected:
            names = ", ".join(repr(name) for name in unexpected)
            raise TypeError(
                f"[{where}] a call takes 'x' and 'key' only but got {names}."
                + (f" {mode}" if "training" in unexpected else "")
            )

    def extra_repr(self) -> str:
        fields = self._fields()
        # use_kernel and eval_rule are shown only when they differ from the defaults.
        if self.use_kernel is not None:
            fields.append(f"use_kernel={self.use_kernel}")
        if self.eval_rule != "identity":
            fields.append(f"eval_rule={self.eval_rule!r}")
        return ", ".join(fields)

    def _extra_repr(self) -> str:
        return self.extra_repr()


class FeatureAlphaDropout(_AlphaDropoutBase):
    r"""Channel-wise alpha dropout for self-normalizing (SELU) networks.

    In training mode each (sample, channel) feature map is wholly kept or set to the SELU
    saturation value :math:`\alpha' = -\lambda\alpha`, then mapped by :math:`a y + b` so that
    zero-mean, unit-variance input keeps mean 0 and variance 1 (Klambauer et al. 2017,
    https://arxiv.org/abs/1706.02515). In eval mode (``layer.eval()``) it returns its input.

    Axis 0 is always the batch axis, whatever the input's rank: a 3-D input ``(A, B, C)``
    draws one mask entry per ``(a, c)`` pair, where ``mlx.nn.Dropout2d`` takes ``(H, W, C)``
    as one unbatched image. Add a batch axis (``x[None]``) for a single sample.

    See :func:`lucid_mlx.feature_alpha_dropout` for the functional equivalent and the math.

    Args:
        p (float): Probability of dropping a channel, in ``[0, 1]``. Default: ``0.5``.
        inplace (bool): Accepted for parity with PyTorch; MLX arrays are immutable, so the
            result is a new array either way (MLX reuses the input's buffer by itself when
            nothing else holds the input). Default: ``False``.
        channel_axis (int): The channel axis, never the batch axis ``0``. ``-1`` for MLX's
            channels-last layouts, ``1`` for PyTorch-style ``(N, C, *)``. Default: ``-1``.
        use_kernel (bool, optional): Fused GPU kernel or compiled ops path; see
            :func:`lucid_mlx.feature_alpha_dropout`. Default: ``None`` (automatic).
        eval_rule (str): In eval mode, ``"identity"`` returns the input; ``"mean"`` returns
            ``a * (1 - p) * x`` (``p`` as realized to 16 bits), the train-mode output's mean (see
            :func:`lucid_mlx.feature_alpha_dropout`; :func:`set_eval_rule` switches every
            layer of a model). Default: ``"identity"``.

    Shape:
        - Input: :math:`(N, *, C, *)`, at least 2 dimensions, batch first.
        - Output: the same shape as the input.
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        channel_axis: int = -1,
        use_kernel: bool | None = None,
        eval_rule: str = "identity",
    ) -> None:
        super().__init__(p, inplace, use_kernel, eval_rule)
        self.channel_axis = check_channel_axis(channel_axis, type(self).__name__)

    def __call__(self, x: mx.array, key: mx.array | None = None, **unexpected: object) -> mx.array:
        self._check_call(key, unexpected)
        return feature_alpha_dropout(
            x,
            self.p,
            training=self.training,
            key=key,
            channel_axis=self.channel_axis,
            use_kernel=self.use_kernel,
            eval_rule=self.eval_rule,
        )

    #: Same as calling the layer; the name PyTorch code uses.
    forward = __call__

    def _fields(self) -> list[str]:
        return [*super()._fields(), f"channel_axis={self.channel_axis}"]


class AlphaDropout(_AlphaDropoutBase):
    r"""Element-wise alpha dropout for self-normalizing (SELU) networks.

    Each element is kept or set to :math:`\alpha' = -\lambda\alpha` independently, then
    mapped by :math:`a y + b` to keep mean 0 and variance 1 (Klambauer et al. 2017,
    https://arxiv.org/abs/1706.02515). In eval mode it returns its input. MLX itself has no
    alpha dropout.

    See :func:`lucid_mlx.alpha_dropout` for the functional equivalent.

    Args:
        p (float): Probability of dropping an element, in ``[0, 1]``. Default: ``0.5``.
        inplace (bool): Accepted for parity with PyTorch; see :class:`FeatureAlphaDropout`.
            Default: ``False``.
        use_kernel (bool, optional): Fused GPU kernel or compiled ops path; see
            :func:`lucid_mlx.feature_alpha_dropout`. Default: ``None`` (automatic).
        eval_rule (str): ``"identity"`` or ``"mean"`` in eval mode; see
            :class:`FeatureAlphaDropout`. Default: ``"identity"``.

    Shape:
        - Input: any shape.
        - Output: the same shape as the input.
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        use_kernel: bool | None = None,
        eval_rule: str = "identity",
    ) -> None:
        super().__init__(p, inplace, use_kernel, eval_rule)

    def __call__(self, x: mx.array, key: mx.array | None = None, **unexpected: object) -> mx.array:
        self._check_call(key, unexpected)
        return alpha_dropout(
            x,
            self.p,
            training=self.training,
            key=key,
            use_kernel=self.use_kernel,
            eval_rule=self.eval_rule,
        )

    #: Same as calling the layer; the name PyTorch code uses.
    forward = __call__


def set_eval_rule(model: nn.Module, eval_rule: str) -> nn.Module:
    """Set ``eval_rule`` on every :class:`AlphaDropout` and :class:`FeatureAlphaDropout` in
    ``model`` (the model itself included), and return ``model``.

    A function compiled with ``mx.compile`` keeps the rule it was traced with, as it keeps
    the training mode, and MLX reuses the trace of a callable it has compiled before
    (``mx.compile(model)`` again does not retrace): after switching, compile a new function,
    e.g. ``mx.compile(lambda x: model(x))``.

    Args:
        model (mlx.nn.Module): The model whose alpha-dropout layers to switch.
        eval_rule (str): ``"identity"`` or ``"mean"``; see :class:`FeatureAlphaDropout`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"[set_eval_rule] 'model' must be an mlx.nn.Module but got {type(model).__name__}."
        )
    rule = check_eval_rule(eval_rule, "set_eval_rule")
    for module in model.modules():  # type: ignore[no-untyped-call]
        if isinstance(module, _AlphaDropoutBase):
            module.eval_rule = rule
    return model
