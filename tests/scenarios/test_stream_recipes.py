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


def test_baselines_seed_results_gather_repetitions_with_the_same_settings(tmp_path):
    from agentlab.bench.baselines import scenario_table, seed_results

    def arm(folder, seed, acc, status="completed", change=None, order=None):
        table = scenario_table("split_domain", False, seed)
        if change:
            table["agents"]["si"]["learner"].update(change)
        if order:
            table["stream"]["class_order"] = order
        d = tmp_path / folder / "split_domain" / "si"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"status": status, "config": {"table": table}, "metrics": {"avg_acc": acc}}))

    arm("baselines", 0, 0.60)
    arm("baselines-seed1", 1, 0.70)
    arm("baselines-seed2", 2, 0.50, status="interrupted")  # not a result
    arm("baselines-seed3", 3, 0.90, change={"si_lambda": 1.0})  # other settings: not a repetition
    arm("baselines-quick-seed4", 4, 0.10)  # the quick mode is another benchmark
    arm("baselines-seed5", 5, 0.80, order=list(range(9, -1, -1)))  # a digit order seed 5 no longer draws
    def table_for(seed):
        return scenario_table("split_domain", False, seed)
    assert seed_results(tmp_path / "baselines-seed1", "split_domain", "si", table_for) == {0: 0.60, 1: 0.70}
    assert seed_results(tmp_path / "baselines", "split_domain", "ewc", table_for) == {}


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
    from agentlab.bench.baselines import _reusable, scenario_table

    table = scenario_table("split_task", True, 0)
    arm = tmp_path / "lwf"
    arm.mkdir()
    assert not _reusable(arm, table, "lwf")  # never completed
    (arm / "summary.json").write_text(json.dumps({"config": {"table": table}}))
    assert _reusable(arm, table, "lwf")
    changed = json.loads(json.dumps(table))
    changed["agents"]["ewc"]["learner"]["ewc_lambda"] = 1.0  # another arm's settings do not matter
    assert _reusable(arm, changed, "lwf")
    changed["agents"]["lwf"]["learner"]["lwf_weighting"] = "constant"
    assert not _reusable(arm, changed, "lwf")


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
