"""Algorithmic sequence tasks: shapes, masks, determinism, bits per sequence, evaluator, learner."""

from __future__ import annotations

import math

import torch

from agentlab.agent import Agent
from agentlab.context import FitContext
from agentlab.evaluate import evaluate
from agentlab.learners.sequence import Curriculum, SequenceConfig, SequenceLearner
from agentlab.backbones.sequence import LSTMSequenceModel
from agentlab.scenarios.algorithmic import (AlgorithmicConfig, SequenceTaskSpec, algorithmic_stream, bits_per_sequence,
                                   copy_sequence, recall_sequence, repeat_copy_sequence, sequences_correct)


def test_copy_layout_and_mask():
    x, y, m = copy_sequence(torch.Generator().manual_seed(0), 8, 3)
    assert x.shape == (7, 10) and y.shape == (7, 8) and m.shape == (7,)
    assert torch.equal(m, torch.tensor([0, 0, 0, 0, 1, 1, 1.0]))
    assert torch.equal(y[4:], x[:3, :8])  # the target is the pattern
    assert x[3, 8] == 1 and x[:3, 8:].abs().sum() == 0 and x[4:].abs().sum() == 0


def test_repeat_copy_and_recall_layout():
    x, y, m = repeat_copy_sequence(torch.Generator().manual_seed(1), 4, 2, 3, 5)
    assert x.shape == (2 + 1 + 6, 6) and m.sum() == 6
    assert x[2, 5] == 3 / 5 and torch.equal(y[3:5], x[:2, :4]) and torch.equal(y[7:9], x[:2, :4])
    x, y, m = recall_sequence(torch.Generator().manual_seed(2), 4, 3, 2)
    assert x.shape == (3 * 3 + 2 + 2 + 2, 6) and m.sum() == 2
    query = x[10:12, :4]
    items = [x[k * 3 + 1 : k * 3 + 3, :4] for k in range(3)]
    q = next(i for i in range(2) if torch.equal(items[i], query))
    assert torch.equal(y[-2:], items[q + 1])


def test_padding_masks_and_determinism():
    spec = SequenceTaskSpec("copy", 8, 1, 5)
    a = spec.sample(torch.Generator().manual_seed(3), 6, 1, 5)
    b = spec.sample(torch.Generator().manual_seed(3), 6, 1, 5)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    lengths = a.mask.sum(1)
    assert a.x.shape[1] == 2 * int(lengths.max()) + 1
    for i in range(6):  # scored steps follow the delimiter; padding is never scored
        L = int(lengths[i])
        assert a.mask[i, L + 1 : 2 * L + 1].sum() == L and a.mask[i, 2 * L + 1 :].sum() == 0
    s1, s2 = algorithmic_stream(AlgorithmicConfig(n_eval=4)), algorithmic_stream(AlgorithmicConfig(n_eval=4))
    assert torch.equal(s1[0].eval.eval.x, s2[0].eval.eval.x)
    assert s1[0].eval.generalisation.mask.sum(1).min() >= 21


def test_bits_per_sequence_by_hand():
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # (1, 2 steps, 2 bits)
    mask = torch.tensor([[1.0, 0.0]])
    logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere: 1 bit per scored bit
    assert math.isclose(float(bits_per_sequence(logits, target, mask)), 2.0, rel_tol=1e-6)
    logits = torch.tensor([[[math.log(3), -math.log(3)], [9.0, 9.0]]])  # p(right) = 3/4 on each scored bit
    assert math.isclose(float(bits_per_sequence(logits, target, mask)), 2 * -math.log2(0.75), rel_tol=1e-5)
    assert bool(sequences_correct(logits, target, mask)[0])  # the unscored step may be wrong
    logits[0, 0, 1] = 1.0
    assert not bool(sequences_correct(logits, target, mask)[0])


def test_curriculum_grows_only_below_threshold():
    c = Curriculum(SequenceConfig(start_len=2, threshold=1.0, check_every=2), max_len=4)
    assert c.current == 2
    c.update(5.0), c.update(0.1)
    assert c.current == 2  # window mean 2.55 >= 1
    c.update(0.5), c.update(0.5)
    assert c.current == 3
    for _ in range(10):
        c.update(0.0)
    assert c.current == 4  # never beyond max_len


def test_learner_and_evaluator_run_through_the_loop_pieces():
    stream = algorithmic_stream(AlgorithmicConfig(tasks=["copy", "recall"], bits=4, max_len=3, gen_min_len=4, gen_max_len=5, n_eval=8))
    torch.manual_seed(0)
    agent = Agent(LSTMSequenceModel(6, 4, 16), learner=SequenceLearner(SequenceConfig(steps=5, batch_size=4)))
    seen = []
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=2)
    ctx.progress = lambda info: seen.append(info["loss"])
    for task in stream:
        agent.learner.fit(agent, task, ctx)
        res = evaluate(agent, task)
        assert 0 <= res.acc <= 1 and res.n == 8
        assert {"bits_per_seq", "acc", "bits_per_seq_gen", "acc_gen"} <= set(res.extra)
        assert res.extra["bits_per_seq_gen"] > 0
    assert len(seen) == 10 and all(math.isfinite(v) for v in seen)


def test_dnc_copy_recipe_smoke(tmp_path):
    """The real command line on a tiny budget: both agents train, evaluate and log the DNC's figures."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "agentlab", "run", "dnc-copy", "--out", str(tmp_path), "--no-progress",
           "--set", "learner.steps=2", "--set", "stream.max_len=2", "--set", "stream.gen_min_len=3",
           "--set", "stream.gen_max_len=3", "--set", "stream.n_eval=3", "--set", 'stream.tasks=["copy"]', "--agent", "dnc"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "dnc" / "summary.json").read_text())
    assert summary["status"] == "completed"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "dnc"))
    ea.Reload()
    tags = ea.Tags()
    assert "memory/dnc/usage" in tags["scalars"] and "memory/dnc/occupancy" in tags["scalars"]
    assert "memory/dnc/usage_hist" in tags["histograms"]
    assert {"memory/dnc/allocation", "memory/dnc/link", "memory/dnc/read_weights", "memory/dnc/write_weights"} <= set(tags["images"])
