"""The depth study's protocol: the nets, the paired masks, training and evaluation.

Every arm of a (depth, seed) starts from the same weights, sees the same batches and, in MLX,
draws the same dropout keys; ``train_mlx``, ``train_torch`` and ``init_share`` each return one
typed record. ``depth_study.py`` runs the grid; ``report.py`` writes and reads the records.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

import lucid_mlx
from lucid_mlx import feature_alpha_dropout

# A private module on purpose: the study needs the exact 16-bit p and the coefficients the
# layers use, and the package exposes them nowhere else.
from lucid_mlx._math import SELU_SATURATION, mean_scale, realized_probability

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

PLACEMENTS = ("every", "last", "last_k")
PLACEMENT_LABELS = {
    "every": "after every block",
    "last": "after the last block",
    "last_k": "after the last depth/4 blocks",
}
KINDS = ("dropout2d", "alpha")  # the dropout arms; "none" is the arm without dropout
KIND_LABELS = {"none": "no dropout", "dropout2d": "Dropout2d", "alpha": "FeatureAlphaDropout"}
TORCH_PLACEMENT = "every"


# ---- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """What one run of the study covers (``results.json``'s ``grid``)."""

    depths: list[int]
    p: list[float]
    seeds: list[int]
    epochs: int
    torch_depths: list[int]
    torch_p: list[float]
    no_torch: bool
    workers: int


@dataclass(frozen=True)
class TrainJob:
    """One net to train: an arm of a (depth, seed) in one framework."""

    framework: str  # "mlx" or "torch"
    kind: str  # "none" or one of KINDS
    p: float  # 0.0 without dropout
    placement: str  # one of PLACEMENTS, or "none" without dropout
    depth: int
    seed: int
    epochs: int
    keep_parameters: bool = False  # return the trained weights (the frameworks' comparison)


@dataclass(frozen=True)
class InitJob:
    """One at-initialization estimate: dropout of ``kind`` after every block."""

    kind: str
    p: float
    depth: int
    seed: int


@dataclass(frozen=True)
class Epoch:
    epoch: int  # from 1
    train_loss: float  # mean over the epoch's steps
    test_accuracy: float  # eval mode (the identity) after the epoch


@dataclass(frozen=True)
class RuleMetrics:
    """Test-set metrics under one evaluation rule, and the last block's variance under it."""

    accuracy: float
    nll: float
    ece: float
    variance: float


@dataclass(frozen=True)
class RunResult:
    """A trained net: its epochs and its test metrics under each evaluation rule."""

    job: TrainJob
    epoch_log: tuple[Epoch, ...]
    identity: RuleMetrics  # eval mode, as the layers do it
    mean: RuleMetrics | None  # a*q*x in place of each alpha-dropout layer; alpha arms only
    mc: RuleMetrics | None  # mean of MC_PASSES training-mode passes, the variance of one
    seconds: float = 0.0
    parameters: list[np.ndarray] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class InitResult:
    job: InitJob
    measured_share: float
    closed_form_share: float
    seconds: float = 0.0


# ---- MLX ---------------------------------------------------------------------------------


def mean_gain(p: float) -> float:
    """a*q: E[y | x] = a*q*x for alpha dropout at drop probability p."""
    return mean_scale(p)


def dropped_blocks(depth: int, placement: str) -> range:
    first = {"every": 0, "last": depth - 1, "last_k": depth - max(1, depth // 4)}[placement]
    return range(first, depth)


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
                return mean_gain(realized_probability(self.p)) * x
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

    def logits(self, features: mx.array) -> mx.array:
        return self.head(features.reshape(features.shape[0], -1))

    def __call__(self, x: mx.array) -> mx.array:
        return self.logits(self.features(x))

    def set_eval_rule(self, rule: str) -> None:
        for drop in self.drops:
            if isinstance(drop, PairedChannelDropout):
                drop.eval_rule = rule


def initial_net(depth: int, kind: str, p: float, placement: str, seed: int) -> DepthNet:
    """The same initial weights for every arm of (depth, seed): LeCun normal from a key."""
    model = DepthNet(depth, kind, p, placement)
    lucid_mlx.init.selu_init(model, key=mx.random.key(seed))
    return model


class Digits(NamedTuple):
    x_train: np.ndarray  # (1437, 8, 8, 1) float32, standardized
    x_test: np.ndarray  # (360, 8, 8, 1)
    y_train: np.ndarray  # int64 labels
    y_test: np.ndarray


@functools.cache
def load_data() -> Digits:
    """Standardized NHWC digits, one stratified 80/20 split (cached per process)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=SPLIT_SEED
    )
    mean, std = x_train.mean(), x_train.std()
    return Digits(
        (x_train - mean) / std,
        (x_test - mean) / std,
        y_train.astype(np.int64),
        y_test.astype(np.int64),
    )


def batch_orders(seed: int, epochs: int, n: int) -> list[np.ndarray]:
    """Each epoch's full batches of indices, the same in both frameworks."""
    rng = np.random.default_rng(seed)
    steps = n // BATCH_SIZE
    orders = []
    for _ in range(epochs):
        order = rng.permutation(n)
        orders += [order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(steps)]
    return orders


def rule_metrics(probs: np.ndarray, labels: np.ndarray, variance: float) -> RuleMetrics:
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
    return RuleMetrics(float(correct.mean()), nll, float(ece), variance)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


Rules = tuple[RuleMetrics, RuleMetrics | None, RuleMetrics | None]  # identity, mean, mc


def evaluate_mlx(model: DepthNet, kind: str) -> Rules:
    """Every evaluation rule on the test set: metrics and the last block's variance."""
    data = load_data()
    x, labels = mx.array(data.x_test), data.y_test
    rules: dict[str, RuleMetrics] = {}
    model.eval()
    for rule in ["identity", "mean"] if kind == "alpha" else ["identity"]:
        model.set_eval_rule(rule)
        features = model.features(x)
        probs = softmax(np.array(model.logits(features)))
        rules[rule] = rule_metrics(probs, labels, lucid_mlx.mean_and_variance(features)[1])
    model.set_eval_rule("identity")
    mc = None
    if kind != "none":
        model.train()
        mx.random.seed(EVAL_SEED)
        probs = np.zeros((len(labels), 10))
        for _ in range(MC_PASSES):
            features = model.features(x)
            probs += softmax(np.array(model.logits(features)))
        # The variance is that of the last of these training-mode passes.
        mc = rule_metrics(probs / MC_PASSES, labels, lucid_mlx.mean_and_variance(features)[1])
        model.eval()
    return rules["identity"], rules.get("mean"), mc


def compiled_step(
    model: nn.Module, optimizer: optim.Optimizer
) -> tuple[Callable[[mx.array, mx.array], mx.array], list[object]]:
    """One cross-entropy training step, compiled with the model's, the optimizer's and the
    generator's state (the dropout keys), and that state, to evaluate after each step."""

    def loss_fn(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    return step, state


def train_mlx(job: TrainJob) -> RunResult:
    data = load_data()
    x_train, y_train = mx.array(data.x_train), mx.array(data.y_train.astype(np.int32))
    x_test, y_test = mx.array(data.x_test), data.y_test
    model = initial_net(job.depth, job.kind, job.p, job.placement, job.seed)
    orders = batch_orders(job.seed, job.epochs, x_train.shape[0])
    steps = len(orders) // job.epochs
    optimizer = optim.Adam(learning_rate=optim.cosine_decay(LR, len(orders)))
    assert optimizer.bias_correction is False  # the protocol: MLX's default

    step, state = compiled_step(model, optimizer)
    mx.random.seed(job.seed)  # the dropout keys: the same stream in both dropout arms
    model.train()
    log = []
    for epoch in range(job.epochs):
        losses = []
        for batch in orders[epoch * steps : (epoch + 1) * steps]:
            index = mx.array(batch)
            losses.append(step(x_train[index], y_train[index]))
            mx.eval(state)
        loss = mx.mean(mx.stack(losses)).item()
        model.eval()
        accuracy = float((np.array(mx.argmax(model(x_test), axis=1)) == y_test).mean())
        model.train()
        log.append(Epoch(epoch + 1, loss, accuracy))
    parameters = flat_mlx_parameters(model) if job.keep_parameters else None
    return RunResult(job, tuple(log), *evaluate_mlx(model, job.kind), parameters=parameters)


def flat_mlx_parameters(model: DepthNet) -> list[np.ndarray]:
    """The weights in PyTorch's layout: convolutions (out, in, kh, kw), then the head."""
    arrays = []
    for conv in model.convs:
        arrays += [np.array(conv.weight).transpose(0, 3, 1, 2), np.array(conv.bias)]
    return [*arrays, np.array(model.head.weight), np.array(model.head.bias)]


def init_share(job: InitJob) -> InitResult:
    """Share of the last block's variance that depends on the input, at initialization.

    ``INIT_MASKS`` training-mode passes over the same ``INIT_INPUTS`` inputs give, per
    feature, the variance over inputs of the mean over masks (between) and the mean over
    inputs of the variance over masks (within). The mean over M masks carries within/M of
    mask noise, which is subtracted; the share is between / (between + within).
    """
    model = initial_net(job.depth, job.kind, job.p, "every", job.seed)
    model.train()
    mx.random.seed(job.seed)
    x = mx.array(load_data().x_train[:INIT_INPUTS])
    outputs = np.stack([np.array(model.features(x)) for _ in range(INIT_MASKS)])
    outputs = outputs.reshape(INIT_MASKS, INIT_INPUTS, -1)
    within = outputs.var(axis=0, ddof=1).mean(axis=0)
    between = outputs.mean(axis=0).var(axis=0, ddof=1) - within / INIT_MASKS
    share = float(between.sum() / (between.sum() + within.sum()))
    q = 1 - job.p
    if job.kind == "alpha":
        closed = (q / (1 + job.p * SELU_SATURATION**2)) ** job.depth
    else:
        closed = q**job.depth
    return InitResult(job, share, closed)


# ---- PyTorch -----------------------------------------------------------------------------


def _variance(tensor: Any) -> float:
    """A torch tensor's variance through the same helper as every other statistic."""
    return lucid_mlx.mean_and_variance(mx.array(tensor.numpy()))[1]


def train_torch(job: TrainJob) -> RunResult:
    """The same run in PyTorch: torch's own dropout layers, MLX's initial weights and Adam."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_num_threads(1)
    depth, kind, p, seed = job.depth, job.kind, job.p, job.seed
    mlx_model = initial_net(depth, kind, p, TORCH_PLACEMENT, seed)
    params = [torch.tensor(a, requires_grad=True) for a in flat_mlx_parameters(mlx_model)]
    layer = {"none": torch.nn.Identity, "dropout2d": torch.nn.Dropout2d}.get(
        kind, torch.nn.FeatureAlphaDropout
    )
    drops = [layer() if kind == "none" else layer(p) for _ in range(depth)]

    def block(x: torch.Tensor, i: int) -> torch.Tensor:
        return F.selu(F.conv2d(x, params[2 * i], params[2 * i + 1], padding=1))

    def features(x: torch.Tensor) -> torch.Tensor:
        for i, drop in enumerate(drops):
            x = drop(block(x, i))
        return x

    def head(f: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> NHWC order, as MLX flattens
        return F.linear(f.permute(0, 2, 3, 1).reshape(f.shape[0], -1), params[-2], params[-1])

    def mode(training: bool) -> None:
        for drop in drops:
            drop.train(training)

    data = load_data()
    x_train = torch.from_numpy(data.x_train.transpose(0, 3, 1, 2).copy())
    y_train = torch.from_numpy(data.y_train)
    x_test = torch.from_numpy(data.x_test.transpose(0, 3, 1, 2).copy())
    y_test = data.y_test
    orders = batch_orders(seed, job.epochs, len(x_train))
    steps = len(orders) // job.epochs
    moments = [(torch.zeros_like(w), torch.zeros_like(w)) for w in params]
    torch.manual_seed(seed)
    log = []
    for epoch in range(job.epochs):
        mode(True)
        losses = []
        for t, batch in enumerate(orders[epoch * steps : (epoch + 1) * steps]):
            index = torch.from_numpy(batch)
            loss = F.cross_entropy(head(features(x_train[index])), y_train[index])
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
            accuracy = float((head(features(x_test)).argmax(1).numpy() == y_test).mean())
        log.append(Epoch(epoch + 1, float(np.mean(losses)), accuracy))
    with torch.no_grad():
        outputs = {"identity": features(x_test)}
        if kind == "alpha":
            gain, f = mean_gain(p), x_test  # torch uses p itself, not a 16-bit p
            for i in range(depth):
                f = gain * block(f, i)
            outputs["mean"] = f
        rules = {
            rule: rule_metrics(softmax(head(f).numpy()), y_test, _variance(f))
            for rule, f in outputs.items()
        }
        mc = None
        if kind != "none":
            mode(True)
            torch.manual_seed(EVAL_SEED)
            probs = sum(softmax(head(features(x_test)).numpy()) for _ in range(MC_PASSES))
            variance = _variance(features(x_test))  # one more training pass
            mc = rule_metrics(probs / MC_PASSES, y_test, variance)
    parameters = [w.detach().numpy().copy() for w in params] if job.keep_parameters else None
    return RunResult(
        job, tuple(log), rules["identity"], rules.get("mean"), mc, parameters=parameters
    )


def protocol_description() -> dict[str, str]:
    """The protocol in words, as ``results.json`` records it."""
    return {
        "data": f"scikit-learn load_digits, stratified 80/20 split (random_state {SPLIT_SEED}), "
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
