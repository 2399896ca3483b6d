"""The memory ledger: what each module keeps, per task and in total, after each task.

Bytes are counted as stored (a bit-packed mask counts one bit per weight), so
the ledger compares methods by what they really cost to keep, not by how their
training-time tensors happen to be laid out.
"""

from __future__ import annotations

from typing import Any

import torch

from agentlab.protocols import tensor_bytes


def sparsity(module: torch.nn.Module) -> float:
    """Fraction of exactly-zero entries over the weight matrices/kernels (ndim >= 2) of `module`."""
    zeros = total = 0
    for p in module.parameters():
        if p.ndim >= 2:
            zeros += int((p == 0).sum())
            total += p.numel()
    return zeros / total if total else 0.0


def ledger(agent: Any) -> dict[str, Any]:
    """A snapshot of what `agent` holds: backbone, per-module per-task bytes, learner buffers, counts."""
    modules: dict[str, dict[str, Any]] = {}
    for p in agent.plasticity:
        per_task = {int(k): int(v) for k, v in p.state_bytes().items()}
        shared = int(p.shared_bytes())
        modules[p.name] = {
            "kind": "plasticity",
            "per_task": {f"{k:03d}": v for k, v in sorted(per_task.items())},
            "shared": shared,
            "bytes": shared + sum(per_task.values()),
        }
    held = getattr(agent, "held_state_bytes", lambda m: 0)
    for m in agent.memories():
        # stored content, plus the recurrent state the agent keeps between calls (none when it resets per call)
        b = int(m.state_bytes()) + int(held(m))
        modules[m.name] = {"kind": "memory", "bytes": b}
    learner = getattr(agent, "learner", None)
    if learner is not None and hasattr(learner, "state_bytes"):
        modules[f"learner_{learner.name}"] = {"kind": "learner", "bytes": int(learner.state_bytes())}
    # Backbone bytes exclude what plasticity modules already account for (their parameters sit inside it).
    # A module that wraps backbone layers without registering them names them in `accounted_tensors()`.
    owned = {id(t) for p in agent.plasticity for t in [*p.parameters(), *p.buffers(), *p.accounted_tensors()]}
    backbone_tensors = [t for t in [*agent.backbone.parameters(), *agent.backbone.buffers()] if id(t) not in owned]
    backbone = tensor_bytes(backbone_tensors)
    params = sum(p.numel() for p in agent.parameters())
    trainable = sum(p.numel() for p in agent.parameters() if p.requires_grad)
    total = backbone + sum(m["bytes"] for m in modules.values())
    return {
        "backbone_bytes": backbone,
        "modules": modules,
        "total_bytes": total,
        "params": params,
        "trainable_params": trainable,
        "sparsity": sparsity(agent.backbone),
    }


def kib(n_bytes: float) -> float:
    """Bytes as KiB (1,024 bytes), the unit of the ledger's TensorBoard tags."""
    return float(n_bytes) / 1024


def ledger_scalars(entry: dict[str, Any], held: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
    """The ledger as TensorBoard scalars under `ledger/`, bytes in KiB (1,024 bytes; the unit is in the tag). A
    module gets its cards once it holds something (now, or at an earlier task named in `held`): a learner that
    keeps nothing gets no card reading 0."""
    out = {
        "ledger/backbone_KiB": kib(entry["backbone_bytes"]),
        "ledger/total_KiB": kib(entry["total_bytes"]),
        "ledger/params": entry["params"],
        "ledger/trainable_params": entry["trainable_params"],
        "ledger/sparsity": entry["sparsity"],
    }
    for name, m in entry["modules"].items():
        if not m["bytes"] and name not in held:
            continue
        out[f"ledger/{name}/KiB"] = kib(m["bytes"])
        if m.get("per_task"):
            last = list(m["per_task"].values())[-1]
            out[f"ledger/{name}/KiB_last_task"] = kib(last)
    return out


def modules_held(entries: list[dict[str, Any]]) -> set[str]:
    """The modules that held bytes in any of these ledger entries."""
    return {name for e in entries for name, m in e["modules"].items() if m["bytes"]}
