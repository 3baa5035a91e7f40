"""lucid_mlx: alpha dropout layers for self-normalizing (SELU) networks in Apple MLX."""

# The first import of MLX, guarded: on Linux, `pip install lucid_mlx` without a backend extra
# installs MLX's Python part but no libmlx, and the raw error does not say what to install.
try:
    import mlx.core as _mlx_core  # noqa: F401 (imported to check that MLX loads)
except ImportError as error:
    raise ImportError(
        f"[lucid_mlx] MLX could not be imported ({error}). On Linux, MLX needs a backend"
        ' package: pip install "mlx[cpu]" for the CPU, or "mlx[cuda12]" or "mlx[cuda13]"'
        ' for NVIDIA GPUs (from a clone of lucid_mlx: pip install -e ".[cpu]").'
        " On macOS (Apple silicon), plain mlx includes Metal: pip install mlx."
    ) from error

from lucid_mlx import init
from lucid_mlx._version import __version__
from lucid_mlx.activations import SELU, selu
from lucid_mlx.functional import alpha_dropout, feature_alpha_dropout
from lucid_mlx.layers import AlphaDropout, FeatureAlphaDropout, set_eval_rule
from lucid_mlx.monitor import LayerStatistics, layer_statistics, mean_and_variance

__all__ = [
    "SELU",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "LayerStatistics",
    "__version__",
    "alpha_dropout",
    "feature_alpha_dropout",
    "init",
    "layer_statistics",
    "mean_and_variance",
    "selu",
    "set_eval_rule",
]
