"""From a resolved recipe to a finished run directory: every agent of the recipe over one stream.

    runs/{stream}__{recipe}__{seed}__{time}/
        config.json        the resolved recipe (after --set), the seed, the data root
        summary.json       every agent's metrics and accuracy matrix
        <agent>/           TensorBoard events, summary.json and checkpoints of one agent

Each agent starts from the same seed, so agents of one recipe share their
backbone's initial weights and the data order of the first task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agentlab import recipe as recipes
from agentlab.checkpoint import atomic_write_text
from agentlab.devices import check_device
from agentlab.errors import UserError
from agentlab.loop import RunResult, run
from agentlab.registry import BuildEnv
from agentlab.seeding import seed_everything
from agentlab.summary import jsonable, package_versions, read_summary
from agentlab.tblog import TBLogger, flatten_dict


def run_dir_name(stream: str, recipe: str, seed: int) -> str:
    return f"{stream}__{recipe}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def run_recipe(
    resolved: recipes.Resolved,
    *,
    out_root: Path = Path("runs"),
    run_dir: Path | None = None,
    resume: bool = False,
    data_root: Path | None = None,
    progress: bool = False,
    only: list[str] | None = None,
) -> tuple[Path, dict[str, RunResult]]:
    """Run every agent of `resolved`; returns the run directory and each agent's result."""
    recipes.check_components(resolved)
    if only:
        unknown = [a for a in only if a not in resolved.agents]
        if unknown:
            raise UserError(f"--agent {', '.join(map(repr, unknown))}: recipe {resolved.name!r} has no such agent; "
                            f"its agents: {', '.join(resolved.agents)}")
    check_device(resolved.loop.device, key="loop.device")
    env = BuildEnv(seed=resolved.seed, data_root=data_root)
    seed_everything(resolved.seed, deterministic=resolved.deterministic)
    stream = recipes.build_stream(resolved, env)
    env.stream = stream
    if run_dir is None:
        run_dir = Path(out_root) / run_dir_name(resolved.table["stream"]["name"], resolved.name, resolved.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": resolved.name,
        "table": resolved.table,
        "seed": resolved.seed,
        "data_root": str(data_root) if data_root else None,
        "versions": package_versions(),
    }
    if not resume or not (run_dir / "config.json").is_file():
        atomic_write_text(run_dir / "config.json", json.dumps(jsonable(record), indent=2))
    results: dict[str, RunResult] = {}
    for label, spec in resolved.agents.items():
        if only and label not in only:
            continue
        arm_dir = run_dir / label
        if resume and (arm_dir / "summary.json").is_file():
            if read_summary(arm_dir).get("status") == "completed":
                results[label] = _result_from_summary(arm_dir)
                continue
        generator = seed_everything(resolved.seed, deterministic=resolved.deterministic)
        agent = recipes.build_agent(label, spec, env)
        agent.to(resolved.loop.device)
        # On resume, TensorBoard drops training events logged after the checkpoint (the re-run repeats them).
        # An arm with no checkpoint yet starts from nothing, resume or not.
        purge = _checkpoint_step(arm_dir) if resume else None
        logger = TBLogger(arm_dir, purge_step=purge)
        if purge is None:
            hp = flatten_dict({"seed": resolved.seed, "stream": resolved.table["stream"], **spec})
            logger.hparams_table(hp)
        try:
            result = run(
                agent, stream, generator=generator, out_dir=arm_dir, cfg=resolved.loop, logger=logger,
                resume=resume, progress=progress, config_record={**record, "agent": label, "spec": spec},
            )
            if result.completed:
                hp = flatten_dict({"seed": resolved.seed, "stream": resolved.table["stream"], **spec})
                logger.hparams(hp, {k: v for k, v in result.metrics.items()})
        finally:
            logger.close()
        results[label] = result
        if not result.completed:
            break
    write_run_summary(run_dir, resolved, results)
    return run_dir, results


def _checkpoint_step(arm_dir: Path) -> int | None:
    from agentlab.checkpoint import load_latest

    found = load_latest(arm_dir / "checkpoints")
    return int(found[1]["loop"]["global_step"]) + 1 if found else None


def _result_from_summary(arm_dir: Path) -> RunResult:
    import numpy as np

    s = read_summary(arm_dir)
    nan = lambda rows: np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    return RunResult(
        label=s["label"], stream=s["stream"], R=nan(s["accuracy_matrix"]),
        b=np.array([np.nan if v is None else v for v in s["untrained_accuracy"]], dtype=float),
        metrics={k: (np.nan if v is None else v) for k, v in s["metrics"].items()}, history=s["history"], ledger=s["ledger"],
        timings=s["timings"], task_names=s["tasks"], status=s["status"], message=s["message"],
        task_inference=s.get("task_inference", {}), out_dir=arm_dir,
    )


def write_run_summary(run_dir: Path, resolved: recipes.Resolved, results: dict[str, RunResult]) -> None:
    agents = {}
    for label, r in results.items():
        agents[label] = {
            "status": r.status, "message": r.message, "metrics": r.metrics, "accuracy_matrix": r.R,
            "tasks": r.task_names, "timings": r.timings, "total_bytes": r.ledger[-1]["total_bytes"] if r.ledger else None,
        }
    body = {"recipe": resolved.name, "stream": resolved.table["stream"]["name"], "seed": resolved.seed, "agents": agents,
            "config": resolved.table, "versions": package_versions()}
    atomic_write_text(run_dir / "summary.json", json.dumps(jsonable(body), indent=2))


def load_run_config(run_dir: Path) -> tuple[str, dict[str, Any], Path | None]:
    """(recipe name, resolved table, data root) saved in a run directory, for --resume."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.json: --resume needs a directory written by `agentlab run`")
    record = json.loads(path.read_text(encoding="utf-8"))
    root = Path(record["data_root"]) if record.get("data_root") else None
    return record["recipe"], record["table"], root
