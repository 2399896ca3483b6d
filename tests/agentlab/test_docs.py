"""The docs cannot drift: key tables are generated from the config dataclasses, the results page from the result
files, and every figure a page quotes in bold is in those results. Also `agentlab list NAME` and `agentlab results`."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from typing import Literal

import pytest

from agentlab import docs_keys
from agentlab.cli import main as cli
from agentlab.commands import results
from tests_helpers import REPO

PAGES = docs_keys.default_pages(REPO)
RESULTS_DIR = REPO / "docs" / "results"
RESULTS_PAGE = REPO / "docs" / "results.md"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_pages_are_found_and_carry_key_tables():
    names = {p.name for p in PAGES}
    assert {"README.md", "streams.md", "masks.md", "sparse.md", "fewshot.md", "personalization.md"} <= names
    assert sum(len(docs_keys.targets(p.read_text())) for p in PAGES) >= 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_key_tables_are_current(page):
    text = page.read_text()
    assert docs_keys.refresh_text(text) == text, (
        f"{page.relative_to(REPO)} has a key table that differs from its config dataclass; "
        f"refresh with `{docs_keys.REFRESH}` (from the repository root)")


def test_results_page_is_generated_from_the_result_files():
    expected = results.render_page(results.load_results([RESULTS_DIR]), ["docs/results"])
    assert RESULTS_PAGE.read_text() == expected, "regenerate it: agentlab results docs/results > docs/results.md"


def test_every_benchmark_has_a_fresh_quick_result():
    """Each benchmark has at least one figure measured by `agentlab bench` itself (not transcribed)."""
    from agentlab import registry
    from agentlab.plugins import load_benchmarks

    load_benchmarks()
    fresh = {r.bench for r in results.load_results([RESULTS_DIR]) if not r.transcribed}
    missing = sorted(set(registry.entries("bench")) - fresh)
    assert not missing, f"no measured result in docs/results/ for: {missing} (agentlab bench NAME --quick --json docs/results/NAME-quick.json)"


def test_transcribed_results_say_where_they_come_from():
    for r in results.load_results([RESULTS_DIR]):
        if r.transcribed:
            assert r.data.get("machine") and r.data.get("date") and r.data.get("command") and r.data.get("source"), r.path


@pytest.mark.parametrize("page", [p for p in PAGES if p != RESULTS_PAGE], ids=lambda p: p.name)
def test_quoted_figures_are_in_the_results(page):
    """A figure written in bold (**95.91%**) is a measured figure: it must be in a result file, as written or in
    percent, at the precision quoted."""
    values = results.result_values(results.load_results([RESULTS_DIR]))
    missing = [f for f in results.quoted_figures(page.read_text()) if not results.find_figure(f, values)]
    assert not missing, f"{page.name} quotes figures that no file in docs/results/ holds: {missing}"


HISTORY = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|this|earlier|previous|next)"
                     r" session\b|\bsessions? \d|engineer|what was tried|we tried|load average", re.I)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_carry_no_history(page):
    hits = [m.group(0) for m in HISTORY.finditer(page.read_text())]
    assert not hits, f"{page.name} speaks of how figures were reached ({hits}); that belongs in commit messages"


def test_figure_lookup():
    values = [0.95914, 295424.0, 0.00075, -0.0557, 18.29]
    for quoted in ["95.91%", "95.9%", "295,424", "0.00075", "−5.57", "18.29:1", "not a figure"]:
        assert results.find_figure(quoted, values), quoted
    for quoted in ["95.92%", "295,425", "0.0009", "18.4:1", "5.58"]:
        assert not results.find_figure(quoted, values), quoted
    assert results.quoted_figures("a **95.91%** b **not met** c **+5.81** points") == ["95.91%", "+5.81"]


@dataclass(frozen=True)
class _Base:
    """A base config."""

    lr: float = 0.01
    """learning
    rate"""


@dataclass(frozen=True)
class _Cfg(_Base):
    """A config for the table test."""

    rule: Literal["a", "b"] = "a"
    """the rule | with a pipe"""
    sizes: list[int] | None = None
    """sizes"""


def test_key_table_reads_field_docstrings_of_the_class_and_its_bases():
    table = docs_keys.table_for(_Cfg)
    assert table.splitlines() == [
        "| key | type | default | meaning |",
        "|---|---|---|---|",
        "| `lr` | float | `0.01` | learning rate |",
        '| `rule` | "a" \\| "b" | `"a"` | the rule \\| with a pipe |',
        "| `sizes` | list[int] \\| none | `none` | sizes |",
    ]


def test_refresh_rewrites_only_between_markers():
    text = "intro\n<!-- keys: loop -->\nstale\n<!-- /keys -->\noutro\n"
    new = docs_keys.refresh_text(text)
    assert new.startswith("intro\n<!-- keys: loop -->\n| key |") and new.endswith("<!-- /keys -->\noutro\n")
    assert "| `eval_next` | bool | `true` |" in new and "stale" not in new
    assert docs_keys.refresh_text(new) == new


def test_unknown_table_target_names_what_is_allowed():
    with pytest.raises(Exception, match="plasticity/nope.name='nope' is not a registered plasticity.*supsup"):
        docs_keys.refresh_text("<!-- keys: plasticity/nope -->\n<!-- /keys -->\n")
    with pytest.raises(Exception, match="KIND/NAME"):
        docs_keys.key_table("nope")


def test_list_name_prints_the_pages_table():
    rc, out, _ = _cli("list", "supsup")
    assert rc == 0 and docs_keys.key_table("plasticity/supsup") in out
    rc, out, _ = _cli("list", "memory/dnc")
    assert rc == 0 and out.startswith("memory dnc:") and "backbone dnc" not in out
    rc, out, _ = _cli("list", "dnc")  # registered under two kinds: both
    assert rc == 0 and "backbone dnc:" in out and "memory dnc:" in out
    rc, out, _ = _cli("list", "loop")
    assert rc == 0 and "| `eval_seen` |" in out
    rc, out, _ = _cli("list", "supsup-digits")
    assert rc == 0 and 'name = "supsup"' in out


def test_list_unknown_name_exits_2_with_a_suggestion():
    rc, _, err = _cli("list", "supsp")
    assert rc == 2 and "'supsp'" in err and "supsup" in err
    rc, _, err = _cli("list", "plastic/supsup")
    assert rc == 2 and "plastic" in err and "plasticity" in err


def _result(path, bench, mode="quick", **extra):
    body = {"bench": bench, "mode": mode, "metrics": {"avg_acc": 0.9591, "bytes": 295424}, "rows": [],
            "goals": {"avg >= 95%": "met", "inference >= 99%": "NOT met (98.0%)"}, "seed": 0, "device": "cpu",
            "versions": {"cpu": "Some CPU"}, "date": "2026-01-02T03:04:05+00:00", "only": [], **extra}
    path.write_text(json.dumps(body))


def test_results_page_rows(tmp_path):
    _result(tmp_path / "a-quick.json", "a")
    _result(tmp_path / "a.json", "a", mode="full", transcribed=True, machine="one GPU", date="2025-12-01",
            command="agentlab bench a --device cuda", source="a page")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))  # not a result: ignored
    (tmp_path / "headlines.toml").write_text('[a]\nfigures = ["avg_acc"]\n')
    rc, out, err = _cli("results", str(tmp_path))
    assert rc == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| [`a`]")]
    assert rows[0].startswith("| [`a`](#a) | full (*transcribed*) |") and "one GPU | 2025-12-01 | `agentlab bench a --device cuda` |" in rows[0]
    assert "| avg_acc 95.91% | partly (1 of 2 goals) | Some CPU (CPU) | 2026-01-02 | `agentlab bench a --quick` |" in rows[1]
    assert "| `bytes` | 295,424 |" in out and "- inference >= 99%: NOT met (98.0%)" in out


def test_results_without_result_files_exits_2(tmp_path):
    rc, _, err = _cli("results", str(tmp_path))
    assert rc == 2 and "no benchmark result JSON" in err
    rc, _, err = _cli("results", str(tmp_path / "missing"))
    assert rc == 2 and "no such file or folder" in err
    (tmp_path / "bad.json").write_text("{")
    rc, _, err = _cli("results", str(tmp_path))
    assert rc == 2 and "bad.json" in err
