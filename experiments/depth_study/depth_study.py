#!/usr/bin/env python3
"""When does channel-wise alpha dropout help a SELU conv net? Placement, p, depth, eval rules.

Trains SELU conv nets (NHWC, no normalization layers) on scikit-learn's digits (1,797 real
8x8 images, no download; one stratified 80/20 split) and compares, for every depth, seed,
placement and p: no dropout, ``mlx.nn.Dropout2d``'s rule and ``lucid_mlx.feature_alpha_dropout``.
The two dropout arms of a seed drop the same (sample, channel) units at every step: both masks
come from the same key, drawn from MLX's generator, so the comparison is paired.

Four parts, written to one output folder from one run:

1. MLX grid: placement (after every block, after the last block, after the last ``depth // 4``
   blocks) x p x depth x seed, with the no-dropout arm beside each.
2. PyTorch cross-check: the same protocol with ``torch.nn.Dropout2d`` and
   ``torch.nn.FeatureAlphaDropout`` (dropout after every block): same split, same initial
   weights (converted from MLX), same batch order, and an optimizer matched to MLX's ``Adam``
   (no bias correction, MLX's default) with the same schedule.
3. Evaluation rules, for every trained net: the identity (standard eval mode),
   ``y = a*q*x`` in place of each alpha-dropout layer (its conditional mean in training), and
   the Monte-Carlo average of ``MC_PASSES`` training-mode passes; test accuracy, NLL, ECE and
   the last block's variance under each.
4. At initialization: the share of the last block's variance that depends on the input,
   measured over masks and inputs, against the closed forms (q / (1 + p alpha'^2))^depth and
   q^depth.

    python experiments/depth_study/depth_study.py                  # the default grid
    python experiments/depth_study/depth_study.py --quick          # seconds: what the tests run
    python experiments/depth_study/depth_study.py --out experiments/depth_study/results

Writes ``runs.csv`` (one row per trained net), ``epochs.csv`` (one row per epoch),
``init.csv``, ``results.json`` (all rows, protocol, machine, versions, wall time),
``tables.md`` and two figures into ``--out`` (default ``out/depth_study``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

import lucid_mlx
from lucid_mlx import feature_alpha_dropout

# ---- the protocol, fixed before the grid was run, the same for every arm -----------------
WIDTH = 8  # channels per block
BATCH_SIZE = 64  # full batches only: 22 steps per epoch
LR = 1e-3  # mlx.optimizers.Adam (bias_correction=False, its default), cosine decay to 0
BETAS, EPS = (0.9, 0.999), 1e-8  # MLX's Adam defaults
SPLIT_SEED = 0  # one train/test split for every run
MC_PASSES = 16  # training-mode passes averaged by the Monte-Carlo rule
ECE_BINS = 15
INIT_INPUTS, INIT_MASKS = 64, 32  # inputs and masks of the at-initialization estimate
EVAL_SEED = 2**40  # generator seed of the Monte-Carlo passes, apart from training's seeds

LAMBDA = 1.0507009873554804934193349852946
ALPHA = 1.6732632423543772848170429916717
SATURATION = -LAMBDA * ALPHA  # alpha'
MASK_LEVELS = 2**16

PLACEMENTS = ("every", "last", "last_k")
PLACEMENT_LABELS = {
    "every": "after every block",
    "last": "after the last block",
    "last_k": "after the last depth/4 blocks",
}
KIND_LABELS = {"none": "no dropout", "dropout2d": "Dropout2d", "alpha": "FeatureAlphaDropout"}
TORCH_PLACEMENT = "every"


def realized_p(p: float) -> float:
    """The probability lucid_mlx's masks use: p to 16 bits (docs/math.md)."""
    return min(max(round(p * MASK_LEVELS), 1), MASK_LEVELS - 1) / MASK_LEVELS


def mean_gain(p: float) -> float:
    """a*q: E[y | x] = a*q*x for alpha dropout at drop probability p."""
    q = 1.0 - p
    return (q * (1.0 + p * SATURATION**2)) ** -0.5 * q


def dropped_blocks(depth: int, placement: str) -> range:
    first = {"every": 0, "last": depth - 1, "last_k": depth - max(1, depth // 4)}[placement]
    return range(first, depth)


# ---- MLX ---------------------------------------------------------------------------------


class PairedChannelDropout(nn.Module):
    """Channel dropout whose mask is a function of a key drawn from MLX's global generator.

    ``rule="alpha"`` is ``lucid_mlx.feature_alpha_dropout(x, p, key=key)`` itself.
    ``rule="dropout2d"`` applies ``mlx.nn.Dropout2d``'s rule, ``(1 / (1 - p)) * keep * x``, to
    the keep mask that ``feature_alpha_dropout`` draws for the same key (read off its output on
    zeros: kept units become ``b > 0``, dropped ones ``d < 0``), so the two arms of a seed drop
    the same (sample, channel) units. ``eval_rule`` is what eval mode does: ``"identity"``
    (the layers' default) or ``"mean"`` (``a*q*x``, alpha dropout's conditional mean).
    """

    def __init__(self, p: float, rule: str) -> None:
        super().__init__()
        self.p, self.rule, self.eval_rule = p, rule, "identity"

    def keep_mask(self, x: mx.array, key: mx.array) -> mx.array:
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return feature_alpha_dropout(mx.zeros(shape, x.dtype), self.p, key=key) > 0

    def __call__(self, x: mx.array) -> mx.array:
        if not self.training:
            if self.eval_rule == "mean" and self.rule == "alpha":
                return mean_gain(realized_p(self.p)) * x
            return x
        # A fresh key per call from the global generator (captured by the compiled step).
        key = mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)
        if self.rule == "alpha":
            return feature_alpha_dropout(x, self.p, key=key)
        return (1 / (1 - self.p)) * self.keep_mask(x, key) * x


class DepthNet(nn.Module):
    """(N, 8, 8, 1) -> ``depth`` x [conv 3x3 -> SELU -> (dropout)] -> flatten -> 10 logits."""

    def __init__(self, depth: int, kind: str, p: float, placement: str) -> None:
        super().__init__()
        self.convs = [nn.Conv2d(1 if i == 0 else WIDTH, WIDTH, 3, padding=1) for i in range(depth)]
        where = dropped_blocks(depth, placement) if kind != "none" else range(0)
        self.drops = [
            PairedChannelDropout(p, kind) if i in where else nn.Identity() for i in range(depth)
        ]
        self.head = nn.Linear(8 * 8 * WIDTH, 10)

    def features(self, x: mx.array) -> mx.array:
        for conv, drop in zip(self.convs, self.drops, strict=True):
            x = drop(nn.selu(conv(x)))
        return x

    def __call__(self, x: mx.array) -> mx.array:
        features = self.features(x)
        return self.head(features.reshape(features.shape[0], -1))


def initial_net(depth: int, kind: str, p: float, placement: str, seed: int) -> DepthNet:
    """The same initial weights for every arm of (depth, seed): LeCun normal from a key."""
    model = DepthNet(depth, kind, p, placement)
    lucid_mlx.init.selu_init(model, key=mx.random.key(seed))
    return model


_DATA: dict[str, np.ndarray] = {}


def load_data() -> dict[str, np.ndarray]:
    """Standardized NHWC digits, one stratified 80/20 split (cached per process)."""
    if not _DATA:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = digits.images.astype(np.float32)[..., None]
        x_train, x_test, y_train, y_test = train_test_split(
            images, digits.target, test_size=0.2, stratify=digits.target, random_state=SPLIT_SEED
        )
        mean, std = x_train.mean(), x_train.std()
        _DATA.update(
            x_train=(x_train - mean) / std,
            x_test=(x_test - mean) / std,
            y_train=y_train.astype(np.int64),
            y_test=y_test.astype(np.int64),
        )
    return _DATA


def batch_orders(seed: int, epochs: int, n: int) -> list[np.ndarray]:
    """Each epoch's full batches of indices, the same in both frameworks."""
    rng = np.random.default_rng(seed)
    steps = n // BATCH_SIZE
    orders = []
    for _ in range(epochs):
        order = rng.permutation(n)
        orders += [order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(steps)]
    return orders


def probabilities_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL and expected calibration error of class probabilities."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == labels
    nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
    edges = np.linspace(0, 1, ECE_BINS + 1)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return {"accuracy": float(correct.mean()), "nll": nll, "ece": float(ece)}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def evaluate_mlx(model: DepthNet, kind: str) -> dict[str, float]:
    """Every evaluation rule on the test set: metrics and the last block's variance."""
    data = load_data()
    x, labels = mx.array(data["x_test"]), data["y_test"]
    out: dict[str, float] = {}
    rules = ["identity", "mean"] if kind == "alpha" else ["identity"]
    model.eval()
    for rule in rules:
        for drop in model.drops:
            if isinstance(drop, PairedChannelDropout):
                drop.eval_rule = rule
        features = model.features(x)
        logits = model.head(features.reshape(features.shape[0], -1))
        for name, value in probabilities_metrics(softmax(np.array(logits)), labels).items():
            out[f"{rule}_{name}"] = value
        out[f"{rule}_variance"] = float(mx.var(features).item())
    for drop in model.drops:
        if isinstance(drop, PairedChannelDropout):
            drop.eval_rule = "identity"
    if kind != "none":
        model.train()
        mx.random.seed(EVAL_SEED)
        probs = np.zeros((len(labels), 10))
        for _ in range(MC_PASSES):
            features = model.features(x)
            probs += softmax(np.array(model.head(features.reshape(features.shape[0], -1))))
        for name, value in probabilities_metrics(probs / MC_PASSES, labels).items():
            out[f"mc_{name}"] = value
        out["train_variance"] = float(mx.var(features).item())  # one training-mode pass
        model.eval()
    return out


def train_mlx(job: dict[str, Any]) -> dict[str, Any]:
    depth, kind, p, placement, seed, epochs = (
        job[k] for k in ("depth", "kind", "p", "placement", "seed", "epochs")
    )
    data = load_data()
    x_train, y_train = mx.array(data["x_train"]), mx.array(data["y_train"].astype(np.int32))
    x_test, y_test = mx.array(data["x_test"]), data["y_test"]
    model = initial_net(depth, kind, p, placement, seed)
    orders = batch_orders(seed, epochs, x_train.shape[0])
    steps = len(orders) // epochs
    optimizer = optim.Adam(learning_rate=optim.cosine_decay(LR, len(orders)))
    assert optimizer.bias_correction is False  # the protocol: MLX's default

    def loss_fn(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    mx.random.seed(seed)  # the dropout keys: the same stream in both dropout arms
    model.train()
    epochs_out = []
    for epoch in range(epochs):
        losses = []
        for batch in orders[epoch * steps : (epoch + 1) * steps]:
            index = mx.array(batch)
            losses.append(step(x_train[index], y_train[index]))
            mx.eval(state)
        loss = mx.mean(mx.stack(losses)).item()
        model.eval()
        accuracy = float((np.array(mx.argmax(model(x_test), axis=1)) == y_test).mean())
        model.train()
        epochs_out.append({"epoch": epoch + 1, "train_loss": loss, "test_accuracy": accuracy})
    result = {**job, "framework": "mlx", "epochs_log": epochs_out}
    result.update(evaluate_mlx(model, kind))
    if job.get("keep_parameters"):
        result["parameters"] = flat_mlx_parameters(model)
    return result


def flat_mlx_parameters(model: DepthNet) -> list[np.ndarray]:
    arrays = []
    for conv in model.convs:
        arrays += [np.array(conv.weight).transpose(0, 3, 1, 2), np.array(conv.bias)]
    return [*arrays, np.array(model.head.weight), np.array(model.head.bias)]


def init_share(job: dict[str, Any]) -> dict[str, Any]:
    """Share of the last block's variance that depends on the input, at initialization.

    ``INIT_MASKS`` training-mode passes over the same ``INIT_INPUTS`` inputs give, per
    feature, the variance over inputs of the mean over masks (between) and the mean over
    inputs of the variance over masks (within). The mean over M masks carries within/M of
    mask noise, which is subtracted; the share is between / (between + within).
    """
    depth, kind, p, seed = job["depth"], job["kind"], job["p"], job["seed"]
    model = initial_net(depth, kind, p, "every", seed)
    model.train()
    mx.random.seed(seed)
    x = mx.array(load_data()["x_train"][:INIT_INPUTS])
    outputs = np.stack([np.array(model.features(x)) for _ in range(INIT_MASKS)])
    outputs = outputs.reshape(INIT_MASKS, INIT_INPUTS, -1)
    within = outputs.var(axis=0, ddof=1).mean(axis=0)
    between = outputs.mean(axis=0).var(axis=0, ddof=1) - within / INIT_MASKS
    share = float(between.sum() / (between.sum() + within.sum()))
    q = 1 - p
    closed = (q / (1 + p * SATURATION**2)) ** depth if kind == "alpha" else q**depth
    return {**job, "measured_share": share, "closed_form_share": closed}


# ---- PyTorch -----------------------------------------------------------------------------


def train_torch(job: dict[str, Any]) -> dict[str, Any]:
    """The same run in PyTorch: torch's own dropout layers, MLX's initial weights and Adam."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_num_threads(1)
    depth, kind, p, seed, epochs = (job[k] for k in ("depth", "kind", "p", "seed", "epochs"))
    mlx_model = initial_net(depth, kind, p, TORCH_PLACEMENT, seed)
    params = [torch.tensor(a, requires_grad=True) for a in flat_mlx_parameters(mlx_model)]
    layer = {"none": torch.nn.Identity, "dropout2d": torch.nn.Dropout2d}.get(
        kind, torch.nn.FeatureAlphaDropout
    )
    drops = [layer() if kind == "none" else layer(p) for _ in range(depth)]

    def features(x: torch.Tensor) -> torch.Tensor:
        for i, drop in enumerate(drops):
            x = drop(F.selu(F.conv2d(x, params[2 * i], params[2 * i + 1], padding=1)))
        return x

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        f = features(x)  # (N, C, H, W) -> NHWC order, as MLX flattens
        return F.linear(f.permute(0, 2, 3, 1).reshape(f.shape[0], -1), params[-2], params[-1])

    def mode(training: bool) -> None:
        for drop in drops:
            drop.train(training)

    data = load_data()
    x_train = torch.from_numpy(data["x_train"].transpose(0, 3, 1, 2).copy())
    y_train = torch.from_numpy(data["y_train"])
    x_test = torch.from_numpy(data["x_test"].transpose(0, 3, 1, 2).copy())
    y_test = data["y_test"]
    orders = batch_orders(seed, epochs, len(x_train))
    steps = len(orders) // epochs
    moments = [(torch.zeros_like(w), torch.zeros_like(w)) for w in params]
    torch.manual_seed(seed)
    epochs_out = []
    for epoch in range(epochs):
        mode(True)
        losses = []
        for t, batch in enumerate(orders[epoch * steps : (epoch + 1) * steps]):
            index = torch.from_numpy(batch)
            loss = F.cross_entropy(logits_of(x_train[index]), y_train[index])
            grads = torch.autograd.grad(loss, params)
            # mlx.optimizers.Adam without bias correction, cosine-decayed rate at this step
            s = min(epoch * steps + t, len(orders))
            lr = LR * 0.5 * (1 + math.cos(math.pi * s / len(orders)))
            with torch.no_grad():
                for w, g, (m, v) in zip(params, grads, moments, strict=True):
                    m.mul_(BETAS[0]).add_((1 - BETAS[0]) * g)
                    v.mul_(BETAS[1]).add_((1 - BETAS[1]) * g * g)
                    w.sub_(lr * m / (v.sqrt() + EPS))
            losses.append(loss.item())
        mode(False)
        with torch.no_grad():
            accuracy = float((logits_of(x_test).argmax(1).numpy() == y_test).mean())
        epochs_out.append(
            {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_accuracy": accuracy}
        )
    out: dict[str, Any] = {**job, "framework": "torch", "epochs_log": epochs_out}
    with torch.no_grad():
        rules: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"identity": features}
        if kind == "alpha":
            gain = mean_gain(p)  # torch uses p itself, not a 16-bit p

            def mean_features(x: torch.Tensor) -> torch.Tensor:
                for i in range(depth):
                    x = gain * F.selu(F.conv2d(x, params[2 * i], params[2 * i + 1], padding=1))
                return x

            rules["mean"] = mean_features
        for rule, fn in rules.items():
            f = fn(x_test)
            logits = F.linear(f.permute(0, 2, 3, 1).reshape(len(f), -1), params[-2], params[-1])
            for name, value in probabilities_metrics(softmax(logits.numpy()), y_test).items():
                out[f"{rule}_{name}"] = value
            out[f"{rule}_variance"] = float(f.var(unbiased=False))
        if kind != "none":
            mode(True)
            torch.manual_seed(EVAL_SEED)
            probs = sum(softmax(logits_of(x_test).numpy()) for _ in range(MC_PASSES))
            for name, value in probabilities_metrics(probs / MC_PASSES, y_test).items():
                out[f"mc_{name}"] = value
            out["train_variance"] = float(features(x_test).var(unbiased=False))
    if job.get("keep_parameters"):
        out["parameters"] = [w.detach().numpy().copy() for w in params]
    return out


# ---- the grid ----------------------------------------------------------------------------


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    runner = {"mlx": train_mlx, "torch": train_torch, "init": init_share}[job["part"]]
    result = runner(job)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def make_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for depth in args.depths:
        for seed in args.seeds:
            common = {"depth": depth, "seed": seed, "epochs": args.epochs}
            jobs.append(
                {"part": "mlx", "kind": "none", "p": 0.0, "placement": "none", **common}
                | {"keep_parameters": not args.no_torch}
            )
            for placement in PLACEMENTS:
                for p in args.p:
                    for kind in ("dropout2d", "alpha"):
                        jobs.append(
                            {"part": "mlx", "kind": kind, "p": p, "placement": placement} | common
                        )
            if not args.no_torch and depth in args.torch_depths:
                jobs.append(
                    {"part": "torch", "kind": "none", "p": 0.0, "placement": "none"}
                    | common
                    | {"keep_parameters": True}
                )
                for p in args.torch_p:
                    for kind in ("dropout2d", "alpha"):
                        jobs.append(
                            {"part": "torch", "kind": kind, "p": p, "placement": TORCH_PLACEMENT}
                            | common
                        )
        for p in args.p:
            for kind in ("dropout2d", "alpha"):
                jobs.append(
                    {"part": "init", "kind": kind, "p": p, "depth": depth, "seed": args.seeds[0]}
                )
    # Longest first, so the workers finish together.
    return sorted(jobs, key=lambda j: -(j["depth"] * j.get("epochs", 0) + (j["part"] == "torch")))


def describe(job: dict[str, Any]) -> str:
    if job["part"] == "init":
        return f"init  depth {job['depth']:>2}  {KIND_LABELS[job['kind']]} p={job['p']}"
    return (
        f"{job['part']:<5} depth {job['depth']:>2}  seed {job['seed']}  "
        f"{KIND_LABELS[job['kind']]}"
        + ("" if job["kind"] == "none" else f" p={job['p']}")
        + ("" if job["kind"] == "none" else f" {job['placement']}")
    )


# ---- summaries ---------------------------------------------------------------------------


def _cell(values: Iterable[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _select(runs: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return sorted(
        (r for r in runs if all(r.get(k) == v for k, v in where.items())),
        key=lambda r: r["seed"],
    )


def tables(runs: list[dict[str, Any]], inits: list[dict[str, Any]], args: Any) -> str:
    mlx_runs = [r for r in runs if r["framework"] == "mlx"]
    torch_runs = [r for r in runs if r["framework"] == "torch"]
    seeds = len(args.seeds)
    lines = [
        f"Test accuracy after {args.epochs} epochs: mean (min-max) over {seeds} seeds. "
        "Paired: FeatureAlphaDropout minus Dropout2d on the same seed (same masks), mean, and "
        "in how many seeds FeatureAlphaDropout was at least as good.",
        "",
        "## 1. Placement x p x depth (MLX)",
        "",
        "| depth | placement | p | no dropout | Dropout2d | FeatureAlphaDropout |"
        " paired difference | FAD >= D2d |",
        "|---:|---|---:|---|---|---|---:|---:|",
    ]
    for depth in args.depths:
        none = [r["identity_accuracy"] for r in _select(mlx_runs, depth=depth, kind="none")]
        for placement in PLACEMENTS:
            for p in args.p:
                d2d = _select(mlx_runs, depth=depth, kind="dropout2d", p=p, placement=placement)
                fad = _select(mlx_runs, depth=depth, kind="alpha", p=p, placement=placement)
                diffs = [
                    a["identity_accuracy"] - b["identity_accuracy"]
                    for a, b in zip(fad, d2d, strict=True)
                ]
                lines.append(
                    f"| {depth} | {PLACEMENT_LABELS[placement]} | {p} | {_cell(none)} |"
                    f" {_cell(r['identity_accuracy'] for r in d2d)} |"
                    f" {_cell(r['identity_accuracy'] for r in fad)} |"
                    f" {np.mean(diffs):+.3f} | {sum(d >= 0 for d in diffs)}/{len(diffs)} |"
                )
    lines += [
        "",
        "## 2. Evaluation rules (MLX)",
        "",
        f"Test accuracy / NLL / ECE under the identity (standard eval), `a*q*x` in place of each"
        f" alpha-dropout layer, and the average of {MC_PASSES} training-mode passes; the last"
        " block's variance on the test set under the identity, the `a*q*x` rule and one"
        " training-mode pass. Means over seeds.",
        "",
        "| depth | placement | p | dropout | identity acc / NLL / ECE | a*q*x acc / NLL / ECE |"
        f" MC-{MC_PASSES} acc / NLL / ECE | variance: identity / a*q*x / train |",
        "|---:|---|---:|---|---|---|---|---|",
    ]

    def triple(rows: list[dict[str, Any]], rule: str) -> str:
        if f"{rule}_accuracy" not in rows[0]:
            return "-"
        return " / ".join(
            f"{np.mean([r[f'{rule}_{m}'] for r in rows]):.3f}" for m in ("accuracy", "nll", "ece")
        )

    def variances(rows: list[dict[str, Any]]) -> str:
        keys = ("identity_variance", "mean_variance", "train_variance")
        return " / ".join(
            f"{np.mean([r[k] for r in rows]):.2f}" if k in rows[0] else "-" for k in keys
        )

    for depth in args.depths:
        rows = _select(mlx_runs, depth=depth, kind="none")
        lines.append(
            f"| {depth} | - | - | no dropout | {triple(rows, 'identity')} | - | - |"
            f" {variances(rows)} |"
        )
        for placement in PLACEMENTS:
            for p in args.p:
                for kind in ("dropout2d", "alpha"):
                    rows = _select(mlx_runs, depth=depth, kind=kind, p=p, placement=placement)
                    lines.append(
                        f"| {depth} | {placement} | {p} | {KIND_LABELS[kind]} |"
                        f" {triple(rows, 'identity')} | {triple(rows, 'mean')} |"
                        f" {triple(rows, 'mc')} | {variances(rows)} |"
                    )
    if torch_runs:
        lines += [
            "",
            "## 3. MLX and PyTorch, dropout after every block",
            "",
            "Same split, initial weights, batch order, optimizer (Adam without bias correction,"
            " cosine decay) in both; each framework draws its own masks. Test accuracy under"
            f" the identity, mean (min-max) over seeds; NLL mean; MC-{MC_PASSES} accuracy mean.",
            "",
            "| depth | dropout | p | MLX accuracy | PyTorch accuracy | MLX NLL | PyTorch NLL |"
            " MLX MC acc | PyTorch MC acc |",
            "|---:|---|---:|---|---|---:|---:|---:|---:|",
        ]
        for depth in sorted({r["depth"] for r in torch_runs}):
            cells = [("none", 0.0)] + [(k, p) for p in args.torch_p for k in ("dropout2d", "alpha")]
            for kind, p in cells:
                placement = "none" if kind == "none" else TORCH_PLACEMENT
                m = _select(mlx_runs, depth=depth, kind=kind, p=p, placement=placement)
                t = _select(torch_runs, depth=depth, kind=kind, p=p, placement=placement)
                mc = [
                    f"{np.mean([r['mc_accuracy'] for r in rows]):.3f}" if kind != "none" else "-"
                    for rows in (m, t)
                ]
                lines.append(
                    f"| {depth} | {KIND_LABELS[kind]} | {p if kind != 'none' else '-'} |"
                    f" {_cell(r['identity_accuracy'] for r in m)} |"
                    f" {_cell(r['identity_accuracy'] for r in t)} |"
                    f" {np.mean([r['identity_nll'] for r in m]):.3f} |"
                    f" {np.mean([r['identity_nll'] for r in t]):.3f} | {mc[0]} | {mc[1]} |"
                )
        lines += ["", "No-dropout arms, the same seed in both frameworks:", ""]
        lines += [
            "| depth | seed | final train loss MLX / PyTorch | test accuracy MLX / PyTorch |"
            " largest parameter difference / largest parameter |",
            "|---:|---:|---|---|---|",
        ]
        for t in _select(torch_runs, kind="none"):
            (m,) = _select(mlx_runs, kind="none", depth=t["depth"], seed=t["seed"])
            drift = max(
                np.abs(a - b).max() for a, b in zip(m["parameters"], t["parameters"], strict=True)
            )
            scale = max(np.abs(a).max() for a in m["parameters"])
            lines.append(
                f"| {t['depth']} | {t['seed']} |"
                f" {m['epochs_log'][-1]['train_loss']:.5f} /"
                f" {t['epochs_log'][-1]['train_loss']:.5f} |"
                f" {m['identity_accuracy']:.4f} / {t['identity_accuracy']:.4f} |"
                f" {drift:.2e} / {scale:.2f} |"
            )
    lines += [
        "",
        "## 4. At initialization: share of the last block's variance that depends on the input",
        "",
        f"Measured over {INIT_MASKS} masks x {INIT_INPUTS} inputs (seed {args.seeds[0]}'s"
        " initial weights, dropout after every block), against the closed forms"
        " (q / (1 + p alpha'^2))^depth for alpha dropout and q^depth for Dropout2d.",
        "",
        "| depth | p | Dropout2d measured | Dropout2d q^depth | FeatureAlphaDropout measured |"
        " FeatureAlphaDropout closed form |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for depth in args.depths:
        for p in args.p:
            (d,) = [r for r in inits if (r["depth"], r["p"], r["kind"]) == (depth, p, "dropout2d")]
            (a,) = [r for r in inits if (r["depth"], r["p"], r["kind"]) == (depth, p, "alpha")]
            lines.append(
                f"| {depth} | {p} | {d['measured_share']:.3f} | {d['closed_form_share']:.3f} |"
                f" {a['measured_share']:.3f} | {a['closed_form_share']:.2e} |"
            )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], inits: list[dict[str, Any]], args: Any, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mlx_runs = [r for r in runs if r["framework"] == "mlx"]
    fig, axes = plt.subplots(
        1, len(args.depths), figsize=(5.5 * len(args.depths), 4), squeeze=False
    )
    for ax, depth in zip(axes[0], args.depths, strict=True):
        none = [r["identity_accuracy"] for r in _select(mlx_runs, depth=depth, kind="none")]
        ax.axhline(float(np.mean(none)), color="gray", linestyle=":", label="no dropout")
        for placement, color in zip(PLACEMENTS, ("C0", "C1", "C2"), strict=True):
            for kind, style in (("dropout2d", "--"), ("alpha", "-")):
                means = [
                    np.mean(
                        [
                            r["identity_accuracy"]
                            for r in _select(
                                mlx_runs, depth=depth, kind=kind, p=p, placement=placement
                            )
                        ]
                    )
                    for p in args.p
                ]
                ax.plot(
                    args.p,
                    means,
                    style,
                    color=color,
                    marker="o",
                    label=f"{KIND_LABELS[kind]}, {PLACEMENT_LABELS[placement]}",
                )
        ax.set_title(f"{depth} blocks")
        ax.set_xlabel("p")
        ax.set_ylabel("test accuracy (eval mode), mean over seeds")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("dropout2d", "s"), ("alpha", "o")):
        for depth, color in zip(args.depths, ("C0", "C1", "C2", "C3"), strict=False):
            rows = sorted(
                (r for r in inits if r["kind"] == kind and r["depth"] == depth),
                key=lambda r: r["p"],
            )
            ps = [r["p"] for r in rows]
            ax.plot(
                ps,
                [max(r["measured_share"], 1e-6) for r in rows],
                marker=marker,
                color=color,
                label=f"{KIND_LABELS[kind]}, {depth} blocks, measured",
            )
            ax.plot(
                ps,
                [r["closed_form_share"] for r in rows],
                ":",
                color=color,
                marker=marker,
                fillstyle="none",
                label=f"{KIND_LABELS[kind]}, {depth} blocks, closed form",
            )
    ax.set_yscale("log")
    ax.set_xlabel("p")
    ax.set_ylabel("input-dependent share of last-block variance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "init_share.png", dpi=100)
    plt.close(fig)


def write_outputs(results: list[dict[str, Any]], args: Any, out: Path, wall: float) -> None:
    runs = [r for r in results if r["part"] in ("mlx", "torch")]
    inits = [r for r in results if r["part"] == "init"]
    keys = ["framework", "depth", "placement", "kind", "p", "seed", "epochs", "seconds"]
    metric_keys = sorted(
        {k for r in runs for k in r if k.split("_")[0] in ("identity", "mean", "mc", "train")}
    )
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys + metric_keys)
        for r in runs:
            writer.writerow([r.get(k, "") for k in keys + metric_keys])
    with open(out / "epochs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys[:6], "epoch", "train_loss", "test_accuracy"])
        for r in runs:
            for e in r["epochs_log"]:
                row = [r[k] for k in keys[:6]]
                writer.writerow([*row, e["epoch"], e["train_loss"], e["test_accuracy"]])
    with open(out / "init.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["depth", "kind", "p", "seed", "measured_share", "closed_form_share"])
        for r in inits:
            writer.writerow(
                [r[k] for k in ("depth", "kind", "p", "seed")]
                + [r["measured_share"], r["closed_form_share"]]
            )
    table = tables(runs, inits, args)
    (out / "tables.md").write_text(table)
    plot(runs, inits, args, out)
    clean = [{k: v for k, v in r.items() if k != "parameters"} for r in results]
    protocol = {
        "data": "scikit-learn load_digits, stratified 80/20 split (random_state 0), "
        "standardized with the training set's mean and std",
        "net": f"depth x [conv 3x3, {WIDTH} channels, padding 1 -> SELU -> dropout where placed]"
        " -> flatten (NHWC order) -> linear to 10; LeCun-normal weights, zero biases",
        "optimizer": f"mlx.optimizers.Adam(learning_rate=cosine_decay({LR}, total steps)),"
        f" betas {BETAS}, eps {EPS}, bias_correction=False (MLX's default); PyTorch: the same"
        " update written out",
        "batch": f"{BATCH_SIZE}, full batches only, order from numpy default_rng(seed)",
        "masks": "MLX: one key per dropout call from the global generator seeded with the seed;"
        " Dropout2d's rule applied to feature_alpha_dropout's mask for that key (paired)."
        " PyTorch: its own layers after torch.manual_seed(seed)",
        "evaluation": f"identity; a*q*x for alpha dropout; mean of {MC_PASSES} training-mode"
        f" passes; ECE with {ECE_BINS} bins",
    }
    summary = {
        "protocol": protocol,
        "grid": {
            k: getattr(args, k)
            for k in (
                "depths",
                "p",
                "seeds",
                "epochs",
                "torch_depths",
                "torch_p",
                "no_torch",
                "workers",
            )
        },
        "environment": environment(),
        "wall_seconds": round(wall, 1),
        "results": clean,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")


def environment() -> dict[str, Any]:
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "torch": torch_version,
        "lucid_mlx": lucid_mlx.__version__,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "command": " ".join(sys.argv),
    }


# ---- flags -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer but got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a probability in (0, 1) but got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32 - 1] but got {text!r}")
    return value


def _list(item: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list but got {text!r}")
        try:
            values = [item(part) for part in parts]
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"every item {error} (in {text!r})") from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must not repeat an item but got {text!r}")
        return sorted(values)

    parse.__name__ = f"list of {what}"
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--depths",
        type=_list(_positive_int, "depths"),
        default="8,16",
        help="numbers of conv blocks, comma-separated",
    )
    parser.add_argument(
        "--p",
        type=_list(_probability, "probabilities"),
        default="0.05,0.1,0.2",
        help="drop probabilities, comma-separated",
    )
    parser.add_argument(
        "--seeds", type=_list(_seed, "seeds"), default="0,1,2", help="seeds, comma-separated"
    )
    parser.add_argument("--epochs", type=_positive_int, default=4, help="epochs per run")
    parser.add_argument(
        "--torch-depths",
        type=_list(_positive_int, "depths"),
        default="8,16",
        help="depths of the PyTorch cross-check, comma-separated",
    )
    parser.add_argument(
        "--torch-p",
        type=_list(_probability, "probabilities"),
        default="0.1,0.2",
        help="p of the PyTorch cross-check, comma-separated",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch cross-check")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=min(2, os.cpu_count() or 1),
        help="processes running the grid",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/depth_study"), help="output folder (created)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="depth 4, p 0.2, seed 0, 1 epoch: every part in seconds",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.p, args.seeds, args.epochs = [4], [0.2], [0], 1
        args.torch_depths, args.torch_p = [4], [0.2]
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            parser.error("argument --no-torch: torch is not installed; give --no-torch to skip it")
        if not set(args.torch_p) <= set(args.p) or not set(args.torch_depths) <= set(args.depths):
            parser.error("argument --torch-p: the PyTorch cells must be cells of the MLX grid")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"argument --out: must be a folder but {str(args.out)!r} is a file")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(args)
    print(f"{len(jobs)} jobs on {args.workers} worker(s); results to {args.out}", flush=True)
    start = time.perf_counter()
    results = []
    if args.workers == 1:
        outcomes: Iterable[dict[str, Any]] = map(run_job, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(args.workers)
        outcomes = pool.imap_unordered(run_job, jobs)
    for done, result in enumerate(outcomes, 1):
        results.append(result)
        metric = (
            f"share {result['measured_share']:.3f}"
            if result["part"] == "init"
            else f"test accuracy {result['identity_accuracy']:.4f}"
        )
        print(
            f"[{done}/{len(jobs)}] {describe(result)}: {metric} ({result['seconds']:.1f} s)",
            flush=True,
        )
    if pool is not None:
        pool.close()
        pool.join()
    wall = time.perf_counter() - start
    write_outputs(results, args, args.out, wall)
    print(f"done in {wall:.0f} s: {args.out / 'tables.md'}", flush=True)


if __name__ == "__main__":
    main()
