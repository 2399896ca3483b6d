"""The run directory: labels and paths stay inside it, two runs never share one, one process at a time holds it."""

import json
import os
import time

import pytest

from agentlab.rundir import RunLock
from tests_helpers import QUICK, cli

RECIPE = """
[stream]
name = "digits-split"
[agents.{label}]
backbone = {{ name = "mlp", hidden = [8] }}
learner = {{ name = "finetune", epochs = 1, max_steps = 1 }}
"""


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("label", ['"../../escaped"', "ABSOLUTE", '""', '"."', '".."', '"a/b"', '"summary.json"',
                                   '".hidden"', '"a b"'])
def test_a_label_that_is_not_one_safe_folder_name_is_refused(tmp_path, label):
    work = tmp_path / "work"
    work.mkdir()
    if label == "ABSOLUTE":
        label = json.dumps(str(tmp_path / "escaped-absolute"))
    recipe = work / "r.toml"
    recipe.write_text(RECIPE.format(label=label))
    out = work / "deep" / "runs"
    before = _tree(tmp_path)
    rc, _, err = cli("run", recipe, "--out", out, "--no-progress")
    assert rc == 2, err
    assert "agent label" in err and json.loads(label) in err and "Traceback" not in err
    assert _tree(tmp_path) == before  # nothing written anywhere: not in --out, not beside it, not at the label's path


def test_resume_refuses_a_label_from_a_received_config_json(tmp_path):
    rc, out, err = cli("run", "--out", tmp_path, *QUICK, "--set", "loop.stop_after_tasks=1")
    assert rc == 1, err  # interrupted after one task
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    record = json.loads((run_dir / "config.json").read_text())
    record["table"]["agents"]["../../../escaped"] = record["table"]["agents"].pop("finetune")
    (run_dir / "config.json").write_text(json.dumps(record))
    rc, _, err = cli("run", "--resume", run_dir, "--no-progress")
    assert rc == 2 and "agent label '../../../escaped'" in err
    assert not (tmp_path.parent / "escaped").exists()


def test_an_agent_folder_linked_outside_the_run_directory_is_refused(tmp_path):
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    rc, _, err = cli("run", "--out", runs, *QUICK, "--set", "loop.stop_after_tasks=1")
    (run_dir,) = list(runs.iterdir())
    arm = run_dir / "finetune"
    arm.rename(outside / "finetune")
    arm.symlink_to(outside / "finetune")
    before = _tree(outside)
    rc, _, err = cli("run", "--resume", run_dir, "--no-progress")
    assert rc == 2 and "outside the run directory" in err and "agents.finetune" in err
    assert _tree(outside) == before


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20250101-000000")  # the same second, for sure
    for lr in ("0.01", "0.02"):
        rc, _, err = cli("run", "--out", tmp_path, *QUICK, "--set", f"learner.lr={lr}")
        assert rc == 0, err
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == ["digits-split__digits-split__0__20250101-000000", "digits-split__digits-split__0__20250101-000000-1"]
    lrs = [json.loads((tmp_path / d / "config.json").read_text())["table"]["agents"]["finetune"]["learner"]["lr"] for d in dirs]
    assert lrs == [0.01, 0.02]
    events = [sorted(p.name for p in (tmp_path / d / "finetune").glob("events.out.tfevents.*")) for d in dirs]
    assert events[0] and events[1] and not set(events[0]) & set(events[1])  # no events of one run in the other
    assert len(events[0]) == len(events[1])


def test_a_second_process_on_a_locked_agent_is_refused_with_the_holder_pid(tmp_path):
    rc, _, err = cli("run", "--out", tmp_path, *QUICK, "--set", "loop.stop_after_tasks=1")
    (run_dir,) = list(tmp_path.iterdir())
    before = (run_dir / "finetune" / "summary.json").read_bytes()
    with RunLock(run_dir / "finetune"):  # as if another process were training it (flock conflicts between open files)
        rc, _, err = cli("run", "--resume", run_dir, "--no-progress")
    assert rc == 2 and f"in use by process {os.getpid()}" in err and "Traceback" not in err
    assert (run_dir / "finetune" / "summary.json").read_bytes() == before  # untouched
    rc, _, err = cli("run", "--resume", run_dir, "--no-progress", "--set", "loop.stop_after_tasks=0")  # lock released
    assert rc == 0, err


def test_the_lock_is_held_by_a_running_process(tmp_path):
    """A real second process: while it holds the agent, this one cannot resume it."""
    import subprocess
    import sys

    rc, _, err = cli("run", "--out", tmp_path, *QUICK, "--set", "loop.stop_after_tasks=1")
    (run_dir,) = list(tmp_path.iterdir())
    code = ("import sys, time; from agentlab.rundir import RunLock\n"
            "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(run_dir / "finetune")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        rc, _, err = cli("run", "--resume", run_dir, "--no-progress")
        assert rc == 2 and f"in use by process {p.pid}" in err
    finally:
        p.kill()
        p.wait()


def test_processes_may_share_a_run_directory_for_different_agents(tmp_path):
    """`agentlab bench baselines --only ...` in two shells trains different agents of one run directory."""
    rc, _, err = cli("run", "--out", tmp_path, *QUICK, "--set", "loop.stop_after_tasks=1")
    (run_dir,) = list(tmp_path.iterdir())
    with RunLock(run_dir / "finetune"):
        rc, _, err = cli("run", "--resume", run_dir, "--no-progress", "--agent", "replay", "--set", "learner.max_steps=1",
                         "--set", "loop.stop_after_tasks=0")
    assert rc == 0, err
    assert json.loads((run_dir / "replay" / "summary.json").read_text())["status"] == "completed"
