"""`moe`: an expert-choice ViT against a dense ViT with the same active parameters, and per-task experts on a stream.

Part `fashion` (Fashion-MNIST, one 10-class task), the `moe-fashion` recipe's two agents: ViTs of 4 blocks, 4 heads, width 64 on 7x7
patches (17 tokens with the class token). The expert-choice ViT has an MoE in every block: 8
experts of hidden width 64, capacity factor 2, so each token is processed by 2 experts on average
(2 x 8.3k = 16.6k expert parameters per token and block); the dense ViT's MLPs have hidden width
128 (16.5k). Both trained alike (Adam 1e-3, cosine to 0, batch 128; full: 10 epochs on 60,000
images, quick: 2 epochs on 3,000 and 1,000 test images). Reported: test accuracy, training seconds (one process, one
thread), parameters, and the routing figures over the whole test set: the maximum over layers,
batches and experts of tokens processed / capacity (exactly 1 by construction), the share of tokens
no expert took (the residual path carries them), experts per token and router entropy.

Part `split` (Split Fashion-MNIST class-incremental, 5 tasks of 2 garments): the `moe-split-fashion`
recipe's agents, an expert-choice ViT (MoE in blocks 2 and 4: 4 experts of hidden 128, capacity 1)
with `experts` (4 new experts per MoE layer and task, old ones frozen, the router extended),
- `experts_memory`: the task of each test image answered by an episodic memory at the input
  (k nearest stored examples; the composition mechanism of docs/composition.md),
- `experts_entropy`: the task inferred by the experts module alone (lowest output entropy),
- `finetune`: the same ViT fine-tuned (the lower bound);
3 epochs per task (quick: 2 epochs, 2,000 images per task). After every task each seen task is
evaluated without its label (class-IL) and with it (the task's own experts): accuracy matrices,
average accuracy and BWT for both. TensorBoard: runs/bench/moe[-quick]-tb/<part>/<agent>: the
routing figures and the expert-utilisation image after every task.

Metrics: `moe_acc`, `dense_same_active_acc`, `moe_train_s`, `dense_train_s`, `max_load_ratio`,
`dropped_token_share`, `experts_per_token`, `router_entropy`; `moe_stream_acc` and `moe_stream_bwt`
(experts_memory, class-IL), `*_task_given`, `entropy_stream_acc`, `finetune_stream_acc`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from agentlab.bench import BenchArgs, BenchResult, goal, n_params, register_bench
from agentlab.bench._sparse_common import fresh_tb_dir, one_thread, say, sync, tb_dir
from agentlab.datasets import data_root
from agentlab.errors import UserError
from agentlab.registry import BuildEnv

FASHION = {"full": [], "quick": ["stream.max_per_task=3000", "stream.max_eval_per_task=1000", "learner.epochs=2"]}
SPLIT = {"full": [], "quick": ["stream.max_per_task=2000", "stream.max_eval_per_task=300", "learner.epochs=2"]}
PARTS = ("fashion", "split")


def _routing_over(agent: Any, task: Any, device: str) -> dict[str, float]:
    """Routing figures over a whole evaluation pass: max load ratio (max), the rest averaged over batches."""
    import torch

    from agentlab.backbones.moe import moe_scalars

    agent.eval()
    seen: dict[str, list[float]] = {}
    with torch.no_grad():
        for batch in task.eval.batches(500):
            agent(batch.x.to(device), task.id)
            for k, v in moe_scalars(agent.backbone).items():
                if k.startswith("moe/"):
                    seen.setdefault(k[4:], []).append(v)
    return {k: (max(v) if k == "max_load_ratio" else sum(v) / len(v)) for k, v in seen.items()}


def _active_expert_params(vit: Any) -> float:
    """Expert (or dense MLP) parameters a token passes through per block, averaged over blocks."""
    from agentlab.backbones.moe import ExpertChoiceMoE

    per_block = []
    for block in vit.blocks:
        mlp = block.mlp
        if isinstance(mlp, ExpertChoiceMoE):
            per_expert = n_params(mlp.groups[0].experts[0])
            per_block.append(mlp.cfg.capacity * per_expert + n_params(mlp.groups[0].router))
        else:
            per_block.append(n_params(mlp))
    return sum(per_block) / len(per_block)


def _recipe_agents(name: str, overrides: list[str], args: BenchArgs, root: Any) -> tuple[Any, Any, Any]:
    """(resolved recipe, its stream, BuildEnv) of a shipped recipe with overrides; agents are built by the caller."""
    from agentlab import recipe as recipes
    from agentlab.seeding import seed_everything

    rname, table = recipes.read_recipe(name)
    resolved = recipes.resolve(rname, recipes.apply_overrides(table, [f"seed={args.seed}", *overrides]))
    env = BuildEnv(seed=resolved.seed, data_root=root, device=args.device)
    seed_everything(resolved.seed)
    stream = recipes.build_stream(resolved, env)
    env.stream = stream
    return resolved, stream, env


def part_fashion(args: BenchArgs, root: Any) -> tuple[dict[str, float], list[dict[str, Any]], str]:
    from agentlab import recipe as recipes
    from agentlab.bench._sparse_common import fit_one_task
    from agentlab.seeding import seed_everything
    from agentlab.tblog import TBLogger

    overrides = FASHION["quick" if args.quick else "full"]
    resolved, stream, env = _recipe_agents("moe-fashion", overrides, args, root)
    task = stream[0]
    rows, metrics = [], {}
    for label, spec in resolved.agents.items():
        seed_everything(resolved.seed)
        agent = recipes.build_agent(label, spec, env)
        vit = agent.backbone
        log = TBLogger(tb_dir("moe", args.quick) / "fashion" / label)
        try:
            acc, train_s = fit_one_task(agent, task, seed=args.seed, log=log, device=args.device)
            routing = _routing_over(agent, task, args.device) if vit.scalars() else {}
            for k, v in vit.scalars().items():
                log.scalar(f"backbone/{k}", v, 0)
            for k, img in vit.images().items():
                log.image(f"backbone/{k}", img, 0)
        finally:
            log.close()
        say(f"moe fashion {label}: acc {100 * acc:.2f}% in {train_s:.0f} s")
        row = {"part": "fashion", "agent": label, "acc": acc, "train_s": train_s, "params": n_params(vit),
               "active_mlp_params_per_token_and_block": _active_expert_params(vit), **routing}
        rows.append(row)
        metrics[f"{label}_acc"] = acc
        metrics[f"{label}_train_s"] = train_s
        metrics[f"{label}_params"] = float(n_params(vit))
        if routing:
            metrics.update(routing)
    metrics["dense_train_s"] = metrics.pop("dense_same_active_train_s")
    notes = (f"fashion: recipe moe-fashion with {overrides}; {len(task.train):,} training images, {len(task.eval):,} test; "
             "active MLP parameters per token and block: "
             + ", ".join(f"{r['agent']} {r['active_mlp_params_per_token_and_block']:,.0f}" for r in rows))
    return metrics, rows, notes


def part_split(args: BenchArgs, root: Any) -> tuple[dict[str, float], list[dict[str, Any]], str]:
    import numpy as np

    from agentlab import recipe as recipes
    from agentlab.context import FitContext
    from agentlab.evaluate import evaluate
    from agentlab.metrics import summarize
    from agentlab.seeding import seed_everything
    from agentlab.tblog import TBLogger

    overrides = SPLIT["quick" if args.quick else "full"]
    resolved, stream, env = _recipe_agents("moe-split-fashion", overrides, args, root)
    tasks = [stream[i] for i in range(len(stream))]
    metrics, rows = {}, []
    for label, spec in resolved.agents.items():
        generator = seed_everything(resolved.seed)
        agent = recipes.build_agent(label, spec, env).to(args.device)
        T = len(tasks)
        R = {"inferred": np.full((T, T), np.nan), "given": np.full((T, T), np.nan)}
        inference = []
        log = TBLogger(tb_dir("moe", args.quick) / "split" / label)
        t0 = time.perf_counter()
        train_s = 0.0
        try:
            for i, task in enumerate(tasks):
                ctx = FitContext(generator=generator, task_index=i, n_tasks=T, device=args.device, log_scalar=log.scalar)
                t1 = time.perf_counter()
                agent.start_task(task)
                agent.learner.fit(agent, task, ctx)
                agent.end_task(task)
                sync(args.device)
                train_s += time.perf_counter() - t1
                for j in range(i + 1):
                    res = evaluate(agent, tasks[j], device=args.device)
                    R["inferred"][i, j] = res.acc
                    if j == i and "task_inference_acc" in res.extra:
                        inference.append(res.extra["task_inference_acc"])
                    R["given"][i, j] = evaluate(agent, dataclasses.replace(tasks[j], task_label_at_test=True), device=args.device).acc
                log.scalars(agent.scalars(), i)
                for k, img in agent.images().items():
                    log.image(k, img, i)
                say(f"moe split {label}: after task {i} class-IL row {np.round(100 * R['inferred'][i, : i + 1], 1).tolist()}")
        finally:
            log.close()
        inferred, given = summarize(R["inferred"], None), summarize(R["given"], None)
        row = {"part": "split", "agent": label, "avg_acc": inferred["avg_acc"], "bwt": inferred["bwt"],
               "avg_acc_task_given": given["avg_acc"], "bwt_task_given": given["bwt"],
               "task_inference_acc": float(np.mean(inference)) if inference else float("nan"), "train_s": train_s,
               "wall_s": time.perf_counter() - t0, "R_inferred": np.round(R["inferred"], 4).tolist(),
               "R_given": np.round(R["given"], 4).tolist()}
        rows.append(row)
        say(f"moe split {label}: class-IL {100 * row['avg_acc']:.2f}% BWT {100 * row['bwt']:+.2f}; task given "
            f"{100 * row['avg_acc_task_given']:.2f}% BWT {100 * row['bwt_task_given']:+.2f}")
    by = {r["agent"]: r for r in rows}
    m = by["experts_memory"]
    metrics.update({"moe_stream_acc": m["avg_acc"], "moe_stream_bwt": m["bwt"], "moe_stream_task_inference": m["task_inference_acc"],
                    "moe_stream_acc_task_given": m["avg_acc_task_given"], "moe_stream_bwt_task_given": m["bwt_task_given"],
                    "entropy_stream_acc": by["experts_entropy"]["avg_acc"], "entropy_stream_bwt": by["experts_entropy"]["bwt"],
                    "entropy_stream_task_inference": by["experts_entropy"]["task_inference_acc"],
                    "finetune_stream_acc": by["finetune"]["avg_acc"], "finetune_stream_bwt": by["finetune"]["bwt"]})
    notes = f"split: recipe moe-split-fashion with {overrides}; " + "; ".join(
        f"{r['agent']}: class-IL {100 * r['avg_acc']:.2f}% (BWT {100 * r['bwt']:+.2f}), task given {100 * r['avg_acc_task_given']:.2f}% "
        f"(BWT {100 * r['bwt_task_given']:+.2f}), {r['train_s']:.0f} s" for r in rows)
    return metrics, rows, notes


@register_bench("moe", parts=True, device=True, resumable=False)
def bench_moe(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Expert-choice ViT vs a dense ViT of the same active parameters on Fashion-MNIST; per-task experts on Split Fashion-MNIST."""
    one_thread()
    fresh_tb_dir("moe", args.quick)
    unknown = [o for o in args.only if o not in PARTS]
    if unknown:
        raise UserError(f"moe has no part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    parts = list(args.only) or list(PARTS)
    root = data_root(args.data_root or env.data_root)
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    notes, goals = [], {}
    if "fashion" in parts:
        m, r, n = part_fashion(args, root)
        metrics.update(m), rows.extend(r), notes.append(n)
        goals["max over experts of tokens processed / capacity = 1"] = goal(m["max_load_ratio"] == 1.0, f"{m['max_load_ratio']:.4f}")
        goals["expert-choice ViT within 1 point of the dense ViT of the same active parameters"] = goal(
            m["moe_acc"] >= m["dense_same_active_acc"] - 0.01,
            f"{100 * m['moe_acc']:.2f}% vs {100 * m['dense_same_active_acc']:.2f}%")
    if "split" in parts:
        m, r, n = part_split(args, root)
        metrics.update(m), rows.extend(r), notes.append(n)
        goals["per-task experts: class-IL BWT >= -1 point"] = goal(m["moe_stream_bwt"] >= -0.01, f"{100 * m['moe_stream_bwt']:+.2f} points")
        goals["per-task experts: BWT >= -1 point with the task given"] = goal(
            m["moe_stream_bwt_task_given"] >= -0.01, f"{100 * m['moe_stream_bwt_task_given']:+.2f} points")
    return BenchResult(metrics, rows, goals, "\n".join(notes))
