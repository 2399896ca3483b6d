"""The shipped sparse recipes resolve and build (names, keys, ranges) without training anything."""

from __future__ import annotations

import pytest

from agentlab import recipe as recipes
from agentlab.config import ConfigError
from agentlab.registry import BuildEnv, build


@pytest.mark.parametrize("name", ["set-digits", "lottery-digits"])
def test_recipe_resolves_and_components_check(name):
    n, table = recipes.read_recipe(name)
    recipes.check_components(recipes.resolve(n, table))


def test_set_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="zeta"):
        build("plasticity", {"name": "set", "zeta": 1.5}, BuildEnv())
    with pytest.raises(ConfigError, match="regrowth"):
        build("plasticity", {"name": "set", "regrowth": "magic"}, BuildEnv())
    with pytest.raises(ConfigError, match="prune_fraction"):
        build("plasticity", {"name": "lottery", "prune_fraction": 0}, BuildEnv())
