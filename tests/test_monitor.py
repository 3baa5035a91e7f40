"""layer_statistics, and the self-normalization claim it exists to check."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import lucid_mlx
from lucid_mlx import FeatureAlphaDropout, LayerStatistics, layer_statistics


def test_statistics_per_layer_on_sequential_and_list():
    x = mx.array(np.arange(12, dtype=np.float32).reshape(3, 4))
    layers = [nn.Identity(), lambda v: v * 2.0, nn.ReLU()]
    for container in (nn.Sequential(*layers), layers):
        stats = layer_statistics(container, x)
        assert [s.position for s in stats] == [0, 1, 2]
        assert [s.name for s in stats] == ["Identity", "<lambda>", "ReLU"]
        values = np.arange(12, dtype=np.float64)
        assert stats[0] == LayerStatistics(0, "Identity", pytest.approx(values.mean()),
                                           pytest.approx(values.var()))  # fmt: skip
        assert stats[1].mean == pytest.approx(2 * values.mean())
        assert stats[1].variance == pytest.approx(4 * values.var())


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"'x' must be an mlx\.core\.array"):
        layer_statistics([nn.Identity()], np.zeros(3))
    not_layers = r"'layers' must be an mlx\.nn\.Sequential or a list of layers but got"
    with pytest.raises(TypeError, match=not_layers + " Linear"):
        layer_statistics(nn.Linear(3, 3), mx.zeros((2, 3)))
    with pytest.raises(TypeError, match=not_layers + " int"):
        layer_statistics(3, mx.zeros(3))
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
