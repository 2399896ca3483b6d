"""`set-mnist`: a 3-hidden-layer SET MLP on MNIST at <= 5% of its connections, against the dense MLP of the same shape.

Also Fashion-MNIST at the same density against its dense network, and the
training time of each. Full: 784-1000-1000-1000-10 (the SET paper's MNIST
shape), eps = 20 (4.5% of connections), zeta = 0.3, Adam; quick: the same
networks on a fixed subset of the data for fewer epochs.
TensorBoard (runs/bench/set-mnist[-quick]-tb/<dataset>_set): per rewiring
`plasticity/set/pruned|regrown/<layer>` and `plasticity/set/density/total`;
at the end the module's scalars and |w| histogram images.
"""

from __future__ import annotations

from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.bench._sparse_common import (
    fit_one_task,
    fresh_tb_dir,
    one_thread,
    say,
    tb_dir,
    vision_task,
)
from agentlab.datasets import data_root
from agentlab.learners.finetune import FineTune
from agentlab.learners.sgd import SGDConfig
from agentlab.plasticity.set import SET, SETConfig
from agentlab.registry import BuildEnv

# Full: 60 epochs, Adam 1e-3 with a cosine decay, dropout 0.3 for both
# networks; about 2 minutes per network on an H100 (`--device cuda`), several hours on 2 CPU cores.
FULL = {"hidden": [1000, 1000, 1000], "epsilon": 20.0, "epochs": 60, "train_n": 0, "test_n": 0, "batch_size": 128,
        "sparse_lr": 1e-3, "dense_lr": 1e-3, "schedule": "cosine", "dropout": 0.3}
# Quick: a short constant-rate run, where a sparse layer's larger weights need a larger Adam lr to move: on the quick
# subset, SET reached 89.4% / 91.5% / 92.5% at lr 1e-3 / 3e-3 / 1e-2.
QUICK = {"hidden": [1000, 1000, 1000], "epsilon": 20.0, "epochs": 2, "train_n": 8000, "test_n": 5000, "batch_size": 128,
         "sparse_lr": 1e-2, "dense_lr": 1e-3, "schedule": "constant", "dropout": 0.0}


def _agent(p: dict, seed: int, sparse: bool) -> tuple[Agent, SET | None]:
    import torch

    torch.manual_seed(seed)
    mlp = MLP(784, list(p["hidden"]), 10, dropout=p["dropout"])
    s = SET(SETConfig(epsilon=p["epsilon"], zeta=0.3), seed=seed) if sparse else None
    lr = p["sparse_lr"] if sparse else p["dense_lr"]
    learner = FineTune(SGDConfig(epochs=p["epochs"], lr=lr, batch_size=p["batch_size"], optimizer="adam", lr_schedule=p["schedule"]))
    return Agent(mlp, plasticity=[s] if s else [], learner=learner, label="set" if sparse else "dense"), s


def _log_set(s: SET, log_dir) -> None:
    from agentlab.tblog import TBLogger

    log = TBLogger(log_dir)
    for i, entry in enumerate(s.rewire_log):
        for layer, (p, g) in entry["counts"].items():
            log.scalar(f"plasticity/set/pruned/{layer}", p, i)
            log.scalar(f"plasticity/set/regrown/{layer}", g, i)
        log.scalar("plasticity/set/zeta", entry["zeta"], i)
    last = len(s.rewire_log)
    log.scalars({f"plasticity/set/{k}": v for k, v in s.scalars().items()}, last)
    for tag, img in s.images().items():
        log.image(f"plasticity/set/{tag}", img, last)
    log.close()


@register_bench("set-mnist", device=True)
def bench_set_mnist(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """SET MLP (3 hidden layers, <= 5% connections) on MNIST and Fashion-MNIST against the dense MLP."""
    one_thread()
    fresh_tb_dir("set-mnist", args.quick)
    p = QUICK if args.quick else FULL
    root = data_root(args.data_root or env.data_root)
    rows, m = [], {}
    for dataset in ("mnist", "fashion"):
        task = vision_task(dataset, root, train_n=p["train_n"], test_n=p["test_n"])
        for sparse in (True, False):
            agent, s = _agent(p, args.seed, sparse)
            say(f"set-mnist: training {'SET' if sparse else 'dense'} on {dataset} ({len(task.train)} examples, {p['epochs']} epochs)")
            acc, secs = fit_one_task(agent, task, seed=args.seed, device=args.device)
            density = s.scalars()["density/total"] if s else 1.0
            say(f"set-mnist: {dataset} {'SET' if sparse else 'dense'} test acc {100 * acc:.2f}% density {density:.4f} train {secs:.0f}s")
            rows.append({"dataset": dataset, "net": "set" if sparse else "dense", "test_acc": acc, "density": density,
                         "active_connections": s.scalars()["active_connections"] if s else sum(l.weight.numel() for l in agent.backbone.layers if hasattr(l, "weight")),
                         "train_s": secs})
            if s:
                _log_set(s, tb_dir("set-mnist", args.quick) / f"{dataset}_set")
            key = ("" if dataset == "mnist" else "fashion_") + ("" if sparse else "dense_")
            m[f"{key}test_acc"] = acc
            m[f"{key}train_s"] = secs
            if sparse:
                m[f"{'' if dataset == 'mnist' else 'fashion_'}density"] = density
    goals = {
        "MNIST test acc >= 98.4% at <= 5% connections": goal(m["test_acc"] >= 0.984 and m["density"] <= 0.05,
                                                               f"{100 * m['test_acc']:.2f}% at density {100 * m['density']:.2f}%"),
    }
    notes = (f"hidden={p['hidden']} eps={p['epsilon']} zeta=0.3 epochs={p['epochs']} Adam lr={p['sparse_lr']} (SET) / {p['dense_lr']} (dense) "
             f"{p['schedule']} schedule, dropout {p['dropout']}, batch={p['batch_size']}, device {args.device}; "
             f"train_n={p['train_n'] or 'all'} test_n={p['test_n'] or 'all'}; masked dense kernels (training time is not reduced by sparsity)")
    return BenchResult(m, rows, goals, notes)
