"""`agentlab fewshot` as a user runs it, with a tiny budget, on real Omniglot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
