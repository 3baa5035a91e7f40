"""The keep mask: 16 random bits per unit, compared with an integer threshold.

This module is the only one that draws random numbers. It relies on two behaviours of MLX
that MLX does not document; ``tests/test_mask.py::test_the_mlx_behaviour_the_mask_relies_on``
pins both and says which one changed if an MLX release breaks them:

1. **Raw bits.** MLX's Python API has no raw-bits function, but ``mx.random.split(key, m)``
   is one: its ``m`` keys are ``2 * m`` uint32 words straight from the counter-based generator
   (threefry), uniform and independent. Viewed as uint16 they are ``4 * m`` draws of 16 bits.
   MLX hashes once per 8 output bytes whatever the width, so 16 bits per unit cost half of
   the 32 that ``mx.random.bernoulli`` draws.
2. **The global generator.** A random call without a key splits ``mx.random.state[0]`` in
   two, keeps the first half as the new state and uses the second. Python cannot write the
   state, so :func:`global_key` lets an empty draw advance it and recomputes the key that draw
   consumed (and did not use); ``mx.compile`` merges the two splits. Masks drawn without a key
   therefore follow ``mx.random.seed`` and ``mx.compile(..., inputs=mx.random.state,
   outputs=mx.random.state)`` exactly as MLX's own random calls do.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx


def random_bits(key: mx.array, size: int) -> mx.array:
    """``size`` uniform 16-bit integers (uint16, row-major, not yet shaped): a pure function of
    ``key``. The result is ``(size / 4, 4)`` when ``size`` is a multiple of 4 (no reshape: a
    node fewer per call), else flat; callers reshape it."""
    bits = mx.random.split(key, (size + 3) // 4).view(mx.uint16)
    return bits if bits.size == size else bits.reshape(-1)[:size]


def global_key() -> mx.array:
    """A fresh key from MLX's global generator, advancing it as every ``mx.random`` call does."""
    state: mx.array = mx.random.state[0]  # type: ignore[index]  # typed as a plain object
    mx.random.uniform(shape=(0,))
    # split + reshape, not [1]: indexing adds a node, and a small eager call pays per node.
    return mx.split(mx.random.split(state), 2)[1].reshape(2)


def mask_shape(shape: Sequence[int], channel_axis: int | None) -> list[int]:
    """The mask's shape: ``shape`` itself element-wise (``channel_axis=None``), else ``shape``'s
    size on axis 0 and on ``channel_axis`` and 1 elsewhere (one unit per (sample, channel))."""
    if channel_axis is None:
        return list(shape)
    units = [1] * len(shape)
    units[0] = shape[0]
    units[channel_axis] = shape[channel_axis]
    return units
