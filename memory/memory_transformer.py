"""A transformer encoder with an external key-value memory written by least-recently-used access (MANN).

Axis legend: B batch, T steps, S memory slots, D model dim, F input features.

Per episode the module reads a sequence x (B, T, F):

    h = TransformerEncoder(in_proj(x))  causal self-attention over the steps seen so far  (B, T, D)
    for t = 1..T:                       the external memory, step by step (Santoro et al. 2016, sec. 3)
        write     w_w = sigmoid(a) w_r(t-1) + (1 - sigmoid(a)) w_lu(t-1)                     (B, S)
                  w_lu = one-hot of the least-used slot (MANN eq. 6-8, one read head)
                  K <- (1 - w_w) K + w_w k_t^T,   V <- (1 - w_w) V + w_w v_t^T               (overwrite in place)
        read      w_r = softmax(s cos(q_t, K)) over written slots,   r_t = w_r V            (B, S), (B, D)
                  (MANN eq. 2-3: cosine similarity; s a learnt inverse temperature)
        usage     u <- gamma u + w_r + w_w                                                   (MANN eq. 5)
    y_t = out_proj([h_t, r_t])                                                               (B, T, D)

As in MANN (M_t = M_{t-1} + w_w a_t, then r_t = sum_i w_r(i) M_t(i)), step t
writes before it reads, so y_t depends on rows <= t only: a caller must not put
the answer of step t into row t (the few-shot rows carry the label of step t-1,
or the label of a support step that is not scored). Memory holds `slots` entries (default 500); it starts empty
(`initial_state`) for every episode, and with `reset = "task"` or "never" the
learner may carry a state across episodes instead. State is an explicit
`KVMemoryState`; the module keeps only the last episode's trace (usage, write and
read weights over the slots that episode could touch, see `active_slots`) for TensorBoard: `memory/memory_transformer/{usage_heatmap,
write_locations}` images and the `read_entropy` scalar.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from agentlab.attachment import AttachConfig, AttachedMemory, Reset
from agentlab.config import check
from agentlab.protocols import MemoryModule
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class MemoryTransformerConfig:
    """Transformer encoder plus an external key-value memory with LRU writes."""

    in_features: int = 64
    """features of one step's input (image embedding, previous label...)"""
    dim: int = 128
    """model dimension (keys and values too)"""
    heads: int = 4
    """self-attention heads"""
    layers: int = 2
    """transformer encoder layers"""
    slots: int = 500
    """external memory slots"""
    gamma: float = 0.95
    """usage decay (MANN eq. 5)"""
    reset: Literal["episode", "task", "never"] = "episode"
    """when the memory is emptied: every episode, at every task start, or never"""
    write_gate_init: float = -2.0
    """initial logit of the interpolation between last-read and least-used slots (negative: mostly LRU)"""
    read_scale_init: float = 10.0
    """initial inverse temperature s of the cosine read (learnt; a sharp read from the first step)"""
    address_features: int = 0
    """>0: read queries and write keys come from separate address features of this size through one
    tied projection (content addressing as in MANN); 0: both from the encoder states"""

    def __post_init__(self) -> None:
        for key in ("in_features", "dim", "heads", "layers", "slots"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        check(self.dim % self.heads == 0, "heads", self.heads, f"a divisor of dim={self.dim}")
        check(0 < self.gamma <= 1, "gamma", self.gamma, "in (0, 1]")
        check(self.read_scale_init > 0, "read_scale_init", self.read_scale_init, "a number > 0")


class KVMemoryState(NamedTuple):
    keys: Tensor  # (B, S, D)
    values: Tensor  # (B, S, D)
    usage: Tensor  # (B, S)
    written: Tensor  # (B, S) bool, slot holds something
    last_read: Tensor  # (B, S) read weights of the previous step


def least_used(usage: Tensor) -> Tensor:
    """One-hot (B, S) of each row's least-used slot (lowest index on ties)."""
    return F.one_hot(usage.argmin(-1), usage.shape[-1]).to(usage.dtype)


def read(q: Tensor, state: KVMemoryState, scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """Cosine-attention read (MANN eq. 2-3): q (B, D) -> (r (B, D), w_r (B, S)); weights softmax(scale * cos(q, K)).

    Unwritten slots get zero weight (a zero read if nothing is written).
    """
    scores = scale * einsum(F.normalize(q, dim=-1), F.normalize(state.keys, dim=-1), "b d, b s d -> b s")
    scores = scores.masked_fill(~state.written, float("-inf"))
    w = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with nothing written -> all zeros
    return einsum(w, state.values, "b s, b s d -> b d"), w


def write(k: Tensor, v: Tensor, w_w: Tensor, state: KVMemoryState, w_r: Tensor, gamma: float) -> KVMemoryState:
    """Overwrite slots in proportion to w_w (B, S) with key k and value v (B, D); update usage."""
    keep = (1 - w_w)[..., None]
    keys = keep * state.keys + w_w[..., None] * k[:, None]
    values = keep * state.values + w_w[..., None] * v[:, None]
    usage = gamma * state.usage + w_r + w_w
    return KVMemoryState(keys, values, usage, state.written | (w_w > 0.5), w_r)


def active_slots(state: KVMemoryState, steps: int) -> KVMemoryState:
    """The first `touched + steps` slots of `state` (touched = 1 + the last slot ever used or written).

    Exact, not an approximation: untouched slots (zero usage) form the tail, the
    least-used choice takes the lowest index among equal usages, so `steps` steps
    write only into the first `steps` untouched slots and never read the rest.
    Cuts the per-step work from `slots` to about T when an episode is short.
    """
    touched = (state.usage > 0) | state.written | (state.last_read > 0) | (state.keys != 0).any(-1)  # (B, S)
    used = touched.any(0).nonzero()
    n = min(state.usage.shape[1], (int(used.max()) + 1 if used.numel() else 0) + steps)
    return KVMemoryState(*(v[:, :n] for v in state))


def restore_slots(part: KVMemoryState, full: KVMemoryState) -> KVMemoryState:
    """`part` (the first n slots after an episode) padded back to `full`'s slot count with `full`'s untouched tail."""
    n = part.usage.shape[1]
    return KVMemoryState(*(torch.cat([p, f[:, n:]], 1) for p, f in zip(part, full)))


class MemoryTransformer(MemoryModule):
    """(B, T, F) -> (B, T, D): causal transformer encoder whose every step reads and writes the external memory."""

    name = "memory_transformer"

    def __init__(self, cfg: MemoryTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.in_proj = nn.Linear(cfg.in_features, d)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if cfg.address_features:
            # one projection for both read queries and write keys: at initialisation a read
            # already finds the slots written with similar address features
            self.address = nn.Sequential(nn.LayerNorm(cfg.address_features), nn.Linear(cfg.address_features, d))
        self.write_gate = nn.Parameter(torch.tensor(cfg.write_gate_init))
        self.log_read_scale = nn.Parameter(torch.tensor(math.log(cfg.read_scale_init)))
        self.out_proj = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d))
        self.trace: dict[str, Tensor] = {}
        self.carried: KVMemoryState | None = None

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> KVMemoryState:
        s, d = self.cfg.slots, self.cfg.dim
        z = torch.zeros(batch_size, s, device=device)
        return KVMemoryState(torch.zeros(batch_size, s, d, device=device), torch.zeros(batch_size, s, d, device=device),
                             z, torch.zeros(batch_size, s, dtype=torch.bool, device=device), z.clone())

    def forward(
        self, x: Tensor, state: KVMemoryState, *, write_mask: Tensor | None = None, attend: Tensor | None = None,
        read_address: Tensor | None = None, write_address: Tensor | None = None,
    ) -> tuple[Tensor, KVMemoryState]:
        """x (B, T, F) -> (B, T, D) and the new state.

        `write_mask` (B, T) bool: which steps write (default all). `attend` (T, T) bool:
        True where step i must *not* attend to step j (default: causal, j > i blocked).
        With `address_features`, `read_address` and `write_address` (B, T, A) give the
        features that read queries and write keys are computed from.
        """
        b, t, _ = x.shape
        blocked = attend if attend is not None else torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        h = self.encoder(self.in_proj(x), mask=blocked)  # (B, T, D)
        if self.cfg.address_features and read_address is not None and write_address is not None:
            q, k = self.address(read_address), self.address(write_address)
        else:
            q, k = self.to_q(h), self.to_k(h)
        v = self.to_v(h)
        g = torch.sigmoid(self.write_gate)
        full, state = state, active_slots(state, t)  # exact: T steps touch at most T untouched slots
        reads, usage_trace, write_trace, read_trace = [], [], [], []
        scale = self.log_read_scale.exp()
        no_read = torch.zeros_like(state.usage)
        for i in range(t):
            w_w = g * state.last_read + (1 - g) * least_used(state.usage)  # MANN eq. 8
            if write_mask is not None:
                w_w = w_w * write_mask[:, i, None].to(w_w.dtype)
            state = write(k[:, i], v[:, i], w_w, state, no_read, self.cfg.gamma)  # MANN eq. 4: write, then
            r, w_r = read(q[:, i], state, scale)  # read the memory just written (MANN eq. 3)
            state = state._replace(usage=state.usage + w_r, last_read=w_r)  # MANN eq. 5: usage += w_r
            reads.append(r)
            usage_trace.append(state.usage[0].detach())
            write_trace.append(w_w[0].detach())
            read_trace.append(w_r.detach())
        self.trace = {"usage": torch.stack(usage_trace), "write": torch.stack(write_trace), "read": torch.stack(read_trace, 1)}
        r = torch.stack(reads, dim=1)  # (B, T, D)
        return self.out_proj(torch.cat([h, r], dim=-1)), restore_slots(state, full)

    # ------------------------------------------------------------------ lifecycle
    def start_state(self, batch_size: int, device: torch.device | str = "cpu") -> KVMemoryState:
        """The state an episode starts from: empty with `reset = "episode"`, else the carried one (if any, same batch)."""
        c = self.carried
        if self.cfg.reset != "episode" and c is not None and c.keys.shape[0] == batch_size:
            return KVMemoryState(*(t.to(device) for t in c))
        return self.initial_state(batch_size, device)

    def keep(self, state: KVMemoryState) -> None:
        """Carry `state` (detached) to the next episode unless memory is reset per episode."""
        if self.cfg.reset != "episode":
            self.carried = KVMemoryState(*(t.detach() for t in state))

    def reset(self) -> None:
        """Forget the carried memory (the recurrent state itself lives with the caller)."""
        self.carried = None

    def on_task_start(self, task) -> None:
        if self.cfg.reset in ("episode", "task"):  # "never": carried memory survives task boundaries
            self.reset()

    # ------------------------------------------------------------------ reporting
    def scalars(self) -> dict[str, float]:
        if not self.trace:
            return {}
        w = self.trace["read"]  # (B, T, S)
        entropy = -(w * torch.log(w + 1e-12)).sum(-1)  # (B, T) nats
        used = self.trace["usage"][-1]
        return {"read_entropy": float(entropy.mean()), "slots_used": float((used > 1e-3).sum()),
                "usage_mean": float(used.mean())}

    def images(self) -> dict[str, Tensor]:
        """(1, T, S) heat-maps of the first episode of the last batch: usage and write weights over steps."""
        if not self.trace:
            return {}
        out = {}
        for name, key in (("usage_heatmap", "usage"), ("write_locations", "write")):
            m = self.trace[key]
            n = int((self.trace["usage"][-1] > 1e-3).sum()) or 1
            m = m[:, : max(n, 1)]  # the slots that were touched
            out[name] = rearrange(m / m.max().clamp_min(1e-12), "t s -> 1 t s").clamp(0, 1)
        return out

    def state_bytes(self) -> int:
        return 0 if self.carried is None else sum(t.numel() * t.element_size() for t in self.carried)


@dataclass(frozen=True)
class KVMemoryConfig(MemoryTransformerConfig, AttachConfig):
    """The memory transformer attached to a backbone: its steps are the features at `at`."""

    in_features: int = 0
    """features of one step; 0 = the width of the features at the attachment point"""
    reset: Reset = "sequence"  # type: ignore[assignment]
    """when the key-value memory starts empty: every sequence (forward call), episode, task or never"""

    def __post_init__(self) -> None:
        AttachConfig.__post_init__(self)
        check(self.in_features >= 0, "in_features", self.in_features, "an integer >= 0 (0 = the attachment width)")
        self.core_config(max(self.in_features, 1))  # the memory transformer's own checks

    def core_config(self, in_features: int) -> MemoryTransformerConfig:
        """The settings of the memory transformer inside, for steps of `in_features`."""
        keys = {f.name: getattr(self, f.name) for f in dataclasses.fields(MemoryTransformerConfig)}
        return MemoryTransformerConfig(**{**keys, "in_features": in_features, "reset": "episode"})


class AttachedMemoryTransformer(AttachedMemory):
    """The memory transformer at an attachment point: each step of the features is a row it reads and writes
    (causally); its (B, T, dim) output is fused into the features. The key-value state is threaded by the agent."""

    name = "memory_transformer"

    def __init__(self, cfg: KVMemoryConfig) -> None:
        super().__init__(cfg, heads=cfg.heads)
        self.cfg = cfg
        self.core: MemoryTransformer | None = None

    def build(self, width: int) -> int:
        self.core = MemoryTransformer(self.cfg.core_config(width))
        return self.cfg.dim

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> KVMemoryState:
        assert self.core is not None
        return self.core.initial_state(batch_size, device)

    def retrieve(self, x: Tensor, state: KVMemoryState) -> tuple[Tensor, KVMemoryState]:
        assert self.core is not None
        return self.core(x, state)

    def scalars(self) -> dict[str, float]:
        return self.core.scalars() if self.core is not None else {}

    def images(self) -> dict[str, Tensor]:
        return self.core.images() if self.core is not None else {}


@register("memory", "memory_transformer", KVMemoryConfig)
def build_memory_transformer(cfg: KVMemoryConfig, env: BuildEnv) -> AttachedMemoryTransformer:
    """Transformer encoder with a key-value memory written by LRU access (MANN), attached to a backbone."""
    return AttachedMemoryTransformer(cfg)
