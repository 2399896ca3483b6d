"""The oracle fingerprint: the exact log-likelihood of a simulated trace under each person's true traits.

The simulator (`agentlab.scenarios.traces.simulator`) is a chain of random choices.
Some depend on the solver's latent traits, the rest do not (which problem is
drawn, which near miss a fact error writes, the next guess in guess-and-check,
revising after a failed check with probability 0.8). Those trait-free factors
are the same for every person, so for identification the log-likelihood is
exact up to one constant per trace, and its argmax over people is the Bayes
decision under a uniform prior: no model that sees only the trace can do
better on average. The trait-dependent factors of a trace are

    strategy  log w_s,  w = softmax-free normalised (preference x problem modulation)
    reread    one Bernoulli(min(1, reread x tired)) before every non-reread step
    time      every step (re-reads too): log X ~ N(log BASE[a] + log_speed + skill_speed[a]
              + log tired + log difficulty, time_sd^2), observed as max(round(X, 3), 0.05),
              so each step contributes P(X rounds to the observed ms) (an interval of the normal)
    error     one Bernoulli(min(0.95, rate x tired x boost)) per error opportunity
    regroup   one Bernoulli(explicit_regroup) per carry or borrow that could be written down
    check     one Bernoulli(check) after the first written answer

`trace_events` reads a trace (list of `Step`) back into these events by
replaying the strategy it used (raising ValueError if the trace could not come
from the simulator); `log_likelihood(events, traits)` scores it under many
people at once (numpy over people, float64). Axis legend: P people, s steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from agentlab.scenarios.traces.format import ACTIONS, ERRORS, Step
from agentlab.scenarios.traces.problems import digits, n_columns, parse_problem
from agentlab.scenarios.traces.simulator import (
    BASE_TIME, SESSION_LEN, STRATEGIES, Traits, step_difficulty, strategy_modulation,
)

TERMS: tuple[str, ...] = ("strategy", "reread", "time", "error", "regroup", "check")
ROUND_S = 0.0005  # times are written rounded to the millisecond
MIN_TIME_S = 0.05  # and never below 50 ms


@dataclass(frozen=True)
class TraceEvents:
    """The trait-dependent events of one trace (see the module docstring)."""

    kind: str
    strategy: int
    """index into STRATEGIES[kind]"""
    modulation: tuple[float, ...]
    """what the problem does to each strategy's preference"""
    position: int
    """trace % SESSION_LEN (fatigue)"""
    reread: tuple[int, int]
    """(opportunities, re-reads)"""
    time_action: np.ndarray
    """(s,) action index of every step"""
    time_lo: np.ndarray
    """(s,) lower end of log X - log BASE - log difficulty that rounds to the observed time (-inf at the 50 ms floor)"""
    time_hi: np.ndarray
    """(s,) upper end of the same interval"""
    error: tuple[tuple[int, float, bool], ...]
    """(error index, boost, happened) per opportunity"""
    regroup: tuple[int, int]
    """(opportunities, written down)"""
    check: tuple[int, int]
    """(opportunities 0/1, checked)"""


class _Cursor:
    """Walks the non-reread steps of a trace in order, checking each is what the strategy does next."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps, self.i = steps, 0

    def peek(self) -> str | None:
        return self.steps[self.i].action if self.i < len(self.steps) else None

    def prev(self) -> str | None:
        return self.steps[self.i - 1].action if self.i > 0 else None

    def take(self, action: str) -> Step:
        if self.peek() != action:
            raise ValueError(f"step {self.i} (not counting re-reads): expected {action!r}, got {self.peek()!r}")
        self.i += 1
        return self.steps[self.i - 1]


def _which_strategy(kind: str, first: str) -> str:
    table = {
        "add": {"add_col": "column", "split": "partial_sums", "round": "compensate"},
        "sub": {"sub_col": "column", "borrow": "column", "count_up": "count_up", "combine": "count_up"},
        "eq": {"move_const": "inverse_ops", "divide": "divide_first", "guess": "guess_check"},
    }[kind]
    if first not in table:
        raise ValueError(f"a {kind!r} trace cannot start with {first!r}")
    return table[first]


def _carry_sum(step: Step, fact: bool) -> int:
    """The column sum the solver carried on from: operands a + b + carry-in, or the near miss a fact error wrote."""
    base = int(sum(step.operands[:3]))
    if not fact:
        return base
    written = int(step.result or 0)
    hits = {max(0, base + d) for d in (-2, -1, 1, 2) if max(0, base + d) % 10 == written}
    if len(hits) != 1:
        raise ValueError(f"fact error {base} -> {written} is not a near miss of the simulator")
    return hits.pop()


def trace_events(trace: Sequence[Step]) -> TraceEvents:
    """The trait-dependent events of `trace` (a whole simulated trace, not cut to the encoder's length)."""
    p = parse_problem(trace[0].problem)
    main: list[Step] = []
    rereads, prev_reread = 0, False
    for s in trace:
        if s.action == "reread":
            if prev_reread:
                raise ValueError("two re-reads in a row cannot come from the simulator")
            rereads, prev_reread = rereads + 1, True
        else:
            main.append(s)
            prev_reread = False
    if prev_reread or not main:
        raise ValueError("a re-read must come before a step")
    errs: list[tuple[int, float, bool]] = []
    regroup = [0, 0]

    def opportunity(kind: str, step: Step, boost: float = 1.0) -> bool:
        happened = step.error == kind
        errs.append((ERRORS.index(kind), boost, happened))
        return happened

    def fact(step: Step) -> bool:
        return opportunity("fact_error", step)

    c = _Cursor(main)
    name = _which_strategy(p.kind, main[0].action)
    da, db, cols = digits(p.a), digits(p.b), n_columns(p)
    if name == "column" and p.kind == "add":
        carry = 0
        for i in range(cols):
            written = bool(carry) and c.prev() == "carry"
            st = c.take("add_col")
            forgot = bool(carry) and opportunity("forgot_carry", st, 0.5 if written else 1.5)
            s_col = da[i] + db[i] if forgot else _carry_sum(st, fact(st))
            carry = int(s_col >= 10)
            if carry and i < cols - 1:
                regroup[0] += 1
                if c.peek() == "carry":
                    c.take("carry")
                    regroup[1] += 1
    elif name == "partial_sums":
        c.take("split")
        for _ in range(cols):
            fact(c.take("add_place"))
        fact(c.take("combine"))
    elif name == "compensate":
        c.take("round")
        fact(c.take("add_rounded"))
        st = c.take("adjust")
        if not opportunity("sign_slip", st):
            fact(st)
    elif name == "column":  # subtraction
        borrow = 0
        for i in range(cols):
            top = da[i] - borrow
            if top < db[i]:
                regroup[0] += 1
                written = c.peek() == "borrow"
                if written:
                    c.take("borrow")
                    regroup[1] += 1
                st = c.take("sub_col")
                if opportunity("forgot_borrow", st, 0.4 if written else 1.5):
                    borrow = 0
                else:
                    borrow = 1
                    fact(st)
            else:
                borrow = 0
                fact(c.take("sub_col"))
    elif name == "count_up":
        while c.peek() == "count_up":
            fact(c.take("count_up"))
        fact(c.take("combine"))
    elif name == "inverse_ops":
        st = c.take("move_const")
        if not opportunity("sign_slip", st):
            fact(st)
        fact(c.take("divide"))
    elif name == "divide_first":
        fact(c.take("divide"))
        st = c.take("move_const")
        if not opportunity("sign_slip", st):
            fact(st)
    else:  # guess and check
        while c.peek() == "guess":
            c.take("guess")
            fact(c.take("substitute"))
    c.take("write_answer")
    checked = c.peek() == "check"
    if checked:
        c.take("check")
        if c.peek() == "revise":
            c.take("revise")
            c.take("write_answer")
    if c.peek() is not None:
        raise ValueError(f"unexpected {c.peek()!r} after the answer")

    actions = np.array([ACTIONS.index(s.action) for s in trace])
    log_base = np.array([math.log(BASE_TIME[s.action] * step_difficulty(s.action, s.operands)) for s in trace])
    t = np.array([s.time_s for s in trace])
    lo = np.where(t <= MIN_TIME_S, -np.inf, np.log(np.maximum(t - ROUND_S, 1e-12)))
    return TraceEvents(
        kind=p.kind, strategy=STRATEGIES[p.kind].index(name), modulation=strategy_modulation(p),
        position=trace[0].trace % SESSION_LEN, reread=(len(main), rereads), time_action=actions,
        time_lo=lo - log_base, time_hi=np.log(t + ROUND_S) - log_base, error=tuple(errs),
        regroup=(regroup[0], regroup[1]), check=(1, int(checked)),
    )


@dataclass(frozen=True)
class TraitTable:
    """The traits of P people as arrays (built once, scored against many traces)."""

    strategy: dict[str, np.ndarray]  # kind -> (P, n strategies)
    explicit_regroup: np.ndarray  # (P,)
    check: np.ndarray
    reread: np.ndarray
    log_speed: np.ndarray
    skill_speed: np.ndarray  # (P, n actions)
    time_sd: np.ndarray
    error_rates: np.ndarray  # (P, n errors)
    fatigue: np.ndarray

    @staticmethod
    def of(traits: Sequence[Traits]) -> "TraitTable":
        return TraitTable(
            strategy={k: np.array([t.strategy[k] for t in traits]) for k in STRATEGIES},
            explicit_regroup=np.array([t.explicit_regroup for t in traits]),
            check=np.array([t.check for t in traits]),
            reread=np.array([t.reread for t in traits]),
            log_speed=np.array([t.log_speed for t in traits]),
            skill_speed=np.array([[t.skill_speed[a] for a in ACTIONS] for t in traits]),
            time_sd=np.array([t.time_sd for t in traits]),
            error_rates=np.array([[t.error_rates[e] for e in ERRORS] for t in traits]),
            fatigue=np.array([t.fatigue for t in traits]),
        )


def _bernoulli(p: np.ndarray, n: int, k: int) -> np.ndarray:
    """(P,) log of p^k (1 - p)^(n - k), with 0 log 0 = 0 (so p = 1 with k = n scores 0, not NaN)."""
    out = np.zeros_like(p)
    with np.errstate(divide="ignore"):
        if k:
            out = out + k * np.log(p)
        if n - k:
            out = out + (n - k) * np.log1p(-p)
    return out


def log_normal_interval(lo: np.ndarray, hi: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """log P(lo < Z < hi) for Z ~ N(mean, sd^2), elementwise, accurate in both tails (float64)."""
    a = torch.as_tensor((lo - mean) / sd, dtype=torch.float64)
    b = torch.as_tensor((hi - mean) / sd, dtype=torch.float64)
    flip = a > 0  # P(a < Z < b) = P(-b < Z < -a): keep both ends in the lower tail
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return (lb + torch.log(-torch.expm1(la - lb))).numpy()


def log_likelihood_terms(ev: TraceEvents, tt: TraitTable) -> dict[str, np.ndarray]:
    """Each term of the module docstring, (P,) per person (up to one constant per trace shared by all people)."""
    tired = 1.0 + tt.fatigue * ev.position / SESSION_LEN  # (P,)
    w = tt.strategy[ev.kind] * np.array(ev.modulation)  # (P, n strategies)
    out = {"strategy": np.log(w[:, ev.strategy]) - np.log(w.sum(1))}
    out["reread"] = _bernoulli(np.minimum(1.0, tt.reread * tired), *ev.reread)
    mean = tt.log_speed[:, None] + tt.skill_speed[:, ev.time_action] + np.log(tired)[:, None]  # (P, s)
    out["time"] = log_normal_interval(ev.time_lo[None, :], ev.time_hi[None, :], mean, tt.time_sd[:, None]).sum(1)
    err = np.zeros_like(tired)
    for k, boost, happened in ev.error:
        rate = np.minimum(0.95, tt.error_rates[:, k] * tired * boost)
        err = err + (np.log(rate) if happened else np.log1p(-rate))
    out["error"] = err
    out["regroup"] = _bernoulli(tt.explicit_regroup, *ev.regroup)
    out["check"] = _bernoulli(tt.check, *ev.check)
    return out


def log_likelihood(ev: TraceEvents, tt: TraitTable) -> np.ndarray:
    """(P,) log-likelihood of the trace under each person (the sum of `log_likelihood_terms`)."""
    return sum(log_likelihood_terms(ev, tt).values())  # type: ignore[return-value]


def oracle_scores(traits: Sequence[Traits], traces: Sequence[Sequence[Step]], terms: Sequence[str] = TERMS) -> np.ndarray:
    """(n traces, P) log-likelihood of each trace under each person's true traits, summing `terms` only."""
    tt = TraitTable.of(traits)
    rows = []
    for tr in traces:
        parts = log_likelihood_terms(trace_events(tr), tt)
        rows.append(sum(parts[k] for k in terms))
    return np.stack(rows)


def oracle_top1(traits: Sequence[Traits], held_out: Sequence[Sequence[Sequence[Step]]], group: int = 1,
                terms: Sequence[str] = TERMS) -> float:
    """Share of held-out traces (or groups of `group` consecutive ones) whose true-trait likelihood is highest
    for the person who produced them; `held_out[i]` are person i's traces."""
    right = total = 0
    for i, trs in enumerate(held_out):
        s = oracle_scores(traits, trs, terms)
        n = len(s) - len(s) % group
        s = s[:n].reshape(n // group, group, -1).sum(1)
        right += int((s.argmax(1) == i).sum())
        total += len(s)
    return right / max(total, 1)
