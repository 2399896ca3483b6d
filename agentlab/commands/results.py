"""`agentlab results DIR [...]`: a markdown page of benchmark results, generated from their JSON files.

    agentlab results docs/results > docs/results.md

Every `*.json` under the given folders (or the files given) that `agentlab bench ... --json PATH` wrote is one
result: a benchmark in one mode, with its flat metrics, goals, device, package versions (the CPU's model among
them) and date. The page has one table row per benchmark and mode, then a section per benchmark with every
metric. A result file may also be *transcribed*: the figures of an earlier run whose JSON was not kept, copied
from where they were documented, with `"transcribed": true` and the run's `machine`, `date` and `command` as
they were stated; the page marks those rows.

Which metrics a row shows as its headline figure comes from `headlines.toml` beside the JSON files
(`[NAME] figures = ["metric", ...]`); a benchmark without an entry shows its first three metrics.

Documentation quotes a measured figure in bold (`**95.91%**`); `quoted_figures` and `find_figure` let a test
check that every such figure is in the results data.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from agentlab.errors import UserError

HELP = "print a markdown page of benchmark results from their JSON files"
MAX_GOALS_IN_ROW = 4
TRANSCRIBED_NOTE = ("figures of an earlier run whose JSON file was not kept, copied with the machine, date "
                    "and command they were documented with; not re-measured")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="DIR", help="folders of result JSON files (searched recursively) or files")


def main(args: argparse.Namespace) -> int:
    print(render_page(load_results(args.paths), args.paths), end="")
    return 0


@dataclass
class Result:
    """One benchmark result file."""

    path: Path
    bench: str
    mode: str
    metrics: dict[str, Any]
    goals: dict[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    headline: list[str] = field(default_factory=list)

    @property
    def transcribed(self) -> bool:
        return bool(self.data.get("transcribed"))

    @property
    def machine(self) -> str:
        if self.data.get("machine"):
            return str(self.data["machine"])
        device = str(self.data.get("device", "cpu"))
        if device.startswith("cuda"):
            return device[device.find("(") + 1:-1] if "(" in device else device
        cpu = (self.data.get("versions") or {}).get("cpu")
        return f"{cpu} (CPU)" if cpu else "not recorded"

    @property
    def date(self) -> str:
        date = str(self.data.get("date") or "not recorded")
        return date[:10] if re.match(r"\d{4}-\d\d-\d\dT", date) else date

    @property
    def command(self) -> str:
        if self.data.get("command"):
            return str(self.data["command"])
        parts = ["agentlab bench", self.bench]
        if self.mode == "quick":
            parts.append("--quick")
        if self.data.get("seed"):
            parts.append(f"--seed {self.data['seed']}")
        if self.data.get("only"):
            parts.append("--only " + ",".join(self.data["only"]))
        if str(self.data.get("device", "cpu")).startswith("cuda"):
            parts.append("--device cuda")
        return " ".join(parts)

    def verdict(self) -> str:
        verdicts = [v for v in self.goals.values() if not v.startswith("not run")]
        if not verdicts:
            return "reported"
        met = sum(v.startswith("met") for v in verdicts)
        if met == len(verdicts):
            return "met"
        return "not met" if met == 0 else f"partly ({met} of {len(verdicts)} goals)"

    def figure(self) -> str:
        keys = [k for k in self.headline if k in self.metrics] or list(self.metrics)[:3]
        return ", ".join(f"{k} {fmt(k, self.metrics[k])}" for k in keys)


def fmt(key: str, value: Any) -> str:
    """A metric as the page shows it: accuracies (fractions) in percent, counts with separators, else 4 digits."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if is_fraction_key(key) and -1.0 <= value <= 1.0:
            return f"{100 * value:.2f}%"
        if value == int(value) and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def is_fraction_key(key: str) -> bool:
    """Metrics that benchmarks report as fractions of 1: accuracies, top-1 rates, densities."""
    if re.search(r"(_seeds|_s|_ms|_mb|_params|_bytes|_points)$", key):
        return False
    return bool(re.search(r"acc|top1|density|inference|agreement|hit_rate|exact|forgetting|bwt|fwt|ci95|frac|remaining", key))


def load_results(paths: Iterable[str | Path]) -> list[Result]:
    """Every bench result JSON under `paths`, sorted by benchmark, full mode first."""
    files: list[Path] = []
    headlines: dict[str, list[str]] = {}
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.json"))
            headlines.update(_headlines(p / "headlines.toml"))
        elif p.is_file():
            files.append(p)
            headlines.update(_headlines(p.parent / "headlines.toml"))
        else:
            raise UserError(f"{p}: no such file or folder")
    results = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{f}: not a readable JSON file ({e})") from None
        if not isinstance(data, dict) or "bench" not in data or not isinstance(data.get("metrics"), dict):
            continue  # not a benchmark result (a sweep's table, a run's summary)
        results.append(Result(f, str(data["bench"]), str(data.get("mode", "full")), data["metrics"], data.get("goals") or {},
                              data.get("rows") or [], data, headlines.get(str(data["bench"]), [])))
    if not results:
        raise UserError(f"no benchmark result JSON (with 'bench' and 'metrics') under {', '.join(map(str, paths))}")
    return sorted(results, key=lambda r: (r.bench, r.mode != "full", r.transcribed, bool(r.data.get("only")), str(r.path)))


def _headlines(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    from agentlab._toml import loads

    try:
        table = loads(path.read_text())
    except Exception as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    return {name: list(entry.get("figures", [])) for name, entry in table.items() if isinstance(entry, dict)}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_page(results: list[Result], sources: Iterable[str | Path]) -> str:
    """The whole markdown page: the summary table, then one section per benchmark."""
    src = " ".join(str(s) for s in sources)
    out = ["# Benchmark results", "",
           f"Generated by `agentlab results {src} > docs/results.md` from the JSON files `agentlab bench` wrote "
           "(do not edit it by hand: re-run a benchmark with `--json`, then regenerate the page). One row per benchmark "
           "and mode: `full` is the headline measurement, `quick` the same code on a small budget (a check that it "
           "runs, not the headline figure). Accuracies are in percent.", "",
           f"Rows marked *transcribed*: {TRANSCRIBED_NOTE}.", "",
           "| benchmark | mode | goal | figure | verdict | machine | date | command |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        mode = r.mode + (" (*transcribed*)" if r.transcribed else "")
        goals = ("<br>".join(_cell(f"{g}: {v}") for g, v in r.goals.items()) if len(r.goals) <= MAX_GOALS_IN_ROW
                 else f"{len(r.goals)} goals, listed below") or "–"
        out.append(f"| [`{r.bench}`](#{r.bench}) | {mode} | {goals} | {_cell(r.figure())} | {r.verdict()} | {_cell(r.machine)} "
                   f"| {r.date} | `{_cell(r.command)}` |")
    for bench in dict.fromkeys(r.bench for r in results):
        out += ["", f"## {bench}"]
        for r in (x for x in results if x.bench == bench):
            out += ["", f"**{r.mode}**{' (*transcribed*)' if r.transcribed else ''}: `{_cell(r.command)}`; "
                        f"{r.machine}; {r.date}; file `{r.path.name}`", ""]
            if r.data.get("source"):
                out += [f"Source: {r.data['source']}", ""]
            if r.goals:
                out += [f"- {_cell(g)}: {_cell(v)}" for g, v in r.goals.items()] + [""]
            out += ["| metric | value |", "|---|---|"]
            out += [f"| `{k}` | {_cell(fmt(k, v))} |" for k, v in r.metrics.items()]
            out += _rows_table(r.rows)
            if r.data.get("notes"):
                out += ["", _cell(r.data["notes"])]
    return "\n".join(out) + "\n"


def _rows_table(rows: list[dict[str, Any]], max_rows: int = 40, max_cols: int = 12) -> list[str]:
    if not rows:
        return []
    cols = list(dict.fromkeys(k for row in rows for k in row))
    if len(rows) > max_rows or len(cols) > max_cols:
        return ["", f"({len(rows)} rows of {len(cols)} columns in the JSON file)"]
    out = ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(_cell(fmt(c, row.get(c, ""))) for c in cols) + " |")
    return out


# ---- quoted figures: what documentation may state, checked against the results data ----

BOLD = re.compile(r"\*\*([^*\n]+)\*\*")
NUMBER = re.compile(r"[−-]?\d[\d,]*(?:\.\d+)?")


def quoted_figures(text: str) -> list[str]:
    """Every bold span of `text` that holds a number: the figures a page states as measured."""
    return [m.group(1) for m in BOLD.finditer(text) if NUMBER.search(m.group(1))]


def result_values(results: Iterable[Result]) -> list[float]:
    """Every number in the results: metrics and table rows."""
    vals: list[float] = []

    def add(v: Any) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            vals.append(float(v))
        elif isinstance(v, (list, tuple)):
            for x in v:
                add(x)

    for r in results:
        for v in r.metrics.values():
            add(v)
        for row in r.rows:
            for v in row.values():
                add(v)
    return vals


def find_figure(quoted: str, values: Iterable[float]) -> bool:
    """Whether the first number in `quoted` equals some value, at the quoted precision, as written or in percent."""
    m = NUMBER.search(quoted)
    if not m:
        return True
    text = m.group(0).replace("−", "-").replace(",", "")
    q = float(text)
    decimals = len(text.split(".")[1]) if "." in text else 0
    tol = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(v - q) <= tol or abs(100 * v - q) <= tol for v in values)
