"""Forward and backward cost of alpha dropout, as ratios to one elementwise pass.

For each shape, every candidate is timed interleaved with the others, many times, and the
fastest call is kept. Each figure is a ratio to the floor of the same dtype: ``x * 1.5``
(one read and one write of x, the traffic of a copy), its backward (one read and one write
of the cotangent), or both in one compiled function for the "fwd+bwd" column. Peak memory
is what one forward call allocates beyond its inputs (``mx.get_peak_memory``), also as a
multiple of the output's size.

Then small eager calls, where fixed per-call cost dominates: microseconds per call (fastest
of many) and the graph nodes one call builds, counted in ``mx.export_to_dot``'s output.

Rows for the fused GPU kernel (``use_kernel=True``) appear where MLX has a Metal or CUDA
backend and the default device is the GPU; torch rows where torch is installed (on CUDA
where both it and MLX have it). A skipped row is named, with the reason.

    python benchmarks/bench_dropout.py            # default shapes
    python benchmarks/bench_dropout.py --repeats 50 --shapes 32x56x56x64

This is a benchmark, not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from lucid_mlx import _kernels, alpha_dropout, feature_alpha_dropout
from lucid_mlx._math import SELU_SATURATION, alpha_dropout_coefficients


class Shapes(list[tuple[int, ...]]):
    """A list of shapes that ``--help`` shows as they are typed: ``32x56x56x64 ...``."""

    def __str__(self) -> str:
        return " ".join("x".join(map(str, shape)) for shape in self)


P = 0.2
DEFAULT_SHAPES = Shapes([(32, 56, 56, 64), (64, 28, 28, 128), (128, 14, 14, 256)])
DEFAULT_SMALL_SHAPES = Shapes([(32, 8, 8, 16), (128, 8, 8, 32)])

# The project's performance targets: ratios to the floor of the same dtype (docs/performance.md).
FEATURE_FORWARD = 1.2
FEATURE_BACKWARD = 1.15
HALF_BACKWARD = 1.3
ELEMENT_FORWARD = 8.0
ELEMENT_STEP = 6.0
ELEMENT_PEAK = 1.5

FLOOR = "floor x*1.5"
FEATURE = "FeatureAlphaDropout"
FEATURE_STEP = "  inside mx.compile(step)"
FEATURE_HALF = "FeatureAlphaDropout bfloat16"
ELEMENT = "AlphaDropout (element-wise)"
ELEMENT_STEP_ROW = "  inside mx.compile(step) "
DROPOUT2D = "mlx.nn.Dropout2d"


# ---- flags -------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer but got {text!r}")
    return value


def nhwc_shape(text: str) -> tuple[int, int, int, int]:
    """``"32x56x56x64"``: four positive integers joined by ``x``, batch first, channels last."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(re.fullmatch(r"[0-9]+", part) for part in parts):
        raise argparse.ArgumentTypeError(
            f"must be an NHWC shape, four positive integers joined by 'x' such as"
            f" 32x56x56x64, but got {text!r}"
        )
    n, h, w, c = (int(part) for part in parts)
    if min(n, h, w, c) < 1:
        raise argparse.ArgumentTypeError(f"must have no axis of size 0 but got {text!r}")
    return n, h, w, c


nhwc_shape.__name__ = "NHWC shape"  # argparse quotes the type's name in its own errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=30, help="interleaved rounds per shape"
    )
    parser.add_argument(
        "--shapes",
        type=nhwc_shape,
        nargs="+",
        default=DEFAULT_SHAPES,
        metavar="NxHxWxC",
        help="NHWC shapes for the forward/backward table",
    )
    parser.add_argument(
        "--small-repeats",
        type=positive_int,
        default=1000,
        help="interleaved rounds per shape for the small eager calls",
    )
    parser.add_argument(
        "--small-shapes",
        type=nhwc_shape,
        nargs="*",
        default=DEFAULT_SMALL_SHAPES,
        metavar="NxHxWxC",
        help="NHWC shapes for the small-eager-call table (none: skip it)",
    )
    args = parser.parse_args(argv)
    args.shapes = [tuple(s) for s in args.shapes]
    return args


# ---- timing ------------------------------------------------------------------------------


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest wall time of each callable, calling them interleaved ``repeats`` times."""
    best = dict.fromkeys(fns, math.inf)
    for fn in fns.values():  # warm-up: compile, allocate
        _sync(fn())
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            _sync(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _sync(result: object) -> None:
    if isinstance(result, (mx.array, list, tuple)):
        mx.eval(result)
    elif torch is not None and TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()
    # torch on the CPU is synchronous: nothing to wait for.


def peak_megabytes(fn: Callable[[], object]) -> float:
    mx.synchronize()
    baseline = mx.get_active_memory()
    mx.reset_peak_memory()
    _sync(fn())
    # The peak restarts from zero, so a call that allocates nothing reads as zero.
    return max(mx.get_peak_memory() - baseline, 0) / 2**20


def graph_nodes(fn: Callable[[], mx.array]) -> int:
    """Primitives one call adds to the graph, global generator state included."""
    mx.eval(mx.random.state[0])  # earlier calls' state updates are not this call's work
    y = fn()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.dot"
        mx.export_to_dot(str(path), y, mx.random.state[0])
        nodes = path.read_text().count("shape=rectangle")
    mx.eval(y)
    return nodes


# ---- candidates --------------------------------------------------------------------------


def naive_feature_alpha_dropout(x: mx.array, p: float) -> mx.array:
    """The textbook formula, eagerly: a full-size mask and one pass per operation."""
    a, b, _ = alpha_dropout_coefficients(p)
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    keep = mx.broadcast_to(mx.random.bernoulli(1 - p, mask_shape), x.shape).astype(x.dtype)
    return (x * keep + (1 - keep) * SELU_SATURATION) * a + b


def _in_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled as a training step is: capturing the global random state."""
    state = [mx.random.state]
    return partial(mx.compile, inputs=state, outputs=state)(fn)


Table = dict[str, dict[str, Callable[[], object]]]


def candidates(shape: tuple[int, ...], skipped: dict[str, str]) -> Table:
    """Callables per column: forward, backward, step (fwd+bwd compiled), for one shape."""
    x = mx.random.normal(shape)
    cotangent = mx.random.normal(shape)
    x_half, cotangent_half = x.astype(mx.bfloat16), cotangent.astype(mx.bfloat16)
    mx.eval(x, cotangent, x_half, cotangent_half)
    dropout2d = nn.Dropout2d(P)

    def feature(x: mx.array) -> mx.array:
        return feature_alpha_dropout(x, P, use_kernel=False)

    def element(x: mx.array) -> mx.array:
        return alpha_dropout(x, P, use_kernel=False)

    def floor(x: mx.array) -> mx.array:
        return x * 1.5

    def backward(f: Callable[[mx.array], mx.array], x: mx.array, g: mx.array) -> mx.array:
        return mx.vjp(f, [x], [g])[1][0]

    def both(f: Callable[[mx.array], mx.array], x: mx.array, g: mx.array) -> list[mx.array]:
        (y,), (dx,) = mx.vjp(f, [x], [g])
        return [y, dx]

    feature_step = _in_step(feature)
    feature_step_backward = _in_step(partial(backward, feature))
    element_step = _in_step(element)
    element_step_both = _in_step(partial(both, element))
    floor_both = mx.compile(partial(both, floor))
    table: Table = {
        "forward": {
            FLOOR: lambda: floor(x),
            "floor x*1.5 bfloat16": lambda: floor(x_half),
            FEATURE: lambda: feature(x),
            FEATURE_STEP: lambda: feature_step(x),
            FEATURE_HALF: lambda: feature(x_half),
            "naive unfused formula": lambda: naive_feature_alpha_dropout(x, P),
            DROPOUT2D: lambda: dropout2d(x),
            ELEMENT: lambda: element(x),
            ELEMENT_STEP_ROW: lambda: element_step(x),
            "eval mode": lambda: feature_alpha_dropout(x, P, training=False),
        },
        "backward": {
            FLOOR: lambda: backward(floor, x, cotangent),
            "floor x*1.5 bfloat16": lambda: backward(floor, x_half, cotangent_half),
            FEATURE: lambda: backward(feature, x, cotangent),
            FEATURE_STEP: lambda: feature_step_backward(x, cotangent),
            FEATURE_HALF: lambda: backward(feature, x_half, cotangent_half),
            "naive unfused formula": lambda: backward(
                partial(naive_feature_alpha_dropout, p=P), x, cotangent
            ),
            DROPOUT2D: lambda: backward(dropout2d, x, cotangent),
            ELEMENT: lambda: backward(element, x, cotangent),
        },
        "fwd+bwd": {
            FLOOR: lambda: floor_both(x, cotangent),
            ELEMENT_STEP_ROW: lambda: element_step_both(x, cotangent),
        },
    }
    reason = _kernels.why_not(x)
    if reason is None:
        for name, f in [
            ("FeatureAlphaDropout kernel", partial(feature_alpha_dropout, p=P, use_kernel=True)),
            ("AlphaDropout kernel", partial(alpha_dropout, p=P, use_kernel=True)),
        ]:
            table["forward"][name] = partial(f, x)
            table["backward"][name] = partial(backward, f, x, cotangent)
    else:
        skipped["kernel rows"] = reason
    if torch is not None:
        # PyTorch's layout is (N, C, H, W): same data size, channels second.
        torch_shape = (shape[0], shape[-1], *shape[1:-1])
        tx = torch.randn(torch_shape, device=TORCH_DEVICE, requires_grad=True)
        tcot = torch.randn(torch_shape, device=TORCH_DEVICE)
        functional = torch.nn.functional
        for name, f in [
            ("torch feature_alpha_dropout", functional.feature_alpha_dropout),
            ("torch alpha_dropout", functional.alpha_dropout),
        ]:
            ty = f(tx, P, training=True)
            table["forward"][name] = partial(f, tx.detach(), P, training=True)
            table["backward"][name] = partial(torch.autograd.grad, ty, tx, tcot, retain_graph=True)
        table["forward"]["torch floor x*1.5"] = lambda: tx.detach() * 1.5
        table["backward"]["torch floor x*1.5"] = partial(
            torch.autograd.grad, tx * 1.5, tx, tcot, retain_graph=True
        )
    return table


# ---- report ------------------------------------------------------------------------------


def _floor_of(name: str) -> str:
    return "floor x*1.5 bfloat16" if "bfloat16" in name else FLOOR


def _cell(value: float | None, width: int, suffix: str = "x") -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width - 1}.2f}{suffix}"


def report(shape: tuple[int, ...], repeats: int, skipped: dict[str, str]) -> list[str]:
    """Print one shape's table; return the targets it missed."""
    table = candidates(shape, skipped)
    times = {column: best_of(fns, repeats) for column, fns in table.items()}
    memory = {
        name: peak_megabytes(fn)
        for name, fn in table["forward"].items()
        if "torch" not in name and "floor" not in name
    }
    output_mib = 4 * math.prod(shape) / 2**20

    def ratio(column: str, name: str) -> float | None:
        if name not in times[column]:
            return None
        floor = FLOOR if column == "fwd+bwd" else _floor_of(name)
        if name.startswith("torch"):
            floor = "torch floor x*1.5"
        return times[column][name] / times[column][floor]

    print(
        f"\nshape {'x'.join(map(str, shape))} float32 (bfloat16 where named), p={P};"
        f" floor forward {times['forward'][FLOOR] * 1e3:.3f} ms, output {output_mib:.1f} MiB"
    )
    print(
        f"{'candidate':<30} {'forward':>8} {'backward':>9} {'fwd+bwd':>8} {'peak MiB':>9}"
        f" {'x output':>9}"
    )
    for name in table["forward"]:
        if name.startswith("floor") or name == "torch floor x*1.5":
            continue
        peak = memory.get(name)
        print(
            f"{name:<30} {_cell(ratio('forward', name), 8)} {_cell(ratio('backward', name), 9)}"
            f" {_cell(ratio('fwd+bwd', name), 8)}"
            f" {'-' if peak is None else f'{peak:.1f}':>9}"
            f" {_cell(None if peak is None else peak / output_mib, 9)}"
        )
    if torch is not None:
        own = times["forward"]["torch floor x*1.5"] / times["forward"][FLOOR]
        print(f"(torch rows are ratios to torch's own x*1.5, which took {own:.2f}x MLX's)")
    moved = 2 * 4 * math.prod(shape)  # float32: x read once, y written once
    forward, backward = times["forward"], times["backward"]
    print(f"floor: {moved / forward[FLOOR] / 1e9:.1f} GB/s effective (x read once, y written once)")
    for kernel, ops in (("FeatureAlphaDropout kernel", FEATURE), ("AlphaDropout kernel", ELEMENT)):
        if kernel in forward:
            wins = forward[kernel] <= forward[ops] and backward[kernel] <= backward[ops]
            of_floor = forward[FLOOR] / forward[kernel], backward[FLOOR] / backward[kernel]
            print(
                f"{kernel}: {moved / forward[kernel] / 1e9:.1f} GB/s forward;"
                f" {of_floor[0]:.0%} / {of_floor[1]:.0%}"
                " of the floor's bandwidth forward / backward (target 85%); at least as fast as"
                f" the ops path forward and backward: {'yes' if wins else 'NO'}"
            )

    def check(label: str, value: float | None, target: float) -> tuple[str, bool]:
        # The verdict is on the figure as printed, so 1.50x never both meets and misses 1.5x.
        assert value is not None
        shown = round(value, 2)
        return f"{label} {shown:.2f}x", shown <= target

    checks = {
        f"FeatureAlphaDropout forward <= {FEATURE_FORWARD}x": [
            check("eager", ratio("forward", FEATURE), FEATURE_FORWARD),
            check("compiled", ratio("forward", FEATURE_STEP), FEATURE_FORWARD),
        ],
        f"backward <= {FEATURE_BACKWARD}x": [
            check("eager", ratio("backward", FEATURE), FEATURE_BACKWARD),
            check("compiled", ratio("backward", FEATURE_STEP), FEATURE_BACKWARD),
        ],
        f"bfloat16 backward <= {HALF_BACKWARD}x": [
            check("", ratio("backward", FEATURE_HALF), HALF_BACKWARD)
        ],
        f"AlphaDropout forward <= {ELEMENT_FORWARD:g}x": [
            check("", ratio("forward", ELEMENT), ELEMENT_FORWARD)
        ],
        f"compiled fwd+bwd <= {ELEMENT_STEP:g}x": [
            check("", ratio("fwd+bwd", ELEMENT_STEP_ROW), ELEMENT_STEP)
        ],
        f"peak <= {ELEMENT_PEAK}x output": [check("", memory[ELEMENT] / output_mib, ELEMENT_PEAK)],
    }
    missed = []
    print("performance targets:")
    for label, results in checks.items():
        met = all(ok for _, ok in results)
        figures = ", ".join(text.strip() for text, _ in results)
        print(f"  {label}: {'met' if met else 'MISSED'} ({figures})")
        if not met:
            missed.append(f"{'x'.join(map(str, shape))}: {label}")
    return missed


def report_small(shapes: list[tuple[int, ...]], repeats: int) -> list[str]:
    """Microseconds and graph nodes per eager call on small arrays; return missed targets."""
    print(f"\nsmall eager calls, float32, p={P}: fastest of {repeats} interleaved calls")
    print(f"{'shape':<14} {'candidate':<34} {'us/call':>8} {'x Dropout2d':>12} {'nodes':>6}")
    missed = []
    for shape in shapes:
        x = mx.random.normal(shape)
        mx.eval(x)
        key = mx.random.key(0)
        dropout2d = nn.Dropout2d(P)
        fns: dict[str, Callable[[], mx.array]] = {
            "floor x*1.5": lambda x=x: x * 1.5,
            DROPOUT2D: lambda x=x, d=dropout2d: d(x),
            FEATURE: lambda x=x: feature_alpha_dropout(x, P),
            "FeatureAlphaDropout, key given": lambda x=x, k=key: feature_alpha_dropout(x, P, key=k),
            ELEMENT: lambda x=x: alpha_dropout(x, P),
        }
        times = best_of(dict(fns), repeats)
        text = "x".join(map(str, shape))
        for name, fn in fns.items():
            print(
                f"{text:<14} {name:<34} {times[name] * 1e6:8.1f}"
                f" {times[name] / times[DROPOUT2D]:11.2f}x {graph_nodes(fn):6d}"
            )
        met = times[FEATURE] <= times[DROPOUT2D]
        verdict = "met" if met else "MISSED"
        print(f"  target: FeatureAlphaDropout no slower than Dropout2d: {verdict}")
        if not met:
            missed.append(f"{text}: small eager call no slower than Dropout2d")
    return missed


def _cache_limit_mib() -> float:
    # MLX has no getter: set_cache_limit returns the previous limit, which is put back.
    limit = mx.set_cache_limit(0)
    mx.set_cache_limit(limit)
    return float(limit) / 2**20


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    skipped: dict[str, str] = {}
    device = mx.device_info().get("device_name", "unknown device")
    torch_text = ""
    why_not_torch = _import_torch()
    if why_not_torch is not None:
        skipped["torch rows"] = why_not_torch
    else:
        torch_text = f", torch {torch.__version__} on {TORCH_DEVICE}"
        if TORCH_DEVICE == "cpu":
            torch_text += f" ({torch.get_num_threads()} threads)"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"lucid_mlx benchmark, {date.today()}, MLX {mx.__version__} on {mx.default_device()}"
        f" ({device}), {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs{torch_text}"
    )
    print(
        f"load average {load} at start; MLX buffer cache limit {_cache_limit_mib():.0f} MiB"
        f" (a call that allocates beyond it pays fresh pages); fastest of {args.repeats}"
        " interleaved calls per figure"
    )
    missed = []
    for shape in args.shapes:
        missed += report(shape, args.repeats, skipped)
    if args.small_shapes:
        missed += report_small([tuple(s) for s in args.small_shapes], args.small_repeats)
    else:
        skipped["small eager calls"] = "--small-shapes was given no shapes"
    for what, why in skipped.items():
        print(f"skipped: {what}: {why}")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average {load} at end; performance targets missed: {len(missed)}")
    for line in missed:
        print(f"  MISSED {line}")


# torch is imported after the flags are parsed (it takes seconds), so a bad flag fails fast.
torch: Any = None
TORCH_DEVICE = "cpu"


def _import_torch() -> str | None:
    """Import torch if it is installed; return why not otherwise."""
    global torch, TORCH_DEVICE
    try:
        import torch as torch_module
    except ImportError as error:  # torch is optional: its rows are skipped, and said so
        return f"torch is not installed ({error})"
    torch = torch_module
    if torch.cuda.is_available() and mx.cuda.is_available():
        TORCH_DEVICE = "cuda"
    return None


if __name__ == "__main__":
    main()
