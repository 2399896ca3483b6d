"""The loop: one agent over one task stream, measuring what it learns, forgets and keeps.

    for task i in the stream:
        agent.start_task(task); learner.fit(agent, task); agent.end_task(task)
        evaluate on every task seen so far and on the next one      -> row i of R
        (the first time a task is evaluated, the untrained agent is too -> b[j], for FWT)
        metrics, ledger, module figures, every figure the evaluator reports -> TensorBoard; summary.json; checkpoint

What an evaluator reports beside the accuracy (`EvalResult.extra`: a confidence interval, bits per sequence, a
time error, a raw return) is kept per row in `history[i]["eval"]` ({figure: {"NNN": value}}), logged as
`eval/<figure>/task_NNN` and written to summary.json (`eval_extras`: one matrix per figure, like R).

A run resumed from its last checkpoint continues exactly where the
uninterrupted run would be: the checkpoint holds the agent, the learner's
state (replay buffers), the untrained snapshot, R, b and every random state.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from agentlab import metrics as M
from agentlab.config import check
from agentlab.context import FitContext, NonFiniteLoss, Progress, StopRequested, progress_on
from agentlab.errors import os_error_text
from agentlab.evaluate import evaluate
from agentlab.ledger import ledger, ledger_scalars, modules_held
from agentlab.runstate import Checkpointer, Interrupt
from agentlab.seeding import seed_task
from agentlab.runstate import resume as resume_from
from agentlab.summary import write_summary


@dataclass(frozen=True)
class LoopConfig:
    """How the loop evaluates, logs and checkpoints."""

    eval_next: bool = True
    """also evaluate the next, not yet trained task (forward transfer)"""
    eval_seen: Literal["all", "final"] = "all"
    """evaluate every seen task after each task ("all"), or only the current one until the last ("final"; long streams)"""
    eval_batch_size: int = 1000
    """examples per evaluation batch"""
    log_every: int = 20
    """log training losses every this many steps"""
    checkpoint: bool = True
    """write a checkpoint after every task"""
    keep_checkpoints: int = 2
    """how many checkpoints to keep (older good ones survive a corrupt newest); 0 = every task's (`agentlab forget`
    retrains a shared-weight agent from the checkpoint taken before the forgotten task)"""
    device: str = "cpu"
    """torch device"""
    stop_after_tasks: int = 0
    """stop (as if killed) after this many tasks of this invocation; 0 = run to the end (tests use it)"""
    seed_per_task: bool = False
    """reseed every random generator at each task's start from (seed, task id): what a task learns then does not
    depend on how many random numbers earlier tasks drew, so a task removed from a stream leaves the others' draws
    as they were (`agentlab forget` compares an agent that forgot a task with one that never saw it)"""

    def __post_init__(self) -> None:
        check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1")
        check(self.log_every >= 1, "log_every", self.log_every, "an integer >= 1")
        check(self.keep_checkpoints >= 0, "keep_checkpoints", self.keep_checkpoints, "an integer >= 0 (0 = every task's)")
        check(self.stop_after_tasks >= 0, "stop_after_tasks", self.stop_after_tasks, "an integer >= 0")


@dataclass
class RunResult:
    label: str
    stream: str
    R: np.ndarray
    b: np.ndarray
    metrics: dict[str, float]
    history: list[dict[str, float]]
    ledger: list[dict[str, Any]]
    timings: dict[str, float]
    task_names: list[str]
    status: str = "completed"
    message: str = ""
    task_inference: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def eval_extras(self) -> dict[str, np.ndarray]:
        """Each figure an evaluator reported beside the accuracy, as a matrix shaped like R (NaN = not measured)."""
        return extras_matrices(self.history, self.R.shape[1] if self.R.ndim == 2 else len(self.b))


def extras_matrices(history: list[dict[str, Any]], n_tasks: int) -> dict[str, np.ndarray]:
    """{figure: (rows done, T) matrix} from the `eval` entries of the loop's history."""
    out: dict[str, np.ndarray] = {}
    for i, row in enumerate(history):
        for fig, cells in (row.get("eval") or {}).items():
            m = out.setdefault(fig, np.full((len(history), n_tasks), np.nan))
            for j, v in cells.items():
                m[i, int(j)] = np.nan if v is None else v
    return out


def run(
    agent: Any,
    stream: Any,
    *,
    generator: torch.Generator,
    out_dir: Path | None = None,
    cfg: LoopConfig = LoopConfig(),
    logger: Any = None,
    resume: bool = False,
    progress: bool | None = None,
    config_record: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Train `agent` on every task of `stream` in order; see the module docstring. `progress`: a bar on stderr
    (None: when the command shows progress, `agentlab.context.progress_shown`)."""
    T = len(stream)
    R = np.full((T, T), np.nan)
    b = np.full(T, np.nan)
    history: list[dict[str, float]] = []
    ledgers: list[dict[str, Any]] = []
    timings = {"train_s": 0.0, "eval_s": 0.0}
    inference: dict[str, float] = {}
    task_names: list[str] = []
    start_task = 0
    global_step = 0
    device = cfg.device
    agent.to(device)
    init_agent = copy.deepcopy(agent)  # the untrained agent, for the FWT baseline b[j]
    base_seed = generator.initial_seed()  # the run's seed (seed_per_task derives each task's from it)
    entries = None

    if resume:
        if out_dir is None:
            raise ValueError("resume needs an out_dir holding checkpoints")
        loop = resume_from(out_dir, agent=agent, init_agent=init_agent, generator=generator, n_tasks=T, label=agent.label)
        if loop is not None:
            R, b, entries = loop["R"], loop["b"], loop["entries"]
            history, ledgers, timings = loop["history"], loop["ledger"], loop["timings"]
            task_names, inference = loop["task_names"], loop["task_inference"]
            start_task, global_step = loop["next_task"], loop["global_step"]
    ckpt = None
    if out_dir is not None and cfg.checkpoint:
        ckpt = Checkpointer(out_dir, n_tasks=T, keep=cfg.keep_checkpoints, entries=entries)

    def log_scalar(tag: str, v: float, step: int) -> None:
        if logger is not None:
            logger.scalar(tag, v, step)

    bar = Progress(agent.label, T, initial=start_task, shown=progress_on() if progress is None else progress)

    status, message = "completed", ""
    done_this_call = 0
    with Interrupt() as interrupt:
        stop = should_stop or (lambda: interrupt.requested)
        try:
            for i in range(start_task, T):
                task = stream[i]
                if len(task_names) <= i:
                    task_names.append(task.name)
                ctx = FitContext(
                    generator=generator, task_index=i, n_tasks=T, device=device, global_step=global_step,
                    log_every=cfg.log_every, seen_tasks=lambda i=i: [stream[j] for j in range(i + 1)],
                    log_scalar=log_scalar, should_stop=lambda: stop() or interrupt.requested,
                    progress=lambda info, i=i: _advance(bar, i, T, info),
                )
                if cfg.seed_per_task:
                    seed_task(base_seed, task.id, generator)
                bar.phase(f"task {i + 1}/{T}: training")
                t0 = time.perf_counter()
                agent.start_task(task)
                agent.learner.fit(agent, task, ctx)
                agent.end_task(task)
                global_step = ctx.global_step
                timings["train_s"] += time.perf_counter() - t0

                t0 = time.perf_counter()
                last = i == T - 1
                if cfg.eval_seen == "all" or last:
                    targets = list(range(i + 1))
                else:
                    targets = [i]
                if cfg.eval_next and i + 1 < T:
                    targets.append(i + 1)
                inf_right = inf_total = 0.0
                extras: dict[str, dict[str, float]] = {}
                for n_done, j in enumerate(targets):
                    bar.phase(f"task {i + 1}/{T}: evaluating task_{j:03d} ({n_done + 1} of {len(targets)})")
                    tj = task if j == i else stream[j]
                    res = evaluate(agent, tj, batch_size=cfg.eval_batch_size, device=device)
                    R[i, j] = res.acc
                    for fig, v in res.extra.items():
                        if fig != "acc":  # an evaluator's "acc" is the accuracy itself, already R[i, j]
                            extras.setdefault(fig, {})[f"{j:03d}"] = float(v)
                    if "task_inference_acc" in res.extra and j <= i:
                        inf_right += res.extra["task_inference_acc"] * res.n
                        inf_total += res.n
                    if math.isnan(b[j]):
                        b[j] = evaluate(init_agent, tj, batch_size=cfg.eval_batch_size, device=device).acc
                timings["eval_s"] += time.perf_counter() - t0
                if inf_total:
                    inference[f"{i:03d}"] = inf_right / inf_total

                # With eval_seen="final" the entries not measured stay NaN and the metrics skip them.
                figures = M.summarize(R[: i + 1, : i + 1], b, i + 1)
                history.append({"task": i, **figures, **({"eval": extras} if extras else {})})
                entry = ledger(agent)
                ledgers.append(entry)
                if logger is not None:
                    bar.phase(f"task {i + 1}/{T}: logging")
                    _log_task(logger, agent, R, b, figures, entry, i, inference.get(f"{i:03d}"), extras,
                              modules_held(ledgers[:-1]))
                done_this_call += 1
                if ckpt is not None:
                    ckpt.save(i, agent=agent, init_agent=init_agent, R=R, b=b, global_step=global_step, history=history,
                              ledger=ledgers, timings=timings, task_names=task_names, task_inference=inference,
                              generator=generator)
                bar.to(i + 1, f"task {i + 1}/{T} done: avg acc {100 * figures['avg_acc']:.1f}%")
                if cfg.stop_after_tasks and done_this_call >= cfg.stop_after_tasks and i < T - 1:
                    status, message = "interrupted", f"stopped after task {i} (stop_after_tasks)"
                    break
        except StopRequested:
            by = interrupt.signal_name or "request"
            status, message = "interrupted", f"stopped by {by}; resume with `agentlab run --resume DIR`"
        except NonFiniteLoss as e:
            status, message = "failed", str(e)
        except OSError as e:  # a write that failed (permission, no space, file size limit, a file for a folder)
            status, message = "failed", f"I/O error: {os_error_text(e)}"
        finally:
            bar.close()
            if logger is not None:
                try:
                    logger.flush()
                except OSError as e:
                    if status == "completed":
                        status, message = "failed", f"I/O error: {os_error_text(e)}"

    n_done = len(history)
    final = {k: v for k, v in history[-1].items() if k not in ("task", "eval")} if history else {}
    if inference:
        final["task_inference_acc"] = float(np.mean(list(inference.values())))
    result = RunResult(
        label=agent.label, stream=getattr(stream, "name", "stream"), R=R[:n_done, :] if n_done else R[:0],
        b=b, metrics=final, history=history, ledger=ledgers, timings=timings, task_names=task_names,
        status=status, message=message, task_inference=inference, out_dir=out_dir,
    )
    if out_dir is not None:
        try:
            write_summary(out_dir / "summary.json", result, config_record or {})
        except OSError as e:
            if result.completed:
                result.status, result.message = "failed", f"I/O error: {os_error_text(e)}"
    return result


def _advance(bar: Progress, i: int, T: int, info: dict[str, Any]) -> None:
    """Within task i: the bar moves by the share of the task's planned steps done (when the learner planned)."""
    done, planned = info["task_step"], info["planned"]
    where = f"task {i + 1}/{T}: step {done}/{planned}" if planned else f"task {i + 1}/{T}: step {done}"
    bar.to(i + (min(done / planned, 0.999) if planned else 0.0), f"{where}, loss {info['loss']:.3f}")


def _log_task(logger: Any, agent: Any, R: np.ndarray, b: np.ndarray, figures: dict, entry: dict, i: int,
              inf: float | None, extras: dict[str, dict[str, float]], held: set[str]) -> None:
    from agentlab.tblog import heatmap_image, images_of

    step = i
    for k in ("avg_acc", "bwt", "fwt", "forgetting"):
        logger.scalar(f"cl/{k}", figures[k], step)
    if i >= 1:
        f = M.forgetting_per_task(R[: i + 1, : i + 1], i + 1)
        for j, v in enumerate(f):
            logger.scalar(f"cl/forgetting/task_{j:03d}", v, step)
    for j in range(R.shape[1]):
        if not np.isnan(R[i, j]):
            logger.scalar(f"eval/acc/task_{j:03d}", R[i, j], step)
    for fig, cells in extras.items():
        for j, v in cells.items():
            logger.scalar(f"eval/{fig}/task_{j}", v, step)
    if inf is not None:
        logger.scalar("eval/task_inference_acc", inf, step)
    logger.scalars(ledger_scalars(entry, held), step)
    logger.scalars(agent.scalars(), step)
    with images_of(agent.label):
        for tag, img in agent.images().items():
            logger.image(tag, img, step)
        n = R.shape[1]
        if n <= 64:
            shown = R[: i + 1, : min(n, i + 2)]
            logger.image("cl/accuracy_matrix", heatmap_image(shown, f"accuracy R[i, j] in % after task {i}"), step)
    for tag, values in agent.histograms().items():
        logger.histogram(tag, values, step)
    logger.flush()
