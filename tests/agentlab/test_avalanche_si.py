"""SI through the `avalanche` learner: importances accumulate on the CPU, with and without Avalanche's clamp."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from agentlab import recipe as recipes
from agentlab.runner import run_recipe


def _importances(data_root, monkeypatch, clip: float) -> float:
    import agentlab.learners.avalanche_baseline as ab

    captured = {}
    orig = ab.AvalancheBaseline.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        captured["learner"] = self

    monkeypatch.setattr(ab.AvalancheBaseline, "__init__", init)
    table = {
        "stream": {"name": "split-mnist", "scenario": "domain", "max_per_task": 60, "max_eval_per_task": 10},
        "loop": {"checkpoint": False, "eval_next": False},
        "agents": {"si": {"backbone": {"name": "mlp", "hidden": [32]},
                          "learner": {"name": "avalanche", "strategy": "si", "si_lambda": 1.0, "si_eps": 0.1,
                                      "si_clip": clip, "lr": 0.01, "batch_size": 10, "max_steps": 20}}},
    }
    with tempfile.TemporaryDirectory() as d:
        _, results = run_recipe(recipes.resolve("si", table), run_dir=Path(d) / "run", data_root=data_root)
    assert results["si"].completed, results["si"].message
    from avalanche.training.plugins import SynapticIntelligencePlugin

    (plugin,) = [p for p in captured["learner"].strategy.plugins if isinstance(p, SynapticIntelligencePlugin)]
    return max(float(v.data.max()) for v in plugin.ewc_data[1].values())


def test_si_importances_accumulate_on_the_cpu_and_clip_zero_keeps_what_avalanche_clamps(data_root, monkeypatch):
    # Avalanche 0.6's own plugin keeps views of the live weights on the CPU, so its path integral is 0 (every
    # importance 0); with copied snapshots the importances grow, and Avalanche's clamp caps them at 0.001.
    clamped = _importances(data_root, monkeypatch, 0.001)
    free = _importances(data_root, monkeypatch, 0.0)
    assert 0 < clamped <= 0.001 * (1 + 1e-6)  # float32
    assert free > 0.001


def test_si_clip_is_checked():
    from agentlab.learners.avalanche_baseline import AvalancheConfig

    with pytest.raises(ValueError, match="si_clip"):
        AvalancheConfig(strategy="si", si_clip=-1.0)
