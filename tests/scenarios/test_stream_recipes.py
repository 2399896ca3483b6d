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


def test_baselines_seeds_vary_the_digit_pairs_and_the_first_permutation_as_the_reference():
    from agentlab.bench.baselines import class_order, scenario_table

    assert "class_order" not in scenario_table("split_task", False, 0)["stream"]  # 0..9, the stream's default
    orders = [scenario_table("split_class", False, s)["stream"]["class_order"] for s in (1, 2)]
    assert all(sorted(o) == list(range(10)) for o in orders) and orders[0] != orders[1] != list(range(10))
    assert class_order(1) == orders[0]  # fixed by the seed
    # The reference's pairs: np.random.seed(1); p = np.random.permutation(10) puts digit d in task p[d] // 2 with
    # label p[d] % 2, here [[4, 6], [0, 5], [3, 9], [2, 7], [8, 1]] (first digit label 0).
    assert class_order(1) == [4, 6, 0, 5, 3, 9, 2, 7, 8, 1]
    assert scenario_table("permuted", False, 0)["stream"]["first_unpermuted"]
    assert not scenario_table("permuted", False, 3)["stream"]["first_unpermuted"]


def _baselines_sweep(root, arms):
    """A baselines sweep directory written by hand: arms = [(seed, avg_acc, status, table change, digit order)]."""
    from agentlab.bench.baselines import arm_point
    from agentlab.summary import jsonable

    points = []
    for seed, acc, status, change, order in arms:
        p = arm_point("split_domain", "si", False, seed)
        if change:
            p.table["agents"]["si"]["learner"].update(change)
        if order:
            p.table["stream"]["class_order"] = order
        arm = root / "runs" / p.name / "si"
        arm.mkdir(parents=True)
        (arm / "summary.json").write_text(json.dumps({"status": status, "metrics": {"avg_acc": acc}, "ledger": [], "timings": {}}))
        points.append({"name": p.name, "params": p.params, "recipe": p.recipe, "run_dir": f"runs/{p.name}", "status": status,
                       "message": "", "table": jsonable(p.table)})
    (root / "sweep.json").write_text(json.dumps({"format": 1, "points": points}))


def test_baselines_seed_results_gather_repetitions_with_the_same_settings(tmp_path):
    from agentlab.bench.baselines import seed_results

    _baselines_sweep(tmp_path, [
        (0, 0.60, "completed", None, None),
        (1, 0.70, "completed", None, None),
        (2, 0.50, "interrupted", None, None),  # not a result
        (3, 0.90, "completed", {"si_lambda": 1.0}, None),  # other settings: not a repetition
        (5, 0.80, "completed", None, list(range(9, -1, -1))),  # a digit order seed 5 no longer draws
    ])
    assert seed_results(tmp_path, "split_domain", "si", False) == {0: 0.60, 1: 0.70}
    assert seed_results(tmp_path, "split_domain", "si", True) == {}  # the quick mode is another benchmark
    assert seed_results(tmp_path, "split_domain", "ewc", False) == {}
    assert seed_results(tmp_path / "nothing", "split_domain", "si", False) == {}


def test_benches_registered():
    from agentlab import registry

    assert {"loop-speed", "baselines"} <= set(registry.entries("bench"))


def test_baselines_parts_select_and_refuse_unknown_names():
    from agentlab.bench.baselines import METHODS, SCENARIOS, select_parts

    assert select_parts(()) == {s: list(METHODS) for s in SCENARIOS}
    assert select_parts(("permuted/ewc", "split_task", "permuted/si")) == {"split_task": list(METHODS), "permuted": ["ewc", "si"]}
    with pytest.raises(ValueError, match="no part 'permuted/xyz'"):
        select_parts(("permuted/xyz",))


def test_baselines_resume_reuses_only_arms_with_the_same_settings(tmp_path):
    """Each arm and seed is its own sweep point: a point made with other settings is forgotten (run again), the
    same settings are kept, and another arm's settings do not matter."""
    from agentlab.bench.baselines import arm_point
    from agentlab.sweep import open_sweep

    lwf, ewc = arm_point("split_task", "lwf", True, 0), arm_point("split_task", "ewc", True, 0)
    assert set(lwf.table["agents"]) == {"lwf"} and lwf.name == "split_task__lwf__seed0"
    with open_sweep(tmp_path, create=True) as sweep:
        sweep.merge([lwf, ewc])
        marker = sweep.run_dir(lwf.name) / "lwf" / "summary.json"
        marker.parent.mkdir(parents=True)
        marker.write_text("{}")
        changed_ewc = arm_point("split_task", "ewc", True, 0)
        changed_ewc.table["agents"]["ewc"]["learner"]["ewc_lambda"] = 1.0
        sweep.merge([arm_point("split_task", "lwf", True, 0), changed_ewc], on_stale="replace")
        assert marker.is_file()  # same settings: kept
        changed = arm_point("split_task", "lwf", True, 0)
        changed.table["agents"]["lwf"]["learner"]["lwf_weighting"] = "constant"
        sweep.merge([changed], on_stale="replace")
        assert not sweep.run_dir(lwf.name).exists() and sweep.entries[lwf.name]["status"] == "pending"


def test_lwf_vandeven_weighting_is_t_minus_1_times_t_squared():
    from agentlab.learners.avalanche_baseline import AvalancheConfig, lwf_alphas

    cfg = AvalancheConfig(strategy="lwf", lwf_alpha=1.0, lwf_temperature=2.0, lwf_weighting="vandeven")
    # (1/t) CE + (1 - 1/t) T^2 KD, times t: CE + (t - 1) T^2 KD on the t-th task (t = 1, 2, 3).
    assert lwf_alphas(cfg, 3) == [0.0, 4.0, 8.0]
    assert lwf_alphas(AvalancheConfig(strategy="lwf", lwf_alpha=0.5), 3) == 0.5


def test_baselines_lwf_distils_as_the_reference_code():
    from agentlab.bench.baselines import scenario_table
    from agentlab.learners.avalanche_baseline import AvalancheConfig

    for scenario in ("split_task", "split_domain", "split_class", "permuted"):
        learner = dict(scenario_table(scenario, True, 0)["agents"]["lwf"]["learner"])
        assert (learner["lwf_distill"], learner["lwf_class_mean"]) == ("reference", True)
        # Class-IL trains on the classes seen so far, as their code; without task labels elsewhere it changes nothing.
        assert learner.get("active_outputs", False) == (scenario == "split_class")
        del learner["name"]
        AvalancheConfig(**learner)  # a valid learner config
    for method in ("ewc", "si"):  # their class-IL trains every method on the seen classes (`active_classes`)
        assert scenario_table("split_class", True, 0)["agents"][method]["learner"]["active_outputs"] is True
        assert "active_outputs" not in scenario_table("split_domain", True, 0)["agents"][method]["learner"]
