"""A short demo: FeatureAlphaDropout keeps a SELU network's activations normalized.

Pushes N(0, 1) NHWC input through a stack of SELU convolutions (LeCun-normal weights) with
FeatureAlphaDropout after each, and prints the activations' mean and variance per layer,
beside the same stack with mlx.nn.Dropout2d.

    python examples/demo.py --seed 0 --depth 16
"""

from __future__ import annotations

import argparse
import math

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx import FeatureAlphaDropout


def selu_conv_stack(depth: int, channels: int, dropout: nn.Module) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        fan_in = channels * 3 * 3
        conv.weight = mx.random.normal(conv.weight.shape) / math.sqrt(fan_in)  # LeCun normal
        layers += [conv, nn.SELU(), dropout]
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--p", type=float, default=0.2)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU exists")
    args = parser.parse_args()
    if args.cpu:
        mx.set_default_device(mx.cpu)
    mx.random.seed(args.seed)

    x = mx.random.normal((32, 16, 16, 32))
    variants = {
        "FeatureAlphaDropout": selu_conv_stack(args.depth, 32, FeatureAlphaDropout(args.p)),
        "mlx.nn.Dropout2d": selu_conv_stack(args.depth, 32, nn.Dropout2d(args.p)),
    }
    print(f"{'layer':>5}  " + "  ".join(f"{name + ' mean/var':>32}" for name in variants))
    activations = dict.fromkeys(variants, x)
    for depth in range(args.depth):
        cells = []
        for name, layers in variants.items():
            h = activations[name]
            for layer in layers[3 * depth : 3 * depth + 3]:
                h = layer(h)
            activations[name] = h
            cells.append(f"{h.mean().item():+15.3f} {h.var().item():16.3f}")
        print(f"{depth + 1:>5}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
