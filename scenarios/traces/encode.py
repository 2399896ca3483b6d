"""Traces as tensors: one padded row per trace, observations and targets packed by channel.

A trace of T steps becomes T + 1 positions: position 0 is a start token
carrying only the problem; position t >= 1 is step t - 1. At position t the
model predicts step t (the *next* one): its action (or END after the last
step), its log time and its errors. Packing everything into one float tensor
lets traces ride on `agentlab.data.Split` (batched by slicing) unchanged.

Axis legend: n traces, l positions (T_max + 1), c channels.

x (n, l, X_CHANNELS):
    0          action id of this position (START at 0, PAD after the trace)
    1          id of the next action (END after the last step; the condition of the time and error heads)
    2          normalised log time of this step (0 at START)
    3..6       one-hot error of this step (ERRORS order)
    7..9       operands, signed log1p-scaled, 0 where absent
    10, 11     result (scaled) and whether there is one
    12         position of the trace in its session (fatigue), trace % 10 / 10
    13..       problem features (`problem_features`, N_PROBLEM_FEATURES of them)
    C_VALID    (last) 1 on real positions (START and steps), 0 on padding
y (n, l, Y_CHANNELS):
    0          next action id (class), -100 on padding
    1          log seconds of the next step
    2..5       next step's errors (0/1)
    6          1 where the next step exists (time and error targets are defined)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from agentlab.data import Split
from agentlab.scenarios.traces.format import ACTIONS, ERRORS, Step
from agentlab.scenarios.traces.problems import N_PROBLEM_FEATURES, parse_problem, problem_features

N_ACTIONS = len(ACTIONS)
END = N_ACTIONS  # output class after the last step
START = N_ACTIONS  # input id of the start token
PAD = N_ACTIONS + 1  # input id of padding
N_OUT = N_ACTIONS + 1  # classes of the next-action head: every action, then END
N_IN_IDS = N_ACTIONS + 2
N_ERRORS = len(ERRORS)
LOG_T0, LOG_TS = math.log(3.0), 0.7  # centre and scale of log step times in the input
C_ACTION, C_NEXT, C_TIME, C_ERR, C_OPS, C_RES, C_SESSION, C_PROB = 0, 1, 2, 3, 3 + N_ERRORS, 10, 12, 13
C_VALID = C_PROB + N_PROBLEM_FEATURES
X_CHANNELS = C_VALID + 1
Y_NEXT, Y_TIME, Y_ERR, Y_HAS_NEXT = 0, 1, 2, 2 + N_ERRORS
Y_CHANNELS = Y_HAS_NEXT + 1
IGNORE = -100


def scale(v: float) -> float:
    """Signed log1p scaling for operands and results: keeps digits and three-digit sums in a small range."""
    return math.copysign(math.log1p(abs(v)), v) / 5.0


def encode(traces: Sequence[Sequence[Step]], max_steps: int = 24, length: int | None = None) -> Split:
    """A `Split` of `traces`: x (n, l, X_CHANNELS), y (n, l, Y_CHANNELS), l = longest trace + 1 (<= max_steps + 1).

    Steps beyond `length - 1` are cut. Built by scattering flat per-step lists (fast for 10^5 traces).
    """
    if not traces:
        raise ValueError("no traces to encode")
    if length is None:
        length = min(max(len(t) for t in traces), max_steps) + 1
    n = len(traces)
    probs, sessions, lens = [], [], []
    ti, act, logt, err, ops, res = [], [], [], [], [], []
    for i, tr in enumerate(traces):
        tr = list(tr)[: length - 1]
        probs.append(problem_features(parse_problem(tr[0].problem)))
        sessions.append((tr[0].trace % 10) / 10)
        lens.append(len(tr))
        for s in tr:
            ti.append(i)
            act.append(ACTIONS.index(s.action))
            logt.append(math.log(s.time_s))
            err.append(-1 if s.error is None else ERRORS.index(s.error))
            o = [scale(v) for v in s.operands[:3]]
            ops.append(o + [0.0] * (3 - len(o)))
            res.append((0.0, 0.0) if s.result is None else (scale(s.result), 1.0))
    T = torch.tensor(lens)  # (n,)
    pos = torch.cat([torch.arange(k) for k in lens])  # (steps,) index of each step within its trace
    ti_t, act_t, logt_t, err_t = torch.tensor(ti), torch.tensor(act), torch.tensor(logt), torch.tensor(err)
    positions = torch.arange(length)  # (l,)
    real = positions[None, :] <= T[:, None]  # (n, l) START and steps
    has_next = positions[None, :] < T[:, None]  # (n, l)

    x = torch.zeros(n, length, X_CHANNELS)
    y = torch.zeros(n, length, Y_CHANNELS)
    ids = torch.full((n, length), PAD, dtype=torch.float32)
    ids[:, 0] = START
    ids[ti_t, pos + 1] = act_t.float()
    nxt = torch.full((n, length), PAD, dtype=torch.float32)
    nxt[ti_t, pos] = act_t.float()
    nxt[torch.arange(n), T] = END
    x[..., C_ACTION], x[..., C_NEXT] = ids, nxt
    x[ti_t, pos + 1, C_TIME] = (logt_t - LOG_T0) / LOG_TS
    e = err_t >= 0
    x[ti_t[e], pos[e] + 1, C_ERR + err_t[e]] = 1.0
    x[ti_t, pos + 1, C_OPS : C_OPS + 3] = torch.tensor(ops)
    x[ti_t, pos + 1, C_RES : C_RES + 2] = torch.tensor(res)
    x[..., C_SESSION] = torch.tensor(sessions)[:, None] * real
    x[..., C_PROB : C_PROB + N_PROBLEM_FEATURES] = torch.tensor(probs)[:, None, :] * real[..., None]
    x[..., C_VALID] = real.float()

    y[..., Y_NEXT] = torch.where(real, nxt, torch.full_like(nxt, IGNORE))
    y[ti_t, pos, Y_TIME] = logt_t
    y[ti_t[e], pos[e], Y_ERR + err_t[e]] = 1.0
    y[..., Y_HAS_NEXT] = has_next.float()
    return Split(x, y)


def next_actions(y: Tensor) -> Tensor:
    """(n, l) long class targets, IGNORE on padding."""
    return y[..., Y_NEXT].long()
