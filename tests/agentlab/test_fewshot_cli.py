"""`agentlab fewshot` as a user runs it, with a tiny budget, on real Omniglot: trained from a recipe, or saved in a run
directory (`--from`), and the Python path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests_helpers import cli

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], data_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "agentlab", "fewshot", *args, "--data-root", str(data_root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_fewshot_standard_prints_mean_and_ci(tmp_path, data_root):
    out = tmp_path / "fs.json"
    p = _run(["--ways", "5", "--shots", "1", "--queries", "2", "--episodes", "6", "--train-episodes", "2",
              "--set", "learner.train_ways=10", "--json", str(out)], data_root)
    assert p.returncode == 0, p.stderr
    assert "5-way 1-shot, 2 queries per class" in p.stdout and "% ± " in p.stdout and "over 6 test episodes" in p.stdout
    body = json.loads(out.read_text())
    r = body["results"][0]
    assert r["episodes"] == 6 and r["train_episodes"] == 2 and 0.0 <= r["mean"] <= 1.0 and r["ci95"] >= 0.0


def test_fewshot_sequential_prints_accuracy_by_sighting(data_root):
    p = _run(["--ways", "5", "--shots", "1", "--protocol", "sequential", "--per-class", "3", "--episodes", "3",
              "--train-episodes", "1", "--set", "learner.train_ways=5"], data_root)
    assert p.returncode == 0, p.stderr
    assert "sequential (MANN)" in p.stdout and "accuracy by sighting of a class: 1:" in p.stdout and "3:" in p.stdout


def test_fewshot_bad_recipe_key_is_a_clean_error(data_root):
    p = _run(["--ways", "5", "--shots", "1", "--set", "learner.nope=1"], data_root)
    assert p.returncode == 2 and "nope" in p.stderr and "Traceback" not in p.stderr


def test_fewshot_without_omniglot_names_the_missing_zip(tmp_path):
    p = _run(["--ways", "5", "--shots", "1"], tmp_path)
    assert p.returncode == 2 and "images_background.zip" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------------------------------------- saved agents


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory, data_root):
    """A tiny protonet-omniglot run (3 training episodes, 6 test episodes of 5-way 1-shot with 2 queries)."""
    out = tmp_path_factory.mktemp("fs-runs")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "agentlab", "run", "protonet-omniglot", "--no-progress", "--out", str(out),
                        "--data-root", str(data_root), "--set", "learner.episodes=3", "--set", "learner.train_ways=5",
                        "--set", "learner.train_queries=2", "--set", "stream.eval_episodes=6", "--set", "stream.queries=2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    (run_dir,) = list(out.iterdir())
    return run_dir, json.loads((run_dir / "summary.json").read_text())["agents"]["protonet-omniglot"]


def test_from_evaluates_the_saved_agent_as_the_run_did(protonet_run, data_root, tmp_path):
    run_dir, saved = protonet_run
    out = tmp_path / "from.json"
    p = _run(["--from", str(run_dir), "--ways", "5", "--shots", "1", "--queries", "2", "--episodes", "6",
              "--json", str(out)], data_root)
    assert p.returncode == 0, p.stderr
    assert "saved agent" in p.stdout and "ckpt_0000" in p.stdout and "training agent" not in p.stderr
    r = json.loads(out.read_text())["results"][0]
    # the same episodes as the run's own evaluation, answered by the loaded agent: the same figures, exactly
    assert r["mean"] == saved["accuracy_matrix"][0][0] and r["ci95"] == saved["eval_extras"]["ci95"][0][0]
    assert r["train_episodes"] == 0 and r["checkpoint"].endswith("ckpt_0000")


def test_from_runs_the_sequential_protocol(protonet_run, data_root):
    run_dir, _ = protonet_run
    p = _run(["--from", str(run_dir), "--ways", "5", "--shots", "1", "--protocol", "sequential", "--per-class", "3",
              "--episodes", "2"], data_root)
    assert p.returncode == 0, p.stderr
    assert "sequential (MANN)" in p.stdout and "accuracy by sighting of a class: 1:" in p.stdout and "3:" in p.stdout


def test_from_refuses_what_it_cannot_do(protonet_run, data_root, tmp_path):
    run_dir, _ = protonet_run
    cases = [
        (["--from", str(run_dir), "--train-episodes", "5"], "drop --train-episodes"),
        (["--from", str(run_dir), "--set", "learner.lr=0.1"], "stream.* keys"),
        (["--from", str(tmp_path / "nowhere")], "not a folder"),
        (["--from", str(run_dir), "--agent", "nope"], "protonet-omniglot"),
    ]
    bare = tmp_path / "no-checkpoints"
    bare.mkdir()
    (bare / "config.json").write_text((run_dir / "config.json").read_text())
    cases.append((["--from", str(bare)], "no usable checkpoint"))
    for args, says in cases:  # in this process (a traceback would escape `cli`)
        rc, _, err = cli("fewshot", *args, "--ways", "5", "--shots", "1", "--episodes", "2", "--data-root", data_root)
        assert rc == 2 and says in err, (args, err)


def test_python_path_in_three_lines(protonet_run, data_root):
    from agentlab import fewshot

    run_dir, saved = protonet_run
    agent = fewshot.load_agent(run_dir, data_root=data_root)
    result = fewshot.evaluate(agent, ways=5, shots=1, episodes=6, queries=2, data_root=data_root)
    assert result.mean == saved["accuracy_matrix"][0][0] and result.episodes == 6
    assert str(result).startswith("protonet-omniglot: 5-way 1-shot ") and "over 6 test episodes" in str(result)


def test_training_is_announced_with_its_duration_and_shows_progress(data_root):
    p = _run(["--ways", "5", "--shots", "1", "--queries", "2", "--episodes", "2", "--train-episodes", "31",
              "--set", "learner.train_ways=5", "--set", "learner.train_queries=1"], data_root)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.replace("\r", "\n")
    assert "training agent 'protonet-omniglot' on 31 episodes (learner.episodes): about " in lines
    assert " s an episode" in lines and "--from RUN_DIR evaluates a saved agent" in lines
    assert lines.index("training agent") < lines.index("protonet-omniglot training:")  # said before training starts
    assert "episode 31/31" in lines and "episode 2/2" in lines  # training, then evaluation
    assert "trained 31 episodes" in p.stdout
