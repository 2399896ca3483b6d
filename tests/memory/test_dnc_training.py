"""The DNC learns through its memory, and the one-write-head fast paths equal the general formulas."""

from __future__ import annotations

import pytest
import torch

from agentlab.memory.dnc import DNC
from agentlab.memory.dnc.access import erase_and_add
from agentlab.memory.dnc.allocation import allocation_weights, write_allocation_weights
from agentlab.memory.dnc.usage import update_usage
from agentlab.scenarios.algorithmic import SequenceTaskSpec, bits_per_sequence


def test_feedforward_dnc_overfits_a_copy_batch_through_memory_alone():
    # A feed-forward controller has no state of its own: at the output steps its input is all
    # zeros, so the only way to reproduce the pattern is to write it to memory and read it back
    # (read words r_{t-1} are its only other input). Without a working write -> link/content
    # read -> output path the cost stays near chance (8 bits: 2 steps x 4 bits).
    torch.manual_seed(0)
    m = DNC(input_size=6, output_size=4, memory_size=8, word_size=8, num_reads=1, num_writes=1,
            hidden_size=32, controller="feedforward")
    b = SequenceTaskSpec("copy", 4).sample(torch.Generator().manual_seed(0), 8, 2, 2)
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    for _ in range(100):
        y, _ = m(b.x, m.initial_state(8))
        loss = bits_per_sequence(y, b.y, b.mask)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
        opt.step()
    assert float(loss.detach()) < 0.1, float(loss.detach())


def test_one_write_head_fast_paths_equal_the_general_formulas():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(3, 5, 4, generator=g)
    w = torch.softmax(torch.randn(3, 1, 5, generator=g), -1)
    erase, add = torch.rand(3, 1, 4, generator=g), torch.randn(3, 1, 4, generator=g)
    general = memory * (1 - w[:, 0, :, None] * erase) + w[:, 0, :, None] * add  # M o (1 - w e^T) + w v^T
    assert torch.allclose(erase_and_add(memory, w, erase, add), general, atol=1e-6)
    # two heads through the general path, one of them with zero weight, equals the single head
    w2, e2, a2 = torch.cat([w, torch.zeros_like(w)], 1), torch.cat([erase, erase], 1), torch.cat([add, add], 1)
    assert torch.allclose(erase_and_add(memory, w2, e2, a2), general, atol=1e-6)
    usage, free, read = torch.rand(3, 5, generator=g), torch.rand(3, 2, generator=g), torch.rand(3, 2, 5, generator=g)
    psi = (1 - free[:, :, None] * read).prod(1)
    assert torch.allclose(update_usage(usage, w, free, read), ((usage + w[:, 0] - usage * w[:, 0]) * psi).clamp(0, 1))
    assert torch.allclose(update_usage(usage, w2, free, read), update_usage(usage, w, free, read), atol=1e-6)
    assert torch.allclose(write_allocation_weights(usage, torch.rand(3, 1, generator=g))[:, 0], allocation_weights(usage))


def test_dnc_copy_budget_override_replaces_only_the_named_parts():
    from agentlab.bench.dnc_copy import budgets
    from agentlab.errors import UserError

    base, batch = budgets(False, "cpu")
    out, batch2 = budgets(False, "cpu", "repeat_copy=3600, recall=90")
    assert out["repeat_copy"] == (base["repeat_copy"][0], 3600.0) and out["recall"][1] == 90.0
    assert out["copy"] == base["copy"] and batch2 == batch
    for bad in ("repeat=10", "copy=-1", "copy=ten", "copy"):
        with pytest.raises(UserError, match="AGENTLAB_DNC_BUDGET_S"):
            budgets(False, "cpu", bad)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_sequence_learner_cosine_rate_anneals_to_zero_over_the_steps(schedule, monkeypatch):
    import math

    import agentlab.learners.sequence as seq
    from agentlab.agent import Agent
    from agentlab.context import FitContext
    from agentlab.backbones.sequence import LSTMSequenceModel
    from agentlab.scenarios.algorithmic import AlgorithmicConfig, algorithmic_stream

    rates = []
    real_step = seq.backward_step
    monkeypatch.setattr(seq, "backward_step", lambda opt, *a, **k: (rates.append(opt.param_groups[0]["lr"]), real_step(opt, *a, **k)))
    task = algorithmic_stream(AlgorithmicConfig(tasks=["copy"], bits=4, min_len=1, max_len=3, n_eval=4))[0]
    cfg = seq.SequenceConfig(steps=8, batch_size=2, lr=0.01, lr_schedule=schedule)
    agent = Agent(LSTMSequenceModel(6, 4, 8), learner=seq.SequenceLearner(cfg))
    agent.learner.fit(agent, task, FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1))
    want = [0.01 * (0.5 * (1 + math.cos(math.pi * s / 8)) if schedule == "cosine" else 1.0) for s in range(8)]
    assert rates == pytest.approx(want)
    with pytest.raises(Exception, match="lr_schedule"):
        seq.SequenceConfig(lr_schedule="linear")  # type: ignore[arg-type]
