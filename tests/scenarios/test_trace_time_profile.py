"""The fingerprint's likelihood terms: the trace encoder's per-head terms and the per-person time profile."""

from __future__ import annotations

import math

import torch

from agentlab.backbones.trace_encoder import TraceEncoder
from agentlab.scenarios.traces import encode as E
from agentlab.scenarios.traces.encode import encode
from agentlab.scenarios.traces.objective import trace_log_likelihood, trace_log_likelihood_terms
from agentlab.scenarios.traces.simulator import draw_traits, simulate_person
from agentlab.scenarios.traces.time_profile import PersonTime, PopulationTime, step_table


def _traces(n_people: int, n: int, seed: int = 0, prefix: str = "n") -> list[list]:
    return [simulate_person(draw_traits(seed, j, prefix), n, seed) for j in range(n_people)]


def test_encoder_terms_are_proper_log_likelihoods_and_sum_to_the_total() -> None:
    x = encode([tr for p in _traces(2, 3) for tr in p]).x  # (6, l, c)
    torch.manual_seed(0)
    model = TraceEncoder(d_model=16, n_heads=2).eval()
    with torch.no_grad():
        out = model(x)
    terms = trace_log_likelihood_terms(out, x)
    assert torch.allclose(terms["action"] + terms["time"] + terms["error"], trace_log_likelihood(out, x))
    assert torch.allclose(model.log_likelihood(x, out, heads=("time",)), terms["time"])
    # by hand: every step's log time under N(mu, exp(logvar)) at the position before it
    log_t = x[:, 1:, E.C_TIME] * E.LOG_TS + E.LOG_T0
    has = (x[:, 1:, E.C_VALID] > 0).float()
    normal = torch.distributions.Normal(out.time_mu[:, :-1], torch.exp(0.5 * out.time_logvar[:, :-1]))
    assert torch.allclose(terms["time"], (normal.log_prob(log_t) * has).sum(1), atol=1e-4)
    logp = torch.log_softmax(out.action_logits, -1).gather(-1, x[..., E.C_NEXT].long().clamp(max=E.N_OUT - 1)[..., None])[..., 0]
    assert torch.allclose(terms["action"], (logp * (x[..., E.C_VALID] > 0)).sum(1), atol=1e-4)
    p = torch.sigmoid(out.error_logits[:, :-1])  # Bernoulli per error type and step
    y = x[:, 1:, E.C_ERR : E.C_ERR + E.N_ERRORS]
    bern = (y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum(-1)
    assert torch.allclose(terms["error"], (bern * has).sum(1), atol=1e-4)


def test_time_profile_is_a_normalised_density_matching_a_hand_computation() -> None:
    pop = PopulationTime.fit(encode([tr for p in _traces(20, 10, prefix="p") for tr in p]).x)
    prof = PersonTime.fit(pop, encode(_traces(1, 20)[0]).x)
    one = encode([_traces(1, 1, seed=5)[0][0][:1]]).x  # a one-step trace
    steps, r = pop.residuals(one)
    a = int(steps["action"][0])
    # integrate exp(log-likelihood) over the step's log time: a density in log seconds
    grid = torch.linspace(-6.0, 8.0, 14001)
    xs = one.repeat(len(grid), 1, 1)
    xs[:, 1, E.C_TIME] = (grid - E.LOG_T0) / E.LOG_TS
    dens = torch.exp(prof.log_likelihood(pop, xs).double())
    assert abs(float(dens.sum() * (grid[1] - grid[0])) - 1.0) < 1e-3
    v = prof.s2 + 1.0 / (float(prof.count[a]) / prof.s2 + 1.0)  # TAU = 1
    z = float(r[0]) - float(prof.offset[a]) - prof.slope * float(steps["pos"][0])
    by_hand = -0.5 * math.log(2 * math.pi * v) - 0.5 * z * z / v
    assert abs(float(prof.log_likelihood(pop, one)[0]) - by_hand) < 1e-4


def test_time_profile_identifies_people_from_sessions_and_keeps_each_person_to_itself() -> None:
    pop = PopulationTime.fit(encode([tr for p in _traces(30, 10, prefix="p") for tr in p]).x)
    people = _traces(10, 40)
    profiles = [PersonTime.fit(pop, encode(p[:20]).x) for p in people]
    right = 0
    for i, p in enumerate(people):
        held = encode(p[20:30]).x
        scores = torch.stack([q.log_likelihood(pop, held) for q in profiles], 1).sum(0)  # one session of 10
        right += int(scores.argmax() == i)
    assert right >= 9
    again = PersonTime.fit(pop, encode(people[0][:20]).x)  # a profile depends on its own traces only
    assert torch.equal(again.offset, profiles[0].offset) and again.s2 == profiles[0].s2
    assert len(step_table(encode(people[0][:3]).x)["action"]) == sum(len(t) for t in people[0][:3])
