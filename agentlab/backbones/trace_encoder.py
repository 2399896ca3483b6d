"""The population model of problem-solving traces: a small causal transformer with three heads.

Axis legend: b traces, l positions, d model width, h heads, e head width.

At position t (see `agentlab.scenarios.traces.encode` for the packed input) the encoder
has seen the problem and steps < t, and predicts step t:

    action_head   next action (every action, then END)                 (b, l, N_OUT)
    time_head     mean and log-variance of the next step's log seconds  (b, l) each
    error_head    logit of each error type in the next step             (b, l, N_ERRORS)

The time and error heads are conditioned on which action comes next (the
`cond` layer mixes the state with the next action's embedding): "how long will
this person take to carry, and will they forget it" rather than a blur over
every possible next action. Every adaptable layer is a plain `nn.Linear` with a
stable name (`blocks.0.attn.qkv`, `blocks.1.ff.1`, `cond`, `action_head`,
`time_head`, `error_head`), so adapters target them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agentlab.config import check
from agentlab.registry import BuildEnv, register
from agentlab.scenarios.traces import encode as E


class TraceOutput(NamedTuple):
    action_logits: Tensor  # (b, l, N_OUT)
    time_mu: Tensor  # (b, l) predicted log seconds of the next step
    time_logvar: Tensor  # (b, l)
    error_logits: Tensor  # (b, l, N_ERRORS)


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, h, l, e)
        return self.out(rearrange(y, "b h l e -> b l (h e)"))


class Block(nn.Module):
    """Pre-norm transformer block (as in GPT-2)."""

    def __init__(self, d: int, n_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_heads)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ff(self.norm2(x)))


class TraceEncoder(nn.Module):
    """Causal transformer over packed traces x (b, l, X_CHANNELS) -> `TraceOutput`."""

    head_name = "action_head"  # a memory attached at "head" reads the token states the next-action head reads

    def __init__(self, *, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, ff_mult: int = 2,
                 max_len: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "ff_mult": ff_mult,
                       "max_len": max_len, "dropout": dropout}
        self.max_len = max_len
        self.embed = nn.Embedding(E.N_IN_IDS, d_model)
        self.embed_next = nn.Embedding(E.N_IN_IDS, d_model)
        self.features = nn.Linear(E.C_VALID - E.C_TIME, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, ff_mult, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.action_head = nn.Linear(d_model, E.N_OUT)
        self.cond = nn.Linear(2 * d_model, d_model)
        self.time_head = nn.Linear(d_model, 2)
        self.error_head = nn.Linear(d_model, E.N_ERRORS)
        with torch.no_grad():  # start the time head at a typical step (3 s, log-sd 0.5) so early NLL is sane
            self.time_head.bias.copy_(torch.tensor([E.LOG_T0, -1.4]))

    def forward(self, x: Tensor) -> TraceOutput:
        b, l, _ = x.shape
        if l > self.max_len:
            raise ValueError(f"traces of {l} positions exceed the encoder's max_len={self.max_len}; raise backbone.max_len")
        ids = x[..., E.C_ACTION].long()  # (b, l)
        nxt = x[..., E.C_NEXT].long()  # (b, l)
        h = self.embed(ids) + self.features(x[..., E.C_TIME : E.C_VALID]) + self.pos.weight[:l]  # (b, l, d)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        c = F.gelu(self.cond(torch.cat([h, self.embed_next(nxt)], dim=-1)))  # (b, l, d)
        mu, logvar = self.time_head(c).unbind(-1)  # (b, l) each
        return TraceOutput(self.action_head(h), mu, logvar.clamp(-8.0, 4.0), self.error_head(c))

    def log_likelihood(self, x: Tensor, out: TraceOutput, heads: tuple[str, ...] | None = None) -> Tensor:
        """(b,) log-probability of each trace under the model: actions, step times and errors (fingerprinting);
        `heads` picks a subset of ("action", "time", "error")."""
        from agentlab.scenarios.traces.objective import HEADS, trace_log_likelihood

        return trace_log_likelihood(out, x, HEADS if heads is None else tuple(heads))


@dataclass(frozen=True)
class TraceEncoderConfig:
    """The population model over problem-solving traces (a small causal transformer)."""

    d_model: int = 64
    """width of the token states"""
    n_layers: int = 2
    """transformer blocks"""
    n_heads: int = 4
    """attention heads (must divide d_model)"""
    ff_mult: int = 2
    """feed-forward width as a multiple of d_model"""
    max_len: int = 32
    """longest trace in positions (steps + 1)"""
    dropout: float = 0.0
    """dropout after attention and feed-forward"""

    def __post_init__(self) -> None:
        check(self.d_model >= 8, "d_model", self.d_model, "an integer >= 8")
        check(self.n_layers >= 1, "n_layers", self.n_layers, "an integer >= 1")
        check(self.n_heads >= 1 and self.d_model % self.n_heads == 0, "n_heads", self.n_heads, "a divisor of d_model")
        check(self.ff_mult >= 1, "ff_mult", self.ff_mult, "an integer >= 1")
        check(self.max_len >= 2, "max_len", self.max_len, "an integer >= 2")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")


@register("backbone", "trace-encoder", TraceEncoderConfig)
def build_trace_encoder(cfg: TraceEncoderConfig, env: BuildEnv) -> TraceEncoder:
    """Causal transformer over step-by-step traces with next-action, step-time and error heads."""
    return TraceEncoder(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, ff_mult=cfg.ff_mult,
                        max_len=cfg.max_len, dropout=cfg.dropout)
