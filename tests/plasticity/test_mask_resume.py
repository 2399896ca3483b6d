"""Checkpoint resume with mask plasticity: a run killed after 2 tasks and resumed ends with the same matrix."""

from __future__ import annotations

import numpy as np
import pytest

from agentlab import recipe as recipes
from agentlab.runner import run_recipe


def _resolved(agent: str, plasticity: dict, overrides: list[str]) -> recipes.Resolved:
    table = {
        "seed": 0,
        "stream": {"name": "digits-split", "scenario": "task"},
        "agents": {agent: {"backbone": {"name": "mlp", "hidden": [64, 64], "bias": False},
                           "learner": {"name": "finetune", "epochs": 2, "lr": 0.01, "batch_size": 64},
                           "plasticity": [plasticity]}},
    }
    return recipes.resolve("resume", recipes.apply_overrides(table, overrides))


@pytest.mark.parametrize("agent,plasticity", [
    ("supsup", {"name": "supsup", "hopfield": True}),
    ("fnnsp", {"name": "fnnsp", "modules": 8, "active_modules": 3, "new_modules_per_task": 1, "initial_active": 4}),
])
def test_resume_after_kill_gives_identical_matrix(tmp_path, agent, plasticity):
    _, full = run_recipe(_resolved(agent, plasticity, []), run_dir=tmp_path / "full")
    part_dir, part = run_recipe(_resolved(agent, plasticity, ["loop.stop_after_tasks=2"]), run_dir=tmp_path / "part")
    assert part[agent].status == "interrupted"
    _, res = run_recipe(_resolved(agent, plasticity, []), run_dir=part_dir, resume=True)
    assert res[agent].completed
    np.testing.assert_array_equal(res[agent].R, full[agent].R)
    if agent == "supsup":  # task given: isolation means no forgetting at all
        R = full[agent].R
        for j in range(5):
            assert (R[j:, j] == R[j, j]).all()
