"""NNCTD, network capacity from task difficulty: how many parameters (and, for the MLP family, what width) a
classification task needs, from its data.

The estimate is a Lambert-W count of the effective data, refined by measured factors:

    P = P_W(N_eff) * f_task * f_arch,        P_W(n) = z / W(z) = exp(W(z)),  z = n / n0

* **Lambert-W count** P_W. The VC dimension of a piecewise-linear network with P parameters grows like P ln P
  (Bartlett et al. 2019, JMLR 20:63); n examples support a capacity of about n / n0 (n0 examples per unit of
  P ln P), and P ln P = z is solved by P = z / W(z) with W the Lambert W function.
* **Data quality** gives the effective data size N_eff = N * u * m^2:
  - u, redundancy: each example weighs 1 / (1 + its near-duplicates), examples within `dup_radius` times the
    median pairwise distance of each other (in the data's first principal components); u = the mean weight, so
    k exact copies of every example give u = 1/k.
  - m, label margin: eta is the label-noise rate that confident learning (Northcutt et al. 2021, JAIR 70) finds
    with out-of-sample k-nearest-neighbour class probabilities; under symmetric noise among K classes the labels
    keep a margin m = 1 - eta K / (K - 1) and a learner needs 1 / m^2 as many examples (Angluin & Laird 1988), so
    they count m^2 each.
* **Task complexity** f_task: a quick probe trains the family at a few widths on n_p examples (held-out accuracy
  on other examples) and finds the smallest width reaching `target` of its widest probe's accuracy; f_task is
  that width's parameter count over P_W(n_p * N_eff / N). A task whose probe needs many parameters for its data
  is complex; the Lambert-W count carries the need from the probe's data size to the whole data.
* **Architecture efficiency** f_arch: parameters of the family per parameter of the probe's family. The probe
  trains the family itself (an MLP of the given depth), so f_arch = 1 for it; a family with a different
  efficiency needs its own probe (`FAMILIES`).

`n0` was calibrated on MNIST alone (the `capacity` benchmark scores digits and Fashion-MNIST as held out). There
the probe on 4,000 examples already needed more parameters (width 82.6) than the full 60,000 (width 74.6, 99% of
a 512-wide MLP): the sweep implies no growth between the two sizes (n0 -> infinity). n0 = 10^6 lets the count grow
by 5% from 4,000 to 60,000 examples, so the estimate is in effect the probe's measurement carried to the whole
data, and the data-quality factors change it little. The needed width barely grows with the data in this range,
unlike the raw Lambert-W count (the baseline, `baseline_params`), which grows almost linearly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.config import check


@dataclass(frozen=True)
class CapacityConfig:
    """How the capacity estimate measures a data set."""

    depth: int = 2
    """hidden layers of the MLP family the width is for ([h] * depth)"""
    target: float = 0.99
    """the width must reach this fraction of the widest probe's held-out accuracy"""
    n0: float = 1e6
    """examples per unit of P ln P in the Lambert-W count (calibrated on MNIST: see the module docstring)"""
    sample: int = 2000
    """examples whose neighbours are searched (redundancy, label noise)"""
    neighbours: int = 10
    """k of the k-nearest-neighbour class probabilities"""
    components: int = 64
    """principal components the neighbour search runs in"""
    dup_radius: float = 0.05
    """near-duplicates: closer than this fraction of the median distance between two examples"""
    probe_n: int = 4000
    """training examples of the probe (at most half the data)"""
    probe_eval: int = 4000
    """held-out predictions the probe is scored on: with fewer held-out examples it repeats over random splits
    (at most 10), so small data sets get a steady score too"""
    probe_steps: int = 1500
    """optimiser steps per probe width (Adam, lr 1e-3, batches of 128, cosine)"""
    probe_widths: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 64, 128, 256])
    """widths the probe trains; the last is the wide reference"""
    seed: int = 0
    """seed of the subsamples and the probes"""

    def __post_init__(self) -> None:
        check(self.depth >= 1, "depth", self.depth, "an integer >= 1")
        check(0 < self.target <= 1, "target", self.target, "in (0, 1]")
        check(self.n0 > 0, "n0", self.n0, "a number > 0")
        check(self.sample >= 10, "sample", self.sample, "an integer >= 10")
        check(self.neighbours >= 1, "neighbours", self.neighbours, "an integer >= 1")
        check(self.components >= 1, "components", self.components, "an integer >= 1")
        check(0 <= self.dup_radius < 1, "dup_radius", self.dup_radius, "in [0, 1)")
        check(self.probe_n >= 10 and self.probe_eval >= 10, "probe_n", self.probe_n, "an integer >= 10 (and probe_eval too)")
        check(self.probe_steps >= 1, "probe_steps", self.probe_steps, "an integer >= 1")
        check(len(self.probe_widths) >= 2 and self.probe_widths == sorted(set(self.probe_widths)) and self.probe_widths[0] >= 1,
              "probe_widths", self.probe_widths, "at least two increasing widths >= 1")


def mlp_params(width: float, d_in: int, n_classes: int, depth: int) -> float:
    """Parameters (weights and biases) of the MLP d_in -> [width] * depth -> n_classes."""
    h = width
    return d_in * h + h + (depth - 1) * (h * h + h) + h * n_classes + n_classes


def mlp_width(params: float, d_in: int, n_classes: int, depth: int) -> float:
    """The (real) width whose MLP has `params` parameters: the root of a quadratic (linear for depth 1)."""
    a, b, c = depth - 1, d_in + 1 + (depth - 1) + n_classes, n_classes - params
    if a == 0:
        return max(-c / b, 0.0)
    return max((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a), 0.0)


FAMILIES: dict[str, float] = {"mlp": 1.0}  # architecture efficiency: parameters per parameter of the probe's family


def lambert_count(n: float, n0: float) -> float:
    """P with P ln P = n / n0 (P = z / W(z) = exp(W(z))): the Lambert-W parameter count n examples support."""
    from scipy.special import lambertw

    return float(np.exp(lambertw(max(n, 0.0) / n0).real))


def smallest_width(widths: list[float], accs: list[float], target: float) -> float:
    """The smallest width reaching `target` accuracy, interpolated linearly in log width between the last width
    below it and the first at or above it; the first width when it already does; nan when none does."""
    for i, (w, a) in enumerate(zip(widths, accs)):
        if a >= target:
            if i == 0:
                return float(w)
            w0, a0 = widths[i - 1], accs[i - 1]
            frac = (target - a0) / (a - a0) if a > a0 else 1.0
            return float(math.exp(math.log(w0) + frac * (math.log(w) - math.log(w0))))
    return float("nan")


@dataclass
class Factor:
    name: str
    value: float
    how: str


@dataclass
class CapacityEstimate:
    """The estimate and every factor with how it was measured."""

    params: float
    width: int
    factors: list[Factor]
    seconds: float
    probe: dict[str, Any]

    def factor(self, name: str) -> float:
        return next(f.value for f in self.factors if f.name == name)

    def report(self) -> str:
        rows = [f"  {f.name:<24} {_fmt(f.value):>12}   {f.how}" for f in self.factors]
        return "\n".join([*rows, f"  {'parameters':<24} {_fmt(self.params):>12}   P_W(N_eff) * f_task * f_arch",
                          f"  {'width':<24} {self.width:>12}   MLP [width] * {self.probe['depth']} with that many parameters"])


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"


# -- data quality ---------------------------------------------------------------------------------------------------
def flat(x: Tensor) -> Tensor:
    """(N, ...) examples as float rows (N, D); uint8 pixels scaled to [0, 1]."""
    x = x.reshape(len(x), -1)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def principal(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    """The rows of `x` in its first `k` principal components (fitted on up to 5,000 rows)."""
    k = min(k, x.shape[1])
    fit = x[torch.randperm(len(x), generator=g)[:5000]]
    mean = fit.mean(0)
    _, _, v = torch.linalg.svd(fit - mean, full_matrices=False)
    return (x - mean) @ v[:k].T  # (N, k)


@dataclass
class Neighbourhood:
    """Per query: near-duplicate counts among all examples and the labels of its k nearest other examples."""

    dup_counts: Tensor  # (Q,)
    knn_labels: Tensor  # (Q, k)
    radius: float


def neighbourhood(z: Tensor, queries: Tensor, k: int, dup_radius: float, g: torch.Generator, labels: Tensor) -> Neighbourhood:
    """Exact search of every query row against all rows of `z` (N, c), in chunks; near-duplicates (within
    `dup_radius` times the median distance of random pairs) are counted and left out of the k neighbours."""
    n = len(z)
    pairs = torch.randint(0, n, (2, 2000), generator=g)
    radius = dup_radius * float((z[pairs[0]] - z[pairs[1]]).norm(dim=1).median())
    q = z[queries]
    qn = (q * q).sum(1, keepdim=True)
    counts = torch.zeros(len(q), dtype=torch.long)
    best_d = torch.full((len(q), k), math.inf)
    best_i = torch.zeros((len(q), k), dtype=torch.long)
    for start in range(0, n, 8192):
        r = z[start:start + 8192]
        d2 = (qn + (r * r).sum(1)[None] - 2 * q @ r.T).clamp_min_(0)  # (Q, chunk)
        dup = d2 <= radius * radius
        idx = torch.arange(start, start + len(r))
        dup |= idx[None] == queries[:, None]  # the query itself
        counts += dup.sum(1)
        d2 = d2.masked_fill(dup, math.inf)
        kk = min(k, d2.shape[1])
        cd, ci = d2.topk(kk, dim=1, largest=False)
        alld, alli = torch.cat([best_d, cd], 1), torch.cat([best_i, idx[ci]], 1)
        order = alld.topk(k, dim=1, largest=False).indices
        best_d, best_i = alld.gather(1, order), alli.gather(1, order)
    return Neighbourhood(counts - 1, labels[best_i], radius)  # counts included the query itself


def confident_noise_rate(probs: Tensor, given: Tensor, n_classes: int) -> float:
    """Confident learning's estimate of the label-noise rate (Northcutt et al. 2021): per class j the threshold
    t_j = mean p_j over examples labelled j; an example labelled i counts towards (i, j*) with j* the most
    probable class whose p reaches its threshold; rows of the confident joint are calibrated to the label
    counts, and the rate is its off-diagonal share."""
    thresholds = torch.stack([probs[given == j, j].mean() if (given == j).any() else torch.tensor(1.0) for j in range(n_classes)])
    above = probs >= thresholds[None]
    scored = torch.where(above, probs, torch.full_like(probs, -1.0))
    best = scored.argmax(1)
    counted = above.any(1)
    joint = torch.zeros(n_classes, n_classes)
    joint.index_put_((given[counted], best[counted]), torch.ones(int(counted.sum())), accumulate=True)
    label_counts = torch.bincount(given, minlength=n_classes).float()
    rows = joint.sum(1, keepdim=True)
    calibrated = torch.where(rows > 0, joint / rows.clamp_min(1) * label_counts[:, None], torch.zeros_like(joint))
    total = float(calibrated.sum())
    return float((total - float(calibrated.diagonal().sum())) / total) if total > 0 else 0.0


@dataclass
class DataQuality:
    n: int
    unique_fraction: float
    noise_rate: float
    margin: float
    n_eff: float
    radius: float


def data_quality(x: Tensor, y: Tensor, n_classes: int, cfg: CapacityConfig) -> DataQuality:
    """Redundancy and label noise measured on `sample` queries against all examples; N_eff = N u m^2."""
    g = torch.Generator().manual_seed(cfg.seed)
    z = principal(flat(x), cfg.components, g)
    queries = torch.randperm(len(z), generator=g)[:cfg.sample]
    nb = neighbourhood(z, queries, cfg.neighbours, cfg.dup_radius, g, y)
    unique = float((1.0 / (1.0 + nb.dup_counts.float())).mean())
    probs = F.one_hot(nb.knn_labels, n_classes).float().mean(1)  # (Q, K)
    eta = confident_noise_rate(probs, y[queries], n_classes)
    margin = max(0.0, 1.0 - eta * n_classes / (n_classes - 1)) if n_classes > 1 else 1.0
    return DataQuality(len(x), unique, eta, margin, len(x) * unique * margin ** 2, nb.radius)


# -- task complexity ------------------------------------------------------------------------------------------------
def train_mlp(x: Tensor, y: Tensor, width: int, depth: int, n_classes: int, steps: int, seed: int,
              batch_size: int = 128, lr: float = 1e-3) -> nn.Module:
    """An MLP [width] * depth trained for `steps` Adam steps with a cosine rate (the probe's and the benchmark's
    recipe)."""
    torch.manual_seed(seed)
    sizes = [x.shape[1], *[width] * depth, n_classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < depth else [])
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    at = 0
    for _ in range(steps):
        if at + batch_size > len(x):
            order, at = torch.randperm(len(x), generator=g), 0
        b = order[at:at + batch_size]
        at += batch_size
        loss = F.cross_entropy(model(x[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(torch.cat([model(c).argmax(1) for c in x.split(4096)]).eq(y).float().mean())


def probe(x: Tensor, y: Tensor, n_classes: int, cfg: CapacityConfig) -> dict[str, Any]:
    """Train the family at `probe_widths` on n_p examples, score each on held-out ones; the smallest width reaching
    `target` of the widest's accuracy, and its parameter count."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    rows = flat(x)
    n_p = min(cfg.probe_n, len(rows) // 2)
    n_ev = min(cfg.probe_eval, len(rows) - n_p)
    repeats = min(10, math.ceil(cfg.probe_eval / n_ev))
    accs = [0.0] * len(cfg.probe_widths)
    for r in range(repeats):
        order = torch.randperm(len(rows), generator=g)
        tr, ev = order[:n_p], order[n_p:n_p + n_ev]
        for i, w in enumerate(cfg.probe_widths):
            model = train_mlp(rows[tr], y[tr], w, cfg.depth, n_classes, cfg.probe_steps, cfg.seed + r)
            accs[i] += accuracy(model, rows[ev], y[ev]) / repeats
    need = cfg.target * accs[-1]
    width = smallest_width(list(cfg.probe_widths), accs, need)
    return {"n": n_p, "eval": n_ev, "repeats": repeats, "widths": list(cfg.probe_widths), "accs": accs, "target_acc": need,
            "width": width, "params": mlp_params(width, rows.shape[1], n_classes, cfg.depth), "depth": cfg.depth}


# -- the estimate -----------------------------------------------------------------------------------------------------
def stream_data(stream: Any, *, max_examples: int = 60_000, seed: int = 0) -> tuple[Tensor, Tensor, int, int]:
    """The training examples of every classification task of `stream` as one labelled set, as the backbone meets
    them (each split's transform applied): (x, y, N, classes), with at most `max_examples` drawn evenly from the
    tasks when there are more (N still counts all of them)."""
    tasks = [t for t in stream if t.kind == "classification"]
    if not tasks:
        raise ValueError("the capacity estimate needs a stream with classification tasks")
    total = sum(len(t.train) for t in tasks)
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for t in tasks:
        n = len(t.train) if total <= max_examples else max(1, round(len(t.train) * max_examples / total))
        x, y = t.train.take(torch.randperm(len(t.train), generator=g)[:n])
        xs.append(x)
        ys.append(y)
    y = torch.cat(ys)
    n_classes = int(getattr(stream, "n_classes", 0) or 0) or int(y.max()) + 1
    return torch.cat(xs), y, total, n_classes


def estimate(x: Tensor, y: Tensor, n_classes: int, cfg: CapacityConfig = CapacityConfig(), *, family: str = "mlp",
             n_total: int | None = None, say: Callable[[str], None] = lambda s: None) -> CapacityEstimate:
    """The parameters and MLP width a classification task with examples `x` (N, ...) and labels `y` (N,) needs;
    `n_total` when `x` is a sample of a larger set (the measurements use the sample, N counts them all)."""
    if family not in FAMILIES:
        raise ValueError(f"no architecture efficiency for backbone family {family!r}; known: {', '.join(FAMILIES)}")
    if len(x) != len(y) or len(x) < 20:
        raise ValueError(f"the capacity estimate needs >= 20 labelled examples, got {len(x)} inputs and {len(y)} labels")
    t0 = time.perf_counter()
    say(f"measuring redundancy and label noise on {min(cfg.sample, len(x))} of {len(x)} examples")
    q = data_quality(x, y, n_classes, cfg)
    if n_total is not None and n_total > q.n:  # measured on a sample: the rates carry over to all examples
        q = DataQuality(n_total, q.unique_fraction, q.noise_rate, q.margin, n_total * q.unique_fraction * q.margin ** 2, q.radius)
    say(f"probing widths {cfg.probe_widths} on {min(cfg.probe_n, len(x) // 2)} examples")
    p = probe(x, y, n_classes, cfg)
    base = lambert_count(q.n_eff, cfg.n0)
    n_p_eff = p["n"] * q.n_eff / q.n
    f_task = p["params"] / lambert_count(n_p_eff, cfg.n0)
    f_arch = FAMILIES[family]
    params = base * f_task * f_arch
    d_in = flat(x[:1]).shape[1]
    width = max(1, math.ceil(mlp_width(params, d_in, n_classes, cfg.depth)))
    factors = [
        Factor("examples N", q.n, "counted"),
        Factor("unique fraction u", q.unique_fraction,
               f"mean of 1 / (1 + near-duplicates) over {min(cfg.sample, q.n)} examples; near = within {q.radius:.3g} "
               f"({cfg.dup_radius} x the median pair distance) in {cfg.components} principal components"),
        Factor("label noise eta", q.noise_rate,
               f"confident learning on out-of-sample {cfg.neighbours}-nearest-neighbour class probabilities"),
        Factor("label margin^2 m^2", q.margin ** 2, f"(1 - eta K / (K - 1))^2 with K = {n_classes} (symmetric noise)"),
        Factor("effective data N_eff", q.n_eff, "N u m^2"),
        Factor("Lambert-W count P_W", base, f"P ln P = N_eff / n0, n0 = {cfg.n0:g} (calibrated on MNIST)"),
        Factor("task complexity f_task", f_task,
               f"probe: width {p['width']:.3g} ({p['params']:,.0f} parameters) reached {cfg.target:g} x the width-"
               f"{p['widths'][-1]} accuracy {p['accs'][-1]:.4f} training on {p['n']} examples ({p['repeats']} split(s)); "
               f"/ P_W({n_p_eff:,.0f})"),
        Factor("architecture eff. f_arch", f_arch, f"{family}: the probe trains this family"),
    ]
    return CapacityEstimate(params, width, factors, time.perf_counter() - t0, p)


# The baseline's examples per unit of P ln P, calibrated on MNIST like `CapacityConfig.n0` (docs/capacity.md).
BASELINE_N0 = 0.0833  # P_W(60,000) = the 74.6-wide MLP [h, h] measured on MNIST


def baseline_params(n: int, n0: float = BASELINE_N0) -> float:
    """The plain count without corrections: the Lambert-W count of the raw number of examples."""
    return lambert_count(n, n0)
