"""`supsup-pmnist` and `supsup-split`: SupSup supermasks with the task inferred, not given.

    supsup-pmnist   Permuted MNIST, GNu (task of each test image inferred from that image alone).
                    Full: the paper's FC 1024-1024 (500 outputs, entropy objective), 250 tasks of
                    1,000 batches, goal avg >= 95.0% with >= 99% task inference (paper: 94.91%).
                    Quick: the reference notebook's setting, 5 tasks x 1 epoch (469 batches of 128, all
                    60,000 images) on FC 784-300-300-100 with the entropy objective; goal avg >= 92%
                    with >= 99% inference (notebook: 92.4%, 100%).
                    $AGENTLAB_SUPSUP_TASKS runs the full settings on fewer tasks (a partial run,
                    reported as such) when 250 do not fit the machine.
                    The full mode checkpoints after every task in runs/bench/supsup-pmnist-run/;
                    Ctrl-C (or SIGINT from `timeout -s INT`) stops it after the current step and
                    `agentlab bench supsup-pmnist --resume` continues it, so 250 tasks can be spread
                    over several commands of limited length.
    supsup-split    Split MNIST class-incremental, solved through task inference.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from agentlab.bench import BenchArgs, BenchResult, goal, register_bench, run_recipe_table
from agentlab.registry import BuildEnv

# van de Ven & Tolias 2019, Split MNIST class-IL (REFERENCES.md): what the baselines reach.
SPLIT_CLASS_IL_REFERENCE = {"finetune": 19.90, "ewc": 20.01, "si": 19.99, "joint": 97.94}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _work_dir(args: BenchArgs, settings: dict[str, Any]) -> Path:
    """The full mode's checkpoint directory: fresh for a new run, the same settings for --resume."""
    from agentlab.checkpoint import atomic_write_text
    from agentlab.errors import UserError

    work = Path("runs") / "bench" / "supsup-pmnist-run"
    record = work / "settings.json"
    if args.resume:
        if not record.is_file():
            raise UserError(f"--resume: {work} holds no supsup-pmnist run to continue; run without --resume first")
        saved = json.loads(record.read_text())
        if saved != settings:
            raise UserError(f"--resume: the run in {work} has other settings ({saved}) than this one ({settings}); "
                            "resume with the same --seed and $AGENTLAB_SUPSUP_TASKS, or delete that directory")
    else:
        if work.exists() and any(work.iterdir()):
            raise UserError(f"{work} holds checkpoints of an earlier supsup-pmnist run: continue it with --resume, "
                            "or delete the directory to start again")
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(settings))
    return work


@register_bench("supsup-pmnist", device=True, resumable=True)
def bench_supsup_pmnist(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Permuted MNIST, task inferred from one image (GNu): SupSup (FC 1024-1024; quick: FC 300-300)."""
    full_tasks = 250
    n = 5 if args.quick else int(os.environ.get("AGENTLAB_SUPSUP_TASKS", full_tasks))
    # Every task is evaluated once, after the last one (T^2 evaluations otherwise).
    overrides = [f"stream.n_tasks={n}", 'loop.eval_seen="final"', f'loop.device="{args.device}"']
    if args.quick:
        # RAIVNLab/supsup mnist.ipynb: MultitaskFC(hidden_size=300), entropy of the output for inference.
        overrides += ["backbone.hidden=[300, 300]", "backbone.out_features=100", 'plasticity.0.objective="entropy"']
    else:
        # The paper's budget: 1,000 batches of 128 per task. The masked weights of all 250 tasks
        # (2.4 GB in float32) stay stacked for task inference instead of being unpacked per batch.
        overrides += ["learner.epochs=3", "learner.max_steps=1000", "plasticity.0.stack_cache_mb=4096"]
    work = None if args.quick else _work_dir(args, {"tasks": n, "seed": args.seed, "overrides": overrides[1:]})
    t0 = time.perf_counter()
    r, agent = run_recipe_table("supsup-pmnist", overrides, args, out_dir=work, resume=args.resume)["supsup"]
    wall = time.perf_counter() - t0
    loop_s = r.timings["train_s"] + r.timings["eval_s"]  # summed over every invocation of a resumed run
    per_task = r.ledger[-1]["modules"]["supsup"]["per_task"] if r.ledger else {}
    bytes_per_task = sum(per_task.values()) / max(len(per_task), 1)
    m = r.metrics
    metrics = {
        "avg_acc": m.get("avg_acc", float("nan")),
        # after the last task, over every task's test set (earlier rows saw fewer candidate tasks)
        "task_inference_acc": r.task_inference.get(f"{len(r.history) - 1:03d}", float("nan")),
        "tasks": float(len(r.history)),
        "bytes_per_task": bytes_per_task,
        "wall_s": loop_s,
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.device.startswith("cuda"):
        import torch

        metrics["peak_gpu_mb"] = torch.cuda.max_memory_allocated(args.device) / 2**20
    rows = [{"task": h["task"], "avg_acc": h["avg_acc"], "task_inference": r.task_inference.get(f"{h['task']:03d}"),
             "total_bytes": led["total_bytes"]} for h, led in zip(r.history, r.ledger)]
    target, inf_target = (0.92, 0.99) if args.quick else (0.95, 0.99)
    goals = {
        f"avg_acc >= {100 * target:.1f}% after {n if args.quick else full_tasks} tasks":
            goal(len(r.history) == (n if args.quick else full_tasks) and metrics["avg_acc"] >= target,
                  f"{100 * metrics['avg_acc']:.2f}% after {len(r.history)} tasks"),
        "task inference >= 99%": goal(metrics["task_inference_acc"] >= inf_target, f"{100 * metrics['task_inference_acc']:.2f}%"),
    }
    sup = agent.plasticity[0]
    if sup.store is not None:
        metrics["hopfield_recall_bit_err"], metrics["hopfield_recall_exact"] = sup._recall or (float("nan"), float("nan"))
        metrics["hopfield_bytes"] = float(sup.store.nbytes())
    notes = (f"{len(r.history)} tasks in {loop_s:.0f} s ({loop_s / max(len(r.history), 1):.1f} s per task, train "
             f"{r.timings['train_s']:.0f} s, eval {r.timings['eval_s']:.0f} s; this invocation {wall:.0f} s); "
             f"per-task state {bytes_per_task:.0f} B")
    if r.status != "completed":
        notes += f"\n{r.status} after {len(r.history)} of {n} tasks ({r.message}): continue with `agentlab bench supsup-pmnist --resume`"
    return BenchResult(metrics, rows, goals, notes)


@register_bench("supsup-split")
def bench_supsup_split(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Split MNIST class-incremental through SupSup task inference, beside the baselines' published figures."""
    overrides = ["learner.epochs=1"] + (["stream.max_per_task=2000", "stream.max_eval_per_task=500"] if args.quick else [])
    t0 = time.perf_counter()
    results = {k: r for k, (r, _) in run_recipe_table("supsup-split", overrides, args).items()}
    wall = time.perf_counter() - t0
    rows, metrics = [], {}
    for label, r in results.items():
        rows.append({"agent": label, "avg_acc": r.metrics["avg_acc"], "bwt": r.metrics["bwt"],
                     "task_inference": r.metrics.get("task_inference_acc"), "train_s": r.timings["train_s"]})
    best = max(results, key=lambda k: results[k].metrics["avg_acc"])
    metrics["avg_acc"] = results[best].metrics["avg_acc"]
    for label, v in SPLIT_CLASS_IL_REFERENCE.items():
        rows.append({"agent": f"{label} (van de Ven & Tolias 2019, published)", "avg_acc": v / 100})
    goals = {"beats fine-tuning, EWC and SI class-IL (about 20%)": goal(metrics["avg_acc"] > 0.2001, f"{100 * metrics['avg_acc']:.1f}%")}
    return BenchResult(metrics, rows, goals, f"best SupSup agent: {best}; wall {wall:.0f} s")


def inference_scaling(ks: list[int], *, images: int = 8, seed: int = 0, hidden: tuple[int, ...] = (300, 100),
                      out_features: int = 10, device: str = "cpu", stack_cache_mb: float = 1024.0) -> list[dict[str, float]]:
    """Where a k-task SupSup stands, without training k tasks: an MLP (LeNet 300-100 by default, the
    paper's FC 1024-1024 with `hidden=(1024, 1024), out_features=500`) with k random frozen masks.

    Measures the bytes the masks take, the process's resident memory (and the GPU's peak), and the
    wall time of one-shot task inference per image (k superposed sub-networks per image), the
    first batch (which stacks the masked weights) and a second one apart. Masks are random, so the
    inferred tasks mean nothing; only cost is measured.
    """
    import torch
    from torch import nn

    from agentlab.plasticity.supsup import SupSup, SupSupConfig
    from agentlab.task import Task

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    rows = []
    for k in ks:
        torch.manual_seed(seed)
        sizes = [784, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b, bias=False), nn.ReLU()]
        net = nn.Sequential(*layers, nn.Linear(sizes[-1], out_features, bias=False)).to(device)
        sup = SupSup(SupSupConfig(rule="threshold", stack_cache_mb=stack_cache_mb), seed=seed)
        sup.attach(net)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        for t in range(k):
            sup.on_task_start(Task(id=t, name=str(t), kind="classification", train=None, eval=None))
            sup.on_task_end(Task(id=t, name=str(t), kind="classification", train=None, eval=None))
        x = torch.rand(images, 1, 28, 28, device=device)
        times = []
        for _ in range(2):
            sync()
            t0 = time.perf_counter()
            sup.infer_task(x, net)
            sync()
            times.append((time.perf_counter() - t0) / images)
        mask_bytes = sum(sup.state_bytes().values())
        row = {"tasks": k, "mask_bytes": mask_bytes, "bytes_per_task": mask_bytes / k,
               "infer_s_per_image": times[-1], "first_batch_s_per_image": times[0], "peak_rss_mb": peak_rss_mb()}
        if device.startswith("cuda"):
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
        del sup, net
    return rows
