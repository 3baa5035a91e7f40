"""Part two's protocol: small training sets, tuned learning rates, paired seeds.

Two families of nets, trained until they fit their training set:

- ``"conv"``: the depth study's SELU conv nets (``protocol.WIDTH`` channels, 3x3, no
  normalization) on stratified subsets of scikit-learn's digits, with channel dropout after
  the last block or after every block;
- ``"mlp"``: self-normalizing MLPs (``depth`` hidden layers of ``MLP_WIDTH``) on the UCI
  tables scikit-learn ships (breast cancer, wine), with element-wise dropout after every
  hidden layer, on repeated stratified splits.

Every arm of a (family, dataset, training-set size, depth, seed) starts from the same weights
(``lucid_mlx.init.selu_init`` with ``key=mx.random.key(seed)``), sees the same batches and
draws the same dropout keys; the two dropout arms drop the same units (``PairedDropout``).
``train`` returns one typed record; ``regularization_study.py`` runs the grid and picks each
arm's learning rate; ``regularization_report.py`` writes and reads the files.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from protocol import (
    EVAL_SEED,
    MC_PASSES,
    WIDTH,
    RuleMetrics,
    compiled_step,
    load_data,
    rule_metrics,
    softmax,
)

import lucid_mlx

# ---- the protocol, fixed before the grid was run, the same for every arm -----------------
BATCH_SIZE = 32  # full batches only
TRAIN_STEPS = 200  # per run (Job.steps): epochs = ceil(steps / steps per epoch), cosine to 0
LOG_POINTS = 12  # epochs logged for the nets without dropout; the others log the last one
VALIDATION_SIZE = 360  # digits: a fixed stratified validation split of part one's training set
TABULAR_SHARES = (0.6, 0.2, 0.2)  # tables: train / validation / test, per seed
MLP_WIDTH = 64  # units per hidden layer of the self-normalizing MLPs
BETAS, EPS = (0.9, 0.999), 1e-8  # MLX's Adam defaults

KIND_LABELS = {
    ("conv", "none"): "no dropout",
    ("conv", "dropout"): "Dropout2d",
    ("conv", "alpha"): "FeatureAlphaDropout",
    ("mlp", "none"): "no dropout",
    ("mlp", "dropout"): "Dropout",
    ("mlp", "alpha"): "AlphaDropout",
}
PLACEMENT_LABELS = {"none": "-", "last": "after the last block", "every": "after every block"}
RULES = ("identity", "mean", "mc")  # eval mode; a*q*x (eval_rule="mean"); MC_PASSES passes


# ---- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One net to train: an arm of a (family, dataset, size, depth, seed) at one rate."""

    family: str  # "conv" or "mlp"
    dataset: str  # "digits", "breast_cancer" or "wine"
    train_size: int  # examples in the training set
    depth: int  # conv blocks or hidden layers
    kind: str  # "none", "dropout" (inverted: Dropout2d or Dropout) or "alpha"
    p: float  # 0.0 without dropout
    placement: str  # "none", "last" or "every"
    bias_correction: bool  # mlx.optimizers.Adam's flag: False is MLX's default
    lr: float  # peak learning rate of the cosine schedule
    seed: int
    steps: int = TRAIN_STEPS  # at least: whole epochs

    @property
    def arm(self) -> Job:
        """What picks a learning rate: the job without its rate and seed."""
        return replace(self, lr=0.0, seed=0)


@dataclass(frozen=True)
class Epoch:
    """Eval mode (the identity) after one epoch."""

    epoch: int  # from 1
    train_loss: float  # mean over the epoch's steps (training mode)
    train_accuracy: float
    validation_nll: float
    validation_accuracy: float
    test_nll: float
    test_accuracy: float


@dataclass(frozen=True)
class Result:
    """A trained net: its epochs, its validation metrics and its test metrics per rule.

    ``RuleMetrics.variance`` is the variance of the last hidden layer's output on the test
    set (``lucid_mlx.mean_and_variance``); the Monte-Carlo rule's is that of its last pass.
    """

    job: Job
    epoch_log: tuple[Epoch, ...]
    validation: RuleMetrics  # eval mode (the identity): what picks the learning rate
    identity: RuleMetrics
    mean: RuleMetrics  # eval_rule="mean"; the identity for the inverted-dropout arms
    mc: RuleMetrics | None  # None without dropout
    seconds: float = 0.0


# ---- data --------------------------------------------------------------------------------


class Split(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


@functools.cache
def _digits_pool() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Part one's training set less a fixed validation split: (pool x, pool y, val x, val y)."""
    from sklearn.model_selection import train_test_split

    data = load_data()
    x_pool, x_val, y_pool, y_val = train_test_split(
        data.x_train,
        data.y_train,
        test_size=VALIDATION_SIZE,
        stratify=data.y_train,
        random_state=0,
    )
    return x_pool, y_pool, x_val, y_val


@functools.cache
def load_split(dataset: str, train_size: int, seed: int) -> Split:
    """The seed's split. Digits: part one's test set (360), a fixed validation split (360) and
    a stratified subset of ``train_size`` of the other 1,077 images, drawn with the seed.
    Tables: a stratified 60/20/20 split drawn with the seed (``train_size`` is what it gives, or 0),
    standardized with its training part's mean and standard deviation.
    """
    from sklearn.model_selection import train_test_split

    if dataset == "digits":
        x_pool, y_pool, x_val, y_val = _digits_pool()
        x_train, _, y_train, _ = train_test_split(
            x_pool, y_pool, train_size=train_size, stratify=y_pool, random_state=seed
        )
        test = load_data()
        return Split(x_train, y_train, x_val, y_val, test.x_test, test.y_test, 10)
    x, y = tabular(dataset)
    _, validation_share, test_share = TABULAR_SHARES
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_share, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=validation_share / (1 - test_share),
        stratify=y_rest,
        random_state=seed,
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
    if train_size and len(x_train) != train_size:
        raise ValueError(f"{dataset} gives {len(x_train)} training rows, not {train_size}")
    return Split(x_train, y_train, x_val, y_val, x_test, y_test, int(y.max()) + 1)


@functools.cache
def tabular(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[dataset]
    data = loader()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def tabular_train_size(dataset: str) -> int:
    """The training rows of the table's split (the same for every seed)."""
    return len(load_split(dataset, 0, 0).x_train)


# ---- nets --------------------------------------------------------------------------------


class PairedDropout(nn.Module):
    """Alpha dropout or inverted dropout whose mask is a function of a key drawn from MLX's
    global generator, so that the two arms of a seed drop the same units.

    ``kind="alpha"`` is a ``lucid_mlx.FeatureAlphaDropout`` (``channelwise``) or
    ``lucid_mlx.AlphaDropout`` layer called with that key; in eval mode it does what its
    ``eval_rule`` says (``lucid_mlx.set_eval_rule`` switches it). ``kind="dropout"`` applies
    ``mlx.nn.Dropout2d``'s or ``mlx.nn.Dropout``'s rule, ``(1 / (1 - p)) * keep * x``, to the
    keep mask the alpha layer draws for the same key (read off its output on zeros: kept units
    become ``b > 0``, dropped ones ``d < 0``); in eval mode it is the identity under either
    rule, since inverted dropout's training-mode mean is ``x``.
    """

    def __init__(self, p: float, kind: str, channelwise: bool) -> None:
        super().__init__()
        self.kind, self.p, self.channelwise = kind, p, channelwise
        layer = lucid_mlx.FeatureAlphaDropout if channelwise else lucid_mlx.AlphaDropout
        self.alpha = layer(p)

    def __call__(self, x: mx.array) -> mx.array:
        if not self.training:
            return self.alpha(x) if self.kind == "alpha" else x
        # A fresh key per call from the global generator (captured by the compiled step).
        key = mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)
        if self.kind == "alpha":
            return self.alpha(x, key=key)
        return (1 / (1 - self.p)) * self.keep_mask(x, key) * x

    def keep_mask(self, x: mx.array, key: mx.array) -> mx.array:
        shape = x.shape
        if self.channelwise:
            shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return self.alpha(mx.zeros(shape, x.dtype), key=key) > 0


class SeluNet(nn.Module):
    """``depth`` x [layer -> SELU -> dropout where placed] -> flatten -> linear to logits."""

    def __init__(self, layers: list[nn.Module], drops: list[nn.Module], head: nn.Linear) -> None:
        super().__init__()
        self.layers, self.drops, self.head = layers, drops, head
        self.selu = lucid_mlx.SELU()

    def features(self, x: mx.array) -> mx.array:
        for layer, drop in zip(self.layers, self.drops, strict=True):
            x = drop(self.selu(layer(x)))
        return x

    def logits(self, features: mx.array) -> mx.array:
        return self.head(features.reshape(features.shape[0], -1))

    def __call__(self, x: mx.array) -> mx.array:
        return self.logits(self.features(x))


def build_net(job: Job, features: int, classes: int) -> SeluNet:
    """The job's net with LeCun-normal weights and zero biases from ``key(seed)``."""
    if job.family == "conv":
        layers: list[nn.Module] = [
            nn.Conv2d(1 if i == 0 else WIDTH, WIDTH, 3, padding=1) for i in range(job.depth)
        ]
        head = nn.Linear(8 * 8 * WIDTH, classes)
    else:
        layers = [nn.Linear(features if i == 0 else MLP_WIDTH, MLP_WIDTH) for i in range(job.depth)]
        head = nn.Linear(MLP_WIDTH, classes)
    placed = {"none": range(0), "last": range(job.depth - 1, job.depth)}.get(
        job.placement, range(job.depth)
    )
    drops: list[nn.Module] = [
        PairedDropout(job.p, job.kind, job.family == "conv") if i in placed else nn.Identity()
        for i in range(job.depth)
    ]
    model = SeluNet(layers, drops, head)
    lucid_mlx.init.selu_init(model, key=mx.random.key(job.seed))
    return model


# ---- training and evaluation -------------------------------------------------------------


def batch_orders(seed: int, n: int, total: int) -> tuple[int, list[np.ndarray]]:
    """Epochs and each step's indices: full batches, ``total`` steps or a little more."""
    rng = np.random.default_rng(seed)
    steps = n // BATCH_SIZE
    epochs = -(-total // steps)
    orders = []
    for _ in range(epochs):
        order = rng.permutation(n)
        orders += [order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(steps)]
    return epochs, orders


def _nll_and_accuracy(model: SeluNet, x: mx.array, labels: np.ndarray) -> tuple[float, float]:
    metrics = rule_metrics(softmax(np.array(model(x))), labels, 0.0)
    return metrics.nll, metrics.accuracy


def _rule(model: SeluNet, x: mx.array, labels: np.ndarray) -> RuleMetrics:
    features = model.features(x)
    probs = softmax(np.array(model.logits(features)))
    return rule_metrics(probs, labels, lucid_mlx.mean_and_variance(features)[1])


def evaluate(
    model: SeluNet, split: Split, kind: str
) -> tuple[RuleMetrics, RuleMetrics, RuleMetrics, RuleMetrics | None]:
    """Validation (identity), then the test set under the identity, a*q*x and MC passes."""
    x_val, x_test = mx.array(split.x_validation), mx.array(split.x_test)
    model.eval()
    validation = _rule(model, x_val, split.y_validation)
    identity = _rule(model, x_test, split.y_test)
    lucid_mlx.set_eval_rule(model, "mean")
    mean = _rule(model, x_test, split.y_test)
    lucid_mlx.set_eval_rule(model, "identity")
    if kind == "none":
        return validation, identity, mean, None
    model.train()
    mx.random.seed(EVAL_SEED)
    probs = np.zeros((len(split.y_test), split.classes))
    for _ in range(MC_PASSES):
        features = model.features(x_test)
        probs += softmax(np.array(model.logits(features)))
    variance = lucid_mlx.mean_and_variance(features)[1]
    model.eval()
    return validation, identity, mean, rule_metrics(probs / MC_PASSES, split.y_test, variance)


def train(job: Job) -> Result:
    split = load_split(job.dataset, job.train_size, job.seed)
    x_train, labels = mx.array(split.x_train), split.y_train
    y_train = mx.array(labels.astype(np.int32))
    x_val, x_test = mx.array(split.x_validation), mx.array(split.x_test)
    model = build_net(job, split.x_train.shape[-1], split.classes)
    epochs, orders = batch_orders(job.seed, len(labels), job.steps)
    logged = {epochs} | (
        set(range(0, epochs + 1, max(1, epochs // LOG_POINTS))) if job.kind == "none" else set()
    )
    steps = len(orders) // epochs
    optimizer = optim.Adam(
        learning_rate=optim.cosine_decay(job.lr, len(orders)),
        betas=list(BETAS),
        eps=EPS,
        bias_correction=job.bias_correction,
    )

    step, state = compiled_step(model, optimizer)
    mx.random.seed(job.seed)  # the dropout keys: the same stream in both dropout arms
    log = []
    for epoch in range(epochs):
        model.train()
        losses = []
        for batch in orders[epoch * steps : (epoch + 1) * steps]:
            index = mx.array(batch)
            losses.append(step(x_train[index], y_train[index]))
            mx.eval(state)
        if epoch + 1 not in logged:
            continue
        loss = mx.mean(mx.stack(losses)).item()
        model.eval()
        train_accuracy = _nll_and_accuracy(model, x_train, labels)[1]
        val = _nll_and_accuracy(model, x_val, split.y_validation)
        test = _nll_and_accuracy(model, x_test, split.y_test)
        log.append(Epoch(epoch + 1, loss, train_accuracy, *val, *test))
    return Result(job, tuple(log), *evaluate(model, split, job.kind))
