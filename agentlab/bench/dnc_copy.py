"""`dnc-copy`: the DNC on copy, repeat-copy and associative recall against an LSTM baseline.

Every model trains with the `sequence` learner (Adam, gradient clipping, length
curriculum) on lengths 1-20 of 8-bit patterns, for a step budget and a wall-clock
budget, whichever ends first; the cost is in bits per sequence at the trained
lengths and at 21-40 (generalisation). The LSTM's width is chosen so that its
parameter count is close to the DNC's. Speed: optimiser steps per second at batch
16 on copy sequences of length 20 (41 time steps), 64 slots of width 32,
4 read heads, 1 write head, one CPU thread.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from agentlab.agent import Agent
from agentlab.bench import BenchArgs, BenchResult, n_params, register_bench
from agentlab.context import FitContext
from agentlab.learners.sequence import SequenceConfig, SequenceLearner
from agentlab.registry import BuildEnv
from agentlab.seeding import seed_everything

DNC_SIZE = dict(memory_size=64, word_size=32, num_reads=4, num_writes=1, hidden_size=128)


def matched_lstm_width(target: int, i: int, o: int) -> int:
    """The LSTM width h whose parameter count 4h(i + h + 2) + (h + 1) o is closest to `target`."""
    return min(range(8, 2048), key=lambda h: abs(4 * h * (i + h + 2) + (h + 1) * o - target))


def train_and_eval(backbone: torch.nn.Module, task: Any, cfg: SequenceConfig, seed: int, log: Any) -> dict[str, float]:
    from scenarios.algorithmic import evaluate_sequence

    seed_everything(seed)
    agent = Agent(backbone, learner=SequenceLearner(cfg))
    ctx = FitContext(generator=torch.Generator().manual_seed(seed), task_index=0, n_tasks=1, log_every=10**9)
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
    res = evaluate_sequence(agent, task, batch_size=50)
    out = {"train_s": train_s, "steps": agent.learner.steps_done, "max_len_reached": agent.learner.last_max_len, **res.extra}
    log(f"  done: {out}")
    return out


def steps_per_second(seed: int, n: int = 10) -> float:
    """Optimiser steps per second, DNC at batch 16 on copy sequences of length 20."""
    from memory.dnc import DNC
    from scenarios.algorithmic import SequenceTaskSpec, bits_per_sequence

    torch.manual_seed(seed)
    m = DNC(input_size=10, output_size=8, **DNC_SIZE)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    b = SequenceTaskSpec("copy", 8).sample(torch.Generator().manual_seed(seed), 16, 20, 20)

    def one() -> None:
        y, _ = m(b.x, m.initial_state(16))
        loss = bits_per_sequence(y, b.y, b.mask)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
        opt.step()

    one()
    t0 = time.perf_counter()
    for _ in range(n):
        one()
    return n / (time.perf_counter() - t0)


@register_bench("dnc-copy")
def bench_dnc_copy(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """DNC vs LSTM on copy / repeat-copy (bits per sequence, lengths 1-20 and 21-40), recall, speed."""
    from memory.dnc.modules import DNCSequenceModel, LSTMSequenceModel, make_dnc, DNCConfig
    from scenarios.algorithmic import AlgorithmicConfig, algorithmic_stream

    torch.set_num_threads(1)
    log = lambda s: print(s, flush=True)  # noqa: E731
    q = args.quick
    # (max steps, seconds) per model; the quick mode trains on short lengths to fit in 2 minutes
    budget = {"copy": (150, 20), "lstm": (150, 12), "repeat_copy": (60, 12), "recall": (60, 12)} if q else \
             {"copy": (100000, 2400), "lstm": (100000, 600), "repeat_copy": (100000, 600), "recall": (100000, 600)}
    lens = dict(max_len=4, gen_min_len=5, gen_max_len=8, n_eval=20) if q else dict(max_len=20, gen_min_len=21, gen_max_len=40, n_eval=100)
    stream = algorithmic_stream(AlgorithmicConfig(tasks=["copy", "repeat_copy", "recall"], bits=8, min_len=1, **lens))
    recall_stream = algorithmic_stream(AlgorithmicConfig(tasks=["recall"], bits=8, min_len=2, max_len=min(lens["max_len"], 6),
                                                         gen_min_len=7 if not q else 5, gen_max_len=12 if not q else 6, n_eval=lens["n_eval"]))
    seq = lambda key, **kw: SequenceConfig(steps=budget[key][0], time_budget_s=budget[key][1], batch_size=16, lr=1e-3,  # noqa: E731
                                           grad_clip=10.0, start_len=2, threshold=1.0, check_every=50, **kw)
    dnc = lambda: DNCSequenceModel(make_dnc(DNCConfig(**DNC_SIZE), 10, 8))  # noqa: E731
    n_dnc = n_params(dnc())
    h = matched_lstm_width(n_dnc, 10, 8)
    rows, res = [], {}
    for key, model, task in (("copy", dnc, stream[0]), ("lstm", lambda: LSTMSequenceModel(10, 8, h), stream[0]),
                             ("repeat_copy", dnc, stream[1]), ("recall", dnc, recall_stream[0])):
        log(f"training {key} ({task.name})")
        m = model()
        res[key] = train_and_eval(m, task, seq(key), args.seed, log)
        rows.append({"model": "lstm" if key == "lstm" else "dnc", "task": task.name, "params": n_params(m), **res[key]})
    sps = steps_per_second(args.seed, 3 if q else 10)
    metrics = {
        "bits_per_seq": res["copy"]["bits_per_seq"],
        "bits_per_seq_2x": res["copy"]["bits_per_seq_gen"],
        "lstm_bits_per_seq_2x": res["lstm"]["bits_per_seq_gen"],
        "steps_per_s": sps,
        "recall_bits_per_seq": res["recall"]["bits_per_seq"],
        "repeat_copy_bits_per_seq": res["repeat_copy"]["bits_per_seq"],
        "dnc_params": float(n_dnc),
        "lstm_params": float(rows[1]["params"]),
    }
    goal = metrics["bits_per_seq"] < 0.01
    goals = {"copy cost < 0.01 bits per sequence (trained lengths)": "met" if goal else f"NOT met ({metrics['bits_per_seq']:.3g})",
             "no NaN": "met" if all(math.isfinite(v) for v in metrics.values()) else "NOT met"}
    notes = "quick mode: lengths 1-4 (generalisation 5-8), seconds of training; figures are not the headline" if q else ""
    return BenchResult(metrics, rows, goals, notes)
