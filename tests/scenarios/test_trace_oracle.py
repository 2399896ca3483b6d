"""The oracle fingerprint: exact trait likelihoods of simulated traces (scenarios/traces/oracle.py)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from agentlab.scenarios.traces.format import Step
from agentlab.scenarios.traces.oracle import (
    TERMS, TraitTable, log_likelihood_terms, log_normal_interval, oracle_scores, oracle_top1, trace_events,
)
from agentlab.scenarios.traces.problems import Problem
from agentlab.scenarios.traces.simulator import draw_traits, simulate_person, solve, strategy_weights


def test_every_simulated_trace_replays_and_a_foreign_one_is_refused() -> None:
    traits = [draw_traits(0, j, "n") for j in range(30)]
    for t in traits:
        for tr in simulate_person(t, 40, 0):
            ev = trace_events(tr)
            assert len(ev.time_action) == len(tr) and ev.reread[1] == sum(s.action == "reread" for s in tr)
    tr = simulate_person(traits[0], 1, 0)[0]
    bad = [Step(**{**s.__dict__, "action": "guess"}) if k == len(tr) - 1 else s for k, s in enumerate(tr)]
    with pytest.raises(ValueError):
        trace_events(bad)


def test_time_term_is_a_probability_over_the_written_milliseconds() -> None:
    # max(round(X, 3), 0.05) for X log-normal: the intervals of all writable values partition (0, inf).
    ms = np.arange(51, 200_000) / 1000.0  # 0.051 .. 199.999 s
    lo = np.concatenate([[-np.inf], np.log(ms - 0.0005)])
    hi = np.concatenate([[math.log(0.0505)], np.log(ms + 0.0005)])
    mean, sd = np.full(len(lo), math.log(3.0)), np.full(len(lo), 0.2)
    total = np.exp(log_normal_interval(lo, hi, mean, sd)).sum()
    assert abs(total - 1.0) < 1e-9
    # one interval by hand: width 1 ms at 3.000 s is ~ density of log X times the log-width
    z = (math.log(3.0) - math.log(3.2)) / 0.2
    by_hand = math.log(math.exp(-z * z / 2) / (0.2 * math.sqrt(2 * math.pi)) * (math.log(3.0005) - math.log(2.9995)))
    got = log_normal_interval(np.array([math.log(2.9995)]), np.array([math.log(3.0005)]), np.array([math.log(3.2)]), np.array([0.2]))
    assert abs(got[0] - by_hand) < 1e-6
    # far in the upper tail the interval is still finite and accurate (no 1 - 1 cancellation)
    far = log_normal_interval(np.array([9.0]), np.array([9.001]), np.array([0.0]), np.array([1.0]))
    assert math.isfinite(far[0]) and abs(far[0] - (-81 / 2 - 0.5 * math.log(2 * math.pi) + math.log(0.001))) < 0.01


def test_discrete_terms_match_a_hand_computation() -> None:
    t = draw_traits(0, 3, "n")
    p = Problem("eq", 2, 4, 10)  # 2x+4=10: dividing first is clean (x2 preference)
    steps = [Step(t.person, 0, 4, k, p.text, a, ops, res, 2.0, None) for k, (a, ops, res) in enumerate([
        ("move_const", (4.0,), 6.0), ("divide", (6.0, 2.0), 3.0), ("write_answer", (3.0,), 3.0), ("check", (3.0,), 10.0)])]
    terms = log_likelihood_terms(trace_events(steps), TraitTable.of([t]))
    tired = 1 + t.fatigue * 4 / 10
    assert terms["strategy"][0] == pytest.approx(math.log(strategy_weights(t, p)[0]))
    assert terms["reread"][0] == pytest.approx(4 * math.log(1 - t.reread * tired))
    sign, fact = t.error_rates["sign_slip"] * tired, t.error_rates["fact_error"] * tired
    assert terms["error"][0] == pytest.approx(math.log(1 - sign) + 2 * math.log(1 - fact))
    assert terms["regroup"][0] == 0.0
    assert terms["check"][0] == pytest.approx(math.log(t.check))


@pytest.mark.parametrize("problem", [Problem("add", 58, 67), Problem("sub", 52, 27), Problem("eq", 2, 4, 10)])
def test_likelihood_ratio_of_two_people_matches_simulated_frequencies(problem: Problem) -> None:
    # The oracle drops factors shared by all people, so what it claims is P_A(trace) / P_B(trace):
    # check that against how often A and B write each exact discrete trace (actions, errors, results).
    a, b = draw_traits(0, 0, "n"), draw_traits(0, 1, "n")
    n = 15_000
    counts, example = [], {}
    for who, t in enumerate((a, b)):
        rng = random.Random(f"mc:{who}")
        c: Counter = Counter()
        for _ in range(n):
            tr = solve(t, problem, rng, 0, 5)
            key = tuple((s.action, s.error, s.result) for s in tr)
            c[key] += 1
            example.setdefault(key, tr)
        counts.append(c)
    tt = TraitTable.of([a, b])
    checked = 0
    for key in counts[0]:
        na, nb = counts[0][key], counts[1][key]
        if min(na, nb) < 300:
            continue
        terms = log_likelihood_terms(trace_events(example[key]), tt)
        claim = sum(terms[k] for k in TERMS if k != "time")
        se = math.sqrt(1 / na + 1 / nb)
        assert abs(math.log(na / nb) - (claim[0] - claim[1])) < 4 * se, (key, na, nb, claim)
        checked += 1
    assert checked >= 2


def test_true_person_scores_highest_on_a_session_and_usually_on_one_trace() -> None:
    traits = [draw_traits(0, j, "n") for j in range(12)]
    held = [simulate_person(t, 30, 0)[20:] for t in traits]
    assert oracle_top1(traits, held, group=10) == 1.0
    assert oracle_top1(traits, held) > 0.8
    s = oracle_scores(traits, held[0])
    assert s.shape == (10, 12) and np.isfinite(s).all()
