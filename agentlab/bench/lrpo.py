"""`lrpo`: the learning-rate predictor against constant, step, cosine, one-cycle and ReduceLROnPlateau on
Fashion-MNIST, at the seed's 100-pass reference budget and at LRPO's own stopping point.

Every run trains through the library's fine-tuning learner (`train_split`, the `Schedule` protocol) with the same
optimiser: SGD, momentum 0.9, lr 0.05, batches of 128, no weight decay; only `lr_schedule` differs (step: x0.1 at
50% and 75% of the steps; one-cycle: 30% warm-up, momentum not cycled; plateau: x0.1 after 3 passes without a 1%
drop of the pass's training loss; lrpo: its defaults, x0.1 per decay). Two models, sized so that the full mode
takes about half an hour of CPU (one thread; 66 minutes of wall time on a shared 2-core machine):

* `mlp`: 784-256-128-10 ReLU MLP on the full training set (60,000 images);
* `cnn`: the library's conv-4 with 16 filters per block (4 x conv3x3-BN-ReLU-maxpool, 16-d embedding, linear head;
  about 7,400 parameters) on a fixed random 10,000 of the training images.

Test accuracy is on the full 10,000 test images. For each model: every schedule with the reference budget (100
passes; LRPO may stop earlier), then every fixed schedule again with LRPO's number of passes as its budget (so a
schedule that knows the short budget in advance is compared too). Quick: the same code, a 10-pass reference budget,
5,000 / 2,000 training and 2,000 test images.

Metrics per model (`mlp_`, `cnn_` prefix): `lrpo_acc`, `lrpo_epochs`, `best_schedule` (the best fixed schedule at
the reference budget), `best_acc`, `best_epochs`, `time_ratio` (LRPO's training time / the best schedule's), the
best fixed schedule at LRPO's budget (`short_best_schedule`, `short_best_acc`), `<schedule>_acc`, and
`lrpo_pred_err` (mean |predicted - observed| / observed of LRPO's one-pass-ahead loss predictions). TensorBoard:
runs/bench/lrpo[-quick]-tb/<model>_<schedule> (`charts/lr`, `lrpo/*`, `losses/*`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from agentlab.agent import Agent
from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.bench._sparse_common import fit_one_task, fresh_tb_dir, one_thread, say, tb_dir, vision_task
from agentlab.datasets import data_root
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.registry import BuildEnv

FIXED = ("constant", "step", "cosine", "onecycle", "plateau")
OPTIMIZER = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 128}
FULL = {"budget": 100, "train_n": {"mlp": 0, "cnn": 10_000}, "test_n": 0}
QUICK = {"budget": 10, "train_n": {"mlp": 5_000, "cnn": 2_000}, "test_n": 2_000}


def build_model(model: str) -> torch.nn.Module:
    from agentlab.backbones.conv4 import Conv4
    from agentlab.backbones.mlp import MLP

    if model == "mlp":
        return MLP(784, [256, 128], 10)
    return Conv4(in_channels=1, hidden=16, out_features=10, embed_dim=16)


def train_once(model: str, task: Any, schedule: str, epochs: int, seed: int, log_dir: Path | None = None,
               device: str = "cpu") -> dict[str, Any]:
    """One training run; returns test accuracy, passes trained, training seconds and the learner's schedule state."""
    from agentlab.tblog import TBLogger

    torch.manual_seed(seed)
    learner = FineTune(SGDConfig(epochs=epochs, lr_schedule=schedule, **OPTIMIZER))  # type: ignore[arg-type]
    agent = Agent(build_model(model), learner=learner, label=schedule)
    log = TBLogger(log_dir) if log_dir is not None else None
    cpu0 = time.process_time()
    try:
        acc, secs = fit_one_task(agent, task, seed=seed, log=log, device=device)
    finally:
        if log is not None:
            log.close()
    cpu = time.process_time() - cpu0  # one thread: the training's own time, whatever else the machine runs
    state = learner.schedules.get(str(task.id), {})
    return {"acc": acc, "epochs": state.get("epochs", epochs), "train_s": secs, "cpu_s": cpu, "state": state}  # LRPO counts its passes


def prediction_error(state: dict[str, Any]) -> float:
    """Mean |predicted - observed| / observed of LRPO's one-pass-ahead loss predictions (nan without any)."""
    preds = state.get("predictions", [])
    return sum(abs(p - o) / o for _, p, o in preds) / len(preds) if preds else float("nan")


def time_ratio(lrpo: dict[str, Any], best: dict[str, Any], device: str) -> float:
    """LRPO's training time over the best schedule's: process CPU time on the CPU (one thread, so it is the
    training's own time even on a shared machine), wall time on a GPU."""
    key = "cpu_s" if device == "cpu" else "train_s"
    return lrpo[key] / best[key]


def compare(model: str, task: Any, budget: int, seed: int, tb: Path | None, device: str = "cpu") -> tuple[dict[str, float], list[dict]]:
    """Every schedule on one model: the reference budget, LRPO, then the fixed schedules at LRPO's passes."""
    m: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    def run(schedule: str, epochs: int, tag: str) -> dict[str, Any]:
        r = train_once(model, task, schedule, epochs, seed, (tb / f"{model}_{tag}") if tb else None, device)
        say(f"lrpo: {model} {tag}: {100 * r['acc']:.2f}% after {r['epochs']} passes, {r['train_s']:.0f} s")
        rows.append({"model": model, "schedule": schedule, "budget": epochs, "epochs": r["epochs"], "test_acc": r["acc"],
                     "train_s": r["train_s"], "cpu_s": r["cpu_s"]})
        return r

    ref = {s: run(s, budget, s) for s in FIXED}
    lrpo = run("lrpo", budget, "lrpo")
    short = {s: run(s, lrpo["epochs"], f"{s}_at_lrpo") for s in FIXED} if lrpo["epochs"] < budget else ref
    best = max(FIXED, key=lambda s: ref[s]["acc"])
    short_best = max(FIXED, key=lambda s: short[s]["acc"])
    m.update({"lrpo_acc": lrpo["acc"], "lrpo_epochs": lrpo["epochs"], "best_schedule": best, "best_acc": ref[best]["acc"],
              "best_epochs": ref[best]["epochs"], "time_ratio": time_ratio(lrpo, ref[best], device),
              "lrpo_train_s": lrpo["train_s"], "best_train_s": ref[best]["train_s"],
              "lrpo_cpu_s": lrpo["cpu_s"], "best_cpu_s": ref[best]["cpu_s"],
              "short_best_schedule": short_best, "short_best_acc": short[short_best]["acc"],
              "lrpo_pred_err": prediction_error(lrpo["state"]),
              "lrpo_decisions": ", ".join(f"{d['action']}@{d['epoch'] + 1}" for d in lrpo["state"].get("decisions", []))})
    for s in FIXED:
        m[f"{s}_acc"] = ref[s]["acc"]
        m[f"{s}_at_lrpo_acc"] = short[s]["acc"]
    return m, rows


@register_bench("lrpo", device=True)
def bench_lrpo(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """LRPO against constant, step, cosine, one-cycle and plateau schedules on Fashion-MNIST (MLP and small CNN)."""
    one_thread()
    p = QUICK if args.quick else FULL
    tb = fresh_tb_dir("lrpo", args.quick)
    root = data_root(args.data_root or env.data_root)
    metrics: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    goals: dict[str, str] = {}
    for model in ("mlp", "cnn"):
        task = vision_task("fashion", root, train_n=p["train_n"][model], test_n=p["test_n"])
        m, r = compare(model, task, p["budget"], args.seed, tb, args.device)
        rows += r
        metrics.update({f"{model}_{k}": v for k, v in m.items()})
        ok = m["lrpo_acc"] >= m["best_acc"] - 0.01 and m["lrpo_epochs"] <= 0.2 * m["best_epochs"]
        goals[f"{model}: within 1 point of the best schedule with <= 20% of its passes"] = goal(
            ok, f"{100 * m['lrpo_acc']:.2f}% in {m['lrpo_epochs']} passes vs {m['best_schedule']} "
                f"{100 * m['best_acc']:.2f}% in {m['best_epochs']}")
    notes = (f"Fashion-MNIST; SGD momentum 0.9, lr 0.05, batch 128; reference budget {p['budget']} passes; "
             f"train images mlp {p['train_n']['mlp'] or 60000}, cnn {p['train_n']['cnn']}; test images {p['test_n'] or 10000}; "
             f"seed {args.seed}; device {args.device}; TensorBoard {tb_dir('lrpo', args.quick)}")
    return BenchResult(metrics, rows, goals, notes)
