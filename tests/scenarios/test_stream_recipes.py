"""The shipped recipes for the MNIST-family streams resolve, and one runs end to end from the command line."""

from __future__ import annotations

import json

import pytest

from agentlab import recipe as recipes
from agentlab.cli import main

NEW = ["split-mnist", "permuted-mnist-10", "avalanche-baselines", "split-fashion", "rotated-mnist", "fnnsp-pairs"]


@pytest.mark.parametrize("name", NEW)
def test_recipe_checks(name):
    resolved = recipes.resolve(*recipes.read_recipe(name))
    recipes.check_components(resolved)


def test_split_mnist_recipe_runs_from_cli(data_root, tmp_path, capsys):
    code = main([
        "run", "split-mnist", "--data-root", str(data_root), "--out", str(tmp_path), "--no-progress",
        "--agent", "finetune", "--agent", "ewc",
        "--set", "stream.max_per_task=40", "--set", "stream.max_eval_per_task=20",
        "--set", "learner.max_steps=2", "--set", "learner.batch_size=16", "--set", "loop.checkpoint=false",
    ])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["agents"]) == {"finetune", "ewc"}
    assert len(summary["agents"]["ewc"]["accuracy_matrix"]) == 5
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "ewc").iterdir())


@pytest.mark.parametrize("scenario", ["split_task", "split_domain", "split_class", "permuted"])
@pytest.mark.parametrize("quick", [True, False])
def test_baselines_bench_tables_resolve(scenario, quick):
    from agentlab.bench.baselines import METHODS, scenario_table

    resolved = recipes.resolve("b", scenario_table(scenario, quick, 0))
    recipes.check_components(resolved)
    assert set(resolved.agents) == set(METHODS)


def test_benches_registered():
    from agentlab import registry

    assert {"loop-speed", "baselines"} <= set(registry.entries("bench"))
