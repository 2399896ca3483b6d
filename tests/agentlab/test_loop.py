"""The loop: accuracy matrix shape, resume after a kill gives the identical matrix, NaN stops cleanly."""

import json

import numpy as np
import pytest
import torch

from agentlab import recipe as recipes
from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.loop import LoopConfig, run
from agentlab.runner import run_recipe
from agentlab.seeding import seed_everything
from agentlab.scenarios.digits import DigitsSplitConfig, build_digits_split


def _resolved(overrides):
    name, table = recipes.read_recipe("digits-split")
    base = ["learner.epochs=1", "learner.batch_size=64"]
    return recipes.resolve(name, recipes.apply_overrides(table, base + overrides))


def test_matrix_and_summary(tmp_path):
    run_dir, results = run_recipe(_resolved([]), run_dir=tmp_path / "run", only=["finetune"])
    r = results["finetune"]
    assert r.R.shape == (5, 5)
    for i in range(5):  # row i: tasks 0..i and the next one measured, the rest not
        assert not np.isnan(r.R[i, : min(i + 2, 5)]).any()
        assert np.isnan(r.R[i, i + 2 :]).all()
    assert not np.isnan(r.b).any()
    summary = json.loads((run_dir / "finetune" / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["ledger"]) == 5
    assert summary["metrics"]["avg_acc"] == pytest.approx(float(np.mean(r.R[4])))
    assert {"torch", "avalanche-lib", "python", "cpu", "torch_cpu_kernels"} <= set(summary["versions"])
    assert summary["versions"]["cpu"] and summary["versions"]["torch_cpu_kernels"]
    assert list((run_dir / "finetune").glob("events.out.tfevents.*"))


def test_resume_after_kill_gives_identical_matrix(tmp_path):
    # The replay agent carries learner state (its buffer) across tasks: the hardest case.
    full_dir, full = run_recipe(_resolved([]), run_dir=tmp_path / "full", only=["replay"])
    killed = _resolved(["loop.stop_after_tasks=2"])
    part_dir, part = run_recipe(killed, run_dir=tmp_path / "part", only=["replay"])
    assert part["replay"].status == "interrupted" and part["replay"].R.shape[0] == 2
    resumed = _resolved([])  # the CLI resumes from config.json; here the same table
    _, res = run_recipe(resumed, run_dir=part_dir, resume=True, only=["replay"])
    assert res["replay"].completed
    np.testing.assert_array_equal(res["replay"].R, full["replay"].R)
    np.testing.assert_array_equal(res["replay"].b, full["replay"].b)


class _Exploding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.lin(x.flatten(1))
        return out * float("nan") if self.calls > 3 and self.training else out


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
    gen = seed_everything(0)
    stream = build_digits_split(DigitsSplitConfig(), None)
    agent = Agent(_Exploding(), learner=FineTune(SGDConfig(epochs=1, batch_size=64, max_steps=2)))
    r = run(agent, stream, generator=gen, out_dir=tmp_path, cfg=LoopConfig())
    assert r.status == "failed" and "non-finite" in r.message
    assert r.R.shape[0] == 1  # task 0 finished (2 steps) before the NaN in task 1
    assert (tmp_path / "checkpoints" / "ckpt_0000").is_dir()
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_stop_request_saves_and_flushes(tmp_path):
    gen = seed_everything(0)
    stream = build_digits_split(DigitsSplitConfig(), None)
    agent = Agent(MLP(64, [16], 10), learner=FineTune(SGDConfig(epochs=1, batch_size=64)))
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 8  # "Ctrl-C" during task 1 (about 5 steps a task)

    r = run(agent, stream, generator=gen, out_dir=tmp_path, should_stop=stop)
    assert r.status == "interrupted" and "resume" in r.message
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
