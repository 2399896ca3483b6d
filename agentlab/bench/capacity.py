"""`capacity`: the NNCTD estimate's suggested MLP width against the measured smallest width, on 8x8 digits, MNIST
and Fashion-MNIST, and against the plain Lambert-W count without corrections.

Measured width: MLPs [h, h] over a width grid, each trained with the estimate's own recipe (`train_mlp`: Adam,
lr 1e-3, batches of 128, cosine over max(20 passes, 3,000 steps)) and scored on the data set's test split; the
smallest width whose accuracy (mean over seeds) reaches 99% of the widest's, interpolated in log width between
grid points (`smallest_width`). Suggested width: `agentlab.capacity.estimate` with its defaults on the training
split (its probe scores held-out training examples, never the test split). Baseline: the width of the MLP with
`baseline_params(N)` parameters, the Lambert-W count of the raw number of examples with `BASELINE_N0`.

Calibration: the estimate's `n0` and the baseline's `BASELINE_N0` were each set once from the full MNIST sweep;
digits and Fashion-MNIST are held out. `mnist_implied_n0` re-derives n0 from this run's MNIST sweep and probe.

Parts (`--only`): digits, mnist, fashion; `--resume` reuses the sweeps an earlier invocation saved with the same
settings (runs/bench/capacity[-quick]-sweeps/), so only the estimates run again.

Full: widths 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 512, two seeds (digits: five, as its 540 test
images give a noisy accuracy), the whole training sets (digits: 70% of the 1,797 images, test 30%). Quick: one seed
(digits too), widths 2 to 128 in powers of 2, MNIST and Fashion-MNIST on 5,000 training and 2,000 test images, the
estimate with a 600-step probe.
Metrics: `<dataset>_suggested`, `_measured`, `_ratio` (suggested / measured), `_baseline`, `_baseline_ratio`,
`_wide_acc`, the estimate's factors; `nnctd_mean_ratio` and `baseline_mean_ratio` (mean over data sets of
max(r, 1/r), the factor by which a width is off), and the same over the held-out data sets.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.bench._sparse_common import first, one_thread, say
from agentlab.capacity import (BASELINE_N0, CapacityConfig, accuracy, baseline_params, estimate, flat, lambert_count,
                               mlp_params, mlp_width, smallest_width, train_mlp)
from agentlab.datasets import data_root
from agentlab.registry import BuildEnv

# seeds per data set: digits' 540 test images give a noisy accuracy, and its runs are cheap
FULL = {"widths": [2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 512], "seeds": {"digits": 5, "mnist": 2, "fashion": 2},
        "train_n": 0, "test_n": 0, "probe_steps": CapacityConfig().probe_steps}
QUICK = {"widths": [2, 4, 8, 16, 32, 64, 128], "seeds": {"digits": 1, "mnist": 1, "fashion": 1}, "train_n": 5000,
         "test_n": 2000, "probe_steps": 600}
DATASETS = ("digits", "mnist", "fashion")
CALIBRATION = "mnist"
DEPTH = 2


def load(name: str, root: Any, train_n: int, test_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) as float rows in [0, 1]."""
    if name == "digits":
        from agentlab.scenarios.digits import load_digits_split

        tr, te = load_digits_split(0.3, 0)
    else:
        from agentlab.scenarios import vision_data

        loader = {"mnist": vision_data.load_mnist, "fashion": vision_data.load_fashion_mnist}[name]
        tr, te = first(loader(root, train=True), train_n, 0), first(loader(root, train=False), test_n, 1)
    (xtr, ytr), (xte, yte) = tr.all(), te.all()
    return flat(xtr), ytr, flat(xte), yte


def sweep(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, widths: list[int], seeds: int,
          seed: int) -> dict[str, Any]:
    """Test accuracy (mean over seeds) per width; the smallest width reaching 99% of the widest's."""
    steps = max(3000, math.ceil(20 * len(xtr) / 128))
    accs = []
    for w in widths:
        a = [accuracy(train_mlp(xtr, ytr, w, DEPTH, 10, steps, seed + s), xte, yte) for s in range(seeds)]
        accs.append(sum(a) / len(a))
        say(f"capacity: width {w}: {100 * accs[-1]:.2f}%")
    return {"accs": accs, "steps": steps, "wide_acc": accs[-1], "width": smallest_width(widths, accs, 0.99 * accs[-1])}


def cached_sweep(name: str, data: tuple, p: dict[str, Any], args: BenchArgs) -> dict[str, Any]:
    """`sweep`, or with `--resume` the saved one of an earlier invocation with the same settings
    (runs/bench/capacity[-quick]-sweeps/<dataset>-seed<N>.json)."""
    settings = {"widths": p["widths"], "seeds": p["seeds"][name], "train_n": p["train_n"], "test_n": p["test_n"], "depth": DEPTH,
                "n_train": len(data[0])}
    path = Path("runs") / "bench" / f"capacity{'-quick' if args.quick else ''}-sweeps" / f"{name}-seed{args.seed}.json"
    if args.resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            say(f"capacity: {name}: reusing the sweep in {path}")
            return saved["result"]
    t0 = time.process_time()
    result = {**sweep(*data, p["widths"], p["seeds"][name], args.seed), "cpu_s": 0.0}
    result["cpu_s"] = time.process_time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "result": result}))
    return result


def implied_n0(n_eff: float, probe_n_eff: float, ratio: float) -> float:
    """The n0 for which P_W(n_eff) / P_W(probe_n_eff) equals `ratio` (bisection in log n0; the ratio falls from
    about n_eff / probe_n_eff to 1 as n0 grows); nan when out of reach."""
    f = lambda n0: lambert_count(n_eff, n0) / lambert_count(probe_n_eff, n0) - ratio  # noqa: E731
    lo, hi = 1e-4, 1e9
    if f(lo) < 0 or f(hi) > 0:
        return float("nan")
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return math.sqrt(lo * hi)


def off(r: float) -> float:
    """The factor by which a width is off: max(r, 1/r)."""
    return max(r, 1 / r) if r > 0 else math.inf


@register_bench("capacity", parts=True)
def bench_capacity(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """NNCTD's suggested MLP width against the measured smallest width reaching 99% of a wide MLP (digits, MNIST, Fashion)."""
    one_thread()
    p = QUICK if args.quick else FULL
    root = data_root(args.data_root or env.data_root)
    cfg = CapacityConfig(depth=DEPTH, probe_steps=p["probe_steps"], seed=args.seed)
    m: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    names = [n for n in DATASETS if not args.only or n in args.only]
    unknown = [n for n in args.only if n not in DATASETS]
    if unknown or not names:
        raise ValueError(f"capacity has no part {unknown[0] if unknown else ''!r}: parts are {', '.join(DATASETS)}")
    for name in names:
        xtr, ytr, xte, yte = load(name, root, p["train_n"], p["test_n"])
        d = xtr.shape[1]
        t0 = time.process_time()
        est = estimate(xtr, ytr, 10, cfg, say=lambda s: say(f"capacity: {name}: {s}"))
        est_cpu = time.process_time() - t0
        say(f"capacity: {name}: suggested width {est.width}\n{est.report()}")
        sw = cached_sweep(name, (xtr, ytr, xte, yte), p, args)
        sweep_cpu = sw["cpu_s"]
        base = mlp_width(baseline_params(len(xtr), BASELINE_N0), d, 10, DEPTH)
        measured = sw["width"]
        m.update({f"{name}_suggested": est.width, f"{name}_measured": measured, f"{name}_ratio": est.width / measured,
                  f"{name}_baseline": base, f"{name}_baseline_ratio": base / measured, f"{name}_wide_acc": sw["wide_acc"],
                  f"{name}_n": len(xtr), f"{name}_unique": est.factor("unique fraction u"),
                  f"{name}_noise": est.factor("label noise eta"), f"{name}_n_eff": est.factor("effective data N_eff"),
                  f"{name}_f_task": est.factor("task complexity f_task"), f"{name}_probe_width": est.probe["width"],
                  f"{name}_estimate_cpu_s": est_cpu, f"{name}_sweep_cpu_s": sweep_cpu})
        if name == CALIBRATION:
            n_eff = est.factor("effective data N_eff")
            m["mnist_implied_n0"] = implied_n0(n_eff, est.probe["n"] * n_eff / len(xtr),
                                               mlp_params(measured, d, 10, DEPTH) / est.probe["params"])
            m["mnist_implied_baseline_n0"] = len(xtr) / (lambda P: P * math.log(P))(mlp_params(measured, d, 10, DEPTH))
        for w, a in zip(p["widths"], sw["accs"]):
            rows.append({"dataset": name, "width": w, "params": int(mlp_params(w, d, 10, DEPTH)), "test_acc": a})
    held = [n for n in names if n != CALIBRATION]
    m["nnctd_mean_ratio"] = sum(off(m[f"{n}_ratio"]) for n in names) / len(names)
    m["baseline_mean_ratio"] = sum(off(m[f"{n}_baseline_ratio"]) for n in names) / len(names)
    if held:
        m["nnctd_heldout_mean_ratio"] = sum(off(m[f"{n}_ratio"]) for n in held) / len(held)
        m["baseline_heldout_mean_ratio"] = sum(off(m[f"{n}_baseline_ratio"]) for n in held) / len(held)
    worst = max(names, key=lambda n: off(m[f"{n}_ratio"]))
    goals = {
        "suggested width within a factor 2 of the measured on every data set": goal(
            all(off(m[f"{n}_ratio"]) <= 2 for n in names), f"{worst} off by {off(m[f'{worst}_ratio']):.2f}x"),
        "closer than the uncorrected Lambert-W count on average": goal(
            m["nnctd_mean_ratio"] < m["baseline_mean_ratio"],
            f"{m['nnctd_mean_ratio']:.2f}x vs {m['baseline_mean_ratio']:.2f}x"),
    }
    notes = (f"MLP [h, h]; widths {p['widths']}; seeds {p['seeds']} from {args.seed}; train_n {p['train_n'] or 'all'}, "
             f"test_n {p['test_n'] or 'all'}; probe {cfg.probe_steps} steps on {cfg.probe_n} examples; n0 {cfg.n0:g}, "
             f"baseline n0 {BASELINE_N0:g} (both calibrated on MNIST; digits and Fashion-MNIST held out)")
    return BenchResult(m, rows, goals, notes)
