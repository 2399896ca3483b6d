"""`speed`: the methods that promise speed, timed against what they replace, side by side in one process.

Every figure is a ratio of two step times measured in the same process on one thread, interleaved
(A, B, A, B, ...) and taken as the median of the repeats, so a shared, noisy machine slows both
sides alike; absolute times are in the JSON with the CPU model (`versions.cpu`).

* `dnc`: one forward + backward of a copy batch (batch 16, 42 steps, 10 inputs, memory 64 x 32,
  4 read heads, 1 write head, LSTM controller 128). `dnc_speedup` = ixaxaar/pytorch-dnc's time
  (PyPI `dnc` 1.1.0, `pip install 'agentlab[dnc-reference]'`, one controller layer: the same
  parameter count but for the LSTM's second bias) / ours (the fused unroll). Without that
  package the reference is our own autograd path, and the JSON says so (`dnc_reference`).
  `dnc_speedup_vs_autograd`: our autograd path / the fused unroll.
* `set`: one training step (forward, cross-entropy, backward, Adam) of the SET MLP 784-1000-1000-1000-10
  with eps = 24 (5.0% of the hidden layers' connections; the 10-unit output layer stays dense), batch 128
  of MNIST. `set_speedup` = the dense MLP's step / SET's step on CSR storage; `set_masked_speedup` = the
  dense MLP's / SET's masked dense product. Accuracy after one epoch (full: all 60,000 images; quick:
  8,000) for SET on CSR storage and on the masked dense product from the same initial network:
  `set_acc_diff_points` must stay within 0.5.
* `supsup`: one SupSup training step (top-k masks at density 0.5 on FC 784-1024-1024-500, batch 128,
  RMSProp 1e-4 on the scores, as recipe `supsup-pmnist`): `supsup_step_speedup` = the step with `kthvalue` for every mask / the step with
  the cached cut (`TopKCut`). `supsup_infer_us_2500`: one-shot task inference over 2,500 stored masks,
  microseconds per image on the CPU (images in batches of `INFER_BATCH`); `supsup_infer_speedup`: the
  superposed forward + autograd backward / the uniform-superposition fast path (`supermask_oneshot.py`),
  same images, 250 tasks.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from agentlab.bench import BenchArgs, BenchResult, goal, n_params, register_bench
from agentlab.registry import BuildEnv

PARTS = ("dnc", "set", "supsup")
DNC_SIZE = dict(memory_size=64, word_size=32, num_reads=4, num_writes=1, hidden_size=128)
SET_EPSILON = 24.0  # eps (784 + 3 x 1000 + ...) / positions: 5.0% of the three hidden matrices' connections
SET_HIDDEN = [1000, 1000, 1000]
SUPSUP_TASKS = 2500
INFER_BATCH = 32


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each function per repeat, the functions run in turn within every repeat."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t0)
    return out


def median_ms(times: list[float], per: int = 1) -> float:
    return 1e3 * statistics.median(times) / per


# ---------------------------------------------------------------------------- DNC


def _pytorch_dnc() -> Any:
    try:
        import dnc  # ixaxaar/pytorch-dnc

        return dnc
    except ImportError:
        return None


def dnc_part(quick: bool, seed: int) -> tuple[dict[str, float], list[dict[str, Any]], str]:
    from agentlab.memory.dnc import DNC
    from agentlab.scenarios.algorithmic import SequenceTaskSpec

    torch.manual_seed(seed)
    batch = SequenceTaskSpec("copy", 8).sample(torch.Generator().manual_seed(seed), 16, 20, 20)
    x, target, mask = batch.x, batch.y, batch.mask  # (16, 42, 10), (16, 42, 8), (16, 42)
    ours = DNC(input_size=10, output_size=8, **DNC_SIZE)
    autograd = copy.deepcopy(ours)
    autograd.fused = False

    def loss_of(y: torch.Tensor) -> torch.Tensor:
        ce = F.binary_cross_entropy_with_logits(y[..., :8], target, reduction="none").sum(-1)
        return (ce * mask).sum() / x.shape[0]

    def ours_step(m: Any = ours) -> None:
        m.zero_grad(set_to_none=True)
        y, _ = m(x, m.initial_state(x.shape[0]))
        loss_of(y).backward()

    fns: dict[str, Callable[[], Any]] = {"ours": ours_step, "autograd": lambda: ours_step(autograd)}
    lib = _pytorch_dnc()
    params_ref = 0
    if lib is not None:
        ref = lib.DNC(input_size=10, hidden_size=128, rnn_type="lstm", num_layers=1, num_hidden_layers=1, nr_cells=64,
                      cell_size=32, read_heads=4, batch_first=True, gpu_id=-1)
        params_ref = n_params(ref)

        def ref_step() -> None:
            ref.zero_grad(set_to_none=True)
            y, _ = ref(x, (None, None, None), reset_experience=True)
            loss_of(y).backward()

        fns = {"pytorch-dnc": ref_step, **fns}
    times = interleaved(fns, 5 if quick else 15)
    ms = {k: median_ms(v) for k, v in times.items()}
    reference = "pytorch-dnc" if lib is not None else "autograd"
    metrics = {"dnc_speedup": ms[reference] / ms["ours"], "dnc_speedup_vs_autograd": ms["autograd"] / ms["ours"],
               "dnc_ms": ms["ours"], "dnc_autograd_ms": ms["autograd"], "dnc_params": float(n_params(ours))}
    if lib is not None:
        metrics.update(dnc_ref_ms=ms["pytorch-dnc"], dnc_ref_params=float(params_ref))
    rows = [{"part": "dnc", "what": k, "ms_per_step": v, "repeats": len(times[k])} for k, v in ms.items()]
    note = ("dnc: reference ixaxaar/pytorch-dnc (PyPI dnc 1.1.0)" if lib is not None else
            "dnc: pytorch-dnc is not installed (pip install 'agentlab[dnc-reference]'): dnc_speedup is against our own autograd path")
    return metrics, rows, note


# ---------------------------------------------------------------------------- SET


def _set_agents(seed: int, lr: float, epochs: int) -> dict[str, Any]:
    from agentlab.agent import Agent
    from agentlab.backbones.mlp import MLP
    from agentlab.learners.finetune import FineTune
    from agentlab.learners.sgd import SGDConfig
    from agentlab.plasticity.set import SET, SETConfig

    out = {}
    for kind in ("dense", "masked", "sparse"):
        torch.manual_seed(seed)
        mlp = MLP(784, list(SET_HIDDEN), 10)
        plasticity = []
        if kind != "dense":
            plasticity = [SET(SETConfig(epsilon=SET_EPSILON, zeta=0.3, sparse_kernels=kind == "sparse"), seed=seed)]
        learner = FineTune(SGDConfig(epochs=epochs, lr=lr, batch_size=128, optimizer="adam"))
        out[kind] = Agent(mlp, plasticity=plasticity, learner=learner, label=kind)
    return out


def set_part(quick: bool, seed: int, root: Any) -> tuple[dict[str, float], list[dict[str, Any]], str]:
    from agentlab.bench._sparse_common import fit_one_task, vision_task
    from agentlab.optim import make_optimizer
    from agentlab.learners.sgd import SGDConfig

    task = vision_task("mnist", root, train_n=8000 if quick else 0, test_n=5000 if quick else 0)
    # step time: the same MNIST batches through the dense MLP and the two SET paths
    agents = _set_agents(seed, 1e-3, 1)
    x8, y8 = task.train.take(torch.arange(128 * 8))  # transformed as the learner sees them
    xs, ys = x8.reshape(8, 128, -1), y8.reshape(8, 128)
    opts = {k: make_optimizer(a.trainable_parameters(), SGDConfig(lr=1e-3, optimizer="adam")) for k, a in agents.items()}
    steps = 4

    def train_steps(kind: str) -> Callable[[], None]:
        agent, opt = agents[kind], opts[kind]
        agent.train()

        def run() -> None:
            for i in range(steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(agent.backbone(xs[i % 8]), ys[i % 8]).backward()
                opt.step()

        return run

    times = interleaved({k: train_steps(k) for k in agents}, 5 if quick else 15)
    ms = {k: median_ms(v, steps) for k, v in times.items()}
    sparse_set = agents["sparse"].plasticity[0]
    hidden = [l for n, l in sparse_set.layers.items() if l.n_connections() > 10 * 1000]
    density = sum(l.n_active() for l in hidden) / sum(l.n_connections() for l in hidden)
    # accuracy after one epoch: SET on CSR storage and on the masked dense product, from the same network
    accs = {}
    for kind in ("sparse", "masked"):
        agent = _set_agents(seed, 1e-3, 1)[kind]
        accs[kind], _ = fit_one_task(agent, task, seed=seed)
    metrics = {"set_speedup": ms["dense"] / ms["sparse"], "set_masked_speedup": ms["dense"] / ms["masked"],
               "set_dense_ms": ms["dense"], "set_masked_ms": ms["masked"], "set_sparse_ms": ms["sparse"],
               "set_density": density, "set_acc_sparse": accs["sparse"], "set_acc_masked": accs["masked"],
               "set_acc_diff_points": 100 * abs(accs["sparse"] - accs["masked"])}
    rows = [{"part": "set", "what": k, "ms_per_step": v, "repeats": len(times[k])} for k, v in ms.items()]
    note = f"set: one epoch of {len(task.train)} MNIST images, Adam 1e-3, batch 128; hidden density {density:.4f}"
    return metrics, rows, note


# ---------------------------------------------------------------------------- SupSup


def _supsup_mlp(seed: int) -> tuple[Any, Any]:
    from agentlab.backbones.mlp import MLP
    from agentlab.plasticity.supsup import SupSup, SupSupConfig

    torch.manual_seed(seed)
    mlp = MLP(784, [1024, 1024], 500)
    sup = SupSup(SupSupConfig(density=0.5, rule="topk"), seed=seed)
    sup.attach(mlp)
    return mlp, sup


def _store_random_masks(sup: Any, n_tasks: int, seed: int) -> None:
    """n_tasks frozen masks of random bits (density 0.5), packed as a trained task's are."""
    g = torch.Generator().manual_seed(seed)
    for layer in sup._layers.values():
        n = layer.weight.numel()
        for t in range(n_tasks):
            layer.register_buffer(f"mask_{t}", torch.randint(0, 256, ((n + 7) // 8,), dtype=torch.uint8, generator=g))
            layer.frozen.append(t)


def supsup_part(quick: bool, seed: int, root: Any) -> tuple[dict[str, float], list[dict[str, Any]], str]:
    from agentlab.bench._sparse_common import vision_task
    from agentlab.learners.sgd import SGDConfig
    from agentlab.optim import make_optimizer
    from agentlab.plasticity.supermask_layers import SupermaskLayer
    from agentlab.plasticity.task_inference import infer_tasks

    task = vision_task("mnist", root, train_n=2048, test_n=512)
    x8, y8 = task.train.take(torch.arange(128 * 8))  # transformed as the learner sees them
    xs, ys = x8.reshape(8, 128, -1), y8.reshape(8, 128)
    models = {}
    for kind in ("kthvalue", "cached"):
        mlp, sup = _supsup_mlp(seed)
        sup.on_task_start(task)
        sup.set_task(0)
        for m in mlp.modules():
            if isinstance(m, SupermaskLayer):
                m.cached_cut = kind == "cached"
        params = [p for p in mlp.parameters() if p.requires_grad]
        models[kind] = (mlp, make_optimizer(params, SGDConfig(lr=1e-4, optimizer="rmsprop")))  # as recipe supsup-pmnist
    steps = 4

    def train_steps(kind: str) -> Callable[[], None]:
        mlp, opt = models[kind]

        def run() -> None:
            for i in range(steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(mlp(xs[i % 8]), ys[i % 8]).backward()
                opt.step()

        return run

    times = interleaved({k: train_steps(k) for k in models}, 5 if quick else 15)
    ms = {k: median_ms(v, steps) for k, v in times.items()}
    rows = [{"part": "supsup", "what": f"train step ({k})", "ms_per_step": v, "repeats": len(times[k])} for k, v in ms.items()]
    metrics = {"supsup_step_speedup": ms["kthvalue"] / ms["cached"], "supsup_step_ms": ms["cached"],
               "supsup_step_kthvalue_ms": ms["kthvalue"]}
    # one-shot inference over 2,500 stored masks, and the superposed path against the fast one at fewer tasks
    mlp, sup = _supsup_mlp(seed)
    _store_random_masks(sup, SUPSUP_TASKS, seed)
    sup.eval()
    images = task.eval.take(torch.arange(INFER_BATCH if quick else 4 * INFER_BATCH))[0].flatten(1)  # 32 or 128 images

    def infer(n_tasks: int, fast: bool, n_images: int) -> float:
        """Microseconds per image of one-shot inference over the first n_tasks masks."""
        for layer in sup._layers.values():
            layer.fast_oneshot = fast
        t0 = time.perf_counter()
        for start in range(0, n_images, INFER_BATCH):
            infer_tasks(mlp, images[start : start + INFER_BATCH], sup.ctx, list(range(n_tasks)), method="oneshot",
                        chunk=INFER_BATCH)
        return 1e6 * (time.perf_counter() - t0) / n_images

    per_image = infer(SUPSUP_TASKS, True, images.shape[0])
    few = SUPSUP_TASKS // 10
    old_us, new_us = infer(few, False, INFER_BATCH), infer(few, True, INFER_BATCH)
    metrics.update(supsup_infer_us_2500=per_image, supsup_infer_speedup=old_us / new_us,
                   supsup_infer_superposed_us=old_us, supsup_infer_fast_us=new_us)
    rows.append({"part": "supsup", "what": f"one-shot inference, {SUPSUP_TASKS} tasks", "us_per_image": per_image,
                 "images": int(images.shape[0])})
    rows += [{"part": "supsup", "what": f"one-shot inference, {few} tasks, {k}", "us_per_image": v, "images": INFER_BATCH}
             for k, v in (("superposed", old_us), ("uniform fast path", new_us))]
    note = (f"supsup: FC 784-1024-1024-500, density 0.5, batch 128; inference over {SUPSUP_TASKS} random packed masks "
            f"in batches of {INFER_BATCH} images; supsup_infer_speedup at {few} tasks (superposed path with its default "
            "1 GiB stack cache / uniform fast path)")
    return metrics, rows, note


@register_bench("speed", parts=True, resumable=False)
def bench_speed(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """DNC vs pytorch-dnc, SET on CSR storage vs the dense MLP, SupSup's cached cut vs kthvalue; ratios in one process."""
    from agentlab.errors import UserError
    from agentlab.summary import cpu_name

    unknown = [p for p in args.only if p not in PARTS]
    if unknown:
        raise UserError(f"speed --only {unknown}: its parts are {list(PARTS)}")
    parts = [p for p in PARTS if not args.only or p in args.only]
    torch.set_num_threads(1)
    metrics: dict[str, float] = {"threads": float(torch.get_num_threads())}
    rows: list[dict[str, Any]] = []
    notes = [f"cpu: {cpu_name()}, one thread"]
    goals: dict[str, str] = {}
    if "dnc" in parts:
        m, r, n = dnc_part(args.quick, args.seed)
        metrics.update(m), rows.extend(r), notes.append(n)
        goals["DNC >= 2x pytorch-dnc"] = goal(m["dnc_speedup"] >= 2, f"{m['dnc_speedup']:.2f}x")
    if "set" in parts:
        m, r, n = set_part(args.quick, args.seed, env.data_root)
        metrics.update(m), rows.extend(r), notes.append(n)
        goals["SET step >= 2x the dense step"] = goal(m["set_speedup"] >= 2, f"{m['set_speedup']:.2f}x")
        goals["SET on CSR within 0.5 points of the masked dense path"] = goal(
            m["set_acc_diff_points"] <= 0.5, f"{m['set_acc_diff_points']:.2f} points")
    if "supsup" in parts:
        m, r, n = supsup_part(args.quick, args.seed, env.data_root)
        metrics.update(m), rows.extend(r), notes.append(n)
        goals["SupSup step >= 1.5x"] = goal(m["supsup_step_speedup"] >= 1.5, f"{m['supsup_step_speedup']:.2f}x")
    return BenchResult(metrics, rows, goals, "; ".join(notes))
