"""`agentlab forget`: the retrained agent equals, bit for bit, one that never saw the task (every learner kind);
isolation modules drop the task's state and leave every other task's outputs as they were; refusals name why."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agentlab import recipe as recipes
from agentlab.errors import CannotForget
from agentlab.forgetting import ForgetRequest, forget, format_report
from agentlab.runner import run_recipe
from tests_helpers import cli

SGD = {"epochs": 1, "lr": 0.01, "batch_size": 64}


def _table(agents: dict, *, scenario: str = "class", loop: dict | None = None, exclude: list | None = None) -> dict:
    """Digits in tasks of 2 classes; the tests leave tasks 3 and 4 out (three tasks: 0, 1, 2) to stay fast."""
    stream = {"name": "digits-split", "scenario": scenario, "exclude_tasks": [3, 4] if exclude is None else exclude}
    return {"seed": 0, "stream": stream, "loop": {"keep_checkpoints": 0, **(loop or {})}, "agents": agents}


def _run(tmp: Path, name: str, table: dict) -> Path:
    run_dir, results = run_recipe(recipes.resolve(name, table), out_root=tmp)
    assert all(r.completed for r in results.values())
    return run_dir


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- retraining: every learner kind

LEARNERS = {
    "finetune": {"name": "finetune", **SGD},
    "replay": {"name": "replay", "buffer_size": 60, **SGD},
    "joint": {"name": "joint", **SGD},
    "ewc": {"name": "avalanche", "strategy": "ewc", "ewc_lambda": 100.0, **SGD},
    "si": {"name": "avalanche", "strategy": "si", "si_lambda": 1.0, **SGD},
    "lwf": {"name": "avalanche", "strategy": "lwf", **SGD},
}


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrain")
    agents = {k: {"backbone": {"name": "mlp", "hidden": [32]}, "learner": v} for k, v in LEARNERS.items()}
    run_dir = _run(tmp, "learners", _table(agents))
    before = _tree(run_dir)
    new_dir, body = forget(ForgetRequest(run_dir, task=1, verify=True), notify=lambda s: None)
    return run_dir, before, new_dir, body


@pytest.mark.parametrize("label", list(LEARNERS))
def test_retrained_agent_equals_the_never_seen_one_bit_for_bit(retrained, label):
    _, _, new_dir, body = retrained
    rep = body["agents"][label]
    assert rep["how"] == "retrain"
    assert rep["never_seen"]["identical"], rep["never_seen"]["first_difference"]
    assert rep["never_seen"]["others_max_acc_difference"] == rep["never_seen"]["forgotten_acc_difference"] == 0.0
    ours = json.loads((new_dir / label / "summary.json").read_text())
    seen = json.loads((new_dir / "never_seen" / label / "summary.json").read_text())
    assert ours["accuracy_matrix"] == seen["accuracy_matrix"]  # every row, the ones before the task included
    assert ours["untrained_accuracy"] == seen["untrained_accuracy"]
    assert ours["tasks"] == seen["tasks"] == ["digits-split-class/0-1", "digits-split-class/4-5"]
    assert rep["leftover_bytes"] == 0


def test_shared_weight_learners_are_not_dropped_and_say_why(retrained):
    _, _, _, body = retrained
    assert "no plasticity module isolates the tasks" in body["agents"]["finetune"]["drop_refused"]
    assert "admitted task 1's examples" in body["agents"]["replay"]["drop_refused"]
    # our learners resume from the checkpoint before the task; Avalanche's strategies from the untrained agent
    assert body["agents"]["replay"]["retrained_tasks"] == 1
    assert body["agents"]["ewc"]["retrained_tasks"] == 2 and "not in checkpoints" in body["agents"]["ewc"]["retrained_from"]


def test_the_source_run_is_never_touched_and_the_new_one_is_complete(retrained):
    run_dir, before, new_dir, body = retrained
    assert _tree(run_dir) == before
    assert new_dir.parent == run_dir.parent and new_dir != run_dir
    cfg = json.loads((new_dir / "config.json").read_text())
    assert cfg["table"]["stream"]["exclude_tasks"] == [1, 3, 4] and cfg["forgotten"]["task"] == 1
    assert json.loads((new_dir / "forget.json").read_text())["task"] == 1
    assert set(json.loads((new_dir / "summary.json").read_text())["agents"]) == set(LEARNERS)
    text = format_report(body)
    assert "identical bit for bit" in text and "agent replay: retrain" in text


# ---------------------------------------------------------------------------- isolation: drop

MLP = {"name": "mlp", "hidden": [24, 24]}
ISOLATION = {
    "supsup": {"backbone": {**MLP, "bias": False}, "learner": {"name": "finetune", **SGD},
               "plasticity": [{"name": "supsup", "hopfield": True}]},
    "lora": {"backbone": MLP, "learner": {"name": "finetune", **SGD}, "plasticity": [{"name": "lora", "rank": 2}]},
    "nola": {"backbone": MLP, "learner": {"name": "finetune", **SGD},
             "plasticity": [{"name": "nola", "rank": 2, "k_a": 4, "k_b": 4}]},
    "pranc": {"backbone": MLP, "learner": {"name": "finetune", **SGD}, "plasticity": [{"name": "pranc", "k": 8}]},
    "fnnsp": {"backbone": MLP, "learner": {"name": "finetune", **SGD},
              "plasticity": [{"name": "fnnsp", "modules": 8, "active_modules": 4, "new_modules_per_task": 2,
                              "initial_active": 4}]},
    "set": {"backbone": MLP, "learner": {"name": "finetune", **SGD},
            "plasticity": [{"name": "set", "freeze_per_task": True, "epsilon": 3.0, "max_task_density": 0.2}]},
    "supsup_episodic": {"backbone": {**MLP, "bias": False}, "learner": {"name": "finetune", **SGD},
                        "plasticity": [{"name": "supsup"}], "memory": [{"name": "episodic", "capacity": 100, "key_dim": 0}]},
}


@pytest.fixture(scope="module")
def isolation_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drop")
    return _run(tmp, "iso", _table(ISOLATION, scenario="task", loop={"seed_per_task": True}))


@pytest.fixture(scope="module")
def dropped_middle(isolation_run):
    return forget(ForgetRequest(isolation_run, task=1, verify=True), notify=lambda s: None)[1]


@pytest.fixture(scope="module")
def dropped_last(isolation_run):
    return forget(ForgetRequest(isolation_run, task=2, agents=["fnnsp", "set"], how="drop", verify=True),
                  notify=lambda s: None)[1]


@pytest.mark.parametrize("label", ["supsup", "lora", "nola", "pranc"])
def test_isolation_drops_the_task_and_matches_the_never_seen_agent(dropped_middle, label):
    rep = dropped_middle["agents"][label]
    assert rep["how"] == "drop" and rep["drop_refused"] is None
    assert rep["others_max_change"] == 0.0  # the other tasks' outputs did not move
    assert sum(rep["bytes_freed"].values()) > 0 and rep["leftover_bytes"] == 0
    assert rep["total_bytes_after"] < rep["total_bytes_before"]
    # with seed_per_task nothing of the later tasks depended on the forgotten one: the agents are equal
    assert rep["never_seen"]["identical"], rep["never_seen"]["first_difference"]


def test_supsup_is_back_at_the_untrained_accuracy(dropped_middle):
    rep = dropped_middle["agents"]["supsup"]
    assert rep["acc_after"] == rep["untrained_acc"] < rep["acc_before"]


def test_episodic_entries_of_the_task_are_removed_but_the_quota_makes_it_differ(dropped_middle):
    rep = dropped_middle["agents"]["supsup_episodic"]
    assert rep["how"] == "drop" and rep["others_max_change"] == 0.0
    assert rep["bytes_freed"]["memory/episodic"] > 0 and rep["leftovers"]["memory/episodic"] == 0
    # a stream without the task would have kept more entries of the others: not bit-identical, and said so
    assert not rep["never_seen"]["identical"] and "keys" in rep["never_seen"]["first_difference"]


@pytest.mark.parametrize("label", ["fnnsp", "set"])
def test_modules_read_by_later_tasks_fall_back_to_retraining(dropped_middle, label):
    rep = dropped_middle["agents"][label]
    assert rep["how"] == "retrain" and "tasks [2]" in rep["drop_refused"]
    assert rep["never_seen"]["identical"], rep["never_seen"]["first_difference"]


@pytest.mark.parametrize("label", ["fnnsp", "set"])
def test_the_newest_task_drops_directly(dropped_last, label):
    rep = dropped_last["agents"][label]
    assert rep["how"] == "drop" and rep["others_max_change"] == 0.0 and rep["leftover_bytes"] == 0
    assert rep["never_seen"]["others_max_acc_difference"] == 0.0
    # not bit-identical, and the report says where: FNNSP draws the freed modules' weights afresh, SET's private
    # rewiring generator has advanced past the task's draws (its freed positions are zeros, as never-grown ones)
    assert not rep["never_seen"]["identical"]
    assert ("rng" if label == "set" else "weight") in rep["never_seen"]["first_difference"]


# ---------------------------------------------------------------------------- refusals and bad input


@pytest.fixture(scope="module")
def short_memory_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("short")
    agents = {"finetune": {"backbone": {"name": "mlp", "hidden": [16]}, "learner": {"name": "finetune", **SGD}}}
    return _run(tmp, "short", _table(agents, loop={"keep_checkpoints": 1}))


def test_retraining_without_the_checkpoint_before_is_refused_naming_the_setting(short_memory_run):
    before = _tree(short_memory_run)
    with pytest.raises(CannotForget, match=r"loop.keep_checkpoints=0"):
        forget(ForgetRequest(short_memory_run, task=1), notify=lambda s: None)
    assert _tree(short_memory_run) == before
    assert [p for p in short_memory_run.parent.iterdir() if "forget" in p.name] == []  # nothing half-made stays


def test_the_first_task_retrains_from_scratch_and_the_last_from_the_kept_checkpoint(short_memory_run):
    _, body = forget(ForgetRequest(short_memory_run, task=0), notify=lambda s: None)
    assert body["agents"]["finetune"]["retrained_from"] == "the untrained agent"
    with pytest.raises(CannotForget, match="keeps positions 2"):  # keep_checkpoints = 1: the last one only
        forget(ForgetRequest(short_memory_run, task=2), notify=lambda s: None)


@pytest.mark.parametrize("args, message", [
    (["--task", "9"], "has no task 9"),
    (["--task", "3"], "has no task 3"),
    (["--person", "someone"], "has no people"),
    (["--task", "1", "--how", "drop"], "cannot drop task 1"),
    (["--task", "1", "--agent", "nosuch"], "no such agent"),
])
def test_bad_requests_exit_2_with_a_message(short_memory_run, args, message):
    rc, out, err = cli("forget", short_memory_run, *args, "--no-progress")
    assert rc == 2 and message in err and "Traceback" not in err


def test_forget_cli_prints_the_report(short_memory_run, tmp_path):
    rc, out, err = cli("forget", short_memory_run, "--task", "0", "--out", tmp_path, "--no-progress")
    assert rc == 0, err
    assert "forgotten task accuracy" in out and "run directory:" in out
    assert len(list(tmp_path.glob("*forget-task0*"))) == 1


def test_adapters_refuse_the_task_that_trained_the_backbone():
    from agentlab.plasticity.lora import LoRA, LoRAConfig
    from agentlab.task import Task

    m = LoRA(LoRAConfig(rank=1))
    m.attach(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    for t in range(2):
        m.on_task_start(Task(id=t, name=str(t), kind="classification", train=None, eval=None))
    with pytest.raises(CannotForget, match="trained the shared backbone"):
        m.forget_task(0)
    assert m.forget_task(1) == 2 * 4 * 1 * 4 // 2 + 3 * 4  # A (1 x 4) and B (3 x 1), float32
    assert m.forget_task(1) == 0 and m.people() == []


def test_stream_exclude_tasks_keeps_ids_and_refuses_bad_values(tmp_path):
    from agentlab.config import ConfigError
    from agentlab.registry import BuildEnv

    table = _table({"a": {"backbone": MLP, "learner": {"name": "finetune"}}}, exclude=[1, 3])
    stream = recipes.build_stream(recipes.resolve("x", table), BuildEnv())
    full = recipes.build_stream(recipes.resolve("x", _table({"a": {"backbone": MLP, "learner": {"name": "finetune"}}}, exclude=[])),
                                BuildEnv())
    assert [t.id for t in stream] == [0, 2, 4] and len(stream) == 3
    assert torch.equal(stream[1].train.x, full[2].train.x) and stream[1].classes == full[2].classes
    for bad in ([7], [1, 1], "1", [0, 1, 2, 3, 4]):
        table["stream"]["exclude_tasks"] = bad
        with pytest.raises(ConfigError, match="exclude_tasks"):
            recipes.check_components(r := recipes.resolve("x", table))
            recipes.build_stream(r, BuildEnv())


def test_keep_checkpoints_zero_keeps_every_task(retrained, short_memory_run):
    run_dir = retrained[0]
    assert sorted(p.name for p in (run_dir / "finetune" / "checkpoints").iterdir()) == [f"ckpt_000{i}" for i in range(3)]
    assert sorted(p.name for p in (short_memory_run / "finetune" / "checkpoints").iterdir()) == ["ckpt_0002"]


def test_seed_per_task_makes_a_task_independent_of_the_ones_before():
    from agentlab.seeding import seed_task

    g = torch.Generator().manual_seed(0)
    seed_task(0, 3, g)
    a = (torch.rand(3, generator=g), torch.rand(3), np.random.rand())
    g2 = torch.Generator().manual_seed(0)
    torch.rand(100, generator=g2), torch.rand(50), np.random.rand(7)  # another history of draws
    seed_task(0, 3, g2)
    b = (torch.rand(3, generator=g2), torch.rand(3), np.random.rand())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    seed_task(0, 4, g2)
    assert not torch.equal(torch.rand(3, generator=g2), a[0])
