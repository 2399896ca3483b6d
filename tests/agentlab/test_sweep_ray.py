"""Sweeps on a local Ray instance with 2 CPUs (one instance shared by this module, shut down at its end):
results equal `agentlab run`'s, a killed sweep resumes without re-running what finished, failures are reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentlab.cli import main
from tests_helpers import REPO

TINY = """
seed = 0
[stream]
name = "digits-split"
scenario = "task"
classes_per_task = 5
[loop]
keep_checkpoints = 10
[agents.finetune]
backbone = { name = "mlp", hidden = [16] }
learner = { name = "finetune", epochs = 2, lr = 0.05, batch_size = 32 }
"""

# Five tasks and more epochs: a run lasts long enough for a kill to land in the middle of one (every checkpoint kept).
SLOWER = TINY.replace("classes_per_task = 5", "classes_per_task = 2").replace("epochs = 2", "epochs = 6")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs, its own temporary folder) for every test here; shut down and removed after."""
    import ray

    from agentlab.sweep_ray import RayExecutor

    before = set(Path("/tmp").glob("agentlab-ray-*"))
    ex = RayExecutor(num_cpus=2)
    with ex:
        assert ray.cluster_resources()["CPU"] == 2
        yield ex
    assert not ray.is_initialized()
    assert set(Path("/tmp").glob("agentlab-ray-*")) <= before  # its session folder is gone


@pytest.fixture
def recipe(tmp_path):
    def write(text: str = TINY) -> Path:
        path = tmp_path / "tiny.toml"
        path.write_text(text)
        return path

    return write


def _matrices(root: Path) -> dict[str, list]:
    return {e["name"]: json.loads((root / e["run_dir"] / "finetune" / "summary.json").read_text())["accuracy_matrix"]
            for e in json.loads((root / "sweep.json").read_text())["points"]}


def test_grid_sweep_on_ray_equals_runs_made_one_by_one(ray_cluster, recipe, tmp_path, capsys):
    path = recipe()
    out = tmp_path / "sweep"
    code = main(["sweep", str(path), "--grid", "learner.lr=0.05,0.1", "--grid", "backbone.hidden=[16],[32]", "--seeds", "0-1",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "8 runs" in text and "executor ray" in text and "2 run(s) at a time" in text
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["executor"] == "ray" and [e["status"] for e in manifest["points"]] == ["completed"] * 8
    swept = _matrices(out)
    for e in manifest["points"]:
        p = e["params"]
        one = tmp_path / "one" / e["name"]
        assert main(["run", str(path), "--set", f"learner.lr={p['learner.lr']}", "--set", f"backbone.hidden={p['backbone.hidden']}",
                     "--seed", str(p["seed"]), "--out", str(one), "--no-progress"]) == 0
        (run_dir,) = one.iterdir()
        alone = json.loads((run_dir / "summary.json").read_text())["agents"]["finetune"]["accuracy_matrix"]
        assert swept[e["name"]] == alone, e["name"]
    assert len({json.dumps(m) for m in swept.values()}) > 1  # the grid and the seeds change the runs
    capsys.readouterr()
    # the report and the HPARAMS events
    assert main(["report", str(out)]) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert len(rows) == 4 and all(r["n"] == 2 and r["seeds"] == [0, 1] for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    runs = sorted({p.parent for p in (out / "hparams").rglob("events.out.tfevents*")})
    assert len(runs) == 8
    acc = EventAccumulator(str(out / "hparams" / "lr=0.1__hidden=32__seed1" / "finetune"))
    acc.Reload()
    meta = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hp = plugin_data_pb2.HParamsPluginData.FromString(meta).session_start_info.hparams
    assert hp["learner.lr"].number_value == 0.1 and hp["backbone.hidden"].string_value == "[32]" and hp["seed"].number_value == 1
    assert {"hparam/avg_acc", "hparam/bwt", "hparam/total_bytes", "hparam/train_s"} <= set(acc.Tags()["scalars"])


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (code {proc.returncode}) before the kill: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("the sweep did not reach the point of the kill in time")
        time.sleep(0.02)


def _state(out: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(summary.json mtime of each completed point, {checkpoint: mtime} of each started, unfinished point)."""
    done, started = {}, {}
    for run in (out / "runs").iterdir() if (out / "runs").is_dir() else []:
        summary = run / "finetune" / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
            done[run.name] = summary.stat().st_mtime_ns
        else:
            ckpts = _checkpoints(run)
            if ckpts:
                started[run.name] = ckpts
    return done, started


def _checkpoints(run: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (run / "finetune" / "checkpoints").glob("ckpt_*/state.json")}


def _sweep_cmd(path: Path, out: Path, *extra: str, seeds: str = "0-2") -> list[str]:
    return [sys.executable, "-m", "agentlab", "sweep", str(path), "--grid", "learner.lr=0.05,0.1", "--seeds", seeds,
            "--out", str(out), *extra]


def test_killed_sweep_resumes_without_rerunning_finished_points(ray_cluster, recipe, tmp_path, capsys):
    """SIGKILL a sweep (in-process executor) once a point finished and another has a checkpoint; resume on Ray:
    finished points are not touched, started ones continue from their checkpoints, results equal an unkilled sweep."""
    path = recipe(SLOWER)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_sweep_cmd(path, out, "--executor", "local"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "AGENTLAB_THREADS": "1"})
    _wait_for(lambda: all(_state(out)), 400, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done, started = _state(out)
    assert done and started and len(done) < 6
    manifest = json.loads((out / "sweep.json").read_text())
    assert "running" in {e["status"] for e in manifest["points"]}  # what the killed driver last wrote

    assert main(["sweep", str(path), "--grid", "learner.lr=0.05,0.1", "--seeds", "0-2", "--out", str(out), "--resume"]) == 0
    assert f"{len(done)} of 6 points already finished: skipped" in capsys.readouterr().out
    after_done, _ = _state(out)
    assert {k: after_done[k] for k in done} == done  # finished runs were not run again
    for name, ckpts in started.items():  # interrupted runs resumed: the tasks they had checkpointed were not trained again
        now = _checkpoints(out / "runs" / name)
        assert {k: now[k] for k in ckpts} == ckpts and len(now) == 5
    manifest = json.loads((out / "sweep.json").read_text())
    assert [e["status"] for e in manifest["points"]] == ["completed"] * 6

    whole = tmp_path / "whole"
    assert main(["sweep", str(path), "--grid", "learner.lr=0.05,0.1", "--seeds", "0-2", "--out", str(whole)]) == 0
    assert _matrices(out) == _matrices(whole)


def test_ctrl_c_stops_a_ray_sweep_and_cleans_up(ray_cluster, recipe, tmp_path, capsys):
    """Ctrl-C on a sweep with its own Ray instance: the running points are cancelled and marked interrupted, Ray is
    shut down and its folder removed, and a resume (here in-process) completes the rest."""
    path = recipe(SLOWER)
    out = tmp_path / "ctrl-c"
    before = set(Path("/tmp").glob("agentlab-ray-*"))
    proc = subprocess.Popen(_sweep_cmd(path, out, "--ray-cpus", "2", seeds="0-1"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "AGENTLAB_THREADS": "1"})
    _wait_for(lambda: _state(out)[0], 400, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    done, _ = _state(out)
    assert proc.returncode == 1 and "agentlab sweep --resume --out" in err, err
    statuses = {e["name"]: e["status"] for e in json.loads((out / "sweep.json").read_text())["points"]}
    assert "interrupted" in statuses.values() and "running" not in statuses.values()
    assert set(Path("/tmp").glob("agentlab-ray-*")) <= before  # the subprocess's Ray folder is gone

    assert main(["sweep", "--resume", "--out", str(out), "--executor", "local"]) == 0
    assert len(done) < 4 and f"{len(done)} of 4 points already finished: skipped" in capsys.readouterr().out
    after_done, _ = _state(out)
    assert {k: after_done[k] for k in done} == done and len(after_done) == 4


def test_a_failing_point_is_reported_while_the_others_complete(ray_cluster, recipe, tmp_path, capsys):
    path = recipe()
    out = tmp_path / "nan"
    assert main(["sweep", str(path), "--grid", "learner.lr=0.05,1e30", "--seeds", "0-1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "2 point(s) did not complete" in err and "lr=1e30__seed0: failed" in err and "non-finite" in err
    points = {e["name"]: e for e in json.loads((out / "sweep.json").read_text())["points"]}
    assert points["lr=0.05__seed0"]["status"] == points["lr=0.05__seed1"]["status"] == "completed"
    assert points["lr=1e30__seed1"]["status"] == "failed" and "non-finite" in points["lr=1e30__seed1"]["message"]


def test_a_worker_that_dies_or_raises_is_recorded(ray_cluster, tmp_path):
    """A point whose worker process exits (as when killed) and one whose function raises: each recorded, the sweep goes on."""
    from agentlab import recipe as recipes
    from agentlab.sweep import expand, open_sweep, parse_grid, run_point, run_sweep

    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    name, table = recipes.read_recipe(str(path))
    points = expand(name, table, parse_grid(["learner.lr=0.05,0.1,0.2"]), [0])

    def fn(job):  # pickled by value into the workers
        import os as _os

        if job.name.startswith("lr=0.1_"):
            _os._exit(3)
        if job.name.startswith("lr=0.2_"):
            raise ValueError("bad point")
        return run_point(job)

    with open_sweep(tmp_path / "s", create=True) as sweep:
        entries = run_sweep(sweep, points, ray_cluster, fn=fn, report=lambda line: None)
    status = {n: (e["status"], e["message"]) for n, e in entries.items()}
    assert status["lr=0.05__seed0"] == ("completed", "")
    assert status["lr=0.1__seed0"][0] == "failed" and status["lr=0.1__seed0"][1].startswith("WorkerCrashedError: The worker died")
    assert status["lr=0.2__seed0"] == ("failed", "ValueError: bad point")
