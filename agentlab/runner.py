"""From a resolved recipe to a finished run directory: every agent of the recipe over one stream.

    runs/{stream}__{recipe}__{seed}__{time}[-N]/    created exclusively (-N when the name is taken)
        .lock              locked while config.json or summary.json is written (agentlab.rundir)
        config.json        the resolved recipe (after --set), the seed, the data root
        summary.json       every agent's metrics and accuracy matrix
        <agent>/           TensorBoard events, summary.json and checkpoints of one agent (agentlab.runstate),
            .lock          locked by the process training this agent

Each agent starts from the same seed, so agents of one recipe share their
backbone's initial weights and the data order of the first task.

TensorBoard (`tensorboard --logdir RUN_DIR`: one run per agent, named by its label): every agent writes the same
HPARAMS schema, the union of the keys the recipe sets for any agent (with each agent's effective value, defaults
included; an empty cell where its components have no such key), against `avg_acc`, `total_KiB`, `bwt`, `fwt`,
`forgetting` and `task_inference_acc`; the TEXT tab's `hparams` table lists every key of the agent with defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agentlab import recipe as recipes
from agentlab import registry
from agentlab.checkpoint import NoUsableCheckpoint, atomic_write_text
from agentlab.config import ConfigError, build_config
from agentlab.context import progress_on, progress_shown, say
from agentlab.devices import check_device
from agentlab.errors import UserError, os_error_text
from agentlab.ledger import kib
from agentlab.loop import RunResult, run
from agentlab.plugins import load_plugins
from agentlab.registry import BuildEnv
from agentlab.rundir import LockedError, RunLock, check_out_root, check_writable, create_run_dir, inside, run_dir_name
from agentlab.runstate import CHECKPOINTS, forget_checkpoints, peek_global_step
from agentlab.seeding import seed_everything
from agentlab.summary import jsonable, package_versions, read_summary, write_summary
from agentlab.tblog import HParamSchema, TBLogger, flatten_dict

# The HPARAMS tab's metric columns (`hparam/<name>` scalars written when an agent completes).
HPARAM_METRICS = ("avg_acc", "total_KiB", "bwt", "fwt", "forgetting", "task_inference_acc")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_recipe(
    resolved: recipes.Resolved,
    *,
    out_root: Path = Path("runs"),
    run_dir: Path | None = None,
    resume: bool = False,
    restart: bool = False,
    data_root: Path | None = None,
    progress: bool | None = None,
    only: list[str] | None = None,
    resume_overrides: list[str] | None = None,
    notify: Callable[[str], None] = _stderr,
) -> tuple[Path, dict[str, RunResult]]:
    """Run every agent of `resolved`; returns the run directory and each agent's result.

    Bad input raises `UserError` before anything is written. A write that fails (permission, no space, file size
    limit, a file where a folder should be) ends the agent with status "failed" and a message naming the path and
    the cause; the summaries are still written where they can be. With `resume`, an agent whose checkpoints are all
    unusable raises `NoUsableCheckpoint`, unless `restart`: then it is trained again from task 0. `progress`: bars and
    phase lines on stderr (None: as the calling command shows them, `agentlab.context.progress_shown`).
    """
    with progress_shown(progress_on() if progress is None else progress):
        return _run_recipe(resolved, out_root=out_root, run_dir=run_dir, resume=resume, restart=restart,
                           data_root=data_root, only=only, resume_overrides=resume_overrides, notify=notify)


def _run_recipe(resolved: recipes.Resolved, *, out_root: Path, run_dir: Path | None, resume: bool, restart: bool,
                data_root: Path | None, only: list[str] | None, resume_overrides: list[str] | None,
                notify: Callable[[str], None]) -> tuple[Path, dict[str, RunResult]]:
    recipes.check_components(resolved)
    if only:
        unknown = [a for a in only if a not in resolved.agents]
        if unknown:
            raise UserError(f"--agent {', '.join(map(repr, unknown))}: recipe {resolved.name!r} has no such agent; "
                            f"its agents: {', '.join(resolved.agents)}")
    check_device(resolved.loop.device, key="loop.device")
    if resume and run_dir is None:
        raise UserError("--resume needs a run directory")
    if not resume and run_dir is None:
        check_out_root(out_root)
    env = BuildEnv(seed=resolved.seed, data_root=data_root)
    seed_everything(resolved.seed, deterministic=resolved.deterministic)
    say(f"building stream {resolved.table['stream']['name']!r}")
    stream = recipes.build_stream(resolved, env)
    check_matrix_fits(len(stream))
    env.stream = stream
    created = run_dir is None
    if run_dir is None:
        run_dir = create_run_dir(out_root, run_dir_name(resolved.table["stream"]["name"], resolved.name, resolved.seed))
    else:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    run_dir = Path(run_dir)
    record = {
        "recipe": resolved.name,
        "table": resolved.table,
        "seed": resolved.seed,
        "data_root": str(data_root) if data_root else None,
        "agents": list(only) if only else None,
        "versions": package_versions(),
    }
    results: dict[str, RunResult] = {}
    schema = hparam_schema(resolved, [a for a in resolved.agents if not only or a in only])
    with RunLock(run_dir, wait=True):
        _write_config(run_dir, record, resume, resume_overrides or [])
    try:
        for label, spec in resolved.agents.items():
            if only and label not in only:
                continue
            arm_dir = inside(run_dir, run_dir / label, f"agents.{label}")
            try:
                arm_dir.mkdir(exist_ok=True)
                with RunLock(arm_dir, what=f"agent {label}'s folder"):
                    done = _completed_result(arm_dir) if resume else None
                    result = done or _run_agent(label, spec, resolved, stream, env, arm_dir, record, schema, resume=resume,
                                                restart=restart, notify=notify)
            except UserError:
                raise  # bad input that is also an OSError (a data file missing): handled below, not an I/O failure
            except OSError as e:
                result = _failed(label, stream, arm_dir, f"I/O error: {os_error_text(e)}")
                try:
                    write_summary(arm_dir / "summary.json", result, {**record, "agent": label, "spec": spec})
                except OSError:
                    pass
            results[label] = result
            if not result.completed:
                break
    except LockedError:
        raise  # another process trains this agent: leave everything to it
    except UserError:
        # bad input found while building an agent: a run directory this call created and nothing was trained
        # in goes again; otherwise the agents done so far keep their summary
        if created and not results:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        _write_run_summary_or_fail(run_dir, resolved, results, notify)
        raise
    _write_run_summary_or_fail(run_dir, resolved, results, notify)
    return run_dir, results


def _write_run_summary_or_fail(run_dir: Path, resolved: recipes.Resolved, results: dict[str, RunResult],
                               notify: Callable[[str], None]) -> None:
    try:
        with RunLock(run_dir, wait=True):
            write_run_summary(run_dir, resolved, results)
    except OSError as e:
        notify(f"agentlab: error: cannot write the run summary: {os_error_text(e)}")
        for r in results.values():
            if r.completed:
                r.status, r.message = "failed", f"I/O error: {os_error_text(e)}"


def check_matrix_fits(n_tasks: int) -> None:
    """The loop holds a T x T accuracy matrix (float64) in memory: a stream too long for it is refused up front."""
    if n_tasks < 1:
        raise ConfigError("stream: it has no task")
    need = 8 * n_tasks * n_tasks
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not knowable here: let the allocation decide
        return
    if need > ram // 4:
        raise ConfigError(f"stream: its {n_tasks} tasks need a {n_tasks} x {n_tasks} accuracy matrix of {need / 1e9:.1f} GB; "
                          f"this machine has {ram / 1e9:.1f} GB of memory: use fewer tasks")


def _write_config(run_dir: Path, record: dict[str, Any], resume: bool, overrides: list[str]) -> None:
    """config.json: written by a new run; on a resume with `--set`, the new table and the overrides recorded."""
    path = run_dir / "config.json"
    if not resume or not path.is_file():
        atomic_write_text(path, json.dumps(jsonable(record), indent=2))
    elif overrides:
        old = json.loads(path.read_text(encoding="utf-8"))
        old["table"] = record["table"]
        old["resumed_with"] = [*old.get("resumed_with", []), overrides]
        atomic_write_text(path, json.dumps(jsonable(old), indent=2))


def hparam_schema(resolved: recipes.Resolved, labels: list[str]) -> HParamSchema:
    """The HPARAMS columns of a run: `components` (what the agent is made of, e.g. "finetune · mlp + supsup +
    episodic"), `seed`, then every key the recipe sets (after `--set`) for any of these agents, `stream.*`
    included. Each agent's cell holds its effective value (a default where the recipe left the key out but the
    agent's component has it), empty where its components have no such key."""
    load_plugins()  # the components' defaults come from their registered config classes
    written: list[str] = ["components", "seed"]
    full: dict[str, dict[str, Any]] = {}
    for label in labels:
        spec = resolved.agents[label]
        hp = {"stream": resolved.table["stream"], **spec}
        written += [k for k in flatten_dict(hp) if k not in written]
        full[label] = {"components": components(spec), "seed": resolved.seed, **agent_hparams(resolved, spec)}
    return HParamSchema.of({a: {k: v[k] for k in written if k in v} for a, v in full.items()}, HPARAM_METRICS)


def components(spec: dict[str, Any]) -> str:
    """"finetune · mlp + supsup + episodic": an agent's learner, then its backbone and modules by name."""
    parts = [spec["backbone"]["name"], *(t["name"] for k in ("plasticity", "memory") for t in spec.get(k, []))]
    return f"{spec['learner']['name']} · {' + '.join(parts)}"


def agent_hparams(resolved: recipes.Resolved, spec: dict[str, Any]) -> dict[str, Any]:
    """An agent's flat hyper-parameters with every component's defaults filled in (`learner.lr`, `plasticity.0.k`),
    the stream's as the recipe gives them."""
    filled: dict[str, Any] = {"stream": resolved.table["stream"]}
    for kind in ("backbone", "learner"):
        filled[kind] = _with_defaults(kind, spec[kind])
    for kind in ("plasticity", "memory"):
        if spec.get(kind):
            filled[kind] = [_with_defaults(kind, t) for t in spec[kind]]
    return flatten_dict(filled)


def _with_defaults(kind: str, table: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in table.items() if k != "name"}
    try:
        cfg = build_config(registry.get(kind, table["name"]).config_cls, rest)
    except (ConfigError, KeyError, TypeError):  # reported when the agent is built; the written keys serve here
        return dict(table)
    return {"name": table["name"], **dataclasses.asdict(cfg)}


def _run_agent(label: str, spec: dict[str, Any], resolved: recipes.Resolved, stream: Any, env: BuildEnv, arm_dir: Path,
               record: dict[str, Any], schema: HParamSchema, *, resume: bool, restart: bool,
               notify: Callable[[str], None]) -> RunResult:
    """One agent over the stream, resumed from its checkpoints when asked (and trained again when they are unusable
    and `restart` says so)."""
    check_writable(arm_dir)
    checkpoints = arm_dir / CHECKPOINTS
    if resolved.loop.checkpoint and (checkpoints.exists() or checkpoints.is_symlink()):
        inside(arm_dir, checkpoints, f"agents.{label} checkpoints")
        check_writable(checkpoints)  # (a file there fails here, before the first task)
    purge_all = False
    while True:
        generator = seed_everything(resolved.seed, deterministic=resolved.deterministic)
        agent = recipes.build_agent(label, spec, env)
        agent.to(resolved.loop.device)
        # On resume, TensorBoard drops training events logged after the checkpoint (the re-run repeats them).
        # An arm with no checkpoint yet starts from nothing, resume or not; a restart drops every earlier event.
        purge = 0 if purge_all else (peek_global_step(arm_dir, len(stream)) if resume else None)
        logger = TBLogger(arm_dir, purge_step=purge)
        try:
            if purge is None or purge_all:
                logger.hparams_table({"components": components(spec), "seed": resolved.seed, **agent_hparams(resolved, spec)})
                logger.hparams_start(schema, label)
            result = run(
                agent, stream, generator=generator, out_dir=arm_dir, cfg=resolved.loop, logger=logger,
                resume=resume, config_record={**record, "agent": label, "spec": spec},
            )
            if result.completed:
                logger.hparams_end(hparam_metrics(result), completed=True)
            return result
        except NoUsableCheckpoint as e:
            if not restart:
                raise
            notify(f"agentlab: {e}")
            notify(f"agentlab: --restart: training agent {label} again from task 0")
            forget_checkpoints(arm_dir)
            resume, purge_all = False, True
        finally:
            logger.close()


def hparam_metrics(result: RunResult) -> dict[str, float]:
    """The HPARAMS tab's metric values of a finished agent: its final metrics and the bytes it keeps, in KiB."""
    out = {k: float(v) for k, v in result.metrics.items() if k in HPARAM_METRICS}
    if result.ledger:
        out["total_KiB"] = kib(result.ledger[-1]["total_bytes"])
    return out


def _failed(label: str, stream: Any, arm_dir: Path, message: str) -> RunResult:
    T = len(stream)
    return RunResult(label=label, stream=getattr(stream, "name", "stream"), R=np.full((0, T), np.nan),
                     b=np.full(T, np.nan), metrics={}, history=[], ledger=[], timings={"train_s": 0.0, "eval_s": 0.0},
                     task_names=[], status="failed", message=message, out_dir=arm_dir)


def _completed_result(arm_dir: Path) -> RunResult | None:
    """The result of an agent that already completed, from its summary.json; None when it did not complete or
    its summary cannot be read whole (the resume then rebuilds it from the last checkpoint)."""
    if not (arm_dir / "summary.json").is_file():
        return None
    try:
        s = read_summary(arm_dir)
        if not isinstance(s, dict) or s.get("status") != "completed":
            return None
        nan = lambda rows: np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
        return RunResult(
            label=s["label"], stream=s["stream"], R=nan(s["accuracy_matrix"]),
            b=np.array([np.nan if v is None else v for v in s["untrained_accuracy"]], dtype=float),
            metrics={k: (np.nan if v is None else v) for k, v in s["metrics"].items()}, history=s["history"],
            ledger=s["ledger"], timings=s["timings"], task_names=s["tasks"], status=s["status"], message=s["message"],
            task_inference=s.get("task_inference", {}), out_dir=arm_dir,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError):
        return None


def write_run_summary(run_dir: Path, resolved: recipes.Resolved, results: dict[str, RunResult]) -> None:
    agents = {}
    for label, r in results.items():
        agents[label] = {
            "status": r.status, "message": r.message, "metrics": r.metrics, "accuracy_matrix": r.R,
            "eval_extras": r.eval_extras(), "tasks": r.task_names, "timings": r.timings,
            "total_bytes": r.ledger[-1]["total_bytes"] if r.ledger else None,
        }
    body = {"recipe": resolved.name, "stream": resolved.table["stream"]["name"], "seed": resolved.seed, "agents": agents,
            "config": resolved.table, "versions": package_versions()}
    atomic_write_text(run_dir / "summary.json", json.dumps(jsonable(body), indent=2))


def load_run_config(run_dir: Path) -> tuple[str, dict[str, Any], Path | None, list[str] | None]:
    """(recipe name, resolved table, data root, the agents run (None: all)) saved in a run directory, for --resume;
    a `UserError` naming the file when it is missing or damaged."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: not a folder; give a run directory written by `agentlab run`")
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.json: --resume needs a directory written by `agentlab run`")
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{path} is damaged ({e}); the run cannot be resumed from it") from None
    if not isinstance(record, dict) or not isinstance(record.get("recipe"), str) or not isinstance(record.get("table"), dict):
        raise UserError(f"{path} is damaged: it needs a 'recipe' name and a 'table'; the run cannot be resumed from it")
    root, only = record.get("data_root"), record.get("agents")
    if root is not None and not isinstance(root, str):
        raise UserError(f"{path}: data_root={root!r} is not a path")
    if only is not None and not (isinstance(only, list) and all(isinstance(a, str) for a in only)):
        raise UserError(f"{path}: agents={only!r} is not a list of agent labels")
    return record["recipe"], record["table"], Path(root) if root else None, only
