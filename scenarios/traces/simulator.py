"""A trace simulator with known ground truth: solvers with latent traits, deterministic by seed.

Each simulated person has latent traits drawn once from a population
distribution (`draw_traits`), then solves problems step by step (`solve`),
writing the records of `agentlab.scenarios.traces.format`:

* strategy preferences per problem kind (column / partial sums / compensation for
  addition, column / counting up for subtraction, inverse operations / divide first /
  guess and check for equations), modulated by the problem (compensation is
  attractive when b ends in 7, 8 or 9; dividing first when it divides cleanly);
* habits: writing a carry or borrow as its own step, checking the answer, re-reading;
* skill-specific error rates (a forgotten carry, a forgotten borrow, a sign slip,
  a wrong number fact), higher when a regrouping was not written down;
* speed: an overall log-speed, a per-action log-speed (fluency differs by skill),
  and a within-person spread of step times (log-normal);
* fatigue: over a session of `SESSION_LEN` problems, steps slow down and errors grow.

Every person draws from their own `random.Random` seeded by text (`"{seed}:{i}"`,
hashed by SHA-512 inside `random`), so person i is the same whoever else is
simulated and in whatever order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from agentlab.scenarios.traces.format import ACTIONS, ERRORS, Step
from agentlab.scenarios.traces.problems import Problem, digits, n_columns, random_problem

STRATEGIES: dict[str, tuple[str, ...]] = {
    "add": ("column", "partial_sums", "compensate"),
    "sub": ("column", "count_up"),
    "eq": ("inverse_ops", "divide_first", "guess_check"),
}
SESSION_LEN = 10
# Typical seconds per step for an average solver (before speed, fluency, noise, fatigue).
BASE_TIME: dict[str, float] = {
    "add_col": 3.0, "sub_col": 3.5, "carry": 1.0, "borrow": 1.5, "split": 2.0, "add_place": 3.0,
    "combine": 2.5, "round": 2.0, "add_rounded": 3.0, "adjust": 2.5, "count_up": 3.0, "move_const": 4.0,
    "divide": 4.0, "guess": 3.0, "substitute": 4.0, "write_answer": 2.0, "check": 4.0, "revise": 3.0,
    "reread": 2.5,
}
COMPUTING = ("add_col", "sub_col", "add_place", "add_rounded", "adjust", "count_up", "divide", "substitute", "combine")


@dataclass(frozen=True)
class Traits:
    """The latent ground truth of one simulated solver."""

    person: str
    strategy: dict[str, tuple[float, ...]]
    """preference over STRATEGIES[kind] before the problem modulates it"""
    explicit_regroup: float
    """probability of writing a carry or borrow as its own step"""
    check: float
    """probability of checking the answer after writing it"""
    reread: float
    """probability of re-reading the problem before a step (rises with fatigue)"""
    log_speed: float
    """overall log time multiplier (positive = slower)"""
    skill_speed: dict[str, float]
    """per-action log time multiplier (fluency by skill)"""
    time_sd: float
    """within-person standard deviation of log step time"""
    error_rates: dict[str, float]
    """per error type: probability at each opportunity, at rest"""
    fatigue: float
    """growth of time and error rates over a session: x(1 + fatigue * position / SESSION_LEN)"""


def _dirichlet(rng: random.Random, k: int, alpha: float) -> tuple[float, ...]:
    g = [rng.gammavariate(alpha, 1.0) for _ in range(k)]
    s = sum(g) or 1.0
    return tuple(v / s for v in g)


def draw_traits(seed: int, index: int, prefix: str = "p") -> Traits:
    """Person `index` of the population with `seed` (independent of every other person)."""
    rng = random.Random(f"traits:{seed}:{prefix}:{index}")
    return Traits(
        person=f"{prefix}{index:05d}",
        strategy={k: _dirichlet(rng, len(v), 0.6) for k, v in STRATEGIES.items()},
        explicit_regroup=rng.betavariate(0.5, 0.5),
        check=rng.betavariate(0.7, 0.7),
        reread=rng.betavariate(1.2, 12.0),
        log_speed=rng.gauss(0.0, 0.4),
        skill_speed={a: rng.gauss(0.0, 0.35) for a in ACTIONS},
        time_sd=rng.uniform(0.06, 0.22),
        error_rates={
            "forgot_carry": rng.betavariate(1.2, 5.0),
            "forgot_borrow": rng.betavariate(1.2, 5.0),
            "sign_slip": rng.betavariate(1.0, 7.0),
            "fact_error": rng.betavariate(1.0, 40.0),
        },
        fatigue=rng.uniform(0.0, 0.8),
    )


def tiredness(t: Traits, trace: int) -> float:
    """Fatigue factor on step times and error rates of problem number `trace` of a session."""
    return 1.0 + t.fatigue * (trace % SESSION_LEN) / SESSION_LEN


def step_difficulty(action: str, operands: "list[float] | tuple[float, ...]") -> float:
    """Time factor of bigger numbers in a computing step (1 for every other step)."""
    size = sum(abs(o) for o in operands[:3]) if action in COMPUTING else 0.0
    return 1.0 + 0.03 * min(size, 30.0)


class _Writer:
    """Collects the steps of one trace, timing each and inserting re-reads."""

    def __init__(self, t: Traits, rng: random.Random, p: Problem, session: int, trace: int) -> None:
        self.t, self.rng, self.p = t, rng, p
        self.session, self.trace = session, trace
        self.tired = tiredness(t, trace)
        self.steps: list[Step] = []

    def err(self, kind: str, boost: float = 1.0) -> bool:
        """Whether this opportunity produces error `kind`."""
        return self.rng.random() < min(0.95, self.t.error_rates[kind] * self.tired * boost)

    def emit(self, action: str, operands: list[float], result: float | None, error: str | None = None) -> None:
        if action != "reread" and self.rng.random() < self.t.reread * self.tired:
            self.emit("reread", [], None)
        log_t = (math.log(BASE_TIME[action]) + self.t.log_speed + self.t.skill_speed[action]
                 + self.t.time_sd * self.rng.gauss(0.0, 1.0))
        time_s = round(math.exp(log_t) * self.tired * step_difficulty(action, operands), 3)
        self.steps.append(Step(self.t.person, self.session, self.trace, len(self.steps), self.p.text, action,
                               tuple(float(o) for o in operands), None if result is None else float(result),
                               max(time_s, 0.05), error))

    def fact(self, value: float) -> tuple[float, str | None]:
        """`value`, or a near miss with a fact error."""
        if self.err("fact_error"):
            return value + self.rng.choice((-2, -1, 1, 2)), "fact_error"
        return value, None


# ------------------------------------------------------------------ strategies: each returns the answer written


def _add_column(w: _Writer) -> float:
    p, t = w.p, w.t
    da, db = digits(p.a), digits(p.b)
    cols = n_columns(p)
    carry, answer = 0, 0
    for i in range(cols):
        written = False
        if carry and w.steps and w.steps[-1].action == "carry":
            written = True
        cin, error = carry, None
        if carry and w.err("forgot_carry", 0.5 if written else 1.5):
            cin, error = 0, "forgot_carry"
        s = da[i] + db[i] + cin
        if error is None:
            s, error = w.fact(s)
            s = max(0, int(s))
        w.emit("add_col", [da[i], db[i], cin], s % 10, error)
        answer += (s % 10) * 10**i
        carry = int(s >= 10)
        if carry and i < cols - 1 and w.rng.random() < t.explicit_regroup:
            w.emit("carry", [1], 1)
    return answer + carry * 10**cols


def _add_partial(w: _Writer) -> float:
    p = w.p
    da, db = digits(p.a), digits(p.b)
    w.emit("split", [p.a, p.b], None)
    parts = []
    for i in reversed(range(n_columns(p))):
        s, e = w.fact(da[i] * 10**i + db[i] * 10**i)
        w.emit("add_place", [da[i] * 10**i, db[i] * 10**i], s, e)
        parts.append(s)
    total, e = w.fact(sum(parts))
    w.emit("combine", parts[:3], total, e)
    return total


def _add_compensate(w: _Writer) -> float:
    p = w.p
    r = p.b + (10 - p.b % 10) % 10
    w.emit("round", [p.b], r)
    s, e = w.fact(p.a + r)
    w.emit("add_rounded", [p.a, r], s, e)
    if w.err("sign_slip"):  # adds the compensation instead of taking it away
        w.emit("adjust", [s, r - p.b], s + (r - p.b), "sign_slip")
        return s + (r - p.b)
    v, e = w.fact(s - (r - p.b))
    w.emit("adjust", [s, r - p.b], v, e)
    return v


def _sub_column(w: _Writer) -> float:
    p, t = w.p, w.t
    da, db = digits(p.a), digits(p.b)
    borrow, answer = 0, 0
    for i in range(n_columns(p)):
        top = da[i] - borrow
        error = None
        if top < db[i]:
            written = w.rng.random() < t.explicit_regroup
            if written:
                w.emit("borrow", [i], top + 10)
            if w.err("forgot_borrow", 0.4 if written else 1.5):  # smaller-from-larger
                d, borrow, error = abs(top - db[i]), 0, "forgot_borrow"
            else:
                d, borrow = top + 10 - db[i], 1
        else:
            d, borrow = top - db[i], 0
        if error is None:
            d, error = w.fact(d)
            d = int(d) % 10
        w.emit("sub_col", [top, db[i], borrow], d, error)
        answer += d * 10**i
    return answer


def _sub_count_up(w: _Writer) -> float:
    p = w.p
    up = min(p.b + (10 - p.b % 10) % 10, p.a)  # to the next ten, then to a's tens, then to a
    marks = [p.b, up, max(up, (p.a // 10) * 10), p.a]
    parts = []
    for lo, hi in zip(marks[:-1], marks[1:]):
        if hi > lo:
            d, e = w.fact(hi - lo)
            w.emit("count_up", [lo, hi], d, e)
            parts.append(d)
    if not parts:
        parts = [0]
    total, e = w.fact(sum(parts))
    w.emit("combine", parts[:3], total, e)
    return total


def _eq_inverse(w: _Writer) -> float:
    p = w.p
    if w.err("sign_slip"):
        rhs, e = p.c + p.b, "sign_slip"
    else:
        rhs, e = w.fact(p.c - p.b)
    w.emit("move_const", [p.b], rhs, e)
    x, e = w.fact(rhs / p.a)
    w.emit("divide", [rhs, p.a], round(x, 3), e)
    return round(x, 3)


def _eq_divide_first(w: _Writer) -> float:
    p = w.p
    bb, cc = p.b / p.a, p.c / p.a
    cc2, e = w.fact(cc)
    w.emit("divide", [p.b, p.c, p.a], round(cc2, 3), e)
    if w.err("sign_slip"):
        x, e = cc2 + bb, "sign_slip"
    else:
        x, e = w.fact(cc2 - bb)
    w.emit("move_const", [round(bb, 3)], round(x, 3), e)
    return round(x, 3)


def _eq_guess(w: _Writer) -> float:
    p = w.p
    g = round(p.c / p.a)
    for tries in range(4):
        w.emit("guess", [tries], g)
        v, e = w.fact(p.a * g + p.b)
        w.emit("substitute", [g], v, e)
        if v == p.c:
            break
        g = p.answer if w.rng.random() < 0.6 else p.answer + w.rng.choice((-1, 1))
    return g


_SOLVERS = {
    ("add", "column"): _add_column, ("add", "partial_sums"): _add_partial, ("add", "compensate"): _add_compensate,
    ("sub", "column"): _sub_column, ("sub", "count_up"): _sub_count_up,
    ("eq", "inverse_ops"): _eq_inverse, ("eq", "divide_first"): _eq_divide_first, ("eq", "guess_check"): _eq_guess,
}


def strategy_modulation(p: Problem) -> tuple[float, ...]:
    """How much problem `p` invites each of STRATEGIES[p.kind] (compensation when b ends in 7-9, dividing first when clean)."""
    out = []
    for s in STRATEGIES[p.kind]:
        if s == "compensate":
            out.append(3.0 if p.b % 10 >= 7 else 0.3)
        elif s == "divide_first":
            out.append(2.0 if (p.b % p.a == 0 and p.c % p.a == 0) else 0.2)
        else:
            out.append(1.0)
    return tuple(out)


def strategy_weights(t: Traits, p: Problem) -> tuple[float, ...]:
    """The person's strategy probabilities for this problem: preference times what the problem invites."""
    pref = [v * m for v, m in zip(t.strategy[p.kind], strategy_modulation(p))]
    z = sum(pref)
    return tuple(v / z for v in pref)


def solve(t: Traits, p: Problem, rng: random.Random, session: int, trace: int) -> list[Step]:
    """One trace: person `t` solving `p` as problem number `trace` of `session`."""
    w = _Writer(t, rng, p, session, trace)
    strategy = rng.choices(STRATEGIES[p.kind], weights=strategy_weights(t, p))[0]
    answer = _SOLVERS[(p.kind, strategy)](w)
    w.emit("write_answer", [answer], answer)
    if rng.random() < t.check:
        wrong = abs(answer - p.answer) > 1e-6
        w.emit("check", [answer], p.a * answer + p.b if p.kind == "eq" else answer)
        if wrong and rng.random() < 0.8:
            w.emit("revise", [answer], p.answer)
            w.emit("write_answer", [p.answer], p.answer)
    return w.steps


def simulate_person(t: Traits, n_traces: int, seed: int) -> list[list[Step]]:
    """`n_traces` traces of person `t`, in sessions of SESSION_LEN problems; deterministic by (seed, person)."""
    rng = random.Random(f"traces:{seed}:{t.person}")
    return [solve(t, random_problem(rng), rng, k // SESSION_LEN, k % SESSION_LEN) for k in range(n_traces)]


def simulate_population(seed: int, n_people: int, n_traces: int, prefix: str = "p") -> tuple[list[Traits], list[list[list[Step]]]]:
    """Traits and traces of people 0..n_people-1 with `seed`."""
    traits = [draw_traits(seed, i, prefix) for i in range(n_people)]
    return traits, [simulate_person(t, n_traces, seed) for t in traits]


assert set(BASE_TIME) == set(ACTIONS) and all(e in ERRORS for e in ("forgot_carry", "forgot_borrow", "sign_slip", "fact_error"))
