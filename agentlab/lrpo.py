"""LRPO, the learning-rate predictor: fit the loss trajectory while a task trains, predict where the current rate
stalls, and lower the rate (or stop training) ahead of the stall.

Time t counts passes (epochs) over the task's data. The step losses of a pass are averaged into `points_per_epoch`
points at t = epoch + (j + 1/2) / points_per_epoch. A *segment* is the stretch trained at one rate, and
tau = t - (the segment's start). Two models of the loss over the segment are fitted by least squares:

    power law     L(tau) = a + b (tau + d)^(-c)      d = one point's width (keeps tau = 0 finite)
    exponential   L(tau) = a + b exp(-c tau)

with a, b >= 0: a is the loss the rate would level off at (LRPO fixes a = 0 unless `fit_floor`: a floor fitted on
a few passes mistakes the curvature of the early loss for a plateau and predicts the stall too early). Residuals are relative (weights 1 / L^2), since the
stall depends on the late, small losses more than on the first, large ones. For a fixed c the model is linear in
(a, b), so each c of a log grid is an exact weighted least-squares problem; the best c is refined by golden-section search and the family with
the smaller squared error is kept. Power laws describe the loss of a network trained at a fixed rate from its start
(Hestness et al. 2017, Kaplan et al. 2020); after a decay the loss drops and levels off much like an exponential.

The rate *stalls* where one more pass is predicted to lower the loss by less than `min_gain` of itself,

    r(tau) = (L(tau) - L(tau + 1)) / max(L(tau), floor * L_0) < min_gain,

where L_0 is the task's first point: a network that memorises its data drives L towards 0 while every pass still
removes a fixed fraction of it, and below `floor * L_0` the loss counts as fitted (the gain is compared with that
level instead). r falls monotonically in tau for both models, so the stall tau_s is found by bisection. After every pass (once
the segment has `min_epochs` passes) LRPO refits; when the stall is predicted within `lead` passes it acts now:
the rate times `gamma` (a new segment) while it has made fewer than `decays` decays, otherwise, with `stop`, it
ends the task's training. ReduceLROnPlateau waits `patience` passes after the plateau has been observed; LRPO acts
on the predicted plateau before it arrives.

LRPO runs per task (a new one per task's optimizer); its state (the current segment's points, the fit, the
decisions, the one-pass-ahead predictions) is a JSON tree, so a learner keeps it in its checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from agentlab.config import check
from agentlab.optim import Schedule

GRID = 48  # exponents c per family on the log grid before the golden-section refinement
C_RANGE = {"power": (1e-3, 8.0), "exp": (1e-3, 20.0)}  # c per pass; wider than any loss curve we have seen
HORIZON = 1e4  # passes searched for a stall; beyond it the rate is taken never to stall


@dataclass(frozen=True)
class LRPOConfig:
    """The learning-rate predictor's settings (`lr_schedule = "lrpo"`; the decay factor is the learner's `lr_gamma`)."""

    min_gain: float = 0.03
    """a pass must lower the training loss by this fraction of itself to be worth its time; below it the rate has
    stalled"""
    floor: float = 0.1
    """losses below this fraction of the task's first loss count as fitted: the gain is measured against this level"""
    window: float = 4.0
    """passes of recent history at the current rate that the trajectory is fitted on; 0 = all of them"""
    fit_floor: bool = False
    """fit the floor a the loss levels off at; off (a = 0): the loss is taken to keep falling, which extrapolates the
    long tails of training losses better (a floor fitted on a few passes predicts the stall too early)"""
    lead: float = 1.0
    """act this many passes ahead of the predicted stall"""
    decays: int = 2
    """rate decays (times `lr_gamma`) before LRPO stops at the last rate's stall"""
    stop: bool = True
    """end the task's training at the stall of the last rate; false = keep training at it until `epochs`"""
    min_epochs: int = 2
    """passes at a rate before its trajectory is fitted and a decision is taken"""
    points_per_epoch: int = 8
    """points a pass's step losses are averaged into for the fit"""

    def __post_init__(self) -> None:
        check(0 < self.min_gain < 1, "min_gain", self.min_gain, "in (0, 1)")
        check(0 <= self.floor < 1, "floor", self.floor, "in [0, 1)")
        check(self.window >= 0, "window", self.window, "a number >= 0 (0 = the whole segment)")
        check(self.lead >= 0, "lead", self.lead, "a number >= 0")
        check(self.decays >= 0, "decays", self.decays, "an integer >= 0")
        check(self.min_epochs >= 1, "min_epochs", self.min_epochs, "an integer >= 1")
        check(self.points_per_epoch >= 1, "points_per_epoch", self.points_per_epoch, "an integer >= 1")


@dataclass(frozen=True)
class TrajectoryFit:
    """A fitted loss model over a segment: L(tau) = a + b f(tau), f = (tau + offset)^-c or exp(-c tau)."""

    family: Literal["power", "exp"]
    a: float
    b: float
    c: float
    offset: float
    rmse: float
    """root mean squared relative error of the fit"""

    def basis(self, tau: np.ndarray | float) -> np.ndarray:
        tau = np.asarray(tau, dtype=float)
        if self.family == "power":
            return np.power(tau + self.offset, -self.c)
        return np.exp(-self.c * tau)

    def predict(self, tau: np.ndarray | float) -> np.ndarray:
        """Predicted loss at segment times `tau` (passes since the segment started)."""
        return self.a + self.b * self.basis(tau)

    def gain(self, tau: float, level: float = 0.0) -> float:
        """r(tau): the fraction of max(L(tau), level) that one more pass from `tau` is predicted to remove."""
        now = float(self.predict(tau))
        ref = max(now, level)
        return (now - float(self.predict(tau + 1.0))) / ref if ref > 0 else 0.0

    def stall(self, tau: float, min_gain: float, level: float = 0.0) -> float:
        """The first segment time >= `tau` at which `gain` falls below `min_gain` (`tau` when it already has;
        inf when not within `HORIZON` passes); bisection, as `gain` falls monotonically."""
        if self.gain(tau, level) < min_gain:
            return tau
        hi = tau + 1.0
        while self.gain(hi, level) >= min_gain:
            if hi - tau > HORIZON:
                return math.inf
            tau, hi = hi, tau + 2 * (hi - tau)
        lo = tau
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.gain(mid, level) >= min_gain else (lo, mid)
        return hi

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "a": self.a, "b": self.b, "c": self.c, "offset": self.offset, "rmse": self.rmse}


def _linear_fit(f: np.ndarray, y: np.ndarray, w: np.ndarray, floor: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares y ~ a + b f for each row of `f` (G, N), weights `w` (N,) summing to 1, with a, b >= 0:
    returns a (G,), b (G,) and the weighted mean squared error (G,).

    The unconstrained optimum is used when both are >= 0; otherwise the better of the two boundary fits
    (a = 0: b = <f, y>_w / <f, f>_w; b = 0: a = <y>_w). Without `floor`, a = 0."""
    if not floor:
        b0 = np.maximum((f * y) @ w / np.maximum((f * f) @ w, 1e-300), 0.0)
        return np.zeros(len(f)), b0, ((b0[:, None] * f - y) ** 2) @ w
    fm, ym = f @ w, float(w @ y)
    var = ((f - fm[:, None]) ** 2) @ w
    b = np.where(var > 0, ((f - fm[:, None]) * (y - ym)) @ w / np.maximum(var, 1e-300), 0.0)
    a = ym - b * fm
    b0 = np.maximum((f * y) @ w / np.maximum((f * f) @ w, 1e-300), 0.0)  # a = 0
    mse_free = ((a[:, None] + b[:, None] * f - y) ** 2) @ w
    mse_a0 = ((b0[:, None] * f - y) ** 2) @ w
    mse_b0 = np.full(len(f), float(((y - ym) ** 2) @ w))
    free_ok = (a >= 0) & (b >= 0)
    use_a0 = ~free_ok & (mse_a0 <= mse_b0)
    a_out = np.where(free_ok, a, np.where(use_a0, 0.0, ym))
    b_out = np.where(free_ok, b, np.where(use_a0, b0, 0.0))
    return a_out, b_out, np.where(free_ok, mse_free, np.minimum(mse_a0, mse_b0))


def _family_fit(family: str, tau: np.ndarray, y: np.ndarray, offset: float, floor: bool = True) -> TrajectoryFit:
    # Relative errors (weights 1 / y^2): the early, large losses of a segment would otherwise decide the fit, while
    # the stall depends on the late, small ones.
    w = 1.0 / np.maximum(y, 1e-12) ** 2
    w = w / w.sum()

    def basis(cs: np.ndarray) -> np.ndarray:  # (G, N)
        return np.power(tau[None] + offset, -cs[:, None]) if family == "power" else np.exp(-cs[:, None] * tau[None])

    def mse_at(cs: np.ndarray) -> np.ndarray:
        return _linear_fit(basis(cs), y, w, floor)[2]

    lo, hi = C_RANGE[family]
    grid = np.geomspace(lo, hi, GRID)
    k = int(np.argmin(mse_at(grid)))
    # golden-section search in log c between the grid neighbours of the best grid point
    left, right = math.log(grid[max(k - 1, 0)]), math.log(grid[min(k + 1, GRID - 1)])
    g = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        m1, m2 = right - g * (right - left), left + g * (right - left)
        s1, s2 = mse_at(np.exp([m1, m2]))
        left, right = (left, m2) if s1 <= s2 else (m1, right)
    c = float(math.exp(0.5 * (left + right)))
    a, b, mse = (float(v[0]) for v in _linear_fit(basis(np.array([c])), y, w, floor))
    return TrajectoryFit(family, a, b, c, offset, math.sqrt(mse))  # type: ignore[arg-type]


def fit_trajectory(tau: Any, loss: Any, *, offset: float = 0.125, families: tuple[str, ...] = ("power", "exp"),
                   floor: bool = True) -> TrajectoryFit:
    """The best of the power-law and exponential models of `loss` at segment times `tau` (passes since the rate
    was set), with a floor a >= 0 fitted or (`floor=False`) a = 0; at least 3 points."""
    tau, y = np.asarray(tau, dtype=float), np.asarray(loss, dtype=float)
    if tau.shape != y.shape or tau.ndim != 1 or len(tau) < 3:
        raise ValueError(f"fit_trajectory needs matching 1-d times and losses with >= 3 points, got {tau.shape} and {y.shape}")
    fits = [_family_fit(f, tau, y, offset, floor) for f in families]
    return min(fits, key=lambda f: f.rmse)


class LRPO(Schedule):
    """The learning-rate predictor as a task's `Schedule` (see the module docstring for the rule)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: LRPOConfig, *, gamma: float) -> None:
        self.optimizer, self.cfg, self.gamma = optimizer, cfg, gamma
        self.segment_start = 0.0  # passes
        self.decays = 0
        self.epochs = 0  # passes completed
        self.loss_ref = 0.0  # L_0, the task's first point
        self.step_losses: list[float] = []  # the current pass's
        self.tau: list[float] = []  # the current segment's points
        self.loss: list[float] = []
        self.fit: TrajectoryFit | None = None
        self.stall_at = math.inf  # predicted stall, in passes since the task started
        self.stopped = False
        self.decisions: list[dict[str, Any]] = []  # {"epoch", "action": "decay" | "stop", "lr", "stall"}
        self.predictions: list[list[float]] = []  # [epoch, predicted mean loss, observed mean loss]
        self._scalars: dict[str, float] = {}

    # -- the Schedule protocol ---------------------------------------------------------------------------------
    def after_step(self, loss: float) -> None:
        self.step_losses.append(float(loss))

    def after_epoch(self, epoch: int, loss: float) -> bool:
        start = float(self.epochs)
        self.epochs += 1
        observed = float(np.mean(self.step_losses)) if self.step_losses else float(loss)
        times, means = self._points(start)
        self.step_losses = []
        self._scalars = {"lrpo/observed_loss": observed}
        if self.fit is not None and times:  # the fit of the previous pass, one pass ahead
            predicted = float(np.mean(self.fit.predict(np.asarray(times) - self.segment_start)))
            self.predictions.append([float(epoch), predicted, observed])
            self._scalars["lrpo/predicted_loss"] = predicted
        self.tau += [t - self.segment_start for t in times]
        self.loss += means
        if not self.loss_ref and means:
            self.loss_ref = max(means[0], 1e-12)
        if self.epochs - self.segment_start < self.cfg.min_epochs or len(self.tau) < 3:
            self.fit = None
            return False
        now = self.epochs - self.segment_start
        tau, loss = np.asarray(self.tau), np.asarray(self.loss)
        recent = tau >= now - self.cfg.window if self.cfg.window else np.ones(len(tau), dtype=bool)
        self.fit = fit_trajectory(tau[recent], loss[recent], offset=1.0 / self.cfg.points_per_epoch, floor=self.cfg.fit_floor)
        self.stall_at = self.segment_start + self.fit.stall(now, self.cfg.min_gain, self.cfg.floor * self.loss_ref)
        self._scalars.update({"lrpo/stall_epoch": min(self.stall_at, HORIZON), "lrpo/fit_c": self.fit.c,
                              "lrpo/fit_floor": self.fit.a})
        if self.stall_at > self.epochs + self.cfg.lead:
            return False
        return self._act(epoch)

    def scalars(self) -> dict[str, float]:
        return dict(self._scalars)

    # -- decisions ---------------------------------------------------------------------------------------------
    def _act(self, epoch: int) -> bool:
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.decays < self.cfg.decays:
            for g in self.optimizer.param_groups:
                g["lr"] = g["lr"] * self.gamma
            self.decays += 1
            self.decisions.append({"epoch": epoch, "action": "decay", "lr": lr * self.gamma, "stall": self.stall_at})
            self.segment_start, self.tau, self.loss, self.fit = float(self.epochs), [], [], None
            return False
        if not self.cfg.stop:
            return False
        self.stopped = True
        self.decisions.append({"epoch": epoch, "action": "stop", "lr": lr, "stall": self.stall_at})
        return True

    def _points(self, start: float) -> tuple[list[float], list[float]]:
        """The pass's step losses averaged into (at most) `points_per_epoch` points at their mid-times."""
        n = len(self.step_losses)
        if n == 0:
            return [], []
        k = min(self.cfg.points_per_epoch, n)
        chunks = np.array_split(np.asarray(self.step_losses), k)
        return [start + (j + 0.5) / k for j in range(k)], [float(c.mean()) for c in chunks]

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "lrs": [float(g["lr"]) for g in self.optimizer.param_groups], "segment_start": self.segment_start,
            "decays": self.decays, "epochs": self.epochs, "loss_ref": self.loss_ref, "step_losses": list(self.step_losses), "tau": list(self.tau),
            "loss": list(self.loss), "fit": self.fit.as_dict() if self.fit else None,
            "stall_at": None if math.isinf(self.stall_at) else self.stall_at, "stopped": self.stopped,
            "decisions": [dict(d, stall=None if math.isinf(d["stall"]) else d["stall"]) for d in self.decisions],
            "predictions": [list(p) for p in self.predictions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        for g, lr in zip(self.optimizer.param_groups, state["lrs"]):
            g["lr"] = lr
        self.segment_start, self.decays, self.epochs = state["segment_start"], state["decays"], state["epochs"]
        self.loss_ref = state["loss_ref"]
        self.step_losses, self.tau, self.loss = list(state["step_losses"]), list(state["tau"]), list(state["loss"])
        self.fit = TrajectoryFit(**state["fit"]) if state["fit"] else None
        self.stall_at = math.inf if state["stall_at"] is None else state["stall_at"]
        self.stopped = state["stopped"]
        self.decisions = [dict(d, stall=math.inf if d["stall"] is None else d["stall"]) for d in state["decisions"]]
        self.predictions = [list(p) for p in state["predictions"]]
