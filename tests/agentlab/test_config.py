"""Config errors name the key, the value and what is allowed; the CLI exits with 2."""

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from agentlab.plugins import load_plugins
from agentlab import recipe as recipes
from agentlab import registry
from agentlab.config import ConfigError, build_config, check, parse_value
from agentlab.learners.replay import ReplayConfig
from tests_helpers import REPO


@dataclass(frozen=True)
class Toy:
    lr: float = 0.1
    epochs: int = 1
    mode: Literal["a", "b"] = "a"
    hidden: list[int] = field(default_factory=lambda: [4])

    def __post_init__(self):
        check(self.lr > 0, "lr", self.lr, "a number > 0")


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown key learner\.'lrr'.*did you mean 'lr'"):
        build_config(Toy, {"lrr": 1.0}, where="learner")


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError, match=r"epochs='3' is not allowed: epochs must be an integer"):
        build_config(Toy, {"epochs": "3"})
    with pytest.raises(ConfigError, match=r"hidden\[1\]"):
        build_config(Toy, {"hidden": [4, "x"]})


def test_literal_and_range():
    with pytest.raises(ConfigError, match=r"mode='c'.*one of 'a', 'b'"):
        build_config(Toy, {"mode": "c"})
    with pytest.raises(ConfigError, match=r"lr=-1.0 is not allowed: lr must be a number > 0"):
        build_config(Toy, {"lr": -1})
    assert build_config(Toy, {"lr": 1}).lr == 1.0  # ints widen to floats


def test_nested_where_prefix_from_post_init():
    with pytest.raises(ConfigError, match=r"agents\.replay\.learner\.buffer_size=0"):
        build_config(ReplayConfig, {"buffer_size": 0}, where="agents.replay.learner")


def test_parse_value_uses_toml_syntax():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("class") == "class"


def test_duplicate_registration_is_refused():
    load_plugins()
    with pytest.raises(ValueError, match="duplicate learner name 'finetune'"):
        registry.register("learner", "finetune", Toy)(lambda cfg, env: None)


def test_unknown_component_name_suggests():
    with pytest.raises(ConfigError, match=r"'replya' is not a registered learner \(did you mean 'replay'"):
        registry.get("learner", "replya")


def test_overrides_broadcast_and_target():
    name, table = recipes.read_recipe("digits-split")
    t = recipes.apply_overrides(table, ["learner.epochs=2", "agents.replay.learner.buffer_size=50", "stream.scenario=\"task\""])
    assert all(a["learner"]["epochs"] == 2 for a in t["agents"].values())
    assert t["agents"]["replay"]["learner"]["buffer_size"] == 50
    assert t["stream"]["scenario"] == "task"
    with pytest.raises(ConfigError, match="unknown key 'lerner'.*did you mean 'learner'"):
        recipes.apply_overrides(table, ["lerner.lr=1"])


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="unknown recipe 'digit-split'.*did you mean 'digits-split'"):
        recipes.read_recipe("digit-split")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["run", "--set", "learner.epochs=zero"], "epochs='zero' is not allowed"),
        (["run", "--set", "learner.lr=-1"], "lr=-1.0 is not allowed"),
        (["run", "--set", "stream.scenario=\"classy\""], "did you mean 'class'"),
        (["report", "/nonexistent/run"], "no summary.json"),
    ],
)
def test_cli_exits_2_with_a_message(argv, needle, tmp_path):
    p = subprocess.run([sys.executable, "-m", "agentlab", *argv, *(["--out", str(tmp_path)] if argv[0] == "run" else [])],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
