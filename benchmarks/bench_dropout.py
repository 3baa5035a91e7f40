"""Forward and backward cost of alpha dropout, as ratios to one elementwise pass.

For each shape, every candidate is timed interleaved with the others, many times, and the
fastest call is kept; each figure is printed as a ratio to the floor, ``x * 1.5`` (one read
and one write of x, the traffic of a copy; its backward is one read and one write of the
cotangent), and as effective bandwidth: bytes of x read plus bytes of the result written,
per second, and that bandwidth as a fraction of the floor's. Peak memory is what one forward
call allocates beyond its inputs (``mx.get_peak_memory``).

Rows for the fused GPU kernel (``use_kernel=True``) appear where MLX has a Metal or CUDA
backend and the default device is the GPU; torch runs on CUDA where both it and MLX do.

    python benchmarks/bench_dropout.py            # default shapes
    python benchmarks/bench_dropout.py --repeats 50 --shapes 32x56x56x64

This is a benchmark, not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable
from datetime import date
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx import alpha_dropout, feature_alpha_dropout
from lucid_mlx._kernels import use_kernel_for
from lucid_mlx._math import SELU_SATURATION, alpha_dropout_coefficients

try:
    import torch
except ImportError:  # torch is optional: its rows are skipped
    torch = None

P = 0.2
FORWARD_TARGET = 1.5
BACKWARD_TARGET = 1.3


def naive_feature_alpha_dropout(x: mx.array, p: float) -> mx.array:
    """The textbook formula, eagerly: a full-size mask and one pass per operation."""
    a, b, _ = alpha_dropout_coefficients(p)
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    keep = mx.broadcast_to(mx.random.bernoulli(1 - p, mask_shape), x.shape).astype(x.dtype)
    return (x * keep + (1 - keep) * SELU_SATURATION) * a + b


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest wall time of each callable, calling them interleaved ``repeats`` times."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():  # warm-up: compile, allocate
        _sync(fn())
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            _sync(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _sync(result: object) -> None:
    if isinstance(result, mx.array):
        mx.eval(result)
    elif torch is not None and TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()
    # torch on the CPU is synchronous: nothing to wait for.


def _torch_device() -> str:
    if torch is not None and torch.cuda.is_available() and mx.cuda.is_available():
        return "cuda"
    return "cpu"


TORCH_DEVICE = _torch_device()


def peak_megabytes(fn: Callable[[], object]) -> float:
    mx.synchronize()
    baseline = mx.get_active_memory()
    mx.reset_peak_memory()
    _sync(fn())
    # The peak restarts from zero, so a call that allocates nothing reads as zero.
    return max(mx.get_peak_memory() - baseline, 0) / 2**20


def _kernel_runs(x: mx.array) -> bool:
    try:
        return use_kernel_for(True, x, "benchmark")
    except RuntimeError:
        return False


def candidates(shape: tuple[int, ...]) -> tuple[dict[str, Callable], dict[str, Callable]]:
    x = mx.random.normal(shape)
    cotangent = mx.random.normal(shape)
    mx.eval(x, cotangent)
    dropout2d = nn.Dropout2d(P)

    def vjp(f: Callable[[mx.array], mx.array]) -> Callable[[], mx.array]:
        return lambda: mx.vjp(f, [x], [cotangent])[1][0]

    # The layer inside a user's compiled step (random state captured, as README shows).
    random_state = [mx.random.state]
    in_compiled_step = partial(mx.compile, inputs=random_state, outputs=random_state)(
        lambda x: feature_alpha_dropout(x, P, use_kernel=False)
    )
    forward: dict[str, Callable] = {
        "floor x*1.5": lambda: x * 1.5,
        "FeatureAlphaDropout": lambda: feature_alpha_dropout(x, P, use_kernel=False),
        "  inside mx.compile(step)": lambda: in_compiled_step(x),
        "naive unfused formula": lambda: naive_feature_alpha_dropout(x, P),
        "mlx.nn.Dropout2d": lambda: dropout2d(x),
        "AlphaDropout (element-wise)": lambda: alpha_dropout(x, P, use_kernel=False),
        "eval mode": lambda: feature_alpha_dropout(x, P, training=False),
    }
    backward: dict[str, Callable] = {
        "floor x*1.5": vjp(lambda x: x * 1.5),
        "FeatureAlphaDropout": vjp(lambda x: feature_alpha_dropout(x, P, use_kernel=False)),
        "naive unfused formula": vjp(lambda x: naive_feature_alpha_dropout(x, P)),
        "mlx.nn.Dropout2d": vjp(dropout2d),
        "AlphaDropout (element-wise)": vjp(lambda x: alpha_dropout(x, P, use_kernel=False)),
    }
    if use_kernel_for(None, x, "benchmark") or _kernel_runs(x):
        forward["FeatureAlphaDropout kernel"] = lambda: feature_alpha_dropout(x, P, use_kernel=True)
        backward["FeatureAlphaDropout kernel"] = vjp(
            lambda x: feature_alpha_dropout(x, P, use_kernel=True)
        )
        forward["AlphaDropout kernel"] = lambda: alpha_dropout(x, P, use_kernel=True)
        backward["AlphaDropout kernel"] = vjp(lambda x: alpha_dropout(x, P, use_kernel=True))
    if torch is not None:
        # PyTorch's layout is (N, C, H, W): same data size, channels second.
        torch_shape = (shape[0], shape[-1], *shape[1:-1])
        tx = torch.randn(torch_shape, device=TORCH_DEVICE, requires_grad=True)
        tcot = torch.randn(torch_shape, device=TORCH_DEVICE)
        ty = torch.nn.functional.feature_alpha_dropout(tx, P, training=True)
        forward["torch floor x*1.5"] = lambda: tx.detach() * 1.5
        forward["torch feature_alpha_dropout"] = lambda: torch.nn.functional.feature_alpha_dropout(
            tx.detach(), P, training=True
        )
        backward["torch feature_alpha_dropout"] = lambda: torch.autograd.grad(
            ty, tx, tcot, retain_graph=True
        )
    return forward, backward


def report(shape: tuple[int, ...], repeats: int) -> None:
    forward, backward = candidates(shape)
    fwd = best_of(forward, repeats)
    bwd = best_of(backward, repeats)
    memory = {name: peak_megabytes(fn) for name, fn in forward.items() if "torch" not in name}
    floor_f, floor_b = fwd["floor x*1.5"], bwd["floor x*1.5"]
    moved = 2 * 4 * math.prod(shape)  # float32: read x once, write y once
    print(f"\nshape {shape} float32, p={P}; floor forward {floor_f * 1e3:.3f} ms")
    print(
        f"{'candidate':<30} {'forward':>8} {'GB/s':>7} {'of floor':>8}"
        f" {'backward':>9} {'GB/s':>7} {'of floor':>8} {'peak MiB':>9}"
    )
    for name in forward:
        cells = [f"{fwd[name] / floor_f:7.2f}x", f"{moved / fwd[name] / 1e9:7.1f}"]
        cells.append(f"{floor_f / fwd[name]:8.0%}")
        if name in bwd:
            cells += [f"{bwd[name] / floor_b:8.2f}x", f"{moved / bwd[name] / 1e9:7.1f}"]
            cells.append(f"{floor_b / bwd[name]:8.0%}")
        else:
            cells += [f"{'-':>9}", f"{'-':>7}", f"{'-':>8}"]
        cells.append(f"{memory[name]:9.1f}" if name in memory else f"{'-':>9}")
        print(f"{name:<30} " + " ".join(cells))
    ours_f = fwd["FeatureAlphaDropout"] / floor_f
    ours_b = bwd["FeatureAlphaDropout"] / floor_b
    faster = fwd["FeatureAlphaDropout"] <= fwd["mlx.nn.Dropout2d"]
    print(
        f"targets: forward <= {FORWARD_TARGET}x: {'met' if ours_f <= FORWARD_TARGET else 'MISSED'}"
        f"; not slower than Dropout2d: {'met' if faster else 'MISSED'}"
        f"; backward <= {BACKWARD_TARGET}x: {'met' if ours_b <= BACKWARD_TARGET else 'MISSED'}"
    )
    if "FeatureAlphaDropout kernel" in fwd:
        kernel_f = floor_f / fwd["FeatureAlphaDropout kernel"]
        kernel_b = floor_b / bwd["FeatureAlphaDropout kernel"]
        wins = (
            fwd["FeatureAlphaDropout kernel"] <= fwd["FeatureAlphaDropout"]
            and bwd["FeatureAlphaDropout kernel"] <= bwd["FeatureAlphaDropout"]
        )
        print(
            f"kernel: {kernel_f:.0%} / {kernel_b:.0%} of the floor's bandwidth (target 85%);"
            f" at least as fast as the ops path forward and backward: {'yes' if wins else 'NO'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds per shape")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["32x56x56x64", "64x28x28x128", "128x14x14x256"],
        help="NHWC shapes, e.g. 32x56x56x64",
    )
    args = parser.parse_args()
    device = mx.device_info().get("device_name", "unknown device")
    torch_text = ""
    if torch is not None:
        torch_text = f", torch {torch.__version__} on {TORCH_DEVICE}"
        if TORCH_DEVICE == "cpu":
            torch_text += f" ({torch.get_num_threads()} threads)"
    print(
        f"lucid_mlx benchmark, {date.today()}, MLX {mx.__version__} on {mx.default_device()}"
        f" ({device}), {platform.machine()} {platform.system()}{torch_text}"
    )
    for text in args.shapes:
        report(tuple(int(n) for n in text.split("x")), args.repeats)


if __name__ == "__main__":
    main()
