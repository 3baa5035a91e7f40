"""layer_statistics, and the self-normalization claim it exists to check."""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import lucid_mlx
from lucid_mlx import FeatureAlphaDropout, LayerStatistics, layer_statistics
from lucid_mlx.activations import SELU


def test_statistics_per_layer_on_sequential_and_list():
    x = mx.array(np.arange(12, dtype=np.float32).reshape(3, 4))
    layers = [nn.Identity(), lambda v: v * 2.0, nn.ReLU()]
    for container in (nn.Sequential(*layers), layers):
        stats = layer_statistics(container, x)
        assert [s.position for s in stats] == [0, 1, 2]
        assert [s.name for s in stats] == ["Identity", "<lambda>", "ReLU"]
        values = np.arange(12, dtype=np.float64)
        path = "layers.0" if isinstance(container, nn.Sequential) else "0"
        assert stats[0] == LayerStatistics(0, "Identity", pytest.approx(values.mean()),
                                           pytest.approx(values.var()), path)  # fmt: skip
        assert stats[2].path == ("layers.2" if isinstance(container, nn.Sequential) else "2")
        assert stats[1].mean == pytest.approx(2 * values.mean())
        assert stats[1].variance == pytest.approx(4 * values.var())


def test_rejects_bad_arguments():
    with pytest.raises(
        TypeError, match=r"'x' must be an mlx\.core\.array but got ndarray\. Convert it with"
    ):
        layer_statistics([nn.Identity()], np.zeros(3))
    not_layers = r"'model' must be an mlx\.nn\.Module or a list of layers but got"
    with pytest.raises(TypeError, match=not_layers + " int"):
        layer_statistics(3, mx.zeros(3))
    with pytest.raises(TypeError, match=not_layers + " str"):
        layer_statistics("abc", mx.zeros(3))
    with pytest.raises(TypeError, match=r"'watch' must be None or a non-empty tuple"):
        layer_statistics(nn.Linear(3, 3), mx.zeros((2, 3)), watch=nn.Linear)
    with pytest.raises(TypeError, match=r"'watch' must be None or a non-empty tuple"):
        layer_statistics(nn.Linear(3, 3), mx.zeros((2, 3)), watch=(int,))
    with pytest.raises(TypeError, match=r"'watch' applies to a model"):
        layer_statistics([nn.Identity()], mx.zeros(3), watch=(nn.Linear,))
    with pytest.raises(TypeError, match="layer 1 is int"):
        layer_statistics([nn.Identity(), 3], mx.zeros(3))


@pytest.mark.parametrize(
    ("layer", "returned"), [(lambda v: (v, v), "tuple"), (lambda v: None, "NoneType")]
)
def test_a_layer_that_does_not_return_an_array_is_named(layer, returned):
    with pytest.raises(
        TypeError,
        match=rf"\[layer_statistics\] every layer must return an mlx\.core\.array but layer 1"
        rf" \(<lambda>\) returned {returned}\.",
    ):
        layer_statistics([nn.Identity(), layer], mx.zeros(3))


def _selu_stack(depth: int, channels: int, dropout: nn.Module, seed: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for _ in range(depth):
        blocks += [nn.Conv2d(channels, channels, 3, padding=1), nn.SELU(), dropout]
    return lucid_mlx.init.selu_init(nn.Sequential(*blocks), key=mx.random.key(seed))


# Measured before choosing the band (16 blocks, 16 channels, 16x16, batch 16, p=0.2, seeds
# 0-5): FeatureAlphaDropout kept every block's variance in [0.78, 1.16] and |mean| <= 0.16;
# Dropout2d's variance rose above 1.09 at the first block and reached 1.9-2.7 by the last.
BAND_VARIANCE = (0.6, 1.4)
BAND_MEAN = 0.3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deep_selu_stack_stays_normalized_with_feature_alpha_dropout_only(seed):
    x = mx.random.normal((16, 16, 16, 16), key=mx.random.key(100 + seed))

    def block_outputs(dropout: nn.Module) -> list[LayerStatistics]:
        mx.random.seed(seed)
        return layer_statistics(_selu_stack(16, 16, dropout, seed), x)[2::3]

    alpha = block_outputs(FeatureAlphaDropout(0.2))
    for s in alpha:
        assert BAND_VARIANCE[0] <= s.variance <= BAND_VARIANCE[1], s
        assert abs(s.mean) <= BAND_MEAN, s
    inverted = block_outputs(nn.Dropout2d(0.2))
    assert max(s.variance for s in inverted) > BAND_VARIANCE[1] + 0.2


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SELU()
        self.drop = FeatureAlphaDropout(0.2)

    def __call__(self, x: mx.array) -> mx.array:
        return self.drop(self.act(self.conv(x)))


class Net(nn.Module):
    """A custom model: nested children, a list of blocks, a head called twice, a function."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layers = [Block(4), Block(4)]
        self.head = nn.Linear(4, 4)
        self.fail_at = fail_at

    def __call__(self, x: mx.array) -> mx.array:
        x = nn.selu(self.stem(x))  # a function, not a module: not recorded
        for index, block in enumerate(self.layers):
            if index == self.fail_at:
                raise RuntimeError("mid-forward")
            x = block(x)
        pooled = x.mean(axis=(1, 2))
        return self.head(self.head(pooled))  # one shared submodule, called twice


def _state(model: nn.Module) -> list[tuple[str, type, dict]]:
    return [(path, type(m), dict(vars(m))) for path, m in model.named_modules()]


def test_a_custom_model_is_watched_by_path():
    model = lucid_mlx.init.selu_init(Net(), key=mx.random.key(0))
    model.eval()
    x = mx.random.normal((2, 8, 8, 3), key=mx.random.key(1))
    stats = layer_statistics(model, x)
    assert [(s.path, s.name) for s in stats] == [
        ("stem", "Conv2d"),
        ("layers.0.conv", "Conv2d"),
        ("layers.0.act", "SELU"),
        ("layers.0.drop", "FeatureAlphaDropout"),
        ("layers.1.conv", "Conv2d"),
        ("layers.1.act", "SELU"),
        ("layers.1.drop", "FeatureAlphaDropout"),
        ("head", "Linear"),
        ("head", "Linear"),  # once per call
    ]
    assert [s.position for s in stats] == list(range(9))
    # Each record is the statistics of that call's output, computed independently here.
    stem = model.stem(x)
    blocks = model.layers[1](model.layers[0](nn.selu(stem)))
    first_head = model.head(blocks.mean(axis=(1, 2)))
    for record, output in ((stats[0], stem), (stats[7], first_head)):
        assert record.mean == pytest.approx(mx.mean(output).item(), rel=1e-5, abs=1e-6)
        assert record.variance == pytest.approx(mx.var(output).item(), rel=1e-5)
    only = layer_statistics(model, x, watch=(FeatureAlphaDropout,))
    assert [s.path for s in only] == ["layers.0.drop", "layers.1.drop"]


def test_the_model_is_left_as_it_was():
    model = lucid_mlx.init.selu_init(Net(), key=mx.random.key(0))
    model.eval()
    x = mx.random.normal((2, 8, 8, 3), key=mx.random.key(1))
    before, expected = _state(model), model(x)
    layer_statistics(model, x)
    assert _state(model) == before
    assert mx.array_equal(model(x), expected)


def test_a_model_that_raises_mid_forward_is_restored():
    model = lucid_mlx.init.selu_init(Net(fail_at=1), key=mx.random.key(0))
    before = _state(model)
    with pytest.raises(RuntimeError, match="mid-forward"):
        layer_statistics(model, mx.random.normal((2, 8, 8, 3)))
    assert _state(model) == before
    model.fail_at = None
    assert model(mx.zeros((1, 8, 8, 3))).shape == (1, 4)


def test_a_watched_layer_that_returns_no_array_is_named():
    class Pair(nn.Linear):
        def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:  # type: ignore[override]
            y = super().__call__(x)
            return y, y

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair(2, 2)

        def __call__(self, x: mx.array) -> mx.array:
            return self.pair(x)[0]

    model = Model()
    with pytest.raises(TypeError, match=r"'pair' \(Pair\) returned tuple"):
        layer_statistics(model, mx.zeros((1, 2)))
    assert type(model.pair) is Pair


def test_a_module_reachable_by_several_paths_is_named_by_the_shortest_then_sorted():
    class Inner(nn.Module):
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.linear = linear

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            shared = nn.Linear(2, 2)
            self.inner = Inner(shared)  # "inner.linear": one level deeper
            self.zeta = shared  # same depth as "alpha", later in sorted order
            self.alpha = shared

        def __call__(self, x: mx.array) -> mx.array:
            return self.inner.linear(x)

    assert [s.path for s in layer_statistics(Model(), mx.zeros((1, 2)))] == ["alpha"]


def test_records_follow_the_order_in_which_the_calls_start():
    model = Net()
    x = mx.zeros((1, 8, 8, 3))
    stats = layer_statistics(model, x, watch=(Block, nn.Conv2d))
    # Each block is recorded before the convolution it calls.
    assert [s.path for s in stats] == [
        "stem",
        "layers.0",
        "layers.0.conv",
        "layers.1",
        "layers.1.conv",
    ]
    assert [s.position for s in stats] == list(range(5))


def test_a_copy_made_during_the_forward_pass_is_not_recorded():
    import copy

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def __call__(self, x: mx.array) -> mx.array:
            return copy.deepcopy(self.linear)(self.linear(x))

    model = Model()
    assert [s.path for s in layer_statistics(model, mx.zeros((1, 2)))] == ["linear"]
    assert type(model.linear) is nn.Linear


def test_recorded_outputs_are_freed_when_the_call_returns():
    import gc

    model = nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)])
    x = mx.zeros((1024, 256))
    mx.eval(model.parameters(), x)
    gc.collect()
    gc.disable()  # the outputs must not wait for a garbage collection
    try:
        baseline = mx.get_active_memory()
        layer_statistics(model, x, watch=(nn.Linear,))
        retained = mx.get_active_memory() - baseline
    finally:
        gc.enable()
    # Four outputs of 1 MiB each would stay alive if anything still held them.
    assert retained < 2**20, retained


class TwoInputs(nn.Module):
    """A forward pass with a keyword input, as multi-modal models have."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(3, 2)
        self.omic = nn.Linear(4, 2)

    def __call__(self, x: mx.array, *, x_omic: mx.array, scale: float = 1.0) -> mx.array:
        return scale * (self.image(x) + self.omic(x_omic))


def test_the_inputs_are_passed_to_the_forward_pass_as_given():
    model = TwoInputs()
    x, omic = mx.ones((2, 3)), mx.ones((2, 4))
    stats = layer_statistics(model, x, x_omic=omic, scale=2.0)
    assert [s.path for s in stats] == ["image", "omic"]
    assert stats[1].mean == pytest.approx(mx.mean(model.omic(omic)).item())
    only = layer_statistics(model, x_omic=omic, x=x, watch=(nn.Linear,))
    assert [(s.mean, s.variance) for s in only] == [(s.mean, s.variance) for s in stats]
    # One array, by position or as x=, for a Sequential and a list, as before.
    sequential = nn.Sequential(nn.Identity())
    assert layer_statistics(sequential, x=x) == layer_statistics(sequential, x)


def test_an_array_of_another_library_is_refused_with_the_conversion():
    model = TwoInputs()

    def refused(name: str) -> str:
        return (
            rf"\[layer_statistics\] '{re.escape(name)}' must be an mlx\.core\.array but got"
            rf" ndarray\. Convert it with mx\.array\({re.escape(name)}\)\."
        )

    with pytest.raises(TypeError, match=refused("x")):
        layer_statistics(model, np.ones((2, 3)), x_omic=mx.ones((2, 4)))
    with pytest.raises(TypeError, match=refused("x_omic")):
        layer_statistics(model, mx.ones((2, 3)), x_omic=np.ones((2, 4)))
    with pytest.raises(TypeError, match=refused("args[1]")):
        layer_statistics(model, mx.ones((2, 3)), np.ones((2, 4)))
    assert type(model.image) is nn.Linear


def test_a_sequential_takes_one_input():
    with pytest.raises(
        TypeError,
        match=r"a Sequential or a list of layers takes one input, 'x', passed from layer to"
        r" layer, but got 1 positional and 1 keyword inputs \(mask\)\. A model whose",
    ):
        layer_statistics(nn.Sequential(nn.Identity()), mx.zeros(3), mask=mx.zeros(3))
    with pytest.raises(TypeError, match=r"but got 0 positional and 0 keyword inputs\."):
        layer_statistics([nn.Identity()])


@pytest.mark.parametrize(
    "transformed",
    [
        lambda model: mx.compile(model),
        lambda model: mx.compile(model.__call__),
        lambda model: mx.vmap(model),
    ],
    ids=["compile", "compile-call", "vmap"],
)
@pytest.mark.parametrize("model", [nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.SELU())])
def test_a_compiled_model_is_refused_with_what_to_pass(transformed, model):
    with pytest.raises(
        TypeError,
        match=r"'model' must be a model or a list of layers, not a function transformed by MLX"
        r" .*Pass the model itself: layer_statistics\(model, x\)\.",
    ):
        layer_statistics(transformed(model), mx.zeros((1, 2)))


def test_both_selu_modules_are_watched_by_default():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.selu = SELU()
            self.mlx_selu = nn.SELU()

        def __call__(self, x: mx.array) -> mx.array:
            return self.mlx_selu(self.selu(self.linear(x)))

    stats = layer_statistics(Model(), mx.ones((3, 2)))
    assert [(s.path, s.name) for s in stats] == [
        ("linear", "Linear"), ("selu", "SELU"), ("mlx_selu", "SELU")
    ]  # fmt: skip
