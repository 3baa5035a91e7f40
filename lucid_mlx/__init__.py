"""lucid_mlx: alpha dropout layers for self-normalizing (SELU) networks in Apple MLX."""

from importlib.metadata import PackageNotFoundError, version

from lucid_mlx import init
from lucid_mlx.functional import alpha_dropout, feature_alpha_dropout
from lucid_mlx.layers import AlphaDropout, FeatureAlphaDropout
from lucid_mlx.monitor import LayerStatistics, layer_statistics

try:
    __version__ = version("lucid_mlx")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AlphaDropout",
    "FeatureAlphaDropout",
    "LayerStatistics",
    "__version__",
    "alpha_dropout",
    "feature_alpha_dropout",
    "init",
    "layer_statistics",
]
