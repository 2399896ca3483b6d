"""`vit-lottery`: lottery tickets in a Vision Transformer (iterative magnitude pruning with rewinding, random control).

Part `fashion` (always): a ViT of 4 blocks, 4 heads, width 64, MLP width 128, on 7x7 patches of
28x28 Fashion-MNIST (16 patch tokens and a class token; 139k parameters, 137k of them in prunable
Linear layers). Every Linear is pruned (`lottery` on every layer: patch embedding, attention's qkv and
output projections, MLPs, head), globally by magnitude, 20% of the remaining weights per round
(the head 10%), survivors rewound to their initial values (k = 0); every round's mask is also
trained from a random re-initialisation. Full: 11 rounds (down to 8.6% remaining), 6 epochs per
round (Adam 1e-3, cosine to 0, batch 128) on 55,000 training images, test accuracy at the epoch of
minimum loss on 5,000 held-out training images (Frankle & Carbin's early stopping), on the 10,000
test images. Per round and component (embedding, attention, mlp, head): the weights remaining and the
sensitivity, the test-accuracy drop when 20% more of that component's weights are removed without
retraining (on 2,000 test images).

Part `fashion-short`: the seed's claim ("64.8% at 49% sparsity against 58.7% dense") came from a
short training budget; the same network and schedule trained for 1 epoch per round, 3 rounds (down
to 51% remaining), to set the ticket's gain over dense at a short budget beside its gain at the
fair budget of part `fashion`.

Part `cifar10` (where CIFAR-10's python batches are under the data root, or asked for with
`--only cifar10`): the seed's ViT (6 blocks, 6 heads, width 192, MLP 768, 4x4 patches of 32x32
colour images, 2.7M parameters), the same pruning schedule, 10 epochs per round on 45,000 images
(5,000 held out): a GPU's budget (`--device cuda`). Quick: 3 epochs, 2 rounds of 50%, 5,000 images.

Quick (parts fashion and fashion-short): the same code on 3,000 training images (500 held out) and
1,000 test images, 2 epochs per round, 50% per round (the head 25%), 4 rounds (down to 6.3%).

Metrics: `dense_acc`, `ticket_acc_at_30pct` and `random_acc_at_30pct` (the first round with at most
30% remaining), `remaining_at_dense` (the smallest fraction remaining down to which every round's
ticket is at or above dense), `short_*` for the short budget, `cifar10_*` for CIFAR-10. TensorBoard:
runs/bench/vit-lottery[-quick]-tb/<part>/: plasticity/lottery/ticket_acc, random_acc (x = 10,000 x
fraction remaining), remaining/<component> and sensitivity/<component> by round, the curve image.
"""

from __future__ import annotations

import statistics
from typing import Any

from agentlab.bench import BenchArgs, BenchResult, goal, n_params, register_bench
from agentlab.bench._sparse_common import first, fresh_tb_dir, one_thread, say, tb_dir, vision_task
from agentlab.datasets import data_root
from agentlab.errors import UserError
from agentlab.registry import BuildEnv

FASHION_VIT = {"patch_size": 7, "dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0}
SEED_VIT = {"patch_size": 4, "dim": 192, "depth": 6, "heads": 6, "mlp_ratio": 4.0}
TRAIN = {"lr": 1e-3, "batch_size": 128, "lr_schedule": "cosine", "sensitivity": 0.2}

PARTS = {
    "fashion": {
        "full": {"epochs": 6, "rounds": 11, "prune": 0.2, "prune_out": 0.1, "train_n": 0, "test_n": 0, "validation": 5000,
                 "sens_n": 2000},
        "quick": {"epochs": 2, "rounds": 4, "prune": 0.5, "prune_out": 0.25, "train_n": 3000, "test_n": 1000, "validation": 500,
                  "sens_n": 500},
    },
    "fashion-short": {
        "full": {"epochs": 1, "rounds": 3, "prune": 0.2, "prune_out": 0.1, "train_n": 0, "test_n": 0, "validation": 5000,
                 "sens_n": 2000},
        "quick": {"epochs": 1, "rounds": 1, "prune": 0.5, "prune_out": 0.25, "train_n": 3000, "test_n": 1000, "validation": 500,
                  "sens_n": 500},
    },
    "cifar10": {
        "full": {"epochs": 10, "rounds": 11, "prune": 0.2, "prune_out": 0.1, "train_n": 0, "test_n": 0, "validation": 5000,
                 "sens_n": 2000},
        "quick": {"epochs": 3, "rounds": 2, "prune": 0.5, "prune_out": 0.25, "train_n": 5000, "test_n": 1000, "validation": 500,
                  "sens_n": 500},
    },
}


def _cifar_present(root: Any) -> bool:
    from agentlab.scenarios import cifar

    return all((root / f).exists() for f in cifar.expected_files(root))


def _task(part: str, root: Any, p: dict) -> Any:
    if part.startswith("fashion"):
        return vision_task("fashion", root, train_n=p["train_n"], test_n=p["test_n"])
    from agentlab.scenarios import cifar
    from agentlab.task import Task

    train, test = first(cifar.load_cifar10(root, True), p["train_n"], 0), first(cifar.load_cifar10(root, False), p["test_n"], 1)
    return Task(id=0, name="cifar10", kind="classification", train=train, eval=test, classes=tuple(range(10)))


def run_part(part: str, args: BenchArgs, root: Any) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """One IMP run of a part; (rows, facts: parameters, sizes, wall time)."""
    import time

    import torch

    from agentlab.agent import Agent
    from agentlab.backbones.vit import ViT
    from agentlab.context import FitContext
    from agentlab.learners.imp import IMPConfig, curve_image, run_imp
    from agentlab.plasticity.lottery import Lottery, LotteryConfig
    from agentlab.tblog import TBLogger

    p = PARTS[part]["quick" if args.quick else "full"]
    task = _task(part, root, p)
    shape = tuple(task.train.transform(task.train.x[:1]).shape[1:]) if task.train.transform else tuple(task.train.x.shape[1:])
    arch = FASHION_VIT if part.startswith("fashion") else SEED_VIT
    torch.manual_seed(args.seed)
    vit = ViT(image_size=shape[1:], channels=shape[0], out_features=10, **arch)
    lot = Lottery(LotteryConfig(scope="global", prune_fraction=p["prune"], output_fraction=p["prune_out"]), seed=args.seed)
    agent = Agent(vit, plasticity=[lot], label=f"vit-{part}").to(args.device)
    cfg = IMPConfig(epochs=p["epochs"], rounds=p["rounds"], control=True, validation=p["validation"],
                    sensitivity_examples=p["sens_n"], **TRAIN)
    log = TBLogger(tb_dir("vit-lottery", args.quick) / part)
    ctx = FitContext(generator=torch.Generator().manual_seed(args.seed), task_index=0, n_tasks=1, device=args.device,
                     log_scalar=log.scalar)
    show = lambda r: say(f"vit-lottery {part}: round {r['round']} remaining {100 * r['remaining']:.2f}% "  # noqa: E731
                         f"ticket {100 * r['ticket_acc']:.2f}% random {100 * r.get('random_acc', float('nan')):.2f}%")
    t0 = time.perf_counter()
    try:
        rows = run_imp(agent, task, cfg, ctx, seed=args.seed, on_row=show)
        log.image("plasticity/lottery/curve", curve_image(rows), len(rows) - 1)
    finally:
        log.close()
    prunable = sum(l.n_connections() for l in lot.layers.values())
    facts = {"params": n_params(vit), "prunable": prunable, "wall_s": time.perf_counter() - t0, "train_n": len(task.train),
             "test_n": len(task.eval), "arch": arch, "budget": p}
    return [{"part": part, **r} for r in rows], facts


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """dense_acc, ticket/random at the first round with <= 30% remaining, remaining_at_dense (contiguous from dense)."""
    dense = rows[0]["ticket_acc"]
    at30 = next((r for r in rows if r["remaining"] <= 0.30), rows[-1])
    at_dense = rows[0]["remaining"]
    for r in rows[1:]:
        if r["ticket_acc"] < dense:
            break
        at_dense = r["remaining"]
    return {"dense_acc": dense, "ticket_acc_at_30pct": at30["ticket_acc"], "random_acc_at_30pct": at30["random_acc"],
            "remaining_at_30pct_row": at30["remaining"], "remaining_at_dense": at_dense,
            "final_remaining": rows[-1]["remaining"], "ticket_acc_final": rows[-1]["ticket_acc"],
            "random_acc_final": rows[-1]["random_acc"]}


def component_table(rows: list[dict[str, float]]) -> str:
    comps = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("remaining/")})
    lines = ["round  remaining  " + "  ".join(f"{c:>20}" for c in comps) + "   (remaining % / sensitivity points)"]
    for r in rows:
        cells = [f"{100 * r[f'remaining/{c}']:6.1f}% / {100 * r.get(f'sensitivity/{c}', float('nan')):+6.2f}" for c in comps]
        lines.append(f"{int(r['round']):>5}  {100 * r['remaining']:8.2f}%  " + "  ".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


@register_bench("vit-lottery", parts=True, device=True, resumable=False)
def bench_vit_lottery(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Lottery tickets in a ViT on Fashion-MNIST (and CIFAR-10 where present): ticket vs random re-init, per component."""
    one_thread()
    fresh_tb_dir("vit-lottery", args.quick)
    root = data_root(args.data_root or env.data_root)
    unknown = [o for o in args.only if o not in PARTS]
    if unknown:
        raise UserError(f"vit-lottery has no part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    parts = list(args.only) or ["fashion", "fashion-short"] + (["cifar10"] if _cifar_present(root) else [])
    results = {part: run_part(part, args, root) for part in parts}
    metrics: dict[str, float] = {}
    goals: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    notes = []
    for part, (prow, facts) in results.items():
        rows += prow
        s = summarize(prow)
        prefix = {"fashion": "", "fashion-short": "short_", "cifar10": "cifar10_"}[part]
        metrics.update({prefix + k: v for k, v in s.items()})
        metrics[prefix + "wall_s"] = facts["wall_s"]
        notes.append(f"{part}: {facts['params']:,} parameters ({facts['prunable']:,} prunable), {facts['train_n']:,} training "
                     f"(some held out) / {facts['test_n']:,} test images, {facts['budget']}, {facts['wall_s']:.0f} s\n"
                     + component_table(prow))
        if part == "fashion-short":
            continue
        dense = s["dense_acc"]
        to30 = [r for r in prow if r["remaining"] >= s["remaining_at_30pct_row"]]
        below50 = [r for r in prow if r["remaining"] < 0.5]
        tag = "" if part == "fashion" else f" ({part})"
        goals[f"ticket >= dense down to <= 30% remaining{tag}"] = goal(
            all(r["ticket_acc"] >= dense for r in to30),
            "; ".join(f"{100 * r['remaining']:.1f}%: {100 * r['ticket_acc']:.2f}" for r in to30 if r["ticket_acc"] < dense)
            + f" vs dense {100 * dense:.2f}")
        goals[f"ticket above random at every round below 50%{tag}"] = goal(
            all(r["ticket_acc"] > r["random_acc"] for r in below50),
            "; ".join(f"{100 * r['remaining']:.1f}%: ticket {100 * r['ticket_acc']:.2f} random {100 * r['random_acc']:.2f}"
                      for r in below50 if r["ticket_acc"] <= r["random_acc"]))
    if "fashion" in results and "fashion-short" in results:
        # the ticket's gain over dense near half the weights, at the short and at the fair budget
        def gain(prow: list[dict[str, float]]) -> float:
            r = min((r for r in prow if r["round"] > 0), key=lambda r: abs(r["remaining"] - 0.5))
            return r["ticket_acc"] - prow[0]["ticket_acc"]

        metrics["short_gain_points_near_50pct"] = 100 * gain(results["fashion-short"][0])
        metrics["fair_gain_points_near_50pct"] = 100 * gain(results["fashion"][0])
    comps = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("sensitivity/")})
    for c in comps:  # mean sensitivity over the fair-budget rounds, per component
        vals = [r[f"sensitivity/{c}"] for r in rows if r["part"] == "fashion" and f"sensitivity/{c}" in r]
        if vals:
            metrics[f"sensitivity_{c}_mean"] = statistics.fmean(vals)
    return BenchResult(metrics, rows, goals, "\n\n".join(notes))
