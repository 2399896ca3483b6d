"""The trace format, its schema check, the simulator and the tensor encoding."""

from __future__ import annotations

import json

import pytest
import torch

from agentlab.scenarios.traces.encode import END, IGNORE, START, X_CHANNELS, Y_CHANNELS, encode
from agentlab.scenarios.traces.format import ACTIONS, TraceSchemaError, read_jsonl, write_jsonl
from agentlab.scenarios.traces.problems import parse_problem, random_problem
from agentlab.scenarios.traces.simulator import draw_traits, simulate_person, simulate_population

GOOD = {"person": "p1", "session": 0, "trace": 0, "step": 0, "problem": "47+38", "action": "add_col",
        "operands": [7, 8, 0], "result": 5, "time_s": 2.5, "error": None}


def test_simulator_is_deterministic_by_seed() -> None:
    _, a = simulate_population(3, 4, 6)
    _, b = simulate_population(3, 4, 6)
    _, c = simulate_population(4, 4, 6)
    assert a == b
    assert a != c
    # person i does not depend on who else is simulated
    _, only_two = simulate_population(3, 2, 6)
    assert only_two == a[:2]
    assert draw_traits(3, 1) == draw_traits(3, 1) and draw_traits(3, 1) != draw_traits(3, 2)


def test_simulated_traces_pass_the_schema_and_round_trip(tmp_path) -> None:
    t = draw_traits(0, 0)
    traces = simulate_person(t, 12, seed=0)
    path = tmp_path / "t.jsonl"
    n = write_jsonl(path, traces)
    assert n == sum(len(tr) for tr in traces)
    back = read_jsonl(path)
    assert back == traces


def test_problem_text_round_trips() -> None:
    import random

    rng = random.Random(0)
    for _ in range(200):
        p = random_problem(rng)
        assert parse_problem(p.text) == p


def _write(tmp_path, records) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"time_s": -1.0}, "time_s"),
        ({"action": "teleport"}, "action"),
        ({"error": "typo"}, "error"),
        ({"operands": [1, 2, 3, 4]}, "operands"),
        ({"problem": "hello"}, "problem"),
        ({"session": 1.5}, "session"),
        ({"person": ""}, "person"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_schema_errors_name_line_and_field(tmp_path, change, field) -> None:
    second = dict(GOOD, step=1, **change)
    path = _write(tmp_path, [GOOD, second])
    with pytest.raises(TraceSchemaError) as e:
        read_jsonl(path)
    assert e.value.line == 2 and e.value.field == field
    assert "line 2" in str(e.value) and repr(field) in str(e.value)


def test_schema_missing_field_bad_json_and_step_order(tmp_path) -> None:
    rec = dict(GOOD)
    del rec["time_s"]
    with pytest.raises(TraceSchemaError, match=r"line 1: field 'time_s': missing"):
        read_jsonl(_write(tmp_path, [rec]))
    with pytest.raises(TraceSchemaError, match=r"line 2: field '<json>'"):
        read_jsonl(_write(tmp_path, [GOOD, "{not json"]))
    with pytest.raises(TraceSchemaError, match=r"line 2: field 'step': expected 1"):
        read_jsonl(_write(tmp_path, [GOOD, dict(GOOD, step=2)]))


def test_encoding_layout() -> None:
    traces = simulate_person(draw_traits(0, 5), 5, seed=0)
    split = encode(traces)
    n, length = len(traces), max(len(t) for t in traces) + 1
    assert split.x.shape == (n, length, X_CHANNELS) and split.y.shape == (n, length, Y_CHANNELS)
    for i, tr in enumerate(traces):
        assert split.x[i, 0, 0] == START
        ids = [ACTIONS.index(s.action) for s in tr]
        assert split.y[i, : len(tr), 0].long().tolist() == ids  # position t predicts step t
        assert split.y[i, len(tr), 0] == END
        assert (split.y[i, len(tr) + 1 :, 0] == IGNORE).all()
        assert torch.allclose(split.y[i, : len(tr), 1], torch.log(torch.tensor([s.time_s for s in tr])))
