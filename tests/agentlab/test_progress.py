"""Progress on stderr: the bar advances within a task by the learner's planned steps (with the loss and an ETA),
long quiet phases say what they do, and nothing is printed unless a command (or the caller) asks."""

from __future__ import annotations

import contextlib
import io
import time

import torch

from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.context import FitContext, Progress, progress_shown, say
from agentlab.loop import run
from tests_helpers import QUICK, cli, permuted_stream


class Planned:
    """A learner that plans 4 steps a task and takes them slowly enough for the bar to redraw between them."""

    name = "planned"

    def fit(self, agent, task, ctx):
        ctx.plan(4)
        for k in range(4):
            time.sleep(0.12)
            ctx.step({"total": 1.0 / (k + 1)}, 10)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _stderr(fn):
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        out = fn()
    return out, buf.getvalue().replace("\r", "\n")


def test_bar_advances_within_a_task_with_loss_and_eta():
    agent = Agent(MLP(20, [8], 4), learner=Planned(), label="planned")
    result, err = _stderr(lambda: run(agent, permuted_stream(n_tasks=2), generator=torch.Generator().manual_seed(0),
                                      progress=True))
    assert result.completed
    assert "planned:" in err and "task 1/2: step 2/4, loss 0.500" in err
    assert "task 2/2: step 3/4, loss 0.333" in err
    # a fraction of the whole: task 2 of 2 at step 2 of 4 is 75% done, with the time left
    line = next(s for s in err.splitlines() if "task 2/2: step 2/4" in s)
    assert " 75%|" in line and "<00:" in line
    assert "task 1/2: evaluating task_000 (1 of 2)" in err and "task 2/2 done: avg acc" in err


def test_plan_reaches_the_progress_callback():
    seen = []
    ctx = FitContext(generator=torch.Generator(), task_index=0, n_tasks=1, progress=seen.append)
    ctx.step({"total": 1.0}, 1)
    ctx.plan(10)
    ctx.step({"total": 0.5}, 1)
    assert [(i["task_step"], i["planned"]) for i in seen] == [(1, 0), (2, 10)]


def test_nothing_is_printed_unless_progress_is_shown():
    agent = Agent(MLP(20, [8], 4), learner=Planned())
    _, err = _stderr(lambda: run(agent, permuted_stream(n_tasks=1), generator=torch.Generator().manual_seed(0)))
    assert err == ""
    _, err = _stderr(lambda: (say("building data"), Progress("x", 3).to(1, "one")))
    assert err == ""
    with progress_shown():
        _, err = _stderr(lambda: say("building data"))
    assert err == "agentlab: building data\n"


def test_run_says_what_it_builds_and_no_progress_silences_it(tmp_path):
    quick = [a for a in QUICK if a != "--no-progress"]
    rc, _, err = cli("run", *quick, "--out", tmp_path / "a")
    assert rc == 0 and "agentlab: building stream 'digits-split'" in err and "finetune:" in err
    rc, _, err = cli("run", *QUICK, "--out", tmp_path / "b")
    assert rc == 0 and "building stream" not in err and "finetune:" not in err


def test_learners_tell_the_driver_how_many_steps_they_plan():
    """Through the step driver: fine-tuning plans epochs x batches (capped by max_steps), the sequence learner its
    steps; the context hears it before the first step."""
    from agentlab.learners.finetune import FineTune
    from agentlab.learners.sgd import SGDConfig

    task = permuted_stream(n_tasks=1)[0]  # 300 training examples
    for cfg, planned in [(SGDConfig(epochs=2, batch_size=64), 2 * 5), (SGDConfig(epochs=3, batch_size=100, max_steps=4), 4)]:
        seen = []
        agent = Agent(MLP(20, [8], 4), learner=FineTune(cfg))
        ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1, progress=seen.append)
        agent.start_task(task)
        agent.learner.fit(agent, task, ctx)
        assert {i["planned"] for i in seen} == {planned} and seen[-1]["task_step"] == planned


def test_sequence_learner_plans_its_steps():
    from agentlab.registry import BuildEnv, build

    stream = build("stream", {"name": "algorithmic", "tasks": ["copy"], "max_len": 3, "n_eval": 2}, BuildEnv())
    agent = Agent(build("backbone", {"name": "lstm-seq", "hidden_size": 8}, BuildEnv(stream=stream)),
                  learner=build("learner", {"name": "sequence", "steps": 3, "batch_size": 2}, BuildEnv()))
    seen = []
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1, progress=seen.append)
    agent.start_task(stream[0])
    agent.learner.fit(agent, stream[0], ctx)
    assert [(i["task_step"], i["planned"]) for i in seen] == [(1, 3), (2, 3), (3, 3)]
