"""Continual-learning metrics from the accuracy matrix.

`R[i, j]` is the accuracy on task j after training task i (T tasks, so R is
T x T; entries not measured are NaN). `b[j]` is the accuracy on task j of the
agent at initialisation, before any training. With T the number of tasks
trained so far (the row index `i` of "now" is T-1):

* Average accuracy (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory"):
      ACC = 1/T * sum_{j<T} R[T-1, j]
* Backward transfer (same paper): how training later tasks changed earlier ones,
      BWT = 1/(T-1) * sum_{j<T-1} (R[T-1, j] - R[j, j])      (negative = forgetting)
* Forward transfer (same paper): how earlier tasks help a task before it is trained,
      FWT = 1/(T-1) * sum_{1<=j<T} (R[j-1, j] - b[j])
* Forgetting (Chaudhry et al. 2018, "Riemannian Walk"): for each earlier task j,
      f_j = max_{l<T-1} R[l, j] - R[T-1, j],   and the average over j < T-1.
* Avalanche's forgetting matrix (`avalanche.evaluation.functional.forgetting`):
      F[t, k] = R[k, k] - R[t, k] for t > k, else 0 (first accuracy, not the best).

All figures here are fractions in [0, 1]; reports print percentages. Entries
that were not measured (NaN, e.g. long streams evaluated only at the end) are
skipped by the averages and maxima.
"""

from __future__ import annotations

import math

import numpy as np


def _seen(R: np.ndarray, T: int | None) -> tuple[np.ndarray, int]:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2:
        raise ValueError(f"the accuracy matrix must be 2-D, got shape {R.shape}")
    T = R.shape[0] if T is None else T
    if not 1 <= T <= min(R.shape):
        raise ValueError(f"T={T} tasks but the matrix is {R.shape}")
    return R, T


def average_accuracy(R: np.ndarray, T: int | None = None) -> float:
    """ACC after T tasks: the mean of row T-1 over the tasks seen so far."""
    R, T = _seen(R, T)
    return float(np.nanmean(R[T - 1, :T]))


def backward_transfer(R: np.ndarray, T: int | None = None) -> float:
    """BWT after T tasks (Lopez-Paz & Ranzato 2017); NaN with a single task."""
    R, T = _seen(R, T)
    if T < 2:
        return math.nan
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R: np.ndarray, b: np.ndarray, T: int | None = None) -> float:
    """FWT after T tasks (Lopez-Paz & Ranzato 2017): needs R[j-1, j] and the untrained b[j]."""
    R, T = _seen(R, T)
    if T < 2:
        return math.nan
    b = np.asarray(b, dtype=float)
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting_per_task(R: np.ndarray, T: int | None = None) -> np.ndarray:
    """Chaudhry et al. 2018: f_j = max_{l<T-1} R[l, j] - R[T-1, j] for each j < T-1."""
    R, T = _seen(R, T)
    return np.array([np.nanmax(R[j : T - 1, j]) - R[T - 1, j] for j in range(T - 1)], dtype=float)


def average_forgetting(R: np.ndarray, T: int | None = None) -> float:
    """Mean Chaudhry forgetting over the tasks before the last; NaN with a single task."""
    f = forgetting_per_task(R, T)
    return float(np.mean(f)) if f.size else math.nan


def avalanche_forgetting_matrix(R: np.ndarray) -> np.ndarray:
    """F[t, k] = R[k, k] - R[t, k] for t > k, else 0: the definition Avalanche's functional metric uses."""
    R = np.asarray(R, dtype=float)
    F = np.zeros_like(R)
    for k in range(R.shape[1]):
        F[k + 1 :, k] = R[k, k] - R[k + 1 :, k]
    return F


def summarize(R: np.ndarray, b: np.ndarray | None, T: int | None = None) -> dict[str, float]:
    """Every headline figure after T tasks, as a flat dict."""
    R, T = _seen(R, T)
    out = {
        "avg_acc": average_accuracy(R, T),
        "bwt": backward_transfer(R, T),
        "forgetting": average_forgetting(R, T),
        "fwt": forward_transfer(R, b, T) if b is not None and not np.isnan(np.asarray(b, float)[1:T]).any() else math.nan,
    }
    return out
