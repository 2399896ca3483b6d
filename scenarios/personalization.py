"""The personalization stream: tasks are people; an evaluator for the "personalization" task kind.

    task 0      the population (meta population=True): many people's traces; trains the shared model
    task 1..n   one new person each: a handful of training traces and held-out traces

With an adapter plasticity module, task 0 pre-trains the backbone (adapters
off) and every later task trains only that person's adapter, so the loop's
accuracy matrix shows zero forgetting by construction and its ledger the bytes
per person. Traces come from the simulator (`agentlab.scenarios.traces.simulator`,
ground-truth traits in each task's `meta["traits"]`) or from a JSONL file in
the documented format (`trace_file`), through the same encoding.

The evaluator's accuracy is next-action accuracy on held-out traces; it also
reports the step-time error (seconds) and the error-prediction AUC. Without a
task label it identifies the person first (the adapter's likelihood
fingerprint) and reports how often that was right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agentlab.config import ConfigError, check
from agentlab.evaluate import EvalResult, register_evaluator
from agentlab.registry import BuildEnv, register
from agentlab.task import LazyStream, Task
from agentlab.scenarios.traces.encode import X_CHANNELS, encode
from agentlab.scenarios.traces.format import Step, read_jsonl
from agentlab.scenarios.traces.objective import error_auc, step_figures
from agentlab.scenarios.traces.simulator import draw_traits, simulate_person


@dataclass(frozen=True)
class PersonalizationConfig:
    """People as tasks: a simulated population for pre-training, then new people with few traces each."""

    n_population: int = 200
    """simulated people in the population task (task 0); 0 = no population task"""
    population_traces: int = 30
    """traces per population person (the last 2 of each are held out for evaluation)"""
    n_people: int = 10
    """new simulated people, one task each (ignored with trace_file)"""
    train_traces: int = 20
    """training traces per new person"""
    eval_traces: int = 20
    """held-out traces per new person"""
    seed: int = 0
    """simulator seed (kept apart from the run seed: every run sees the same people)"""
    trace_file: str = ""
    """a JSONL trace file: each person in it with >= 2 traces becomes a task (first train_traces train, the rest eval)"""
    max_steps: int = 24
    """steps kept per trace (longer traces are cut); the encoder needs max_len >= max_steps + 1"""

    def __post_init__(self) -> None:
        check(self.n_population >= 0, "n_population", self.n_population, "an integer >= 0")
        check(self.population_traces >= 3, "population_traces", self.population_traces, "an integer >= 3")
        check(self.n_people >= 1, "n_people", self.n_people, "an integer >= 1")
        check(self.train_traces >= 1, "train_traces", self.train_traces, "an integer >= 1")
        check(self.eval_traces >= 1, "eval_traces", self.eval_traces, "an integer >= 1")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        check(self.max_steps >= 4, "max_steps", self.max_steps, "an integer >= 4")


def _people_from_file(path: str, train_traces: int) -> list[tuple[str, list[list[Step]], list[list[Step]]]]:
    by_person: dict[str, list[list[Step]]] = {}
    for tr in read_jsonl(path):
        by_person.setdefault(tr[0].person, []).append(tr)
    people = []
    for name, trs in by_person.items():
        if len(trs) >= 2:
            k = min(train_traces, len(trs) - 1)
            people.append((name, trs[:k], trs[k:]))
    if not people:
        raise ConfigError(f"trace_file={path!r} has no person with at least 2 traces")
    return people


def personalization_stream(cfg: PersonalizationConfig) -> LazyStream:
    length = cfg.max_steps + 1
    pop_cache: dict[str, Task] = {}
    offset = 1 if cfg.n_population else 0
    file_people = _people_from_file(cfg.trace_file, cfg.train_traces) if cfg.trace_file else None
    n_people = len(file_people) if file_people is not None else cfg.n_people

    def population() -> Task:
        if "task" not in pop_cache:  # the shared base data, built once (like one copy of MNIST)
            train, held = [], []
            for i in range(cfg.n_population):
                trs = simulate_person(draw_traits(cfg.seed, i, "p"), cfg.population_traces, cfg.seed)
                train += trs[:-2]
                held += trs[-2:]
            pop_cache["task"] = Task(
                id=0, name="population", kind="personalization", train=encode(train, length=length),
                eval=encode(held, length=length), task_label_at_test=True,
                meta={"population": True, "people": cfg.n_population},
            )
        return pop_cache["task"]

    def make(i: int) -> Task:
        if offset and i == 0:
            return population()
        j = i - offset
        if file_people is not None:
            name, train, held = file_people[j]
            traits = None
        else:
            t = draw_traits(cfg.seed, j, "n")
            trs = simulate_person(t, cfg.train_traces + cfg.eval_traces, cfg.seed)
            name, train, held, traits = t.person, trs[: cfg.train_traces], trs[cfg.train_traces :], t
        return Task(
            id=i, name=f"person/{name}", kind="personalization", train=encode(train, length=length),
            eval=encode(held, length=length), task_label_at_test=True,
            meta={"person": name, "traits": traits},
        )

    source = cfg.trace_file or f"simulated(seed={cfg.seed})"
    return LazyStream(
        "personalization", "personalization", offset + n_people, make,
        input_shape=(length, X_CHANNELS), meta={"source": source, "population_task": bool(offset)},
    )


@register("stream", "personalization", PersonalizationConfig)
def build_personalization(cfg: PersonalizationConfig, env: BuildEnv) -> LazyStream:
    """People as tasks (Cognitive Fingerprints): population pre-training, then a few traces per new person."""
    return personalization_stream(cfg)


@register_evaluator("personalization")
def evaluate_personalization(agent: Any, task: Task, *, batch_size: int = 1000, device: str = "cpu") -> EvalResult:
    """Next-action accuracy on held-out traces (the loop's accuracy), plus time MAE (s) and error AUC.

    With the task label hidden, each trace is first attributed to a person by
    the agent's `infer_task` (likelihood under each adapter) and run with that
    person's adapter; `task_inference_acc` says how often the attribution was right.
    """
    was = agent.training
    agent.eval()
    given = task.id if task.task_label_at_test else None
    figs: dict[str, list[torch.Tensor]] = {"correct": [], "abs_time_err_s": [], "error_prob": [], "error_label": []}
    inferred = right = 0
    with torch.no_grad():
        for batch in task.eval.batches(batch_size):
            x, y = batch.x.to(device), batch.y.to(device)
            groups = [(given, torch.arange(x.shape[0], device=device))]
            if given is None:
                guess = agent.infer_task(x)
                if guess is not None:
                    inferred += x.shape[0]
                    right += int((guess == task.id).sum())
                    groups = [(int(t), (guess == t).nonzero().squeeze(1)) for t in torch.unique(guess).tolist()]
            for t, rows in groups:
                f = step_figures(agent(x[rows], t), y[rows])
                for k, v in f.items():
                    figs[k].append(v.cpu())
    agent.train(was)
    cat = {k: torch.cat(v) for k, v in figs.items()}
    extra = {
        "time_mae_s": float(cat["abs_time_err_s"].mean()),
        "error_auc": error_auc(cat["error_prob"], cat["error_label"]),
    }
    if inferred:
        extra["task_inference_acc"] = right / inferred
    n = int(cat["correct"].numel())
    return EvalResult(float(cat["correct"].float().mean()) if n else 0.0, n, extra)
