"""Losses, likelihoods and figures of the trace model's three heads.

Axis legend: b traces, l positions, k error types.

    action  cross-entropy of the next action (END after the last step)
    time    Gaussian negative log-likelihood of the next step's log seconds
            (heteroscedastic: the model predicts a mean and a log-variance)
    error   binary cross-entropy of each error type in the next step

`trace_log_likelihood` scores whole traces (summed over positions) for
fingerprinting; it reads the targets back out of the packed input, so a trace
can be scored without its `y`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.scenarios.traces import encode as E

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def targets_from_x(x: Tensor) -> Tensor:
    """The y (b, l, Y_CHANNELS) that `encode` packs beside `x`, rebuilt from `x` alone."""
    b, l, _ = x.shape
    y = x.new_zeros(b, l, E.Y_CHANNELS)
    valid = x[..., E.C_VALID] > 0  # (b, l)
    y[..., E.Y_NEXT] = torch.where(valid, x[..., E.C_NEXT], torch.full_like(x[..., 0], E.IGNORE))
    has_next = torch.zeros_like(valid)
    has_next[:, :-1] = valid[:, 1:]
    y[:, :-1, E.Y_TIME] = x[:, 1:, E.C_TIME] * E.LOG_TS + E.LOG_T0
    y[:, :-1, E.Y_ERR : E.Y_ERR + E.N_ERRORS] = x[:, 1:, E.C_ERR : E.C_ERR + E.N_ERRORS]
    y[..., E.Y_TIME] *= has_next
    y[..., E.Y_HAS_NEXT] = has_next.float()
    return y


def _terms(out, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-position (b, l) action NLL, time NLL, error NLL, and the action and next-step masks."""
    target = y[..., E.Y_NEXT].long()
    act_mask = target != E.IGNORE
    nll_a = F.cross_entropy(out.action_logits.transpose(1, 2), target.clamp(min=0), reduction="none")  # (b, l)
    nll_a = nll_a * act_mask
    has = y[..., E.Y_HAS_NEXT]
    t = y[..., E.Y_TIME]
    nll_t = (0.5 * out.time_logvar + 0.5 * (t - out.time_mu) ** 2 * torch.exp(-out.time_logvar) + HALF_LOG_2PI) * has
    err = y[..., E.Y_ERR : E.Y_ERR + E.N_ERRORS]
    nll_e = F.binary_cross_entropy_with_logits(out.error_logits, err, reduction="none").sum(-1) * has  # (b, l)
    return nll_a, nll_t, nll_e, act_mask.float(), has


def trace_losses(out, y: Tensor, *, time_weight: float = 0.5, error_weight: float = 1.0) -> dict[str, Tensor]:
    """Mean losses per predicted step: `action`, `time`, `error`, and their weighted `total`."""
    nll_a, nll_t, nll_e, m_a, m_t = _terms(out, y)
    action = nll_a.sum() / m_a.sum().clamp(min=1)
    time = nll_t.sum() / m_t.sum().clamp(min=1)
    error = nll_e.sum() / m_t.sum().clamp(min=1)
    return {"action": action, "time": time, "error": error, "total": action + time_weight * time + error_weight * error}


HEADS: tuple[str, ...] = ("action", "time", "error")


def trace_log_likelihood_terms(out, x: Tensor) -> dict[str, Tensor]:
    """(b,) log-likelihood of each whole trace per head: `action` (log-softmax of every next action, END
    included), `time` (Gaussian log density of each step's log seconds under the predicted mean and
    variance) and `error` (Bernoulli log-probability of each error type at each step), summed over the
    trace's valid positions. No normalisation: traces scored under different adapters compare directly."""
    nll_a, nll_t, nll_e, _, _ = _terms(out, targets_from_x(x))
    return {"action": -nll_a.sum(-1), "time": -nll_t.sum(-1), "error": -nll_e.sum(-1)}


def trace_log_likelihood(out, x: Tensor, heads: tuple[str, ...] = HEADS) -> Tensor:
    """(b,) log-likelihood of each whole trace: its actions (with END), step times and errors (or only `heads`)."""
    terms = trace_log_likelihood_terms(out, x)
    return sum(terms[h] for h in heads)  # type: ignore[return-value]


@torch.no_grad()
def step_figures(out, y: Tensor) -> dict[str, Tensor]:
    """Flat per-step tensors for figures: correct (n_a,), abs time error in s (n_t,), error probs and labels (n_t, k)."""
    target = y[..., E.Y_NEXT].long()
    m = target != E.IGNORE
    correct = (out.action_logits.argmax(-1) == target)[m]
    has = y[..., E.Y_HAS_NEXT] > 0
    abs_err_s = (torch.exp(out.time_mu) - torch.exp(y[..., E.Y_TIME])).abs()[has]  # the median exp(mu) minimises MAE
    probs = torch.sigmoid(out.error_logits)[has]
    labels = y[..., E.Y_ERR : E.Y_ERR + E.N_ERRORS][has]
    return {"correct": correct, "abs_time_err_s": abs_err_s, "error_prob": probs, "error_label": labels}


def auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; NaN when one class is absent."""
    labels = labels.bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    s = scores[order]
    ranks = torch.empty_like(s, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inv, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def error_auc(probs: Tensor, labels: Tensor) -> float:
    """Mean over error types of the ROC AUC of that type's predicted probability (types seen both ways)."""
    vals = [auc(probs[:, k], labels[:, k]) for k in range(probs.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")
