"""`dnc-copy`: the DNC on copy, repeat-copy and associative recall against an LSTM baseline.

Every model trains with the `sequence` learner (Adam, gradient clipping, length
curriculum) on lengths 1-20 of 8-bit patterns, for a step budget and a wall-clock
budget, whichever ends first; the cost is in bits per sequence at the trained
lengths and at 21-40 (generalisation). The LSTM's width is chosen so that its
parameter count is close to the DNC's. Speed: optimiser steps per second at batch
16 on copy sequences of length 20 (41 time steps), 64 slots of width 32,
4 read heads, 1 write head, one CPU thread (always on the CPU, whatever the device).

`--device cuda` trains on the GPU with a larger batch and torch.compile'd DNC steps
(a Python time loop of small operations is launch-bound there; AGENTLAB_DNC_COMPILE=0
keeps them eager) and shorter wall-clock budgets (the lent GPU allows 10 minutes a
command); `--only copy,lstm` and `--only repeat_copy,recall` split the full mode over
two commands, and `AGENTLAB_DNC_BUDGET_S=repeat_copy=3600,recall=1200` gives parts other
wall-clock budgets (the rows record the seconds and steps each part trained).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from agentlab.agent import Agent
from agentlab.bench import BenchArgs, BenchResult, n_params, register_bench
from agentlab.context import FitContext
from agentlab.errors import UserError
from agentlab.learners.sequence import SequenceConfig, SequenceLearner
from agentlab.optim import backward_step
from agentlab.registry import BuildEnv
from agentlab.seeding import seed_everything

DNC_SIZE = dict(memory_size=64, word_size=32, num_reads=4, num_writes=1, hidden_size=128)
PARTS = ("copy", "lstm", "repeat_copy", "recall")
# The DNC's controller per part. Copy and recall use the feed-forward controller: with an LSTM
# controller the curriculum stalls at max length 3-5 because the controller memorises short
# patterns in its own state (a shortcut that stops paying off beyond a few steps, by when the
# memory path has had no gradient pressure); a feed-forward controller has no state, so it can
# only solve the task through the memory, and it learns the write-allocate / read-forward
# solution within ~1,500 steps (docs/memory-dnc-hopfield.md has the figures). Repeat-copy needs
# a repeat counter, which a stateless controller lacks, so it keeps the LSTM.
CONTROLLER = {"copy": "feedforward", "repeat_copy": "lstm", "recall": "feedforward"}
# Repeat-copy's training cost at a constant 1e-3 jumped between 0.002 and 0.05 bits per batch in the
# last ten minutes of an hour (docs/memory-dnc-hopfield.md): its rate anneals to 0 over the budget.
LR_SCHEDULE = {"repeat_copy": "cosine"}


def matched_lstm_width(target: int, i: int, o: int) -> int:
    """The LSTM width h whose parameter count 4h(i + h + 2) + (h + 1) o is closest to `target`."""
    return min(range(8, 2048), key=lambda h: abs(4 * h * (i + h + 2) + (h + 1) * o - target))


def budgets(quick: bool, device: str, override: str = "") -> tuple[dict[str, tuple[int, float]], int]:
    """(max steps, seconds) per part, and the batch size, for the mode and device; `override`
    ("part=seconds,...", from $AGENTLAB_DNC_BUDGET_S) replaces some parts' wall-clock budgets."""
    if quick:
        out, batch = {"copy": (150, 20.0), "lstm": (150, 12.0), "repeat_copy": (60, 12.0), "recall": (60, 12.0)}, 16
    elif torch.device(device).type == "cuda":
        out, batch = {"copy": (100000, 300.0), "lstm": (100000, 60.0), "repeat_copy": (100000, 120.0), "recall": (100000, 120.0)}, 64
    else:
        out, batch = {"copy": (100000, 2400.0), "lstm": (100000, 600.0), "repeat_copy": (100000, 3600.0), "recall": (100000, 600.0)}, 16
    for item in filter(None, (s.strip() for s in override.split(","))):
        part, _, secs = item.partition("=")
        try:
            seconds = float(secs)
        except ValueError:
            seconds = float("nan")
        if part not in out or not seconds > 0:
            raise UserError(f"AGENTLAB_DNC_BUDGET_S: {item!r} is not part=seconds with a part of {list(out)} "
                            "and a positive number, e.g. AGENTLAB_DNC_BUDGET_S=repeat_copy=3600")
        out[part] = (out[part][0], seconds)
    return out, batch


def train_and_eval(backbone: torch.nn.Module, task: Any, cfg: SequenceConfig, seed: int, log: Any, device: str = "cpu") -> dict[str, float]:
    from agentlab.scenarios.algorithmic import evaluate_sequence

    seed_everything(seed)
    agent = Agent(backbone.to(device), learner=SequenceLearner(cfg))
    ctx = FitContext(generator=torch.Generator().manual_seed(seed), task_index=0, n_tasks=1, device=device, log_every=10**9)
    t0 = time.perf_counter()
    last = {"t": t0}

    def progress(info: dict) -> None:
        if time.perf_counter() - last["t"] > 60:
            last["t"] = time.perf_counter()
            cur = getattr(agent.learner, "curriculum", None)
            log(f"  step {info['step']} cost {info['loss']:.3f} max_len {cur.current if cur else '-'} ({last['t'] - t0:.0f} s)")

    ctx.progress = progress
    agent.learner.fit(agent, task, ctx)
    train_s = time.perf_counter() - t0
    res = evaluate_sequence(agent, task, batch_size=50, device=device)
    out = {"train_s": train_s, "steps": agent.learner.steps_done, "max_len_reached": agent.learner.last_max_len, **res.extra}
    log(f"  done: {out}")
    return out


def steps_per_second(seed: int, n: int = 10, controller: str = "lstm") -> float:
    """Optimiser steps per second, DNC at batch 16 on copy sequences of length 20, on the CPU."""
    from agentlab.memory.dnc import DNC
    from agentlab.scenarios.algorithmic import SequenceTaskSpec, bits_per_sequence

    torch.manual_seed(seed)
    m = DNC(input_size=10, output_size=8, controller=controller, **DNC_SIZE)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    b = SequenceTaskSpec("copy", 8).sample(torch.Generator().manual_seed(seed), 16, 20, 20)

    def one() -> None:
        y, _ = m(b.x, m.initial_state(16))
        backward_step(opt, bits_per_sequence(y, b.y, b.mask), m.parameters(), 10.0)

    one()
    t0 = time.perf_counter()
    for _ in range(n):
        one()
    return n / (time.perf_counter() - t0)


@register_bench("dnc-copy", parts=True, device=True, resumable=False)
def bench_dnc_copy(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """DNC vs LSTM on copy / repeat-copy (bits per sequence, lengths 1-20 and 21-40), recall, speed."""
    from agentlab.backbones.sequence import DNCSequenceModel, LSTMSequenceModel
    from agentlab.memory.dnc.modules import DNCConfig, make_dnc
    from agentlab.scenarios.algorithmic import AlgorithmicConfig, algorithmic_stream

    unknown = [p for p in args.only if p not in PARTS]
    if unknown:
        raise UserError(f"dnc-copy --only {unknown}: its parts are {list(PARTS)}")
    parts = [p for p in PARTS if not args.only or p in args.only]
    torch.set_num_threads(1)
    log = lambda s: print(s, flush=True)  # noqa: E731
    q, device = args.quick, args.device
    on_gpu = torch.device(device).type == "cuda"
    compile_steps = on_gpu and os.environ.get("AGENTLAB_DNC_COMPILE", "1") != "0"
    budget, batch = budgets(q, device, os.environ.get("AGENTLAB_DNC_BUDGET_S", ""))
    lens = dict(max_len=4, gen_min_len=5, gen_max_len=8, n_eval=20) if q else dict(max_len=20, gen_min_len=21, gen_max_len=40, n_eval=100)
    stream = algorithmic_stream(AlgorithmicConfig(tasks=["copy", "repeat_copy", "recall"], bits=8, min_len=1, **lens))
    recall_stream = algorithmic_stream(AlgorithmicConfig(tasks=["recall"], bits=8, min_len=2, max_len=min(lens["max_len"], 6),
                                                         gen_min_len=7 if not q else 5, gen_max_len=12 if not q else 6, n_eval=lens["n_eval"]))
    seq = lambda key: SequenceConfig(steps=budget[key][0], time_budget_s=budget[key][1], batch_size=batch, lr=1e-3,  # noqa: E731
                                     grad_clip=10.0, start_len=2, threshold=1.0, check_every=50,
                                     lr_schedule=LR_SCHEDULE.get(key, "constant"))

    def dnc(controller: str) -> torch.nn.Module:
        core = make_dnc(DNCConfig(**DNC_SIZE, controller=controller), 10, 8)  # type: ignore[arg-type]
        return DNCSequenceModel(core.compile_step() if compile_steps else core)

    n_dnc = n_params(dnc(CONTROLLER["copy"]))
    h = matched_lstm_width(n_dnc, 10, 8)
    rows, res = [], {}
    for key, task in (("copy", stream[0]), ("lstm", stream[0]), ("repeat_copy", stream[1]), ("recall", recall_stream[0])):
        if key not in parts:
            continue
        kind = "lstm" if key == "lstm" else f"dnc-{CONTROLLER[key]}"
        log(f"training {kind} on {task.name} on {device}, batch {batch}, budget {budget[key][1]:.0f} s")
        m = LSTMSequenceModel(10, 8, h) if key == "lstm" else dnc(CONTROLLER[key])
        res[key] = train_and_eval(m, task, seq(key), args.seed, log, device)
        rows.append({"model": kind, "task": task.name, "params": n_params(m), **res[key]})
    metrics: dict[str, float] = {"steps_per_s": steps_per_second(args.seed, 3 if q else 10), "dnc_params": float(n_dnc),
                                 "lstm_params": float(4 * h * (10 + h + 2) + (h + 1) * 8),
                                 "steps_per_s_feedforward": steps_per_second(args.seed, 3 if q else 10, "feedforward")}
    if "copy" in res:
        metrics.update(bits_per_seq=res["copy"]["bits_per_seq"], bits_per_seq_2x=res["copy"]["bits_per_seq_gen"])
    if "lstm" in res:
        metrics["lstm_bits_per_seq_2x"] = res["lstm"]["bits_per_seq_gen"]
    if "recall" in res:
        metrics["recall_bits_per_seq"] = res["recall"]["bits_per_seq"]
    if "repeat_copy" in res:
        metrics["repeat_copy_bits_per_seq"] = res["repeat_copy"]["bits_per_seq"]
    goals = {"no NaN": "met" if all(math.isfinite(v) for v in metrics.values()) else "NOT met"}
    if "bits_per_seq" in metrics:
        ok = metrics["bits_per_seq"] < 0.01
        goals["copy cost < 0.01 bits per sequence (trained lengths)"] = "met" if ok else f"NOT met ({metrics['bits_per_seq']:.3g})"
    if "repeat_copy_bits_per_seq" in metrics:
        ok = metrics["repeat_copy_bits_per_seq"] < 0.01
        goals["repeat-copy cost < 0.01 bits per sequence (trained lengths)"] = (
            "met" if ok else f"NOT met ({metrics['repeat_copy_bits_per_seq']:.3g})")
    notes = "quick mode: lengths 1-4 (generalisation 5-8), seconds of training; figures are not the headline" if q else ""
    if on_gpu:
        notes += f" trained on {device}: batch {batch}, {'compiled' if compile_steps else 'eager'} DNC steps, wall-clock budgets {dict((k, v[1]) for k, v in budget.items())} s;" \
                 " steps_per_s is still the CPU figure (batch 16, one thread)"
    return BenchResult(metrics, rows, goals, notes.strip())
