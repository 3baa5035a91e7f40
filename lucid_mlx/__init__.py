"""lucid_mlx: alpha dropout layers for self-normalizing (SELU) networks in Apple MLX."""

from importlib.metadata import PackageNotFoundError, version

from lucid_mlx.functional import alpha_dropout, feature_alpha_dropout
from lucid_mlx.layers import AlphaDropout, FeatureAlphaDropout

try:
    __version__ = version("lucid_mlx")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AlphaDropout",
    "FeatureAlphaDropout",
    "__version__",
    "alpha_dropout",
    "feature_alpha_dropout",
]
