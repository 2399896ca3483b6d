"""Terminal tables: the accuracy matrix and headline metrics of a run, from results or summary.json."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * float(v):.1f}"


def _signed(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * float(v):+.1f}"


def matrix_table(R: Sequence[Sequence[Any]], max_cols: int = 12) -> str:
    """R[i][j] in percent, rows = after training task i, columns = evaluated on task j."""
    rows = [list(r) for r in R]
    if not rows:
        return "(no task finished)"
    n = len(rows[0])
    cols = list(range(n)) if n <= max_cols else list(range(max_cols // 2)) + list(range(n - max_cols // 2, n))
    head = "after\\on " + " ".join(f"{j:>6d}" for j in cols)
    lines = [head]
    shown_rows = range(len(rows)) if len(rows) <= max_cols else [*range(max_cols // 2), *range(len(rows) - max_cols // 2, len(rows))]
    last = -1
    for i in shown_rows:
        if i != last + 1:
            lines.append("   ...")
        lines.append(f"{i:>8d} " + " ".join(f"{_pct(rows[i][j]):>6}" for j in cols))
        last = i
    return "\n".join(lines)


def metrics_line(m: Mapping[str, Any]) -> str:
    parts = [f"avg acc {_pct(m.get('avg_acc'))}%", f"BWT {_signed(m.get('bwt'))}", f"FWT {_signed(m.get('fwt'))}",
             f"forgetting {_pct(m.get('forgetting'))}"]
    if "task_inference_acc" in m:
        parts.append(f"task inference {_pct(m['task_inference_acc'])}%")
    return " | ".join(parts)


def comparison_table(agents: Mapping[str, Mapping[str, Any]]) -> str:
    head = f"{'agent':<16} {'status':<11} {'avg acc':>8} {'BWT':>7} {'FWT':>7} {'forget':>7} {'bytes':>10} {'train s':>8}"
    lines = [head, "-" * len(head)]
    for label, a in agents.items():
        m = a.get("metrics", {})
        t = a.get("timings", {}) or {}
        b = a.get("total_bytes")
        lines.append(
            f"{label:<16} {a.get('status', '?'):<11} {_pct(m.get('avg_acc')):>8} {_signed(m.get('bwt')):>7} "
            f"{_signed(m.get('fwt')):>7} {_pct(m.get('forgetting')):>7} {b if b is not None else '-':>10} "
            f"{t.get('train_s', float('nan')):>8.1f}"
        )
    return "\n".join(lines)


def run_report(summary: Mapping[str, Any]) -> str:
    """The full report of a run's top-level summary.json."""
    out = [f"recipe {summary['recipe']} on stream {summary['stream']} (seed {summary['seed']})", ""]
    for label, a in summary["agents"].items():
        out.append(f"== {label}: {a['status']}" + (f" ({a['message']})" if a.get("message") else ""))
        out.append(matrix_table(a["accuracy_matrix"]))
        out.append(metrics_line(a.get("metrics", {})))
        out.append("")
    out.append(comparison_table(summary["agents"]))
    return "\n".join(out)
