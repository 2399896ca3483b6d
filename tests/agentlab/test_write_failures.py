"""A write that fails (permission, no space, file size limit, a file where a folder should be) ends the run with exit
code 1, one line naming the path and the cause, and summary.json status "failed" where it can still be written."""

import builtins
import errno
import json
import os

import pytest

from agentlab import recipe as recipes
from agentlab.runner import run_recipe
from tests_helpers import QUICK, cli


def _only_run(root):
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def _fd_path(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_no_space_left_during_a_checkpoint(tmp_path, monkeypatch):
    """The disk fills while checkpoint 1 is written: task 0's checkpoint and a failed summary remain."""
    real_fsync = os.fsync

    def fsync(fd):
        if "/checkpoints/.ckpt_0001" in _fd_path(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, out, err = cli("run", "--out", tmp_path, *QUICK)
    assert rc == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("agent finetune: failed:")]
    assert "No space left on device" in line
    run_dir = _only_run(tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["agents"]["finetune"]["status"] == "failed"
    arm = json.loads((run_dir / "finetune" / "summary.json").read_text())
    assert arm["status"] == "failed" and len(arm["accuracy_matrix"]) == 2  # tasks 0 and 1 trained and measured
    assert [p.name for p in (run_dir / "finetune" / "checkpoints").iterdir()] == ["ckpt_0000"]  # no half checkpoint


def test_permission_denied_in_the_checkpoint_folder(tmp_path, monkeypatch):
    real_open = builtins.open

    def deny(file, mode="r", *a, **k):
        if "/checkpoints/.ckpt_" in str(file) and any(c in mode for c in "wxa"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    rc, _, err = cli("run", "--out", tmp_path, *QUICK)
    assert rc == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("agent finetune: failed:")]
    assert "Permission denied" in line and "/checkpoints/.ckpt_0000" in line
    assert json.loads((_only_run(tmp_path) / "summary.json").read_text())["agents"]["finetune"]["status"] == "failed"


def test_a_file_where_the_checkpoint_folder_should_be(tmp_path):
    """Found before the first task: nothing is trained, the failure names the path."""
    name, table = recipes.read_recipe("digits-split")
    resolved = recipes.resolve(name, recipes.apply_overrides(table, ["learner.max_steps=2"]))
    run_dir = tmp_path / "run"
    (run_dir / "finetune").mkdir(parents=True)
    (run_dir / "finetune" / "checkpoints").write_text("not a folder")
    _, results = run_recipe(resolved, run_dir=run_dir, only=["finetune"])
    r = results["finetune"]
    assert r.status == "failed" and "checkpoints" in r.message and "File exists" in r.message
    assert r.history == [] and not list((run_dir / "finetune").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "finetune" / "summary.json").read_text())["status"] == "failed"
    assert json.loads((run_dir / "summary.json").read_text())["agents"]["finetune"]["status"] == "failed"


def test_an_output_folder_that_cannot_be_created_is_reported_before_training(tmp_path, monkeypatch):
    real_mkdir = os.mkdir

    def mkdir(path, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    rc, out, err = cli("run", "--out", tmp_path / "ro" / "runs", *QUICK)
    assert rc == 1 and "Traceback" not in err
    assert err.strip() == f"agentlab: error: cannot write {tmp_path / 'ro' / 'runs'}: Permission denied"


def test_a_file_size_limit_fails_the_run_instead_of_killing_it(tmp_path):
    """`ulimit -f`: the kernel's SIGXFSZ would kill the process; the run reports EFBIG and exits 1 instead.
    (This process's own limit, for the length of one short run; the test's handler stands for the kill.)"""
    import resource
    import signal

    class Killed(Exception):
        pass

    def killed(signum, frame):
        raise Killed

    old_handler = signal.signal(signal.SIGXFSZ, killed)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, old_limit[1]))  # a checkpoint of this agent is ~225 kB
    try:
        rc, _, err = cli("run", "--out", tmp_path, *QUICK)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert rc == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("agent finetune: failed:")]
    assert "File too large" in line and "checkpoints" in line
    assert json.loads((_only_run(tmp_path) / "summary.json").read_text())["agents"]["finetune"]["status"] == "failed"


@pytest.mark.parametrize("where", ["out", "out-parent"])
def test_out_naming_a_file_is_bad_input(tmp_path, where):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, _, err = cli("run", "--out", f if where == "out" else f / "runs", *QUICK)
    assert rc == 2 and "is a file, not a folder" in err and str(f) in err and "Traceback" not in err
