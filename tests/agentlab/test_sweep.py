"""Sweeps without Ray: grid and seed syntax, points, the manifest, resume bookkeeping, failures, aggregation by hand."""

from __future__ import annotations

import csv
import json
import math

import pytest

from agentlab.cli import main
from agentlab.config import ConfigError
from agentlab.errors import UserError
from agentlab.sweep import LocalExecutor, expand, open_sweep, parse_grid, parse_seeds, run_sweep

TINY = """
seed = 0
[stream]
name = "digits-split"
scenario = "class"
classes_per_task = 5
[agents.finetune]
backbone = { name = "mlp", hidden = [16] }
learner = { name = "finetune", epochs = 1, lr = 0.05, batch_size = 32 }
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_grid_values_are_toml_and_commas_inside_values_stay():
    grid = parse_grid(['backbone.hidden=[16],[32, 32]', 'learner.lr=0.01, 1e-3', 'stream.scenario="task","class"', "learner.name=finetune,replay"])
    assert grid == {"backbone.hidden": ["[16]", "[32, 32]"], "learner.lr": ["0.01", "1e-3"],
                    "stream.scenario": ['"task"', '"class"'], "learner.name": ["finetune", "replay"]}


@pytest.mark.parametrize("bad, words", [
    ("learner.lr", "not KEY=V1,V2"), ("learner.lr=0.1,", "non-empty"), ("seed=1,2", "--seeds"), ("learner.lr=0.1,0.1", "repeat"),
])
def test_bad_grid_items_name_the_problem(bad, words):
    with pytest.raises(ConfigError, match=words):
        parse_grid([bad])


def test_seed_ranges():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,3,5") == [0, 3, 5] and parse_seeds("0-1,7") == [0, 1, 7] and parse_seeds("4") == [4]
    for bad in ("3-1", "a", "-1", "1,1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_expand_is_the_product_with_stable_names_and_set_semantics():
    from agentlab import recipe as recipes

    name, table = recipes.read_recipe("digits-split")
    points = expand(name, table, parse_grid(["learner.lr=0.01,0.1", "backbone.hidden=[16],[32,32]"]), [0, 1])
    assert len(points) == 8 and len({p.name for p in points}) == 8
    p = points[3]
    assert p.name == "lr=0.01__hidden=32-32__seed1" and p.params == {"learner.lr": 0.01, "backbone.hidden": [32, 32], "seed": 1}
    # agent-level keys broadcast to every agent, as --set does
    assert all(a["learner"]["lr"] == 0.01 and a["backbone"]["hidden"] == [32, 32] for a in p.table["agents"].values())
    assert p.table["seed"] == 1 and table["seed"] == 0  # the recipe's table is not touched
    assert [q.name for q in expand(name, table, {}, [3])] == ["seed3"]


def _sweep(tmp_path, tiny, grid, seeds, *, fn=None, out="sweep"):
    from agentlab import recipe as recipes

    name, table = recipes.read_recipe(str(tiny))
    points = expand(name, table, parse_grid(grid), seeds)
    with open_sweep(tmp_path / out, create=True, info={"recipe": name}) as sweep:
        kw = {"fn": fn} if fn else {}
        entries = run_sweep(sweep, points, LocalExecutor(), report=lambda line: None, **kw)
    return points, entries


def test_local_sweep_makes_ordinary_runs_and_a_rerun_skips_them(tmp_path, tiny):
    points, entries = _sweep(tmp_path, tiny, ["learner.lr=0.05,0.1"], [0, 1])
    root = tmp_path / "sweep"
    assert all(e["status"] == "completed" for e in entries.values())
    run = root / "runs" / points[0].name
    assert {"config.json", "summary.json", "finetune"} <= {p.name for p in run.iterdir()}
    assert (run / "finetune" / "checkpoints").is_dir() and any(p.name.startswith("events.out") for p in (run / "finetune").iterdir())
    stamps = {p.name: (root / "runs" / p.name / "finetune" / "summary.json").stat().st_mtime_ns for p in points}

    calls = []
    _, again = _sweep(tmp_path, tiny, ["learner.lr=0.05,0.1"], [0, 1], fn=lambda job: calls.append(job) or {})
    assert calls == [] and all(e["status"] == "completed" for e in again.values())
    assert stamps == {p.name: (root / "runs" / p.name / "finetune" / "summary.json").stat().st_mtime_ns for p in points}


def test_a_point_with_other_settings_under_the_same_name_is_refused(tmp_path, tiny):
    from agentlab import recipe as recipes

    _sweep(tmp_path, tiny, ["learner.lr=0.05"], [0])
    name, table = recipes.read_recipe(str(tiny))
    changed = recipes.apply_overrides(table, ["learner.epochs=3"])
    with open_sweep(tmp_path / "sweep", create=False) as sweep:
        with pytest.raises(UserError, match="other settings.*learner.epochs"):
            sweep.merge(expand(name, changed, parse_grid(["learner.lr=0.05"]), [0]))


def test_failures_are_recorded_and_the_others_continue(tmp_path, tiny):
    """A non-finite loss, a stream whose data is missing (an exception inside the run) and an executor-level
    exception: each recorded with its message; the remaining point completes."""
    from agentlab import recipe as recipes
    from agentlab.sweep import Point, run_point

    name, table = recipes.read_recipe(str(tiny))
    points = expand(name, table, parse_grid(["learner.lr=0.05,1e30,0.2"]), [0])
    mnist = recipes.apply_overrides(table, ['stream.name="split-mnist"', "stream.classes_per_task=5"])
    points.append(Point("mnist", {"learner.lr": 0.05, "seed": 0}, name, mnist))
    empty = tmp_path / "no-data"
    empty.mkdir()

    def fn(job):
        if job.name.startswith("lr=0.2"):
            raise RuntimeError("boom")
        return run_point(job)

    with open_sweep(tmp_path / "sweep", create=True) as sweep:
        entries = run_sweep(sweep, points, LocalExecutor(), data_root=empty, fn=fn, report=lambda line: None)
    status = {n: (e["status"], e["message"]) for n, e in entries.items()}
    assert status["lr=0.05__seed0"] == ("completed", "")
    assert status["lr=1e30__seed0"][0] == "failed" and "non-finite" in status["lr=1e30__seed0"][1]
    assert status["lr=0.2__seed0"] == ("failed", "RuntimeError: boom")
    assert status["mnist"][0] == "failed" and "DataNotFoundError" in status["mnist"][1] and "traceback" in entries["mnist"]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert {e["name"]: (e["status"], e["message"]) for e in saved["points"]} == status
    assert (tmp_path / "sweep" / "hparams" / "lr=0.05__seed0").is_dir() and not (tmp_path / "sweep" / "hparams" / "mnist").exists()


def test_run_point_turns_an_exception_into_a_failure(tmp_path):
    from agentlab.sweep import PointJob, run_point

    out = run_point(PointJob("p", "r", {"stream": {"name": "digits-split"}, "agents": {"a": {"backbone": {"name": "mlp"}}}},
                             str(tmp_path / "p")))
    assert out["status"] == "failed" and "learner" in out["message"] and "traceback" in out


def _fake_sweep(root, runs):
    """A sweep directory written by hand: runs = [(lr, seed, status, avg_acc, bwt, bytes, train_s)]."""
    points = []
    for lr, seed, status, acc, bwt, nbytes, train_s in runs:
        name = f"lr={lr}__seed{seed}"
        arm = root / "runs" / name / "a"
        arm.mkdir(parents=True)
        summary = {"status": status, "metrics": {"avg_acc": acc, "bwt": bwt, "fwt": None, "forgetting": -bwt},
                   "ledger": [{"total_bytes": nbytes}], "timings": {"train_s": train_s, "eval_s": 0.5}}
        (arm / "summary.json").write_text(json.dumps(summary))
        points.append({"name": name, "params": {"learner.lr": lr, "seed": seed}, "recipe": "r", "run_dir": f"runs/{name}",
                       "status": status, "message": "" if status == "completed" else "loss became non-finite",
                       "table": {"stream": {"name": "digits-split"},
                                 "agents": {"a": {"backbone": {"name": "mlp"}, "learner": {"name": "finetune"}}}}})
    (root / "sweep.json").write_text(json.dumps({"format": 1, "recipe": "r", "grid": {"learner.lr": ["0.1", "0.2"]},
                                                 "seeds": [0, 1, 2], "points": points}))


def test_aggregation_against_numbers_computed_by_hand(tmp_path, capsys):
    _fake_sweep(tmp_path, [
        (0.1, 0, "completed", 0.50, -0.10, 1000, 2.0),
        (0.1, 1, "completed", 0.70, -0.20, 1000, 4.0),
        (0.1, 2, "completed", 0.90, -0.30, 1000, 6.0),
        (0.2, 0, "completed", 0.40, -0.40, 2000, 1.0),
        (0.2, 1, "failed", 0.99, -0.99, 9999, 9.0),  # not completed: left out
    ])
    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    body = json.loads((tmp_path / "report.json").read_text())
    first, second = body["rows"]
    assert first["grid"] == {"learner.lr": 0.1} and first["agent"] == "a" and first["n"] == 3 and first["seeds"] == [0, 1, 2]
    acc = first["metrics"]["avg_acc"]
    # mean 0.7; sample SD sqrt(((-0.2)^2 + 0 + 0.2^2) / 2) = 0.2; t(0.975, 2) = 4.302653; half-width 4.302653 * 0.2 / sqrt(3)
    assert acc["mean"] == pytest.approx(0.7) and acc["sd"] == pytest.approx(0.2)
    assert acc["ci95"] == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-6)
    assert acc["ci95_lo"] == pytest.approx(0.7 - 0.496828, abs=1e-6) and acc["ci95_hi"] == pytest.approx(0.7 + 0.496828, abs=1e-6)
    assert first["metrics"]["bwt"]["mean"] == pytest.approx(-0.2) and first["metrics"]["forgetting"]["mean"] == pytest.approx(0.2)
    assert first["metrics"]["train_s"]["mean"] == pytest.approx(4.0) and first["metrics"]["train_s"]["sd"] == pytest.approx(2.0)
    assert first["metrics"]["total_bytes"] == {"n": 3, "mean": 1000.0, "sd": 0.0, "ci95": 0.0, "ci95_lo": 1000.0, "ci95_hi": 1000.0}
    assert first["metrics"]["fwt"]["n"] == 0 and first["metrics"]["fwt"]["mean"] is None
    assert second["n"] == 1 and second["missing_seeds"] == [1] and second["metrics"]["avg_acc"]["mean"] == pytest.approx(0.4)
    assert second["metrics"]["avg_acc"]["sd"] is None
    assert [u["name"] for u in body["unfinished"]] == ["lr=0.2__seed1"]
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert rows[0]["learner.lr"] == "0.1" and float(rows[0]["avg_acc_mean"]) == pytest.approx(0.7)
    assert float(rows[0]["avg_acc_ci95_hi"]) == pytest.approx(1.196828, abs=1e-6) and rows[1]["avg_acc_sd"] == ""
    assert "70.0±49.7" in printed and "lr=0.2__seed1: failed" in printed


def test_report_of_a_run_directory_is_unchanged_and_of_nothing_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_cli_refuses_bad_input_with_exit_code_2(tmp_path, tiny, capsys):
    assert main(["sweep", str(tiny), "--resume"]) == 2 and "give --out" in capsys.readouterr().err
    cases = [
        (["--grid", "learner.nope=1,2", "--executor", "local"], "nope"),
        (["--resume", "--executor", "local"], "holds no sweep"),
        (["--executor", "local", "--address", "auto"], "--address"),
        (["--executor", "local", "--seeds", "2-1"], "--seeds"),
        (["--gpus-per-run", "0.5"], "--device cuda"),
    ]
    for extra, words in cases:
        assert main(["sweep", str(tiny), "--out", str(tmp_path / "s"), *extra]) == 2, extra
        assert words in capsys.readouterr().err, extra
        assert not (tmp_path / "s").exists(), extra  # nothing written
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["sweep", str(tiny), "--out", str(tmp_path / "full"), "--executor", "local"]) == 2
    assert "other files" in capsys.readouterr().err


def test_cli_local_sweep_then_resume_without_the_recipe(tmp_path, tiny, capsys):
    out = tmp_path / "s"
    assert main(["sweep", str(tiny), "--grid", "learner.lr=0.05,0.1", "--out", str(out), "--executor", "local"]) == 0
    text = capsys.readouterr().out
    assert "2 runs (2 learner.lr x 1 seed)" in text and "avg acc" in text and (out / "report.csv").is_file()
    assert main(["sweep", str(tiny), "--grid", "learner.lr=0.05", "--out", str(out), "--executor", "local"]) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main(["sweep", "--resume", "--out", str(out), "--executor", "local"]) == 0
    assert "2 of 2 points already finished: skipped" in capsys.readouterr().out
    # more seeds for the same grid: the finished points stay, the new ones run
    assert main(["sweep", str(tiny), "--grid", "learner.lr=0.05,0.1", "--seeds", "0-1", "--out", str(out), "--executor", "local", "--resume"]) == 0
    assert "2 of 4 points already finished" in capsys.readouterr().out
    assert json.loads((out / "sweep.json").read_text())["seeds"] == [0, 1]


def test_missing_ray_names_the_extra(monkeypatch):
    import sys

    from agentlab.sweep_ray import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'agentlab\[ray\]'.*|agentlab\[ray\]"):
        RayExecutor().__enter__()
