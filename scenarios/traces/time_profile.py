"""A per-person step-time profile for fingerprinting: population regression + per-person offsets, fatigue and spread.

Why: the trace encoder predicts a step's time *before* seeing that step's
operands and from the earlier steps of the same trace, so its time density
mixes the person's constant speeds with in-context guesses; identifying the
person from one trace needs sharp, constant per-person speeds (in the
simulator, time is the strongest fingerprint: see docs/personalization.md).
This profile is the direct model of that, fitted in closed form:

    population   log t = base[a] + spline_a(size) + fatigue * (pos - 0.45) + e
                 (least squares over the population task; `size` = sum of |operands|)
    person j     r = log t - population(t);   r ~ N(off_j[a] + slope_j * (pos - 0.45), v_j[a])
                 off_j[a] = m_j + sum_a (r - m_j) / (n_a + s2_j / TAU^2)   (normal-normal posterior mean:
                            rare actions pulled to the person's mean m_j)
                 slope_j  = least squares of the rest on pos              (person-specific fatigue)
                 v_j[a]   = s2_j + 1 / (n_a / s2_j + 1 / TAU^2)            (spread + the offset's posterior variance)

It reads the packed input of `agentlab.scenarios.traces.encode` (no raw records
needed), so real trace files work the same. Per person it keeps the offsets
and training-step counts per action, the slope and s2: 2 x 19 + 2 numbers.
Axis legend: n traces, l positions, s steps, a actions, f features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from agentlab.scenarios.traces import encode as E

TAU = 1.0  # prior sd of a person's per-action speed about their mean speed (log units); picked on seed-1 people (0.2-2.0 tried)
SD_PRIOR, SD_PRIOR_N = 0.15, 5.0  # prior guess of a person's log-time spread and its weight in pseudo-steps
POS_MID = 0.45  # mean session position (trace % 10 / 10)
KNOTS = (0.0, 10.0, 30.0, 100.0)  # piecewise-linear size spline
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def step_table(x: Tensor) -> dict[str, Tensor]:
    """Flat per-step tensors of packed traces x (n, l, X_CHANNELS): trace index, action, log time, size, position."""
    act = x[..., E.C_ACTION]
    real = (x[..., E.C_VALID] > 0) & (act < E.N_ACTIONS)  # (n, l) steps, not START or padding
    n, l = real.shape
    ops = torch.expm1(5.0 * x[..., E.C_OPS : E.C_OPS + 3].abs()).sum(-1)  # undo `encode.scale`
    return {
        "trace": torch.arange(n)[:, None].expand(n, l)[real],
        "action": act[real].long(),
        "log_t": x[..., E.C_TIME][real] * E.LOG_TS + E.LOG_T0,
        "size": ops[real],
        "pos": x[..., E.C_SESSION][real] - POS_MID,
    }


def _features(steps: dict[str, Tensor]) -> Tensor:
    """(s, f) per-action one-hot, per-action size spline, fatigue position."""
    a = torch.nn.functional.one_hot(steps["action"], E.N_ACTIONS).double()  # (s, a)
    size = steps["size"].double()
    pieces = [(size.clamp(lo, hi) - lo) / (hi - lo) for lo, hi in zip(KNOTS[:-1], KNOTS[1:])]
    spline = torch.cat([a * p[:, None] for p in pieces], dim=1)
    return torch.cat([a, spline, steps["pos"].double()[:, None]], dim=1)


@dataclass
class PopulationTime:
    """The population part: least-squares coefficients over `_features`."""

    coef: Tensor  # (f,) float64

    @staticmethod
    def fit(x: Tensor, ridge: float = 1e-3) -> "PopulationTime":
        steps = step_table(x)
        f = _features(steps)
        gram = f.T @ f + ridge * torch.eye(f.shape[1], dtype=f.dtype)
        return PopulationTime(torch.linalg.solve(gram, f.T @ steps["log_t"].double()))

    def residuals(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        steps = step_table(x)
        return steps, steps["log_t"].double() - _features(steps) @ self.coef


@dataclass
class PersonTime:
    """One person's profile (4 + 2 N_ACTIONS numbers; `nbytes` counts them as float32)."""

    offset: Tensor  # (a,)
    count: Tensor  # (a,) training steps per action
    slope: float
    s2: float

    @property
    def nbytes(self) -> int:
        return 4 * (2 * E.N_ACTIONS + 2)

    @staticmethod
    def fit(pop: PopulationTime, x: Tensor) -> "PersonTime":
        steps, r = pop.residuals(x)
        a, pos = steps["action"], steps["pos"].double()
        n = torch.zeros(E.N_ACTIONS, dtype=torch.float64).index_add_(0, a, torch.ones_like(r))
        slope, s2 = 0.0, SD_PRIOR**2
        for _ in range(4):  # alternate offsets, slope and spread (converges in a few rounds)
            u = r - slope * pos
            mean = float(u.mean())  # the person's overall speed
            off = mean + torch.zeros_like(n).index_add_(0, a, u - mean) / (n + s2 / TAU**2)
            rest = r - off[a]
            slope = float((rest * pos).sum() / ((pos * pos).sum() + 1.0))
            res = rest - slope * pos
            s2 = float(((res * res).sum() + SD_PRIOR**2 * SD_PRIOR_N) / (len(res) + SD_PRIOR_N))
        return PersonTime(off, n, slope, s2)

    def log_likelihood(self, pop: PopulationTime, x: Tensor) -> Tensor:
        """(n,) log density of each trace's log step times under this profile."""
        steps, r = pop.residuals(x)
        a = steps["action"]
        v = self.s2 + 1.0 / (self.count[a] / self.s2 + 1.0 / TAU**2)
        z = r - self.offset[a] - self.slope * steps["pos"].double()
        ll = -(0.5 * torch.log(v) + 0.5 * z * z / v + HALF_LOG_2PI)
        return torch.zeros(x.shape[0], dtype=torch.float64).index_add_(0, steps["trace"], ll).float()
