"""The real command line on the embedded default: run, report, list, bench; TensorBoard tags written."""

import json
import subprocess
import sys

import pytest

from tests_helpers import REPO


def _agentlab(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "agentlab", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    p = _agentlab("run", "--no-progress", "--out", str(out), "--set", "learner.epochs=2")
    assert p.returncode == 0, p.stderr
    (run_dir,) = list(out.iterdir())
    return p, run_dir


def test_run_prints_metrics_and_where_logs_are(default_run):
    p, run_dir = default_run
    assert "avg acc" in p.stdout and "finetune" in p.stdout and "replay" in p.stdout
    assert f"tensorboard --logdir {run_dir}" in p.stdout
    assert run_dir.name.startswith("digits-split__digits-split__0__")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["agents"]) >= {"finetune", "replay"}
    assert json.loads((run_dir / "config.json").read_text())["table"]["agents"]["replay"]["learner"]["epochs"] == 2


def test_tensorboard_tags(default_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = default_run
    acc = EventAccumulator(str(run_dir / "replay"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ["cl/avg_acc", "cl/bwt", "cl/fwt", "cl/forgetting", "cl/forgetting/task_000", "eval/acc/task_000",
              "eval/acc/task_004", "losses/ce", "losses/total", "charts/steps_per_sec", "ledger/total_KiB",
              "ledger/learner_replay/KiB", "ledger/params"]:
        assert t in tags, t
    assert "cl/accuracy_matrix" in acc.Tags()["images"]
    assert len(acc.Scalars("cl/avg_acc")) == 5  # one point per task


def test_report_reprints_the_table(default_run):
    _, run_dir = default_run
    p = _agentlab("report", str(run_dir))
    assert p.returncode == 0 and "avg acc" in p.stdout and "after\\on" in p.stdout


def test_resume_cli_on_a_finished_run_keeps_results(default_run):
    _, run_dir = default_run
    before = json.loads((run_dir / "summary.json").read_text())["agents"]["replay"]["metrics"]
    p = _agentlab("run", "--no-progress", "--resume", str(run_dir))
    assert p.returncode == 0, p.stderr
    after = json.loads((run_dir / "summary.json").read_text())["agents"]["replay"]["metrics"]
    assert before == after


def test_list_shows_components():
    p = _agentlab("list")
    assert p.returncode == 0
    for word in ("digits-split", "finetune", "replay", "joint", "mlp"):
        assert word in p.stdout


def test_bench_quick_writes_json(tmp_path):
    path = tmp_path / "b.json"
    p = _agentlab("bench", "digits", "--quick", "--json", str(path))
    assert p.returncode == 0, p.stderr
    body = json.loads(path.read_text())
    assert body["mode"] == "quick" and 0 <= body["metrics"]["replay_avg_acc"] <= 1
