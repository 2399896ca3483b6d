"""The ViT and MoE recipes resolve and build, and say what their benchmarks run."""

from __future__ import annotations

import pytest

from agentlab import recipe as recipes
from agentlab import registry

RECIPES = ["vit-cifar10", "vit-fashion", "moe-fashion", "moe-split-fashion"]


class _Stream:
    def __init__(self, shape):
        self.input_shape, self.n_classes = shape, 10


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resolves_and_its_agents_build(name):
    rname, table = recipes.read_recipe(name)
    resolved = recipes.resolve(rname, table)
    recipes.check_components(resolved)
    shape = (3, 32, 32) if "cifar" in name else (1, 28, 28)
    env = registry.BuildEnv(stream=_Stream(shape))
    for label, spec in resolved.agents.items():
        agent = recipes.build_agent(label, spec, env)
        assert type(agent.backbone).__name__ == "ViT"


def test_vit_fashion_is_the_benchmarks_fashion_part():
    from agentlab.bench.vit_lottery import FASHION_VIT, PARTS, TRAIN

    _, table = recipes.read_recipe("vit-fashion")
    bb = {k: v for k, v in table["backbone"].items() if k != "name"}
    assert bb == FASHION_VIT
    full, learner, lottery = PARTS["fashion"]["full"], table["learner"], table["plasticity"][0]
    assert (learner["epochs"], learner["rounds"], learner["validation"]) == (full["epochs"], full["rounds"], full["validation"])
    assert (lottery["prune_fraction"], lottery["output_fraction"]) == (full["prune"], full["prune_out"])
    assert (learner["lr"], learner["lr_schedule"], learner["sensitivity"]) == (TRAIN["lr"], TRAIN["lr_schedule"], TRAIN["sensitivity"])


def test_moe_fashion_compares_equal_active_parameters_per_token():
    _, table = recipes.read_recipe("moe-fashion")
    moe, dense = table["agents"]["moe"]["backbone"], table["agents"]["dense_same_active"]["backbone"]
    assert {k: v for k, v in moe.items() if k != "moe"} == {k: v for k, v in dense.items() if k != "mlp_ratio"}
    assert moe["moe"]["capacity"] * moe["moe"]["hidden"] == dense["mlp_ratio"] * dense["dim"]
    assert table["agents"]["moe"]["learner"] == table["agents"]["dense_same_active"]["learner"]
