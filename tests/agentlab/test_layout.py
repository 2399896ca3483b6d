"""The package layout: one `agentlab` namespace, layers checked by import-linter, a wheel that works anywhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agentlab.commands import COMMANDS
from agentlab.cli import main
from tests_helpers import REPO

BIN = Path(sys.executable).parent
SOURCE_DIRS = ("agentlab", "memory", "plasticity", "scenarios", "tests")


def _contracts() -> list[dict]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def _lint(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    lint = "import sys; from importlinter.cli import lint_imports_command; sys.argv[0] = 'lint-imports'; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", lint, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


def test_import_contracts_hold():
    p = _lint(REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout and len(_contracts()) >= 4


def test_every_module_is_in_exactly_one_layer():
    """A new top-level module must be placed in a layer, or the contracts would silently not cover it."""
    core = set(_contracts()[0]["source_modules"])
    forbidden_to_core = set(_contracts()[0]["forbidden_modules"])
    plugins = set(_contracts()[1]["source_modules"])
    application = set(_contracts()[1]["forbidden_modules"])
    assert forbidden_to_core == plugins | application and not (plugins & application) and not (core & forbidden_to_core)
    here = {f"agentlab.{p.stem}" for p in (REPO / "agentlab").glob("*.py") if p.stem not in ("__init__", "__main__")}
    here |= {f"agentlab.{p.name}" for p in (REPO / "agentlab").iterdir() if (p / "__init__.py").is_file()}
    assert here - {"agentlab.recipes"} == core | plugins | application


def test_a_deliberate_upward_import_breaks_a_contract(tmp_path):
    """The contracts can fail: a copy of the source tree where the loop imports the runner is refused."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "agentlab", src / "agentlab", symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    loop = src / "agentlab" / "loop.py"
    loop.write_text(loop.read_text() + "\nimport agentlab.runner  # upward\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    p = _lint(tmp_path, env={**os.environ, "PYTHONPATH": str(src)})
    assert p.returncode != 0, p.stdout
    assert "agentlab.loop -> agentlab.runner" in p.stdout and "BROKEN" in p.stdout


def test_no_source_imports_a_bare_plugin_package():
    bare = re.compile(r"^\s*(from|import)\s+(memory|plasticity|scenarios)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py") if bare.search(p.read_text())]
    assert offenders == []


def test_help_of_every_parser_and_version(capsys):
    for argv in ([], *([name] for name in COMMANDS)):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: agentlab") and (not argv or f"agentlab {argv[0]}" in out)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and re.match(r"agentlab \d+\.\d+", capsys.readouterr().out)


def test_every_training_command_takes_threads():
    from agentlab.cli import parser

    sub = next(a for a in parser()._actions if a.dest == "command")
    for name in ("run", "bench", "fewshot"):
        assert "--threads" in sub.choices[name].format_help(), name
    assert "--device" in sub.choices["run"].format_help()


def test_missing_recipe_file_and_unknown_agent_exit_2(capsys, tmp_path):
    assert main(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]) == 2
    assert "recipe file not found" in capsys.readouterr().err
    assert main(["run", "--agent", "nosuch", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nosuch'" in err and "finetune" in err and "supsup" in err
    assert list(tmp_path.iterdir()) == []  # nothing written for a refused run


def _run_cli(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_a_user_project_with_its_own_memory_and_scenarios(tmp_path):
    """Generic names in a user's project (memory.py, a scenarios/ package) no longer shadow ours."""
    (tmp_path / "memory.py").write_text("raise ImportError('this is the user\\'s memory.py')\n")
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "__init__.py").write_text("raise ImportError('this is the user\\'s scenarios package')\n")
    (tmp_path / "plasticity.py").write_text("raise ImportError('this is the user\\'s plasticity.py')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    p = _run_cli([str(BIN / "agentlab"), "list"], tmp_path, env)
    assert p.returncode == 0, p.stderr
    assert "hopfield_store" in p.stdout and "digits-split" in p.stdout
    p = _run_cli([str(BIN / "agentlab"), "run", "--no-progress", "--agent", "replay", "--set", "learner.epochs=1",
                  "--out", str(tmp_path / "runs")], tmp_path, env)
    assert p.returncode == 0, p.stderr
    assert "avg acc" in p.stdout


def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    """A wheel built from the tree, installed (not editable) into a fresh environment, runs from elsewhere;
    it carries the plug-ins inside `agentlab` and nothing under the bare names."""
    import zipfile

    # build from a copy, so no stale build/ folder of the checkout leaks into the wheel and none is left behind
    tree = tmp_path / "tree"
    for name in ("agentlab", "memory", "plasticity", "scenarios"):
        shutil.copytree(REPO / name, tree / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    dist = tmp_path / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(tree)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (wheel,) = dist.glob("agentlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"agentlab", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert "agentlab/memory/dnc/core.py" in names and "agentlab/scenarios/traces/encode.py" in names
    assert "agentlab/recipes/digits-split.toml" in names and "agentlab/py.typed" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (torch, avalanche...) come from this environment's site-packages without its .pth files,
    # so the only agentlab the fresh environment sees is the wheel's
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]  # this venv's and what it chains to
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    p = subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run_cli([str(vpy), "-c", "import agentlab.memory, importlib.util as u; print(agentlab.memory.__file__); "
                      "print(u.find_spec('memory'))"], outside, env)
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [f"{site}/agentlab/memory/__init__.py", "None"]
    p = _run_cli([str(venv / "bin" / "agentlab"), "list"], outside, env)
    assert p.returncode == 0, p.stderr
    assert "mini_rag" in p.stdout and "protonet-omniglot" in p.stdout
    p = _run_cli([str(venv / "bin" / "agentlab"), "run", "--help"], outside, env)
    assert p.returncode == 0 and "--resume" in p.stdout
