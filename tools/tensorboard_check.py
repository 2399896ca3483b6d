"""Look at a run's TensorBoard in a real browser: screenshots of its tabs, and a check of the HPARAMS table.

    python tools/tensorboard_check.py RUN_DIR [--out DIR] [--chromium PATH]
    python tools/tensorboard_check.py --default [--out DIR]     # runs `agentlab run` (the embedded default) first

Starts TensorBoard on 127.0.0.1 (`--logdir RUN_DIR`: one run per agent, named by its label) and headless Chromium
driven over the DevTools protocol on a pipe (no extra Python package), then:

- saves `timeseries.png`, `scalars.png` (both without smoothing), `images.png`, `text.png`, `hparams.png` (the
  HPARAMS tab as it opens) and `hparams-all.png` (every column ticked, 4,600 pixels wide) under `--out` (default
  runs/tensorboard-check/);
- reads the HPARAMS table as the browser renders it (the grid's rows and cells, not the data behind them) and
  checks that it has one row per agent of the run, a column for every key of the run's hyper-parameter schema
  (`agentlab.runner.hparam_schema`: the union of the agents' keys), each agent's value in its cell (an empty cell
  where the agent has no such key), and the `avg_acc` and `total_KiB` metric columns filled;
- prints what it found and exits 1 when a check fails.

Needs Chromium (`apt-get install chromium`; Debian's package is /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

# The pages looked at, as README.md tells users to open them (no smoothing: per-task curves have one point a task).
SHOTS = {"timeseries": "/?smoothing=0#timeseries", "scalars": "/#scalars&_smoothingWeight=0", "images": "/#images",
         "text": "/#text", "hparams": "/#hparams", "hparams-all": ""}

# Finds an element anywhere, through shadow roots (TensorBoard's dashboards are Polymer elements).
FIND = """
const find = (root, sel) => {
  const hit = root.querySelector && root.querySelector(sel);
  if (hit) return hit;
  for (const el of (root.querySelectorAll ? root.querySelectorAll('*') : [])) {
    if (el.shadowRoot) { const h = find(el.shadowRoot, sel); if (h) return h; }
  }
  return null;
};
"""

# The HPARAMS table as rendered: the visible rows of the grid's header and body, each cell's text.
READ_TABLE = """
(() => {""" + FIND + """
  const grid = find(document, 'vaadin-grid#sessionGroupsTable');
  if (!grid) return null;
  const text = (td) => {
    const slot = td.querySelector('slot');
    return slot ? slot.assignedNodes({flatten: true}).map(n => n.textContent.trim()).join(' ').trim() : td.textContent.trim();
  };
  const rows = (part) => [...grid.shadowRoot.querySelectorAll(part + ' tr')]
    .filter(tr => !tr.hidden && tr.offsetParent !== null)
    .map(tr => [...tr.querySelectorAll('th, td')].filter(td => !td.hidden).map(text));
  return {header: rows('thead'), body: rows('tbody')};
})()
"""

# Ticks every hyper-parameter and metric column in the query pane; returns how many it ticked.
TICK_ALL = """
(() => {""" + FIND + """
  const pane = find(document, 'tf-hparams-query-pane');
  if (!pane) return -1;
  let n = 0;
  for (const box of pane.shadowRoot.querySelectorAll('paper-checkbox.hparam-checkbox, paper-checkbox.metric-checkbox')) {
    if (!box.checked) { box.click(); n += 1; }
  }
  return n;
})()
"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on its
    fd 3, answers on its fd 4, each message JSON ended by a NUL byte)."""

    def __init__(self, exe: str, width: int = 1800, height: int = 1100) -> None:
        self.profile = tempfile.mkdtemp(prefix="agentlab-chromium-")
        to_child, from_us = os.pipe()
        to_us, from_child = os.pipe()

        def fds() -> None:  # in the child: the pipe ends become fds 3 and 4
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [exe, *FLAGS, f"--window-size={width},{height}", f"--user-data-dir={self.profile}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, close_fds=False, preexec_fn=fds, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self.out = os.fdopen(from_us, "wb", buffering=0)
        self.inp = os.fdopen(to_us, "rb", buffering=0)
        self.pending = b""
        self.last_id = 0
        self.session = ""

    def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> dict[str, Any]:
        self.last_id += 1
        msg: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if page and self.session:
            msg["sessionId"] = self.session
        self.out.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.pending:
                chunk = self.inp.read(1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self.pending += chunk
            raw, self.pending = self.pending.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.last_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url}, page=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, page=False)["sessionId"]

    def go(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def js(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", page=False)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tensorboard(run_dir: Path, agents: list[str], timeout: float = 120) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir), "--port", str(port),
                             "--host", "127.0.0.1", "--reload_interval", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as r:
                if set(agents) <= set(json.loads(r.read())):
                    return proc, url
        except OSError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"TensorBoard did not list the runs {agents} within {timeout:.0f} s")


def wait_for(browser: Chromium, expression: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.js(expression)
        if value:
            return value
        time.sleep(1)
    return None


def expected_schema(run_dir: Path) -> Any:
    from agentlab import recipe as recipes
    from agentlab.runner import hparam_schema

    config = json.loads((run_dir / "config.json").read_text())
    resolved = recipes.resolve(config["recipe"], config["table"])
    agents = json.loads((run_dir / "summary.json").read_text())["agents"]
    return hparam_schema(resolved, [a for a in resolved.agents if a in agents])


def same(cell: str, value: Any) -> bool:
    """The grid's text against the value the run wrote (the grid prints numbers with 5 significant digits)."""
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(cell), float(value), rel_tol=1e-4, abs_tol=1e-12)
        except ValueError:
            return False
    return cell == str(value)


def check_table(table: dict[str, Any], schema: Any) -> list[str]:
    """What is wrong with the rendered HPARAMS table, against the schema (an empty list when nothing is)."""
    problems = []
    header = table["header"][0] if table and table["header"] else []
    rows = {row[0]: dict(zip(header, row)) for row in (table["body"] if table else [])}
    for label in schema.values:
        if label not in rows:
            problems.append(f"no row for agent {label!r} (rows: {sorted(rows)})")
    for key in schema.keys:
        if key not in header:
            problems.append(f"no column {key!r}")
    for metric in ("avg_acc", "total_KiB"):
        if metric not in header:
            problems.append(f"no metric column {metric!r}")
    for label, values in schema.values.items():
        row = rows.get(label)
        if row is None:
            continue
        for key in schema.keys:
            if key not in row:
                continue
            cell = row[key]
            if key in values and not same(cell, values[key]):
                problems.append(f"{label}: {key} reads {cell!r}, the run wrote {values[key]!r}")
            if key not in values and cell:
                problems.append(f"{label}: {key} reads {cell!r}, but the agent has no such key")
        for metric in ("avg_acc", "total_KiB"):
            if metric in row and not row[metric]:
                problems.append(f"{label}: the {metric} cell is empty")
    return problems


def default_run(out_root: Path) -> Path:
    out_root.mkdir(parents=True, exist_ok=True)
    before = set(out_root.iterdir())
    subprocess.run([sys.executable, "-m", "agentlab", "run", "--no-progress", "--threads", "1", "--out", str(out_root)],
                   check=True, cwd=REPO)
    (new,) = set(out_root.iterdir()) - before
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", help="a run directory written by `agentlab run`")
    p.add_argument("--default", action="store_true", help="run the embedded default first and look at that run")
    p.add_argument("--out", default="runs/tensorboard-check", help="where the screenshots go")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.default:
        run_dir = default_run(out / "runs")
    elif args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        p.error("give a RUN_DIR or --default")
    schema = expected_schema(run_dir)
    agents = list(schema.values)
    tb, url = start_tensorboard(run_dir, agents)
    browser = Chromium(args.chromium)
    try:
        browser.open("about:blank")
        browser.send("Page.enable")
        for name, page in SHOTS.items():
            if name.startswith("hparams"):
                continue
            browser.go(url + page)
            time.sleep(8)  # the dashboards fetch their data after the page loads
            browser.screenshot(out / f"{name}.png")
        browser.go(url + SHOTS["hparams"])
        rows_in = f"(() => {{ const t = {READ_TABLE}; return t && t.body.length >= {len(agents)} ? t : null; }})()"
        table = wait_for(browser, rows_in)
        browser.screenshot(out / "hparams.png")
        print(f"HPARAMS tab as it opens: columns {table['header'][0] if table else None}")
        ticked = browser.js(TICK_ALL)
        time.sleep(3)
        table = browser.js(READ_TABLE)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 4600, "height": 700, "deviceScaleFactor": 1,
                                                              "mobile": False})
        time.sleep(2)
        browser.screenshot(out / "hparams-all.png")
    finally:
        browser.close()
        tb.terminate()
        tb.wait(10)
    print(f"ticked {ticked} more columns; the table now reads:")
    for row in (table["header"] + table["body"]) if table else []:
        print("  | " + " | ".join(row) + " |")
    problems = check_table(table, schema)
    distinct = [k for k in schema.keys if schema.differs(k)]
    print(f"agents: {agents}; keys that differ between them: {distinct}")
    print(f"screenshots: {', '.join(str(out / f'{n}.png') for n in SHOTS)}")
    if problems:
        print("HPARAMS check FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"HPARAMS check passed: {len(agents)} agents, {len(schema.keys)} hyper-parameter columns, every cell as written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
