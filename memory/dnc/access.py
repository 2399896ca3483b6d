"""Reading and writing the memory: the interface vector, write weighting, erase/add, read modes.

One step of `MemoryAccess` (Graves et al. 2016, Methods), with primes for this step's values:

    u'   = usage(u, w^w, f, w^r)                                 (usage.py)
    c^w  = C(M, k^w, beta^w)                                      write content weights
    a    = allocation(u')                                         (allocation.py)
    w^w' = g^w [g^a a + (1 - g^a) c^w]                            write weighting
    M'   = M o (1 - prod_w (w^w' e^T)) + sum_w w^w' v^T           erase then add
    L', p' = linkage(L, p, w^w')                                  (linkage.py)
    w^r' = pi_b b + pi_c C(M', k^r, beta^r) + pi_f f              read modes, per read head
    r'   = M'^T w^r'                                              read words

Speed: the step runs once per time step in a Python loop, so it is written for
few tensor operations (per-op overhead, not arithmetic, dominates on a CPU at
these sizes): the interface is laid out by nonlinearity (one softplus, one sigmoid,
one softmax), one write head takes closed forms (no products over heads), and the
read modes are mixed in one batched product.

Axis legend: b batch, n memory slots, d word width, r read heads, w write heads,
m read modes (backward per write head, forward per write head, content).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from agentlab.memory.dnc.allocation import write_allocation_weights
from agentlab.memory.dnc.content import content_weights, oneplus
from agentlab.memory.dnc.linkage import LinkageState, directional_weights, initial_linkage, off_diagonal, update_linkage
from agentlab.memory.dnc.usage import update_usage


class AccessState(NamedTuple):
    """memory (b, n, d); read_weights (b, r, n); write_weights (b, w, n); linkage; usage (b, n)."""

    memory: Tensor
    read_weights: Tensor
    write_weights: Tensor
    linkage: LinkageState
    usage: Tensor


class Interface(NamedTuple):
    """The controller's emitted interface, parsed. Shapes per field in `MemoryAccess.parse`."""

    read_keys: Tensor  # (b, r, d)
    read_strengths: Tensor  # (b, r) >= 1
    write_keys: Tensor  # (b, w, d)
    write_strengths: Tensor  # (b, w) >= 1
    erase: Tensor  # (b, w, d) in [0, 1]
    write_vectors: Tensor  # (b, w, d)
    free_gates: Tensor  # (b, r) in [0, 1]
    allocation_gates: Tensor  # (b, w) in [0, 1]
    write_gates: Tensor  # (b, w) in [0, 1]
    read_modes: Tensor  # (b, r, 1 + 2w), rows sum to 1


def erase_and_add(memory: Tensor, write_weights: Tensor, erase: Tensor, write_vectors: Tensor) -> Tensor:
    """M' = M o prod_w (1 - w^w e^T) + sum_w w^w v^T.

    memory (b, n, d), write_weights (b, w, n), erase and write_vectors (b, w, d) -> (b, n, d).
    One head: M' = M + w (v - M o e)^T elementwise, three operations.
    """
    if write_weights.shape[1] == 1:
        w = rearrange(write_weights, "b 1 n -> b n 1")
        return torch.addcmul(memory, w, write_vectors - memory * erase)  # (b, n, d)
    keep = (1.0 - write_weights[..., None] * erase[:, :, None, :]).prod(dim=1)  # (b, w, n, d) -> (b, n, d)
    return torch.baddbmm(memory * keep, write_weights.transpose(1, 2), write_vectors)  # + (b, n, w) @ (b, w, d)


def read_words(memory: Tensor, read_weights: Tensor) -> Tensor:
    """r = M^T w^r. memory (b, n, d), read_weights (b, r, n) -> (b, r, d)."""
    return torch.bmm(read_weights, memory)


def mix_read_modes(modes: Tensor, backward: Tensor, content: Tensor, forward: Tensor) -> Tensor:
    """w^r = sum_w pi_b,w b_w + pi_c c + sum_w pi_f,w f_w.

    modes (b, r, 1 + 2w) ordered [backward_1..w, forward_1..w, content];
    backward and forward (b, r, w, n); content (b, r, n) -> (b, r, n).
    """
    weights = torch.cat([backward, forward, content[:, :, None]], dim=2)  # (b, r, m, n)
    return torch.matmul(modes[:, :, None], weights)[:, :, 0]  # (b, r, 1, m) @ (b, r, m, n)


class MemoryAccess(nn.Module):
    """The DNC's memory and its heads, mapping (controller output, state) -> (read words, state)."""

    def __init__(self, *, input_size: int, memory_size: int = 64, word_size: int = 32, num_reads: int = 4, num_writes: int = 1) -> None:
        super().__init__()
        self.n, self.d, self.r, self.w = memory_size, word_size, num_reads, num_writes
        r, w, d = num_reads, num_writes, word_size
        # grouped by nonlinearity: [read keys, write keys, write vectors] linear;
        # [read strengths, write strengths] oneplus; [erase, free, allocation, write gates] sigmoid;
        # read modes softmax per head
        self.sizes = [r * d + 2 * w * d, r + w, w * d + r + 2 * w, r * (1 + 2 * w)]
        self.interface = nn.Linear(input_size, sum(self.sizes))
        self.register_buffer("off_diagonal", off_diagonal(memory_size), persistent=False)  # (n, n), built once

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> AccessState:
        z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
        return AccessState(
            memory=z(batch, self.n, self.d),
            read_weights=z(batch, self.r, self.n),
            write_weights=z(batch, self.w, self.n),
            linkage=initial_linkage(batch, self.w, self.n, device),
            usage=z(batch, self.n),
        )

    def parse(self, h: Tensor) -> Interface:
        """Interface from controller output h (b, input_size), squashed onto each field's range."""
        r, w, d = self.r, self.w, self.d
        lin, strengths, gates, modes = torch.split(self.interface(h), self.sizes, dim=-1)
        strengths = oneplus(strengths)  # [1, inf)
        gates = torch.sigmoid(gates)
        rk, wk, wv = torch.split(lin, [r * d, w * d, w * d], dim=-1)
        er, fg, ag, wg = torch.split(gates, [w * d, r, w, w], dim=-1)
        return Interface(
            read_keys=rk.view(-1, r, d),
            read_strengths=strengths[:, :r],
            write_keys=wk.view(-1, w, d),
            write_strengths=strengths[:, r:],
            erase=er.view(-1, w, d),
            write_vectors=wv.view(-1, w, d),
            free_gates=fg,
            allocation_gates=ag,
            write_gates=wg,
            read_modes=torch.softmax(modes.view(-1, r, 1 + 2 * w), dim=-1),
        )

    def forward(self, h: Tensor, state: AccessState) -> tuple[Tensor, AccessState, Tensor]:
        """One step. h (b, input_size) -> read words (b, r, d), the new state, allocation (b, w, n)."""
        i = self.parse(h)
        usage = update_usage(state.usage, state.write_weights, i.free_gates, state.read_weights)
        # write: content on the old memory, allocation on the new usage
        write_content = content_weights(state.memory, i.write_keys, i.write_strengths)  # (b, w, n)
        alloc = write_allocation_weights(usage, i.allocation_gates * i.write_gates)  # (b, w, n)
        # g^w [g^a a + (1 - g^a) c^w] as one interpolation
        write_weights = i.write_gates[..., None] * torch.lerp(write_content, alloc, i.allocation_gates[..., None])
        memory = erase_and_add(state.memory, write_weights, i.erase, i.write_vectors)
        linkage = update_linkage(state.linkage, write_weights, self.off_diagonal)
        # read: content on the new memory, links from the previous read weights
        read_content = content_weights(memory, i.read_keys, i.read_strengths)  # (b, r, n)
        fwd = directional_weights(linkage.link, state.read_weights, forward=True)  # (b, r, w, n)
        bwd = directional_weights(linkage.link, state.read_weights, forward=False)
        read_weights = mix_read_modes(i.read_modes, bwd, read_content, fwd)  # (b, r, n)
        new = AccessState(memory, read_weights, write_weights, linkage, usage)
        return read_words(memory, read_weights), new, alloc
