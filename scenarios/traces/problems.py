"""The problems traces are about: multi-digit addition and subtraction, and linear equations ax + b = c.

`parse_problem` reads the text of a record's `problem` field; `problem_features`
turns it into the fixed-width vector the trace encoder sees at every step
(what a solver sees on the page: digits by column, where carries and borrows
fall, whether dividing first is clean). `random_problem` draws one for the simulator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agentlab.scenarios.traces.format import PROBLEM_RE

KINDS: tuple[str, ...] = ("add", "sub", "eq")
MAX_COLUMNS = 4
N_PROBLEM_FEATURES = 3 + 2 * MAX_COLUMNS + 2 * MAX_COLUMNS + 2 + 5  # kind, digits, carries/borrows, size, equation


@dataclass(frozen=True)
class Problem:
    """`kind` "add": a + b; "sub": a - b; "eq": a·x + b = c."""

    kind: str
    a: int
    b: int
    c: int = 0

    @property
    def text(self) -> str:
        if self.kind == "add":
            return f"{self.a}+{self.b}"
        if self.kind == "sub":
            return f"{self.a}-{self.b}"
        sign = "+" if self.b >= 0 else "-"
        coef = "" if self.a == 1 else ("-" if self.a == -1 else str(self.a))
        return f"{coef}x{sign}{abs(self.b)}={self.c}"

    @property
    def answer(self) -> int:
        if self.kind == "add":
            return self.a + self.b
        if self.kind == "sub":
            return self.a - self.b
        return (self.c - self.b) // self.a


def parse_problem(text: str) -> Problem:
    m = PROBLEM_RE.match(text)
    if m is None:
        raise ValueError(f"cannot parse problem {text!r}")
    if m.group(1) is not None:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return Problem("add" if op == "+" else "sub", a, b)
    coef = m.group(4)
    a = 1 if coef in ("", "+") else (-1 if coef == "-" else int(coef))
    b = int(m.group(6)) * (1 if m.group(5) == "+" else -1)
    return Problem("eq", a, b, int(m.group(7)))


def digits(n: int, width: int = MAX_COLUMNS) -> list[int]:
    """Decimal digits of |n|, units first, padded to `width`."""
    n = abs(n)
    return [(n // 10**i) % 10 for i in range(width)]


def column_events(p: Problem) -> list[int]:
    """Per column (units first): 1 where the column sends a carry (add) or needs a borrow (sub)."""
    da, db = digits(p.a), digits(p.b)
    out, carry = [], 0
    for i in range(MAX_COLUMNS):
        if p.kind == "add":
            carry = int(da[i] + db[i] + carry >= 10)
            out.append(carry)
        elif p.kind == "sub":
            need = int(da[i] - carry < db[i])
            out.append(need)
            carry = need
        else:
            out.append(0)
    return out


def n_columns(p: Problem) -> int:
    return max(len(str(abs(p.a))), len(str(abs(p.b))))


def problem_features(p: Problem) -> list[float]:
    """(N_PROBLEM_FEATURES,) kind one-hot, digits by column /9, carry and borrow columns, size, equation terms."""
    kind = [float(p.kind == k) for k in KINDS]
    arith = p.kind != "eq"
    da = [d / 9 for d in digits(p.a)] if arith else [0.0] * MAX_COLUMNS
    db = [d / 9 for d in digits(p.b)] if arith else [0.0] * MAX_COLUMNS
    ev = column_events(p)
    carries = [float(e) for e in ev] if p.kind == "add" else [0.0] * MAX_COLUMNS
    borrows = [float(e) for e in ev] if p.kind == "sub" else [0.0] * MAX_COLUMNS
    size = [n_columns(p) / MAX_COLUMNS if arith else 0.0, float(arith and p.b % 10 >= 7)]
    if p.kind == "eq":
        eq = [p.a / 10, p.b / 20, p.c / 50, float(p.b % p.a == 0 and p.c % p.a == 0), float(p.b < 0)]
    else:
        eq = [0.0] * 5
    return kind + da + db + carries + borrows + size + eq


def random_problem(rng: random.Random, kind_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)) -> Problem:
    """A problem of a random kind: 2- to 4-digit operands, or ax + b = c with an integer solution."""
    kind = rng.choices(KINDS, weights=kind_weights)[0]
    if kind in ("add", "sub"):
        width = rng.choice((2, 3, 3, 4))
        a = rng.randint(10 ** (width - 1), 10**width - 1)
        b = rng.randint(10, 10**width - 1)
        if kind == "sub" and b > a:
            a, b = b, a
        return Problem(kind, a, b)
    a = rng.choice((1, 2, 2, 3, 3, 4, 5, 6, -2, -3))
    x = rng.randint(-9, 12)
    b = rng.randint(-20, 20) or 1
    return Problem("eq", a, b, a * x + b)
