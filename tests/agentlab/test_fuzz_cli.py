"""Fuzzing `agentlab run` (hypothesis, derandomized and bounded to a few seconds): random --set keys and values,
random command lines, random recipe tables and random recipe bytes. Whatever comes in, the command returns
0, 1 or 2 with a one-line error, never an exception (a traceback for a user).

Every generated command ends with settings that keep a valid combination to a fraction of a second (one step per
task, one task) and an --out inside the test's folder, which run in this process (`agentlab.cli.main`).
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests_helpers import cli

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FUZZ_RUNS = settings(FUZZ, max_examples=12)  # for generators whose valid examples train (a few tenths of a second each)

KEYS = [
    "seed", "deterministic", "description", "stream", "stream.name", "stream.scenario", "stream.classes_per_task",
    "loop", "loop.device", "loop.eval_batch_size", "loop.log_every", "loop.eval_seen", "loop.keep_checkpoints",
    "loop.eval_next", "agents", "agents.finetune", "agents.finetune.backbone", "backbone", "backbone.name",
    "backbone.hidden", "backbone.dropout", "learner", "learner.name", "learner.lr", "learner.optimizer",
    "learner.momentum", "learner.batch_size", "learner.weight_decay", "learner.grad_clip", "learner.lr_schedule",
    "learner.keep_optimizer", "plasticity", "plasticity.0.name", "memory", "agents.finetune.plasticity",
]
SAFE = ["--no-progress", "--agent", "finetune", "--set", "learner.epochs=1", "--set", "learner.max_steps=1",
        "--set", "loop.stop_after_tasks=1"]


def toml_value(v) -> str:
    """A TOML literal for a generated value (inline tables and arrays; hypothesis text as basic strings)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + " }"


scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, 1, -1, 2**31, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["cpu", "cuda", "mlp", "finetune", "replay", "digits-split", "class", "task", "adam", "", ".."]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
set_items = st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=15)),
                               st.one_of(values.map(toml_value), st.text(max_size=15))), min_size=1, max_size=3)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths a command line names land here
    return tmp_path


def _check(rc: int, out: str, err: str) -> None:
    assert rc in (0, 1, 2), (rc, err)
    assert "Traceback" not in out + err
    if rc == 2:
        assert "error:" in err, err


@FUZZ_RUNS
@given(items=set_items)
@example(items=[("stream", "5")])  # inputs that once ended in a traceback, always tried first
@example(items=[("agents.finetune.backbone", "[1]")])
@example(items=[("loop", '"x"'), ("learner.lr", "1e999")])
def test_fuzz_set_overrides(sandbox, items):
    sets = [a for k, v in items for a in ("--set", f"{k}={v}")]
    _check(*cli("run", "--out", sandbox / "runs", *sets, *SAFE))


FLAGS = ["--seed", "--threads", "--device", "--agent", "--set", "--resume", "--data-root", "--restart",
         "--deterministic", "--no-progress", "--out", "-h"]
tokens = st.one_of(
    st.sampled_from(FLAGS), st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
                                    max_size=10),
    st.integers(min_value=-5, max_value=2**70).map(str), st.sampled_from(["digits-split", "nosuch", "1", "0", "-1", "x=1"]),
)


@FUZZ_RUNS
@given(argv=st.lists(tokens, max_size=6))
@example(argv=["--seed", str(2**70)])
@example(argv=["--device", ""])
def test_fuzz_command_line(sandbox, argv):
    if "-h" in argv or "--help" in argv:  # help exits 0 after printing
        argv = [a for a in argv if a not in ("-h", "--help")]
    argv = [a for a in argv if not a.startswith("--threads")]  # threads change this process: fuzzed below
    _check(*cli("run", *argv, *SAFE, "--out", sandbox / "runs"))


@FUZZ
@given(threads=st.one_of(st.integers(min_value=-(2**70), max_value=0), st.text(max_size=5), st.just("1e3")))
def test_fuzz_threads(sandbox, threads):
    _check(*cli("run", "--threads", str(threads), *SAFE, "--out", sandbox / "runs"))


BASE = {
    "seed": 0,
    "stream": {"name": "digits-split", "scenario": "class"},
    "loop": {"eval_next": True},
    "agents": {"finetune": {"backbone": {"name": "mlp", "hidden": [16]},
                            "learner": {"name": "finetune", "epochs": 1, "lr": 0.01, "batch_size": 32}}},
}
PATHS = [(), ("seed",), ("stream",), ("stream", "name"), ("stream", "scenario"), ("loop",), ("agents",),
         ("agents", "finetune"), ("agents", "finetune", "backbone"), ("agents", "finetune", "backbone", "hidden"),
         ("agents", "finetune", "learner"), ("agents", "finetune", "learner", "lr"), ("agents", "finetune", "learner", "name")]


def _mutate(table: dict, path: tuple, op: str, key: str, value) -> dict:
    t = json.loads(json.dumps(table))
    node = t
    for p in path[:-1]:
        node = node[p]
    if not path:
        if op == "add":
            t[key or "x"] = value
        return t
    last = path[-1]
    if op == "delete":
        del node[last]
    elif op == "replace":
        node[last] = value
    elif isinstance(node[last], dict):
        node[last][key] = value
    else:
        node[last] = value
    return t


def _to_toml(table: dict) -> str:
    return "".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}\n" for k, v in table.items())


@FUZZ
@given(path=st.sampled_from(PATHS), op=st.sampled_from(["delete", "replace", "add"]), key=st.text(max_size=8), value=values)
def test_fuzz_recipe_tables(sandbox, path, op, key, value):
    recipe = sandbox / "fuzzed.toml"
    recipe.write_text(_to_toml(_mutate(BASE, path, op, key, value)), encoding="utf-8")
    _check(*cli("run", recipe, "--out", sandbox / "runs", "--no-progress", "--set", "learner.max_steps=1",
                "--set", "loop.stop_after_tasks=1"))


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
                      st.sampled_from([_to_toml(BASE).encode()[:n] for n in (0, 10, 40, 80, 120, 160)])))
def test_fuzz_recipe_bytes(sandbox, data):
    recipe = sandbox / "bytes.toml"
    recipe.write_bytes(data)
    _check(*cli("run", recipe, "--out", sandbox / "runs", "--no-progress", "--set", "learner.max_steps=1",
                "--set", "loop.stop_after_tasks=1"))


def test_the_base_recipe_of_the_fuzz_runs(sandbox):
    """The unmutated table is valid: the mutations start from a recipe that runs."""
    recipe = sandbox / "base.toml"
    recipe.write_text(_to_toml(BASE), encoding="utf-8")
    rc, _, err = cli("run", recipe, "--out", sandbox / "runs", "--no-progress", "--set", "learner.max_steps=1")
    assert rc == 0, err
