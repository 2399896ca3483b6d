"""The README's code and commands run: the Python snippet prints what the text says, the set-up targets exist and do
what the README says, every documented subcommand exists and runs on a tiny budget, and the default run prints the
figures the README quotes for it."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest

from agentlab.cli import main as cli
from agentlab.commands import COMMANDS
from tests_helpers import REPO

README = (REPO / "README.md").read_text()


def _section(heading: str) -> str:
    """The README's text from `heading` to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = README.index(heading + "\n")
    rest = README[start + len(heading) + 1:]
    m = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: m.start()] if m else rest


def _fenced(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_python_snippet_prints_what_the_text_says():
    section = _section("### From Python")
    (code,) = _fenced(section, "python")
    claimed = re.findall(r"`(average accuracy [\d.]+%)`", section)
    assert claimed, "the text after the snippet should quote what it prints"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (From Python)", "exec"), {"__name__": "readme_snippet"})
    for text in claimed:
        assert text in out.getvalue(), (text, out.getvalue()[-300:])


def test_setup_make_targets_exist_and_do_what_the_readme_says():
    (block,) = [b for b in _fenced(_section("## Set-up: two commands"), "bash") if "make" in b]
    targets = re.findall(r"^make (\w+)", block, flags=re.M)
    assert targets == ["run", "test"]
    expect = {"run": "agentlab run", "test": "pytest"}
    for t in targets:
        # -n prints the recipe without running it; -B so it shows the install steps even on a set-up checkout
        p = subprocess.run(["make", "-n", "-B", t], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert expect[t] in p.stdout and "pip install" in p.stdout, p.stdout


def test_every_documented_subcommand_exists_and_every_subcommand_is_documented():
    block = _fenced(_section("## The command line"))[0]
    documented = {m for m in re.findall(r"^agentlab (\w+)", block, flags=re.M)}
    assert documented == set(COMMANDS), (documented, set(COMMANDS))
    assert "agentlab --version" in block


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`agentlab run` exactly as `make run` does it (the embedded default, seed 0), on the CPU."""
    out = tmp_path_factory.mktemp("runs")
    rc, stdout, err = _run_cli("run", "--no-progress", "--threads", "1", "--out", str(out))
    assert rc == 0, err
    (run_dir,) = list(out.iterdir())
    return run_dir, stdout


def test_default_run_prints_the_figures_the_readme_quotes(default_run):
    run_dir, stdout = default_run
    agents = json.loads((run_dir / "summary.json").read_text())["agents"]
    setup = _section("## Set-up: two commands")
    quoted = {name: float(v) for name, v in re.findall(r"(fine-tuning|replay|SupSup|joint)[^*]*?\*\*([\d.]+)%\*\*", setup)}
    labels = {"fine-tuning": "finetune", "replay": "replay", "SupSup": "supsup_memory", "joint": "joint"}
    assert set(quoted) == set(labels), quoted
    for name, figure in quoted.items():
        got = 100 * agents[labels[name]]["metrics"]["avg_acc"]
        assert f"{got:.1f}" == f"{figure:.1f}", (name, got, figure)
        assert f"{got:.1f}" in stdout


def test_documented_commands_run_on_a_tiny_budget(default_run, tmp_path, data_root):
    run_dir, _ = default_run
    rc, out, err = _run_cli("report", str(run_dir))
    assert rc == 0 and "replay" in out, err
    rc, out, err = _run_cli("list")
    assert rc == 0 and "recipes:" in out and "benchmarks:" in out, err
    rc, out, err = _run_cli("list", "replay")
    assert rc == 0 and "| `buffer_size` |" in out, err
    rc, out, err = _run_cli("bench", "digits", "--quick", "--threads", "1", "--json", str(tmp_path / "digits.json"))
    assert rc == 0, err
    assert json.loads((tmp_path / "digits.json").read_text())["bench"] == "digits"
    rc, out, err = _run_cli("results", str(tmp_path))
    assert rc == 0 and "| [`digits`](#digits) | quick |" in out, err
    rc, out, err = _run_cli("fewshot", "--ways", "2", "--shots", "1", "--episodes", "2", "--train-episodes", "1",
                            "--set", "learner.train_ways=5", "--threads", "1", "--data-root", str(data_root))
    assert rc == 0 and "2-way 1-shot" in out, err
    # the installed entry point itself (one subprocess: each costs about 2 s)
    p = subprocess.run([sys.executable, "-m", "agentlab", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and re.search(r"\d+\.\d+", p.stdout + p.stderr), p.stderr
