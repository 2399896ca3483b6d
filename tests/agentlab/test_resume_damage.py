"""Resuming a damaged run directory: fall back to an older checkpoint, or stop with exit code 2 saying what was
found (unless --restart); SIGTERM saves like Ctrl-C; --resume --set for the keys that do not change the past."""

import hashlib
import json
import shutil
import signal
import warnings

import pytest

from tests_helpers import QUICK, cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run and one stopped after 3 of 5 tasks (checkpoints 1 and 2 kept)."""
    root = tmp_path_factory.mktemp("runs")
    rc, _, err = cli("run", "--out", root / "full", *QUICK)
    assert rc == 0, err
    rc, _, err = cli("run", "--out", root / "part", *QUICK, "--set", "loop.stop_after_tasks=3")
    assert rc == 1 and "stopped after task 2" in err
    (full,) = list((root / "full").iterdir())
    (part,) = list((root / "part").iterdir())
    return full, part


@pytest.fixture
def part(runs, tmp_path):
    """A private copy of the interrupted run, to damage."""
    dst = tmp_path / runs[1].name
    shutil.copytree(runs[1], dst)
    return dst


def _matrix(run_dir):
    return json.loads((run_dir / "finetune" / "summary.json").read_text())["accuracy_matrix"]


def _resume(run_dir, *extra):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rc, out, err = cli("run", "--resume", run_dir, "--no-progress", "--agent", "finetune", *extra)
    return rc, out, err + "".join(str(x.message) for x in w)


def _rewrite_state(ckpt, edit):
    """Change state.json and update the manifest to match (a writer with a bug, not a flipped bit)."""
    meta = json.loads((ckpt / "state.json").read_text())
    body = json.dumps(edit(meta)).encode()
    (ckpt / "state.json").write_bytes(body)
    if (ckpt / "manifest.json").exists():
        m = json.loads((ckpt / "manifest.json").read_text())
        m["files"]["state.json"] = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
        (ckpt / "manifest.json").write_text(json.dumps(m))


def test_resume_completes_with_the_uninterrupted_matrix(runs, part):
    rc, _, err = _resume(part)
    assert rc == 0, err
    assert _matrix(part) == _matrix(runs[0])


def _loop(m, **changes):
    m["state"]["loop"].update(changes)
    return m


@pytest.mark.parametrize("edit, why", [
    (lambda m: [1, 2, 3], "holds no state"),
    (lambda m: {**m, "state": {**m["state"], "learner": {"x": {"__tensor__": "missing/key"}}}}, "missing tensor"),
    (lambda m: _loop(m, next_task=5), "history has 3 entries, expected 5"),
    (lambda m: {**m, "state": {**m["state"], "agent": {}}}, "does not fit this agent"),
])
def test_a_wrong_newest_checkpoint_falls_back_to_the_older_one(runs, part, edit, why):
    _rewrite_state(part / "finetune" / "checkpoints" / "ckpt_0002", edit)
    rc, _, err = _resume(part)
    assert rc == 0, err
    assert why in err and "ckpt_0002" in err and "resuming from the older" in err and "Traceback" not in err
    assert len(_matrix(part)) == 5  # all five rows: not "completed" with three
    assert _matrix(part) == _matrix(runs[0])


def _loop_state(T=5, done=3):
    import torch

    from agentlab.seeding import rng_state

    return {"agent": {}, "learner": {}, "init_agent": {}, "rng": rng_state(torch.Generator()),
            "loop": {"n_tasks": T, "next_task": done, "global_step": 7, "R_index": torch.tensor([[0, 0], [2, 3]]),
                     "R_values": torch.tensor([0.5, 0.25], dtype=torch.float64), "b": torch.zeros(T, dtype=torch.float64),
                     "history": [{}] * done, "ledger": [{}] * done, "task_names": ["t"] * done,
                     "timings": {"train_s": 1.0, "eval_s": 0.5}, "task_inference": {}}}


@pytest.mark.parametrize("change, why", [
    (lambda s: s["loop"].update(next_task=9), "next_task=9"),
    (lambda s: s["loop"].update(next_task=0), "next_task=0"),
    (lambda s: s["loop"].update(next_task=True), "next_task=True"),
    (lambda s: s["loop"].update(n_tasks=7), "stream of 7 tasks"),
    (lambda s: s["loop"].update(b=[0.1]), "b has"),
    (lambda s: s["loop"].update(global_step=-1), "global_step=-1"),
    (lambda s: s["loop"].update(R_index=s["loop"]["R_index"] + 3), "R_index points outside"),
    (lambda s: s["loop"].update(R_values=s["loop"]["R_values"][:1]), "R_index / R_values"),
    (lambda s: s["loop"].update(task_names=[1, 2, 3]), "task_names"),
    (lambda s: s["loop"].update(timings={}), "timings"),
    (lambda s: s.update(rng={"torch": 1}), "random-number states"),
    (lambda s: s.pop("init_agent"), "no 'init_agent'"),
])
def test_the_loop_state_of_a_checkpoint_is_checked_against_the_stream(change, why):
    from agentlab.checkpoint import CheckpointError
    from agentlab.runstate import check_loop_state

    good = check_loop_state(_loop_state(), 5, "ckpt_0002")
    assert good["next_task"] == 3 and good["R"][2, 3] == 0.25 and good["R"].shape == (5, 5)
    state = _loop_state()
    change(state)
    with pytest.raises(CheckpointError, match=why):
        check_loop_state(state, 5, "ckpt_0002")


def test_no_usable_checkpoint_stops_with_exit_2_then_restart_trains_again(runs, part):
    for ckpt in (part / "finetune" / "checkpoints").iterdir():
        (ckpt / "tensors.safetensors").write_bytes(b"\x00" * 16)
    rc, _, err = _resume(part)
    assert rc == 2 and "no usable checkpoint" in err and "ckpt_0001" in err and "ckpt_0002" in err and "--restart" in err
    assert not (part / "finetune" / "checkpoints" / "ckpt_0003").exists()  # nothing retrained
    rc, _, err = _resume(part, "--restart", "--set", "loop.stop_after_tasks=0")
    assert rc == 0, err
    assert "training agent finetune again from task 0" in err
    assert _matrix(part) == _matrix(runs[0])


def test_deleted_checkpoints_are_noticed(part):
    shutil.rmtree(part / "finetune" / "checkpoints")
    rc, _, err = _resume(part)
    assert rc == 2, err
    assert "finetune/checkpoints is missing, but" in err and "last_checkpoint.json says checkpoint 2 was written" in err


def test_a_damaged_config_json_is_bad_input(part):
    text = (part / "config.json").read_text()
    (part / "config.json").write_text(text[: len(text) // 2])
    rc, _, err = _resume(part)
    assert rc == 2 and "config.json is damaged" in err and "Traceback" not in err


def test_a_damaged_summary_of_a_finished_agent_is_rebuilt_from_its_last_checkpoint(runs, tmp_path):
    full = tmp_path / "full"
    shutil.copytree(runs[0], full)
    text = (full / "finetune" / "summary.json").read_text()
    (full / "finetune" / "summary.json").write_text(text[:100])
    rc, _, err = _resume(full)
    assert rc == 0, err
    assert _matrix(full) == _matrix(runs[0])


def test_resume_set_takes_learning_rate_budget_and_logging_and_refuses_the_rest(runs, part):
    rc, _, err = _resume(part, "--set", "backbone.hidden=[4]", "--set", "stream.scenario=\"task\"", "--set", "learner.lr=0.001")
    assert rc == 2, err
    assert "backbone.hidden, stream.scenario" in err and "allowed on resume: " in err and "learner.lr" in err
    rc, _, err = _resume(part, "--set", "learner.lr=0.0005", "--set", "agents.finetune.learner.max_steps=3",
                         "--set", "loop.log_every=1")
    assert rc == 0, err
    record = json.loads((part / "config.json").read_text())
    learner = record["table"]["agents"]["finetune"]["learner"]
    assert learner["lr"] == 0.0005 and learner["max_steps"] == 3
    assert record["resumed_with"] == [["learner.lr=0.0005", "agents.finetune.learner.max_steps=3", "loop.log_every=1"]]
    assert json.loads((part / "finetune" / "summary.json").read_text())["config"]["spec"]["learner"]["lr"] == 0.0005


def test_a_kept_optimizer_takes_the_learning_rate_of_the_config_on_resume():
    """With keep_optimizer the moments come from the checkpoint, but the rate from the (possibly changed) config."""
    import torch

    from agentlab.learners.sgd import SGDConfig
    from agentlab.optim import KeptOptimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    old = KeptOptimizer()
    opt = old.for_task(params, SGDConfig(lr=0.1, keep_optimizer=True))
    params[0].grad = torch.ones(3)
    opt.step()
    new = KeptOptimizer()
    new.load_state_dict(old.state_dict())
    opt2 = new.for_task(params, SGDConfig(lr=0.001, keep_optimizer=True))
    assert opt2.param_groups[0]["lr"] == 0.001
    assert torch.equal(opt2.state[params[0]]["exp_avg"], opt.state[params[0]]["exp_avg"])  # the moments kept


def test_sigterm_stops_like_ctrl_c_with_a_summary(tmp_path):
    """SIGTERM (what `kill` and job schedulers send) during training: the loop stops, saves and writes its summary."""
    import os

    import torch

    from agentlab.agent import Agent
    from agentlab.learners.finetune import FineTune
    from agentlab.learners.sgd import SGDConfig
    from agentlab.loop import run
    from tests_helpers import permuted_stream

    class Terminated(Exception):
        pass

    def fallback(signum, frame):  # what this test would see if the loop did not handle SIGTERM
        raise Terminated

    class SelfTerminating(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(20, 4)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 8 and self.training:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.lin(x)

    old = signal.signal(signal.SIGTERM, fallback)
    try:
        agent = Agent(SelfTerminating(), learner=FineTune(SGDConfig(epochs=1, batch_size=64)))
        r = run(agent, permuted_stream(n_tasks=3), generator=torch.Generator().manual_seed(0), out_dir=tmp_path)
        assert signal.getsignal(signal.SIGTERM) is fallback  # the loop put the handler back
    finally:
        signal.signal(signal.SIGTERM, old)
    assert r.status == "interrupted" and "SIGTERM" in r.message
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and len(summary["accuracy_matrix"]) == 1  # task 0 done and saved
    assert (tmp_path / "checkpoints" / "ckpt_0000").is_dir()
