"""Bytes per task against accuracy: each method's per-task state stored smaller, and what the agent then scores.

For a trained agent, `variants(agent)` yields (setting, bytes per task, agent with every task's state replaced by
what that setting would store and read back). The bytes are what the setting stores for one task, averaged over
the tasks; the state itself is decoded into the same modules, so evaluation is the loop's own.

    SupSup         masks as stored (bit-packed, 1 bit per weight), and entropy coded (LZMA over the packed bits;
                   lossless, decoded and compared bit for bit)
    LoRA           A and B at 32 / 16 / 8 / 4 bits (symmetric, one fp16 scale per row), and the delta B A cut
                   to a lower rank by SVD
    NOLA, PRANC    the coefficients at 32 / 16 / 8 / 4 bits, and only the largest-magnitude half or quarter kept
                   (each kept one with a 2-byte index)
    FNNSP          the controller gates (1 bit per module) with the rows of the modules the task owns and of its
                   read-out rows at 32 / 16 / 8 / 4 bits
    SET            the task's connections as CSR: values at 32 / 16 / 8 / 4 bits, 2-byte column indices, 4-byte
                   row pointers

Every curve starts at "no per-task state" (each task's state removed by `forget_task`, as far as the module can:
what the shared part alone scores). Quantisation is post-training (nothing is retrained), so a curve says how far
each method's stored state can shrink as it is; `smallest_at(rows, 0.99)` reads the smallest bytes per task
keeping 99% of the full accuracy.
"""

from __future__ import annotations

import copy
import lzma
import math
from typing import Any, Iterator

import torch
from torch import Tensor

from agentlab.plasticity.bitpack import unpack_bits

BITS = (32, 16, 8, 4)


def quantize(t: Tensor, bits: int) -> tuple[Tensor, int]:
    """`t` stored at `bits` per value and read back, and the bytes stored: 32 = as is, 16 = fp16, 8 / 4 = symmetric
    integers per row (a vector is one row) with one fp16 scale per row."""
    if bits >= 32:
        return t.clone(), 4 * t.numel()
    if bits == 16:
        return t.half().float(), 2 * t.numel()
    rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
    qmax = 2 ** (bits - 1) - 1
    scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / qmax
    q = torch.round(rows / scale).clamp(-qmax, qmax)
    return (q * scale).reshape(t.shape).to(t.dtype), math.ceil(t.numel() * bits / 8) + 2 * rows.shape[0]


def _module(agent: Any, name: str) -> Any:
    return next(p for p in agent.plasticity if p.name == name)


# ---------------------------------------------------------------------------- per method


def supsup_variants(agent: Any, name: str) -> Iterator[tuple[str, float, Any]]:
    mod = _module(agent, name)
    tasks = mod.tasks
    per = {t: sum(w.task_bytes(t) for w in mod._wrappers()) for t in tasks}
    yield "packed 1 bit", sum(per.values()) / len(tasks), agent
    coded = 0
    for t in tasks:
        for layer in mod._layers.values():
            packed = getattr(layer, f"mask_{t}")
            blob = lzma.compress(packed.cpu().numpy().tobytes(), preset=9)
            back = torch.frombuffer(bytearray(lzma.decompress(blob)), dtype=torch.uint8)
            assert torch.equal(unpack_bits(back, layer.weight.shape), layer.mask(t).cpu()), "LZMA round trip"
            coded += len(blob)
        coded += sum(n.task_bytes(t) for n in mod._norms.values())
    yield "packed + LZMA", coded / len(tasks), agent


def lora_variants(agent: Any, name: str) -> Iterator[tuple[str, float, Any]]:
    rank = _module(agent, name).cfg.rank
    for r in sorted({rank, max(1, rank // 2), 1}, reverse=True):
        for bits in BITS:
            copy_ = copy.deepcopy(agent)
            mod = _module(copy_, name)
            total = 0
            for state in mod.tasks.values():
                for i in range(len(mod.targets)):
                    A, B = state[f"A{i}"].data, state[f"B{i}"].data
                    if r < A.shape[0]:
                        U, S, Vh = torch.linalg.svd(B @ A, full_matrices=False)
                        B, A = U[:, :r] * S[:r], Vh[:r]
                    A, na = quantize(A, bits)
                    B, nb = quantize(B, bits)
                    state[f"A{i}"] = torch.nn.Parameter(A, requires_grad=False)
                    state[f"B{i}"] = torch.nn.Parameter(B, requires_grad=False)
                    total += na + nb
            mod._cache = {}
            yield f"rank {r}, {bits} bit", total / max(len(mod.tasks), 1), copy_


def coefficient_variants(agent: Any, name: str) -> Iterator[tuple[str, float, Any]]:
    """NOLA and PRANC: every coefficient vector of a task, quantised, optionally sparsified to its largest entries."""
    for keep in (1.0, 0.5, 0.25):
        for bits in BITS:
            copy_ = copy.deepcopy(agent)
            mod = _module(copy_, name)
            total = 0
            for state in mod.tasks.values():
                for key, p in state.items():
                    v = p.data.clone()
                    n = v.numel()
                    k = max(1, round(keep * n))
                    if k < n:
                        drop = v.abs().argsort()[: n - k]
                        v[drop] = 0.0
                        kept = v[v != 0]
                        q, nb = quantize(kept, bits)
                        v[v != 0] = q
                        total += nb + 2 * k
                    else:
                        v, nb = quantize(v, bits)
                        total += nb
                    state[key] = torch.nn.Parameter(v, requires_grad=False)
            mod._cache = {}
            yield (f"{bits} bit" if keep == 1 else f"{int(keep * 100)}% of coefficients, {bits} bit"), \
                total / max(len(mod.tasks), 1), copy_


def fnnsp_variants(agent: Any, name: str) -> Iterator[tuple[str, float, Any]]:
    for bits in BITS:
        copy_ = copy.deepcopy(agent)
        mod = _module(copy_, name)
        tasks = mod.trained
        total = 0
        with torch.no_grad():
            for t in tasks:
                total += sum(math.ceil(l.n_modules / 8) for l in mod.hidden)  # the gates
                for layer in mod.hidden:
                    units = (layer.owner == t).repeat_interleave(layer.base_layer.out_features // layer.n_modules)
                    if units.any():
                        w = layer.base_layer.weight
                        w[units], nb = quantize(w[units], bits)
                        total += nb
                out = mod._layers[-1].base_layer.weight
                rows = mod.readout_rows.get(t, [])
                if rows:
                    out[rows], nb = quantize(out[rows], bits)
                    total += nb
        yield f"gates + own rows, {bits} bit", total / max(len(tasks), 1), copy_


def set_variants(agent: Any, name: str) -> Iterator[tuple[str, float, Any]]:
    for bits in BITS:
        copy_ = copy.deepcopy(agent)
        mod = _module(copy_, name)
        tasks = sorted(mod.capacity())
        total = 0
        with torch.no_grad():
            for t in tasks:
                for layer in mod.layers.values():
                    mine = layer.owner == t
                    nnz = int(mine.sum())
                    if not nnz:
                        continue
                    w = layer.weight
                    w[mine], nb = quantize(w[mine], bits)
                    total += nb + 2 * nnz + 4 * (layer.rows() + 1)
        yield f"CSR, {bits}-bit values", total / max(len(tasks), 1), copy_


def without_task_state(agent: Any, name: str) -> tuple[Any, float]:
    """A copy of `agent` with every task's state the module can remove removed (newest task first, so no removal
    waits on a later task): the bottom of a curve, what the shared part alone scores. Also the bytes per task it
    still keeps (the tasks it refuses to drop, averaged over all tasks)."""
    from agentlab.errors import CannotForget

    copy_ = copy.deepcopy(agent)
    mod = _module(copy_, name)
    tasks = sorted(mod.state_bytes(), reverse=True)
    for t in tasks:
        try:
            mod.forget_task(t)
        except CannotForget:
            pass
    left = sum(mod.state_bytes().values())
    return copy_, left / max(len(tasks), 1)


def variants(agent: Any) -> Iterator[tuple[str, float, Any]]:
    """Every storage setting of the agent's first plasticity module that keeps per-task state (none: nothing), from
    no per-task state at all (what the shared part alone scores) to the state as trained."""
    for p in agent.plasticity:
        kind = type(p).__name__
        if kind in ("SupSup", "LoRA", "NOLA", "PRANC", "FNNSP", "SET"):
            bare, left = without_task_state(agent, p.name)
            yield "no per-task state", left, bare
        if kind == "SupSup":
            yield from supsup_variants(agent, p.name)
        elif kind == "LoRA":
            yield from lora_variants(agent, p.name)
        elif kind in ("NOLA", "PRANC"):
            yield from coefficient_variants(agent, p.name)
        elif kind == "FNNSP":
            yield from fnnsp_variants(agent, p.name)
        elif kind == "SET":
            yield from set_variants(agent, p.name)
        else:
            continue
        return


def smallest_at(rows: list[dict[str, Any]], full_acc: float, share: float = 0.99) -> float:
    """The fewest bytes per task among `rows` ({"bytes_per_task", "avg_acc"}) keeping `share` of `full_acc`."""
    ok = [r["bytes_per_task"] for r in rows if r["avg_acc"] >= share * full_acc]
    return float(min(ok)) if ok else float("nan")

