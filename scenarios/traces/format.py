"""The trace format: one JSON object per line, one line per solution step.

A *trace* is one person's attempt at one problem, as the ordered steps they
took. A line (a *record*) holds one step:

    {"person": "p0007", "session": 2, "trace": 4, "step": 0, "problem": "47+38",
     "action": "add_col", "operands": [7, 8, 0], "result": 5, "time_s": 2.41, "error": null}

    person    str, non-empty            who solved it
    session   int >= 0                  sitting the trace belongs to
    trace     int >= 0                  index of the trace within its session (fatigue grows with it)
    step      int >= 0                  index of the step within its trace: 0, 1, 2, ... in file order
    problem   str                       "a+b", "a-b" (non-negative integers) or "ax+b=c" (integers, a != 0)
    action    str in ACTIONS            what was done in this step
    operands  list of <= 3 numbers      what it was done to (digits of a column, a constant moved, a guess)
    result    number or null            what it produced (a written digit, a new right-hand side)
    time_s    number > 0                seconds the step took
    error     null or str in ERRORS     the error made in this step, if any

Lines of one trace are consecutive. `read_jsonl` checks every record and
raises `TraceSchemaError` naming the line and the field of the first bad one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

# The step vocabulary. Column strategies (add_col, sub_col, carry, borrow), place-value strategies
# (split, add_place, combine), compensation (round, add_rounded, adjust), counting up, and the
# equation moves (move_const, divide, guess, substitute), then the moves shared by all.
ACTIONS: tuple[str, ...] = (
    "add_col", "sub_col", "carry", "borrow",
    "split", "add_place", "combine",
    "round", "add_rounded", "adjust",
    "count_up",
    "move_const", "divide", "guess", "substitute",
    "write_answer", "check", "revise", "reread",
)
ERRORS: tuple[str, ...] = ("forgot_carry", "forgot_borrow", "sign_slip", "fact_error")
FIELDS: tuple[str, ...] = ("person", "session", "trace", "step", "problem", "action", "operands", "result", "time_s", "error")

PROBLEM_RE = re.compile(r"^\s*(?:(\d+)\s*([+-])\s*(\d+)|(-?\d*)x\s*([+-])\s*(\d+)\s*=\s*(-?\d+))\s*$")


class TraceSchemaError(ValueError):
    """A bad record; the message names the line (1-based) and the field."""

    def __init__(self, line: int, field: str, message: str, source: str = "") -> None:
        where = f"{source}:" if source else ""
        super().__init__(f"{where}line {line}: field {field!r}: {message}")
        self.line, self.field = line, field


@dataclass(frozen=True)
class Step:
    """One checked record."""

    person: str
    session: int
    trace: int
    step: int
    problem: str
    action: str
    operands: tuple[float, ...]
    result: float | None
    time_s: float
    error: str | None

    def to_record(self) -> dict[str, Any]:
        return {
            "person": self.person, "session": self.session, "trace": self.trace, "step": self.step,
            "problem": self.problem, "action": self.action, "operands": list(self.operands),
            "result": self.result, "time_s": self.time_s, "error": self.error,
        }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_record(rec: Any, line: int, source: str = "") -> Step:
    """The record as a `Step`, or a `TraceSchemaError` naming `line` and the first bad field."""

    def bad(field: str, msg: str) -> TraceSchemaError:
        return TraceSchemaError(line, field, msg, source)

    if not isinstance(rec, dict):
        raise bad("<record>", f"must be a JSON object, got {type(rec).__name__}")
    for f in FIELDS:
        if f not in rec:
            raise bad(f, "missing")
    extra = sorted(set(rec) - set(FIELDS))
    if extra:
        raise bad(extra[0], f"unknown field; allowed fields: {', '.join(FIELDS)}")
    if not isinstance(rec["person"], str) or not rec["person"]:
        raise bad("person", f"must be a non-empty string, got {rec['person']!r}")
    for f in ("session", "trace", "step"):
        if not _is_int(rec[f]) or rec[f] < 0:
            raise bad(f, f"must be an integer >= 0, got {rec[f]!r}")
    if not isinstance(rec["problem"], str) or PROBLEM_RE.match(rec["problem"]) is None:
        raise bad("problem", f"must look like '47+38', '305-127' or '3x+5=20', got {rec['problem']!r}")
    if rec["action"] not in ACTIONS:
        raise bad("action", f"must be one of {', '.join(ACTIONS)}; got {rec['action']!r}")
    ops = rec["operands"]
    if not isinstance(ops, list) or len(ops) > 3 or not all(_is_num(o) for o in ops):
        raise bad("operands", f"must be a list of at most 3 numbers, got {ops!r}")
    if rec["result"] is not None and not _is_num(rec["result"]):
        raise bad("result", f"must be a number or null, got {rec['result']!r}")
    if not _is_num(rec["time_s"]) or rec["time_s"] <= 0:
        raise bad("time_s", f"must be a number > 0 (seconds), got {rec['time_s']!r}")
    if rec["error"] is not None and rec["error"] not in ERRORS:
        raise bad("error", f"must be null or one of {', '.join(ERRORS)}; got {rec['error']!r}")
    return Step(
        rec["person"], rec["session"], rec["trace"], rec["step"], rec["problem"], rec["action"],
        tuple(float(o) for o in ops), None if rec["result"] is None else float(rec["result"]),
        float(rec["time_s"]), rec["error"],
    )


def group_traces(steps: Iterable[tuple[int, Step]], source: str = "") -> list[list[Step]]:
    """Consecutive steps of one (person, session, trace) as one list; step indices must count 0, 1, 2..."""
    traces: list[list[Step]] = []
    key = None
    for line, s in steps:
        k = (s.person, s.session, s.trace)
        if k != key:
            if s.step != 0:
                raise TraceSchemaError(line, "step", f"a trace must start at step 0, got {s.step}", source)
            traces.append([s])
            key = k
            continue
        prev = traces[-1][-1]
        if s.step != prev.step + 1:
            raise TraceSchemaError(line, "step", f"expected {prev.step + 1} (steps of a trace are consecutive), got {s.step}", source)
        if s.problem != prev.problem:
            raise TraceSchemaError(line, "problem", f"changed within a trace ({prev.problem!r} -> {s.problem!r})", source)
        traces[-1].append(s)
    return traces


def iter_records(lines: Iterable[str], source: str = "") -> Iterator[tuple[int, Step]]:
    """(line number, checked step) for each non-blank line of JSON."""
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceSchemaError(n, "<json>", f"not valid JSON ({e.msg} at column {e.colno})", source) from None
        yield n, check_record(rec, n, source)


def read_jsonl(path: str | Path) -> list[list[Step]]:
    """Every trace of a JSONL file, checked; raises `TraceSchemaError` naming line and field."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        return group_traces(iter_records(f, str(path)), str(path))


def write_jsonl(path: str | Path, traces: Iterable[list[Step]]) -> int:
    """Write traces one step per line; returns the number of lines."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for tr in traces:
            for s in tr:
                f.write(json.dumps(s.to_record()) + "\n")
                n += 1
    return n
