"""A sweep's aggregate: one row per grid point and agent, each metric's mean, SD and 95% CI over the seeds.

    row = grid values + agent, n (completed seeds), seeds, and for every metric m:
          mean, sd (sample, n - 1), ci95 = t(0.975, n - 1) * sd / sqrt(n) (half-width; Student's t, the
          seeds being a small sample), ci95_lo/ci95_hi = mean -/+ ci95; sd and CI are null for one seed

Metrics are every figure of each run's `summary.json` (avg_acc, bwt, fwt, forgetting, and any other the run
reports, e.g. task_inference_acc), the ledger's `total_bytes` after the last task, and `train_s`, `eval_s`.
Only completed runs count; failed or unfinished points are listed apart. `write_report` writes
SWEEP_DIR/report.json (rows with their metrics nested) and report.csv (one column per metric and statistic).
`write_hparams` writes one TensorBoard HPARAMS event per run under SWEEP_DIR/hparams/<point>/<agent>/.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from agentlab.checkpoint import atomic_write_text
from agentlab.summary import jsonable
from agentlab.sweep import agent_labels

HEADLINE = ("avg_acc", "bwt", "fwt", "forgetting")
COSTS = ("total_bytes", "train_s", "eval_s")
STATS = ("mean", "sd", "ci95", "ci95_lo", "ci95_hi")


def run_figures(run_dir: Path, label: str) -> dict[str, float] | None:
    """Final figures of one agent's completed run (None if it did not complete)."""
    try:
        s = json.loads((Path(run_dir) / label / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if s.get("status") != "completed":
        return None
    out = {k: v for k, v in s.get("metrics", {}).items() if isinstance(v, (int, float)) or v is None}
    ledger = s.get("ledger") or []
    out["total_bytes"] = ledger[-1].get("total_bytes") if ledger else None
    for k in ("train_s", "eval_s"):
        out[k] = (s.get("timings") or {}).get(k)
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)) for k, v in out.items()}


def t975(dof: int) -> float:
    """Student's t quantile at 0.975: the 95% two-sided interval of a mean over dof + 1 seeds."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample SD and the 95% t-interval of `values` (SD and CI None for fewer than two)."""
    n = len(values)
    if n == 0:
        return {"n": 0, **{k: None for k in STATS}}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None, "ci95_lo": None, "ci95_hi": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": half, "ci95_lo": mean - half, "ci95_hi": mean + half}


def aggregate(root: Path, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows over `entries` (manifest points): grouped by their grid values (params without the seed) and agent."""
    groups: dict[str, dict[str, Any]] = {}
    for e in entries:
        grid = {k: v for k, v in e["params"].items() if k != "seed"}
        for label in agent_labels(e):
            key = json.dumps([grid, label], sort_keys=True)
            g = groups.setdefault(key, {"grid": grid, "agent": label, "seeds": [], "missing_seeds": [], "runs": []})
            figures = run_figures(Path(root) / e["run_dir"], label)
            if figures is None:
                g["missing_seeds"].append(e["params"].get("seed"))
            else:
                g["seeds"].append(e["params"].get("seed"))
                g["runs"].append(figures)
    rows = []
    for g in groups.values():
        names = [*HEADLINE, *sorted({k for r in g["runs"] for k in r} - set(HEADLINE) - set(COSTS)), *COSTS]
        metrics = {m: describe([r[m] for r in g["runs"] if r.get(m) is not None]) for m in names}
        rows.append({"grid": g["grid"], "agent": g["agent"], "n": len(g["runs"]), "seeds": g["seeds"],
                     "missing_seeds": g["missing_seeds"], "metrics": metrics})
    return rows


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r["grid"]))
    metrics = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    head = [*keys, "agent", "n", "seeds", "missing_seeds", *(f"{m}_{s}" for m in metrics for s in STATS)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    for r in rows:
        cells: list[Any] = [json.dumps(r["grid"][k]) if isinstance(r["grid"].get(k), (list, dict)) else r["grid"].get(k, "")
                            for k in keys]
        cells += [r["agent"], r["n"], " ".join(map(str, r["seeds"])), " ".join(map(str, r["missing_seeds"]))]
        for m in metrics:
            d = r["metrics"].get(m, {})
            cells += ["" if d.get(s) is None else repr(d[s]) for s in STATS]
        w.writerow(cells)
    return buf.getvalue()


def write_report(root: Path, manifest: dict[str, Any], rows: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    root = Path(root)
    unfinished = [{"name": e["name"], "params": e["params"], "status": e["status"], "message": e.get("message", "")}
                  for e in manifest["points"] if e["status"] != "completed"]
    body = {"sweep": str(root), "recipe": manifest.get("recipe"), "grid": manifest.get("grid"), "seeds": manifest.get("seeds"),
            "points": len(manifest["points"]), "unfinished": unfinished, "rows": rows}
    atomic_write_text(root / "report.json", json.dumps(jsonable(body), indent=2))
    atomic_write_text(root / "report.csv", csv_text(rows))
    return root / "report.json", root / "report.csv"


def _fmt(d: dict[str, Any], scale: float = 1.0, signed: bool = False, digits: int = 1) -> str:
    if d.get("mean") is None:
        return "-"
    text = f"{scale * d['mean']:{'+' if signed else ''}.{digits}f}"
    if d.get("ci95") is not None:
        text += f"±{scale * d['ci95']:.{digits}f}"
    return text


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The terminal table: mean ± 95% CI half-width over seeds; accuracies and transfers in percent."""
    keys = list(dict.fromkeys(k for r in rows for k in r["grid"]))
    cols = [*keys, "agent", "n", "avg acc %", "BWT", "FWT", "forgetting", "bytes", "train s"]
    table = []
    for r in rows:
        m = r["metrics"]
        grid = [json.dumps(r["grid"][k]) if isinstance(r["grid"].get(k), (list, dict, bool)) else str(r["grid"].get(k, "")) for k in keys]
        table.append([*grid, r["agent"], str(r["n"]), _fmt(m["avg_acc"], 100), _fmt(m["bwt"], 100, True), _fmt(m["fwt"], 100, True),
                      _fmt(m["forgetting"], 100), _fmt(m["total_bytes"], 1, digits=0), _fmt(m["train_s"], digits=2)])
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(t, widths)) for t in table]
    return "\n".join(lines)


def sweep_report(root: Path, manifest: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    n = len(manifest["points"])
    done = sum(e["status"] == "completed" for e in manifest["points"])
    out = [f"sweep {root}: recipe {manifest.get('recipe')}, {n} points, {done} completed "
           f"(mean ± 95% CI half-width over seeds)", "", format_rows(rows)]
    bad = [e for e in manifest["points"] if e["status"] != "completed"]
    if bad:
        out += ["", "not completed (left out of the means):"]
        out += [f"  {e['name']}: {e['status']}" + (f": {e['message']}" if e.get("message") else "") for e in bad]
    return "\n".join(out)


def write_hparams(root: Path, entry: dict[str, Any]) -> None:
    """One HPARAMS event per agent of a completed point: its grid values, seed and agent against its final figures.
    Written afresh (a re-run point replaces its event, TensorBoard shows one row per run)."""
    from agentlab.tblog import TBLogger

    base = Path(root) / "hparams" / entry["name"]
    shutil.rmtree(base, ignore_errors=True)
    for label in agent_labels(entry):
        figures = run_figures(Path(root) / entry["run_dir"], label)
        if figures is None:
            continue
        hp = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in entry["params"].items()}
        logger = TBLogger(base / label)
        try:
            logger.hparams({**hp, "agent": label}, {k: v for k, v in figures.items() if v is not None})
        finally:
            logger.close()
