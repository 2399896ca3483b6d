"""`agentlab forget`: a new run directory whose agents are as if one task had never been in the stream.

    agentlab forget RUN_DIR --task K      (or --person NAME on a personalization stream)

        RUN_DIR                            read only, never written
        <out>/{stream}__{recipe}-forget-task{K}__{seed}__{time}/
            config.json                    the recipe with stream.exclude_tasks = [.., K] and where it came from
            <agent>/                       checkpoints and summary.json of the agent without the task
            forget.json                    the report (what was removed, how, and what was verified)
            never_seen/                    with --verify: a run of the stream without the task, from scratch

Each agent forgets in one of two ways (`--how auto` tries them in this order):

* drop: every plasticity module, memory and the learner removes the task's state itself (`forget_task`:
  masks, gates, adapters, connections, entries), in seconds. Allowed only when nothing shared was trained
  by the task: every backbone tensor no module answers for is unchanged by the task (checked against the
  checkpoints around it when they are kept, else against the untrained agent and the tasks a module says
  trained its backbone). Any refusal names its reason.
* retrain (SISA: Bourtoule et al. 2021, "Machine Unlearning"): from the checkpoint taken after the task before
  it (`loop.keep_checkpoints = 0` keeps one per task), the tasks after it are trained again on the stream
  without it, which drops its data, its buffer entries and its regularisation terms with it. Exact by
  recomputation: the checkpoints before the task are the never-seen run's too, and a resumed run continues as
  an uninterrupted one, so on one machine the result equals, bit for bit, an agent trained on that stream from
  the start. A learner whose state is not in checkpoints (Avalanche's strategies) retrains from the untrained
  agent.

The report then measures every task of the original stream on the new agent: the forgotten task against the
untrained agent's accuracy (and the never-seen agent's with `--verify`), the other tasks against the run before,
the bytes freed, and what each part still holds of the task (its `forget_task` on a copy must free nothing).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from agentlab import metrics as M
from agentlab import recipe as recipes
from agentlab.checkpoint import atomic_write_text, list_checkpoints, load_checkpoint_dir, save_checkpoint, checkpoint_index
from agentlab.errors import CannotForget, UserError
from agentlab.evaluate import evaluate
from agentlab.forget_check import accuracies, forget_in, leftover_bytes, leftovers, parts, same_state
from agentlab.ledger import ledger
from agentlab.loop import RunResult
from agentlab.registry import BuildEnv
from agentlab.rundir import create_run_dir, run_dir_name
from agentlab.runner import load_run_config, run_recipe, write_run_summary
from agentlab.runstate import CHECKPOINTS, MARKER, check_loop_state
from agentlab.scenarios.exclude import KEY as EXCLUDE_KEY
from agentlab.scenarios.exclude import task_ids
from agentlab.seeding import seed_everything
from agentlab.summary import jsonable, package_versions, read_summary
from agentlab.wrapping import WrappedLayer

How = Literal["auto", "drop", "retrain"]
REPORT = "forget.json"
NEVER_SEEN = "never_seen"


@dataclass(frozen=True)
class ForgetRequest:
    """What `agentlab forget` was asked."""

    run_dir: Path
    task: int | None = None
    person: str | None = None
    agents: list[str] | None = None
    how: How = "auto"
    verify: bool = False
    out_root: Path | None = None
    data_root: Path | None = None
    progress: bool = False


@dataclass
class Source:
    """The run to forget from, loaded: its recipe, stream and the task's place in it."""

    run_dir: Path
    name: str
    table: dict[str, Any]
    resolved: recipes.Resolved
    env: BuildEnv
    stream: Any
    task_id: int
    position: int
    labels: list[str]
    data_root: Path | None
    person: str | None = None
    tasks: list[Any] = field(default_factory=list)


# ---------------------------------------------------------------------------- loading


def load_source(req: ForgetRequest) -> Source:
    """The run directory's recipe and stream, and which task to forget; `UserError` on anything that does not fit."""
    run_dir = Path(req.run_dir)
    name, table, root, only = load_run_config(run_dir)
    if req.data_root is not None:
        root = Path(req.data_root)
    elif root is None or not root.is_dir():
        from agentlab.datasets import data_root

        root = data_root()
    resolved = recipes.resolve(name, table)
    recipes.check_components(resolved)
    env = BuildEnv(seed=resolved.seed, data_root=root)
    seed_everything(resolved.seed, deterministic=resolved.deterministic)
    stream = recipes.build_stream(resolved, env)
    env.stream = stream
    ids = task_ids(stream)
    tasks = [stream[i] for i in range(len(stream))]
    if (req.task is None) == (req.person is None):
        raise UserError("agentlab forget needs exactly one of --task K or --person NAME")
    person = None
    if req.person is not None:
        people = {t.meta.get("person"): t.id for t in tasks if t.meta.get("person") is not None}
        if table["stream"]["name"] != "personalization" or not people:
            raise UserError(f"--person {req.person!r}: the run's stream {table['stream']['name']!r} has no people "
                            "(a personalization stream has); give --task K")
        if req.person not in people:
            raise UserError(f"--person {req.person!r}: no such person in this run; its people: {', '.join(map(str, people))}")
        task_id, person = people[req.person], req.person
    else:
        task_id = int(req.task)  # type: ignore[arg-type]
        if task_id not in ids:
            raise UserError(f"--task {task_id}: the run's stream has no task {task_id}; its task ids: {', '.join(map(str, ids))}")
    labels = list(req.agents or only or resolved.agents)
    unknown = [a for a in labels if a not in resolved.agents]
    if unknown:
        raise UserError(f"--agent {', '.join(map(repr, unknown))}: the run has no such agent; its agents: "
                        f"{', '.join(resolved.agents)}")
    if len(ids) < 2:
        raise UserError(f"the run's stream has one task: forgetting task {task_id} leaves nothing to train")
    return Source(run_dir, name, table, resolved, env, stream, task_id, ids.index(task_id), labels, root, person, tasks)


def _load_state(path: Path, n_tasks: int) -> tuple[dict[str, Any], dict[str, Any]]:
    state = load_checkpoint_dir(path)
    return state, check_loop_state(state, n_tasks, path)


def _build(src: Source, label: str, state: dict[str, Any] | None = None, key: str = "agent") -> Any:
    """The agent `label` as the recipe builds it, with `state[key]` (and the learner's state) loaded."""
    seed_everything(src.resolved.seed, deterministic=src.resolved.deterministic)
    agent = recipes.build_agent(label, src.resolved.agents[label], src.env)
    agent.to(src.resolved.loop.device)
    if state is not None:
        agent.load_state_dict(state[key])
        if agent.learner is not None and key == "agent":
            agent.learner.load_state_dict(state["learner"])
    return agent


def _checkpoints(arm: Path) -> dict[int, Path]:
    return {checkpoint_index(p): p for p in list_checkpoints(arm / CHECKPOINTS)}  # type: ignore[misc]


# ---------------------------------------------------------------------------- drop


def _claimed(agent: Any) -> set[int]:
    """Tensors some plasticity module answers for: its own, and the base tensors of the layers it wraps."""
    ids: set[int] = set()
    for p in agent.plasticity:
        ids |= {id(t) for t in [*p.parameters(), *p.buffers(), *p.accounted_tensors()]}
    for m in agent.backbone.modules():
        if isinstance(m, WrappedLayer) and any(n in m.transforms for n in (p.name for p in agent.plasticity)):
            ids |= {id(t) for t in [*m.base_layer.parameters(), *m.base_layer.buffers()]}
    return ids


def _shared(agent: Any) -> dict[str, torch.Tensor]:
    """The backbone's tensors no plasticity module answers for (what every task would share if it trained them)."""
    claimed = _claimed(agent)
    named = [*agent.backbone.named_parameters(), *agent.backbone.named_buffers()]
    return {n: t for n, t in named if id(t) not in claimed and t.is_floating_point()}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [n for n in a if n in b and not torch.equal(a[n].cpu(), b[n].cpu())]


def shared_trained_by(src: Source, label: str, agent: Any, init: Any, ckpts: dict[int, Path]) -> str | None:
    """Why the task trained backbone tensors other tasks share (None when it did not), from the best evidence there is:
    the checkpoints around the task, else the untrained agent and the tasks modules say trained their backbone."""
    now = _shared(agent)
    if not now:
        return None
    p = src.position
    T = len(src.stream)
    before_i, after_i = p - 1, p
    if after_i in ckpts and (before_i in ckpts or before_i < 0):
        after = _shared(_build(src, label, _load_state(ckpts[after_i], T)[0]))
        before = _shared(init) if before_i < 0 else _shared(_build(src, label, _load_state(ckpts[before_i], T)[0]))
        moved = _changed(before, after)
        return (f"task {src.task_id} trained backbone tensors that other tasks share ({', '.join(moved[:3])}"
                f"{', ...' if len(moved) > 3 else ''})") if moved else None
    moved = _changed(_shared(init), now)
    if not moved:
        return None
    owners = [set(getattr(m, "backbone_tasks", ())) for m in agent.plasticity if getattr(m, "backbone_tasks", None)]
    if owners and all(src.task_id not in o for o in owners):
        return None  # a module froze the backbone after the tasks it names; this is not one of them
    return (f"backbone tensors other tasks share changed during the run ({', '.join(moved[:3])}"
            f"{', ...' if len(moved) > 3 else ''}) and no checkpoint around task {src.task_id} says whether it changed "
            "them (loop.keep_checkpoints = 0 keeps every task's)")


def drop(agent: Any, task_id: int, shared_reason: str | None) -> dict[str, int]:
    """Remove the task's state from every part of `agent` (in place); the bytes each freed. `CannotForget` with every
    reason when one part cannot (then `agent` is half-changed: call it on a copy)."""
    reasons = []
    if not agent.plasticity:
        reasons.append("no plasticity module isolates the tasks: every task trained the same backbone weights")
    if shared_reason:
        reasons.append(shared_reason)
    freed: dict[str, int] = {}
    for label, obj in parts(agent):
        try:
            freed[label] = forget_in(obj, task_id)
        except CannotForget as e:
            reasons.append(str(e))
    if reasons:
        raise CannotForget("; ".join(reasons))
    agent.task_classes.pop(task_id, None)
    return freed


# ---------------------------------------------------------------------------- checkpoints for the new stream


def _remap_loop(loop: dict[str, Any], checked: dict[str, Any], p: int, n_new: int, extra: dict[tuple[int, int], float],
                b_extra: dict[int, float]) -> dict[str, Any]:
    """A checkpoint's loop state (`loop` as saved, `checked` as `check_loop_state` read it) for the stream without
    position `p`: positions after it move up by one; `extra` entries of R and of b are added."""
    idx, val = checked["entries"]
    keep = [((i if i < p else i - 1), (j if j < p else j - 1), v) for (i, j), v in zip(idx, val) if i != p and j != p]
    keep += [(i, j, v) for (i, j), v in extra.items()]
    b = np.delete(checked["b"], p)
    for j, v in b_extra.items():
        b[j] = v
    out = {k: v for k, v in loop.items() if k != "R"}  # (a dense R of an older checkpoint becomes entries)
    out["n_tasks"] = n_new
    out["R_index"] = torch.tensor([[i, j] for i, j, _ in keep], dtype=torch.long).reshape(-1, 2)
    out["R_values"] = torch.tensor([v for _, _, v in keep], dtype=torch.float64)
    out["b"] = torch.from_numpy(b.copy())
    return out


def write_prefix(src: Source, label: str, ckpts: dict[int, Path], new_arm: Path, new_stream: Any) -> int:
    """Copy the checkpoints taken before the forgotten task into `new_arm`, rewritten for the stream without it; the
    one just before it gains what the never-seen run measured there (the next task is another one now). Returns how
    many were written."""
    p, T, n_new = src.position, len(src.stream), len(new_stream)
    cfg = src.resolved.loop
    written = 0
    for i in range(p):
        if i not in ckpts:
            continue
        state, checked = _load_state(ckpts[i], T)
        extra: dict[tuple[int, int], float] = {}
        b_extra: dict[int, float] = {}
        if i == p - 1 and p < n_new and cfg.eval_next:
            # the never-seen run evaluated its next task here (and the untrained agent on it): another task now
            nxt = new_stream[p]
            agent, init = _build(src, label, state), _build(src, label, state, key="init_agent")
            extra[(i, p)] = float(evaluate(agent, nxt, batch_size=cfg.eval_batch_size, device=cfg.device).acc)
            b_extra[p] = float(evaluate(init, nxt, batch_size=cfg.eval_batch_size, device=cfg.device).acc)
        state = dict(state)
        state["loop"] = _remap_loop(state["loop"], checked, p, n_new, extra, b_extra)
        save_checkpoint(new_arm / CHECKPOINTS, i, state, keep=0)
        atomic_write_text(new_arm / MARKER, json.dumps({"index": i, "next_task": i + 1, "n_tasks": n_new}))
        written += 1
    return written


def _dropped_result(src: Source, label: str, agent: Any, final_loop: dict[str, Any], final_state: dict[str, Any],
                    new_stream: Any, new_arm: Path, extra_s: float) -> RunResult:
    """The forgotten agent's checkpoint and summary in `new_arm`: the run's rows with the task taken out, and a last
    row measured on the agent now."""
    p, n_new = src.position, len(new_stream)
    cfg = src.resolved.loop
    R = np.delete(np.delete(final_loop["R"], p, axis=0), p, axis=1)
    b = np.delete(final_loop["b"], p)
    R[-1] = accuracies(agent, list(new_stream), device=cfg.device, batch_size=cfg.eval_batch_size)
    history = [h for i, h in enumerate(final_loop["history"]) if i != p]
    history = [{**h, "task": i} for i, h in enumerate(history)]
    history[-1] = {"task": n_new - 1, **M.summarize(R, b, n_new)}
    ledgers = [e for i, e in enumerate(final_loop["ledger"]) if i != p]
    ledgers[-1] = ledger(agent)
    names = [n for i, n in enumerate(final_loop["task_names"]) if i != p]
    inference = {f"{(int(k) if int(k) < p else int(k) - 1):03d}": v for k, v in final_loop["task_inference"].items()
                 if int(k) != p}
    timings = {**final_loop["timings"], "forget_s": extra_s}
    ij = np.argwhere(~np.isnan(R))
    state = {
        "agent": agent.state_dict(),
        "learner": agent.learner.state_dict() if agent.learner is not None else {},
        "init_agent": final_state["init_agent"],
        "loop": {"n_tasks": n_new, "next_task": n_new, "global_step": final_loop["global_step"],
                 "R_index": torch.tensor(ij.tolist(), dtype=torch.long).reshape(-1, 2),
                 "R_values": torch.tensor(R[ij[:, 0], ij[:, 1]].tolist(), dtype=torch.float64),
                 "b": torch.from_numpy(b.copy()), "history": history, "ledger": ledgers, "timings": timings,
                 "task_names": names, "task_inference": inference},
        "rng": final_state["rng"],
    }
    save_checkpoint(new_arm / CHECKPOINTS, n_new - 1, state, keep=0)
    atomic_write_text(new_arm / MARKER, json.dumps({"index": n_new - 1, "next_task": n_new, "n_tasks": n_new}))
    final = {k: v for k, v in history[-1].items() if k != "task"}
    return RunResult(label=label, stream=getattr(new_stream, "name", "stream"), R=R, b=b, metrics=final,
                     history=history, ledger=ledgers, timings=timings, task_names=names, task_inference=inference,
                     out_dir=new_arm)


# ---------------------------------------------------------------------------- one agent


def final_agent(src: Source, label: str, arm: Path, n_tasks: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    ckpts = _checkpoints(arm)
    if n_tasks - 1 not in ckpts:
        raise UserError(f"agent {label}: {arm / CHECKPOINTS} holds no checkpoint after the last task "
                        "(loop.checkpoint = false?): there is no agent to forget from")
    state, loop = _load_state(ckpts[n_tasks - 1], n_tasks)
    return _build(src, label, state), state, loop


def forget_agent(src: Source, label: str, new_dir: Path, resolved_new: recipes.Resolved, new_stream: Any, how: How,
                 notify: Callable[[str], None], progress: bool = False) -> tuple[RunResult, dict[str, Any], Any]:
    """Forget the task in one agent: (its result in the new run, its report, the new agent)."""
    arm = src.run_dir / label
    summary = read_summary(arm)
    if summary.get("status") != "completed":
        raise UserError(f"agent {label} did not complete its run (status {summary.get('status')!r}): resume it first "
                        f"(agentlab run --resume {src.run_dir})")
    T, p, K = len(src.stream), src.position, src.task_id
    agent, final_state, final_loop = final_agent(src, label, arm, T)
    ckpts = _checkpoints(arm)
    new_arm = new_dir / label
    new_arm.mkdir()
    report: dict[str, Any] = {"agent": label, "task": K, "task_name": src.tasks[p].name}
    t0 = time.perf_counter()
    refused = None
    result: RunResult | None = None
    new_agent = None
    if how in ("auto", "drop"):
        init = _build(src, label, final_state, key="init_agent")
        candidate = copy.deepcopy(agent)
        try:
            freed = drop(candidate, K, shared_trained_by(src, label, agent, init, ckpts))
        except CannotForget as e:
            refused = str(e)
            if how == "drop":
                raise CannotForget(f"agent {label} cannot drop task {K}: {refused}") from None
            notify(f"agentlab: agent {label}: cannot drop task {K} directly ({refused}); retraining")
        else:
            new_agent = candidate
            write_prefix(src, label, ckpts, new_arm, new_stream)
            result = _dropped_result(src, label, new_agent, final_loop, final_state, new_stream, new_arm,
                                     time.perf_counter() - t0)
            report.update(how="drop", bytes_freed=freed)
    if new_agent is None:
        complete = getattr(agent.learner, "checkpoint_complete", True)
        start = p if complete else 0
        if start > 0 and p - 1 not in ckpts:
            kept = ", ".join(str(i) for i in sorted(ckpts)) or "none"
            why = f" (direct removal was refused: {refused})" if refused else ""
            raise CannotForget(
                f"agent {label}: retraining needs the checkpoint taken after task position {p - 1}, before task {K}, and "
                f"{arm / CHECKPOINTS} keeps positions {kept}{why}; run the recipe with --set loop.keep_checkpoints=0 "
                "to keep every task's checkpoint")
        if start > 0:
            write_prefix(src, label, ckpts, new_arm, new_stream)
        _, results = run_recipe(resolved_new, run_dir=new_dir, resume=True, data_root=src.data_root, only=[label],
                                progress=progress, notify=notify)
        result = results[label]
        if not result.completed:
            raise UserError(f"agent {label}: the retraining stopped ({result.status}: {result.message})")
        new_agent, _, _ = final_agent(src, label, new_arm, len(new_stream))
        before = ledger(agent)["total_bytes"]
        report.update(how="retrain", retrained_from=(f"the checkpoint after task position {p - 1}" if start else
                                                     "the untrained agent" + ("" if complete else
                                                     " (the learner's state is not in checkpoints)")),
                      retrained_tasks=len(new_stream) - start,
                      bytes_freed={"total": int(before - ledger(new_agent)["total_bytes"])})
    assert result is not None and new_agent is not None
    report["forget_s"] = time.perf_counter() - t0
    report["drop_refused"] = refused
    _measure(src, summary, agent, new_agent, report)
    return result, report, new_agent


def _measure(src: Source, summary: dict[str, Any], old: Any, new: Any, report: dict[str, Any]) -> None:
    cfg = src.resolved.loop
    p = src.position
    final_row = [np.nan if v is None else float(v) for v in summary["accuracy_matrix"][-1]]
    untrained = summary["untrained_accuracy"][p]
    now = accuracies(new, src.tasks, device=cfg.device, batch_size=cfg.eval_batch_size)
    others = {src.tasks[j].name: {"before": final_row[j], "after": now[j]} for j in range(len(src.tasks)) if j != p}
    changes = [abs(v["after"] - v["before"]) for v in others.values() if not np.isnan(v["before"])]
    report.update(
        acc_before=final_row[p], acc_after=now[p], untrained_acc=untrained,
        others=others, others_max_change=max(changes) if changes else 0.0,
        total_bytes_before=ledger(old)["total_bytes"], total_bytes_after=ledger(new)["total_bytes"],
    )
    left = leftovers(new, src.task_id)
    report["leftovers"] = left
    report["leftover_bytes"] = leftover_bytes(left)


# ---------------------------------------------------------------------------- the command's work


def new_table(src: Source) -> dict[str, Any]:
    table = copy.deepcopy(src.table)
    table["stream"][EXCLUDE_KEY] = sorted({*table["stream"].get(EXCLUDE_KEY, []), src.task_id})
    return table


def verify_never_seen(src: Source, resolved_new: recipes.Resolved, n_new: int, new_dir: Path, agents: dict[str, Any],
                      reports: dict[str, dict[str, Any]], notify: Callable[[str], None], progress: bool = False) -> None:
    """Train the stream without the task from scratch (`never_seen/`) and compare each agent with the forgotten one."""
    seen_dir, results = run_recipe(resolved_new, run_dir=new_dir / NEVER_SEEN, data_root=src.data_root,
                                   only=list(agents), progress=progress, notify=notify)
    for label, agent in agents.items():
        r = results[label]
        rep = reports[label]
        if not r.completed:
            rep["never_seen"] = {"error": f"{r.status}: {r.message}"}
            continue
        twin, _, _ = final_agent(src, label, seen_dir / label, n_new)
        same, diff = same_state(agent, twin)
        cfg = src.resolved.loop
        accs = accuracies(twin, src.tasks, device=cfg.device, batch_size=cfg.eval_batch_size)
        others = [abs(accs[j] - rep["others"][src.tasks[j].name]["after"]) for j in range(len(src.tasks)) if j != src.position]
        rep["never_seen"] = {
            "identical": same, "first_difference": diff, "acc_forgotten": accs[src.position],
            "forgotten_acc_difference": abs(accs[src.position] - rep["acc_after"]),
            "others_max_acc_difference": float(max(others)),
        }


def forget(req: ForgetRequest, notify: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Do `agentlab forget`: returns the new run directory and the report (also written there as forget.json)."""
    src = load_source(req)
    table = new_table(src)
    resolved_new = recipes.resolve(src.name, table)
    new_stream = recipes.build_stream(resolved_new, src.env)
    out_root = Path(req.out_root) if req.out_root is not None else src.run_dir.parent
    tag = f"person-{src.person}" if src.person is not None else f"task{src.task_id}"
    new_dir = create_run_dir(out_root, run_dir_name(src.table["stream"]["name"], f"{src.name}-forget-{tag}", src.resolved.seed))
    record = {"recipe": src.name, "table": table, "seed": src.resolved.seed,
              "data_root": str(src.data_root) if src.data_root else None, "agents": src.labels,
              "versions": package_versions(),
              "forgotten": {"source": str(src.run_dir), "task": src.task_id, "task_name": src.tasks[src.position].name,
                            "person": src.person}}
    results: dict[str, RunResult] = {}
    reports: dict[str, dict[str, Any]] = {}
    agents: dict[str, Any] = {}
    try:
        atomic_write_text(new_dir / "config.json", json.dumps(jsonable(record), indent=2))
        for label in src.labels:
            results[label], reports[label], agents[label] = forget_agent(src, label, new_dir, resolved_new, new_stream,
                                                                         req.how, notify, req.progress)
    except UserError:
        shutil.rmtree(new_dir, ignore_errors=True)  # refused: no half-made run directory stays behind
        raise
    write_run_summary(new_dir, resolved_new, results)
    if req.verify:
        verify_never_seen(src, resolved_new, len(new_stream), new_dir, agents, reports, notify, req.progress)
    body = {"source": str(src.run_dir), "run_dir": str(new_dir), "task": src.task_id,
            "task_name": src.tasks[src.position].name, "person": src.person, "agents": reports}
    atomic_write_text(new_dir / REPORT, json.dumps(jsonable(body), indent=2))
    return new_dir, body


def format_report(body: dict[str, Any]) -> str:
    """The report as text: one block per agent."""
    pct = lambda v: "  n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:5.1f}"
    lines = [f"forgot task {body['task']} ({body['task_name']}) of {body['source']}"]
    for label, r in body["agents"].items():
        how = r["how"] + (f" from {r['retrained_from']} ({r['retrained_tasks']} tasks)" if r["how"] == "retrain" else "")
        lines.append(f"\nagent {label}: {how} in {r['forget_s']:.2f} s")
        if r.get("drop_refused"):
            lines.append(f"  direct removal refused: {r['drop_refused']}")
        lines.append(f"  forgotten task accuracy  before {pct(r['acc_before'])}%   after {pct(r['acc_after'])}%   "
                     f"untrained {pct(r['untrained_acc'])}%")
        lines.append(f"  other tasks              max change {100 * r['others_max_change']:.2f} points")
        freed = sum(v for v in r["bytes_freed"].values())
        lines.append(f"  bytes                    freed {freed:,}   total {r['total_bytes_before']:,} -> {r['total_bytes_after']:,}")
        left = r["leftover_bytes"]
        unchecked = [k for k, v in r["leftovers"].items() if isinstance(v, str)]
        lines.append(f"  left of the task         {'nothing' if left == 0 else left if left > 0 else 'see forget.json'}"
                     + (f" (not checkable: {', '.join(unchecked)})" if unchecked else ""))
        ns = r.get("never_seen")
        if ns:
            if "error" in ns:
                lines.append(f"  never-seen run           failed: {ns['error']}")
            else:
                lines.append(f"  never-seen run           {'identical bit for bit' if ns['identical'] else 'differs: ' + ns['first_difference']}"
                             f"; accuracy differences: forgotten task {100 * ns['forgotten_acc_difference']:.2f}, "
                             f"others at most {100 * ns['others_max_acc_difference']:.2f} points")
    return "\n".join(lines)
