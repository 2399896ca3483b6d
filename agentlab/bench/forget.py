"""`forget`: removing one task (or person) exactly, per method, and the bytes each method keeps per task.

Three streams, each trained once with every task's checkpoint kept and each task seeded by its id
(`loop.keep_checkpoints = 0`, `loop.seed_per_task = true`), then `agentlab forget --task K --verify`:

    task     Split MNIST task-incremental (K = 2): finetune, replay, joint, EWC, SI, LwF (Avalanche's),
             SupSup (masks of density 0.5 and 0.1), LoRA, NOLA, PRANC, FNNSP, SET frozen-and-grow
    class    Split MNIST class-incremental (K = 2): finetune, replay, EWC, SupSup (task inferred by entropy),
             SupSup with an episodic memory inferring the task
    person   the personalization stream (the middle person): LoRA and NOLA adapters

Per method: how it forgot (drop or retrain), the time, accuracy on the forgotten task before and after (and the
untrained agent's), the largest change on any other task, whether the agent equals bit for bit one trained
without the task (`never_seen`), what is left of the task. On the task stream, the rate-distortion table:
each method's per-task state stored at lower precision or in fewer coefficients
(`agentlab.bench._rate_distortion`), and replay's buffer at smaller sizes, against average accuracy; the
smallest bytes per task keeping 99% of each method's full accuracy.

Metrics `<stream>_<method>_forget_s`, `_forgotten_acc_after`, `_others_max_change`, `_identical_to_never_seen`
(1 or 0), `task_<method>_bytes_at_99pct`. Quick mode: 500 training and 300 test images per task, 30 steps a task,
a 100-100 MLP, three people.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.bench._rate_distortion import smallest_at, variants
from agentlab.registry import BuildEnv

FORGET_TASK = 2


def _sgd(quick: bool) -> dict[str, Any]:
    return {"optimizer": "adam", "lr": 0.001, "batch_size": 128, "epochs": 1000, "max_steps": 30 if quick else 500}


def _mlp(quick: bool, **kw: Any) -> dict[str, Any]:
    return {"name": "mlp", "hidden": [100, 100] if quick else [400, 400], **kw}


def split_agents(scenario: str, quick: bool, replay_size: int | None = None) -> dict[str, dict[str, Any]]:
    """The agents compared on Split MNIST (`replay_size` alone: just a replay agent with that buffer)."""
    sgd, mlp = _sgd(quick), _mlp(quick)
    mask_sgd = {**sgd, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9}
    buffer = (200 if quick else 1000) if replay_size is None else replay_size
    if replay_size is not None:
        return {f"replay_{replay_size}": {"backbone": mlp, "learner": {"name": "replay", "buffer_size": replay_size, **sgd}}}
    agents: dict[str, dict[str, Any]] = {
        "finetune": {"backbone": mlp, "learner": {"name": "finetune", **sgd}},
        "replay": {"backbone": mlp, "learner": {"name": "replay", "buffer_size": buffer, **sgd}},
        "ewc": {"backbone": mlp, "learner": {"name": "avalanche", "strategy": "ewc", "ewc_lambda": 1e4, **sgd}},
    }
    if scenario == "task":
        agents.update({
            "joint": {"backbone": mlp, "learner": {"name": "joint", **sgd}},
            "si": {"backbone": mlp, "learner": {"name": "avalanche", "strategy": "si", "si_lambda": 10.0, **sgd}},
            "lwf": {"backbone": mlp, "learner": {"name": "avalanche", "strategy": "lwf", **sgd}},
            "supsup": {"backbone": _mlp(quick, bias=False), "learner": {"name": "finetune", **mask_sgd},
                       "plasticity": [{"name": "supsup"}]},
            # sparser masks carry fewer bits of information: entropy coding shrinks them below 1 bit per weight
            "supsup_sparse": {"backbone": _mlp(quick, bias=False), "learner": {"name": "finetune", **mask_sgd},
                              "plasticity": [{"name": "supsup", "density": 0.1}]},
            "lora": {"backbone": mlp, "learner": {"name": "finetune", **sgd}, "plasticity": [{"name": "lora", "rank": 4}]},
            "nola": {"backbone": mlp, "learner": {"name": "finetune", **sgd, "lr": 0.01},
                     "plasticity": [{"name": "nola", "rank": 4, "k_a": 32, "k_b": 32}]},
            "pranc": {"backbone": mlp, "learner": {"name": "finetune", **sgd, "lr": 0.01},
                      "plasticity": [{"name": "pranc", "k": 128}]},
            "fnnsp": {"backbone": mlp, "learner": {"name": "finetune", **sgd},
                      "plasticity": [{"name": "fnnsp", "modules": 10, "active_modules": 4, "new_modules_per_task": 2,
                                      "initial_active": 4}]},
            "set": {"backbone": mlp, "learner": {"name": "finetune", **sgd},
                    "plasticity": [{"name": "set", "freeze_per_task": True, "epsilon": 10.0, "max_task_density": 0.2}]},
        })
    else:
        agents.update({
            "supsup": {"backbone": _mlp(quick, bias=False), "learner": {"name": "finetune", **mask_sgd},
                       "plasticity": [{"name": "supsup", "infer": "entropy"}]},
            "supsup_episodic": {"backbone": _mlp(quick, bias=False), "learner": {"name": "finetune", **mask_sgd},
                                "plasticity": [{"name": "supsup"}],
                                "memory": [{"name": "episodic", "capacity": 500 if quick else 2000, "key_dim": 0}]},
        })
    return agents


def split_table(scenario: str, quick: bool, agents: dict[str, Any], seed: int) -> dict[str, Any]:
    stream: dict[str, Any] = {"name": "split-mnist", "scenario": scenario}
    if quick:
        stream.update(max_per_task=500, max_eval_per_task=300)
    return {"description": f"forget bench: Split MNIST {scenario}-IL", "seed": seed, "stream": stream,
            "loop": {"keep_checkpoints": 0, "seed_per_task": True, "eval_next": False}, "agents": agents}


def person_table(quick: bool, seed: int) -> dict[str, Any]:
    learner = {"name": "personalize", "population_epochs": 1 if quick else 6, "steps": 20 if quick else 60, "lr": 0.005}
    heads = ["cond", "action_head", "time_head", "error_head"]
    return {"description": "forget bench: personalization", "seed": seed,
            "stream": {"name": "personalization", "n_population": 40 if quick else 200, "n_people": 3 if quick else 10},
            "loop": {"keep_checkpoints": 0, "seed_per_task": True, "eval_next": False, "eval_seen": "final"},
            "agents": {
                "lora": {"backbone": {"name": "trace-encoder"}, "learner": learner,
                         "plasticity": [{"name": "lora", "rank": 4, "alpha": 8.0, "layers": heads}]},
                "nola": {"backbone": {"name": "trace-encoder"}, "learner": learner,
                         "plasticity": [{"name": "nola", "rank": 4, "k_a": 32, "k_b": 32, "layers": heads}]},
            }}


def _train(table: dict[str, Any], name: str, root: Path, data_root: Path | None) -> Path:
    from agentlab import recipe as recipes
    from agentlab.runner import run_recipe

    run_dir, results = run_recipe(recipes.resolve(name, table), out_root=root, data_root=data_root,
                                  notify=lambda s: None)
    bad = [f"{k}: {r.message}" for k, r in results.items() if not r.completed]
    if bad:
        raise RuntimeError(f"bench forget: training failed: {'; '.join(bad)}")
    return run_dir


def _forget_rows(stream: str, run_dir: Path, data_root: Path | None, *, task: int | None = None,
                 person: str | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from agentlab.forgetting import ForgetRequest, forget

    _, body = forget(ForgetRequest(run_dir, task=task, person=person, verify=True, data_root=data_root),
                     notify=lambda s: None)
    rows, metrics = [], {}
    for label, r in body["agents"].items():
        ns = r.get("never_seen", {})
        key = f"{stream}_{label}"
        if ns.get("others_max_acc_difference") is not None:
            metrics[f"{key}_others_vs_never_seen"] = ns["others_max_acc_difference"]
        rows.append({"part": "forget", "stream": stream, "method": label, "how": r["how"], "forget_s": r["forget_s"],
                     "acc_before": r["acc_before"], "acc_after": r["acc_after"], "untrained_acc": r["untrained_acc"],
                     "never_seen_acc": ns.get("acc_forgotten"), "others_max_change": r["others_max_change"],
                     "others_vs_never_seen": ns.get("others_max_acc_difference"),
                     "identical_to_never_seen": int(bool(ns.get("identical"))), "leftover_bytes": r["leftover_bytes"],
                     "bytes_freed": int(sum(r["bytes_freed"].values())), "why_not_drop": r["drop_refused"] or ""})
        metrics.update({f"{key}_forget_s": r["forget_s"], f"{key}_forgotten_acc_before": r["acc_before"],
                        f"{key}_forgotten_acc_after": r["acc_after"], f"{key}_others_max_change": r["others_max_change"],
                        f"{key}_identical_to_never_seen": float(bool(ns.get("identical")))})
    return rows, metrics


def _avg_acc(agent: Any, tasks: list[Any]) -> float:
    from agentlab.forget_check import accuracies

    return float(np.mean(accuracies(agent, tasks)))


def _rate_distortion(run_dir: Path, data_root: Path | None, quick: bool, seed: int, root: Path
                     ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from agentlab.forgetting import ForgetRequest, final_agent, load_source
    from agentlab.summary import read_summary

    src = load_source(ForgetRequest(run_dir, task=FORGET_TASK, data_root=data_root))
    T = len(src.stream)
    rows: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    for label in src.labels:
        agent, _, _ = final_agent(src, label, run_dir / label, T)
        full = _avg_acc(agent, src.tasks)
        curve = [{"part": "rate", "method": label, "setting": setting, "bytes_per_task": b, "avg_acc": _avg_acc(a, src.tasks)}
                 for setting, b, a in variants(agent)]
        if label == "ewc":  # one penalty per task (Avalanche's "separate" EWC): importances and anchor weights
            n = sum(p.numel() for p in agent.parameters())
            curve = [{"part": "rate", "method": label, "setting": "importances + anchors, 32 bit (not compressed: the "
                      "penalty shapes later training)", "bytes_per_task": 8.0 * n, "avg_acc": full}]
        if not curve:
            continue
        for r in curve:
            r["share_of_full"] = r["avg_acc"] / full if full else float("nan")
        rows += curve
        metrics[f"task_{label}_full_acc"] = full
        bare = [r for r in curve if r["setting"] == "no per-task state"]
        if bare:
            metrics[f"task_{label}_no_state_acc"] = bare[0]["avg_acc"]
        metrics[f"task_{label}_bytes_at_99pct"] = smallest_at(curve, full)
    # replay: the buffer is the per-task state; smaller buffers need training again (8-bit pixels store MNIST exactly)
    sizes = (50,) if quick else (300, 100)
    summary = read_summary(run_dir / "replay")
    full = float(np.mean([v for v in summary["accuracy_matrix"][-1] if v is not None]))
    x = src.tasks[0].train.x
    exact8 = x.dtype == torch.uint8 or len(torch.unique(x)) <= 256  # MNIST's pixels are bytes: stored exactly
    per_example = (x[0].numel() if exact8 else 4 * x[0].numel()) + 2  # pixels, label and task id bytes
    buffer = split_agents("task", quick)["replay"]["learner"]["buffer_size"]
    finetune = read_summary(run_dir / "finetune")["accuracy_matrix"][-1]
    curve = [{"part": "rate", "method": "replay", "setting": "no buffer (fine-tuning)", "bytes_per_task": 0.0,
              "avg_acc": float(np.mean([v for v in finetune if v is not None]))},
             {"part": "rate", "method": "replay", "setting": f"{buffer} examples, {'8' if exact8 else '32'}-bit pixels",
              "bytes_per_task": buffer * per_example / T, "avg_acc": full}]
    for n in sizes:
        small = _train(split_table("task", quick, split_agents("task", quick, replay_size=n), seed), f"replay{n}", root, data_root)
        acc = float(np.mean([v for v in read_summary(small / f"replay_{n}")["accuracy_matrix"][-1] if v is not None]))
        curve.append({"part": "rate", "method": "replay", "setting": f"{n} examples", "bytes_per_task": n * per_example / T,
                      "avg_acc": acc})
    for r in curve:
        r["share_of_full"] = r["avg_acc"] / full if full else float("nan")
    rows += curve
    metrics["task_replay_full_acc"] = full
    metrics["task_replay_bytes_at_99pct"] = smallest_at(curve, full)
    return rows, metrics


@register_bench("forget")
def bench_forget(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Exact forgetting of one task per method (time, accuracy, bit identity with a never-seen run) and bytes per task."""
    from agentlab.datasets import data_root as default_root

    root_data = Path(default_root(args.data_root or None))
    quick = args.quick
    t0, c0 = time.perf_counter(), time.process_time()
    rows: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="agentlab-forget-") as tmp:
        root = Path(tmp)
        task_run = _train(split_table("task", quick, split_agents("task", quick), args.seed), "forget-task", root, root_data)
        r, m = _forget_rows("task", task_run, root_data, task=FORGET_TASK)
        rows, metrics = rows + r, {**metrics, **m}
        class_run = _train(split_table("class", quick, split_agents("class", quick), args.seed), "forget-class", root, root_data)
        r, m = _forget_rows("class", class_run, root_data, task=FORGET_TASK)
        rows, metrics = rows + r, {**metrics, **m}
        table = person_table(quick, args.seed)
        person_run = _train(table, "forget-person", root, root_data)
        middle = f"n{(table['stream']['n_people'] // 2):05d}"
        r, m = _forget_rows("person", person_run, root_data, person=middle)
        rows, metrics = rows + r, {**metrics, **m}
        r, m = _rate_distortion(task_run, root_data, quick, args.seed, root)
        rows, metrics = rows + r, {**metrics, **m}
    forgets = [r for r in rows if r["part"] == "forget"]
    retrained = [r for r in forgets if r["how"] == "retrain"]
    dropped = [r for r in forgets if r["how"] == "drop"]
    metrics["retrained_identical_share"] = float(np.mean([r["identical_to_never_seen"] for r in retrained])) if retrained else 1.0
    # with the task label given a drop must leave every other task as it was; without it (class-IL) the remaining
    # tasks are inferred among fewer candidates, so their accuracy moves to what the never-seen agent has
    labelled = [r for r in dropped if r["stream"] != "class"]
    metrics["dropped_others_max_change"] = float(max((r["others_max_change"] for r in labelled), default=0.0))
    metrics["drop_forget_s_max"] = float(max((r["forget_s"] for r in dropped), default=0.0))
    metrics["leftover_bytes_max"] = float(max(r["leftover_bytes"] for r in forgets))
    goals = {
        "every retrained agent equals, bit for bit, the agent trained without the task": goal(
            metrics["retrained_identical_share"] == 1.0,
            ", ".join(f"{r['stream']}/{r['method']}" for r in retrained if not r["identical_to_never_seen"])),
        "with the task label given, a drop changes no other task's accuracy": goal(metrics["dropped_others_max_change"] == 0.0,
                                                        f"{100 * metrics['dropped_others_max_change']:.2f} points"),
        "a drop takes under 5 s": goal(metrics["drop_forget_s_max"] < 5.0, f"{metrics['drop_forget_s_max']:.1f} s"),
        "nothing of the task is left where a part can tell": goal(metrics["leftover_bytes_max"] == 0,
                                                                   f"{metrics['leftover_bytes_max']:.0f} bytes"),
    }
    metrics["cpu_s"] = time.process_time() - c0  # this process's CPU time: what the run costs on an idle machine
    return BenchResult(metrics, rows, goals, f"wall {time.perf_counter() - t0:.0f} s, CPU {metrics['cpu_s']:.0f} s")
