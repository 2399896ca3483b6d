"""A Vision Transformer (Dosovitskiy et al. 2021) for small images: 28x28 grey, 32x32 colour.

Axis legend: b images, c channels, h/w patch rows/columns, p patch side, n tokens, d width,
H heads, e head width.

    patches   (b, c, h p, w p) -> (b, h w, p p c)      einops, no convolution
    embed     Linear (p p c -> d) named `patch_embed`, plus a learned position embedding
    pool      a class token in front (`pool = "cls"`) read out at the end, or the mean of the tokens
    blocks    pre-norm:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    head      LayerNorm, Linear (d -> classes) named `head`

Every weight a plasticity module may change is an ordinary, named `nn.Linear`: `patch_embed`,
`blocks.i.attn.qkv` (or `.q`, `.k`, `.v` with `qkv = "separate"`), `blocks.i.attn.out`,
`blocks.i.mlp.fc1`, `blocks.i.mlp.fc2` and `head`; with `moe`, the MLP of every `moe.every`-th
block is an expert-choice mixture of experts (`agentlab.backbones.moe`) whose routers and experts
are Linear layers too (`blocks.i.mlp.groups.0.router`, `blocks.i.mlp.groups.0.experts.j.fc1`).
Attention computes with `F.scaled_dot_product_attention` on the projections' outputs, so masks and
adapters on them act on the forward pass like on any other layer.

The seed configuration (ViT-6/6/192 on 4x4 patches of 32x32 CIFAR-10) is the `vit-cifar10` recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from agentlab.backbones.moe import Expert as MLP  # a block's dense feed-forward layer is one expert's shape
from agentlab.backbones.moe import ExpertChoiceMoE, MoEConfig, moe_scalars, usage_image
from agentlab.config import ConfigError, check
from agentlab.registry import BuildEnv, register

# Parts of the ViT by layer name, for figures per component (lottery tickets' remaining weights and sensitivity).
COMPONENTS: dict[str, list[str]] = {
    "embedding": ["patch_embed"],
    "attention": ["blocks.*.attn.*"],
    "router": ["blocks.*.mlp.groups.*.router"],
    "mlp": ["blocks.*.mlp.*"],
    "head": ["head"],
}


@dataclass(frozen=True)
class ViTConfig:
    """A Vision Transformer; image size, channels and classes come from the stream unless given."""

    patch_size: int = 4
    """side of the square patches (must divide the image's height and width)"""
    dim: int = 64
    """token width"""
    depth: int = 4
    """transformer blocks"""
    heads: int = 4
    """attention heads (must divide dim)"""
    mlp_ratio: float = 2.0
    """hidden width of the dense MLPs as a multiple of dim"""
    pool: Literal["cls", "mean"] = "cls"
    """read out a class token, or the mean of the patch tokens"""
    qkv: Literal["packed", "separate"] = "packed"
    """attention projections: one Linear `attn.qkv` (d -> 3d), or three Linears `attn.q`, `attn.k`, `attn.v`"""
    dropout: float = 0.0
    """dropout after attention and MLP"""
    moe: MoEConfig | None = None
    """an expert-choice mixture of experts as the MLP of every `moe.every`-th block (a table; none = dense MLPs)"""
    image_size: int = 0
    """image side (square images); 0 = from the stream"""
    channels: int = 0
    """image channels; 0 = from the stream"""
    out_features: int = 0
    """output units; 0 = the stream's number of classes"""

    def __post_init__(self) -> None:
        check(self.patch_size >= 1, "patch_size", self.patch_size, "an integer >= 1")
        check(self.dim >= 2, "dim", self.dim, "an integer >= 2")
        check(self.depth >= 1, "depth", self.depth, "an integer >= 1")
        check(self.heads >= 1 and self.dim % self.heads == 0, "heads", self.heads, f"a divisor of dim={self.dim}")
        check(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "a number > 0")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        check(self.image_size >= 0, "image_size", self.image_size, "an integer >= 0 (0 = from the stream)")
        check(self.channels >= 0, "channels", self.channels, "an integer >= 0 (0 = from the stream)")
        check(self.out_features >= 0, "out_features", self.out_features, "an integer >= 0")
        if self.moe is not None:
            check(self.moe.route_over in ("example", "auto"), "moe.route_over", self.moe.route_over,
                  "'example' or 'auto' in a ViT (its tokens are routed per image)")


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask), projections as named Linear layers."""

    def __init__(self, dim: int, heads: int, qkv: str = "packed") -> None:
        super().__init__()
        self.heads = heads
        self.packed = qkv == "packed"
        if self.packed:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.packed:
            q, k, v = rearrange(self.qkv(x), "b n (three H e) -> three b H n e", three=3, H=self.heads)
        else:
            q, k, v = (rearrange(f(x), "b n (H e) -> b H n e", H=self.heads) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)  # (b, H, n, e)
        return self.out(rearrange(y, "b H n e -> b n (H e)"))


class Block(nn.Module):
    """Pre-norm transformer block; `mlp` is a dense MLP or an expert-choice MoE (tokens no expert takes are carried
    by the residual connection alone)."""

    def __init__(self, dim: int, heads: int, mlp: nn.Module, qkv: str, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv)
        self.mlp = mlp
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """(b, c, H, W) images -> (b, classes) logits; see the module docstring."""

    head_name = "head"
    components = COMPONENTS

    def __init__(self, *, image_size: tuple[int, int], channels: int, out_features: int, patch_size: int = 4, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, pool: str = "cls", qkv: str = "packed",
                 dropout: float = 0.0, moe: MoEConfig | None = None) -> None:
        super().__init__()
        ih, iw = image_size
        if ih % patch_size or iw % patch_size:
            raise ConfigError(f"backbone.patch_size={patch_size} does not divide the image size {ih}x{iw}; "
                              f"choose a divisor of both (e.g. 4 or 7 for 28x28, 4 or 8 for 32x32)")
        self.config = {"image_size": [ih, iw], "channels": channels, "out_features": out_features, "patch_size": patch_size,
                       "dim": dim, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio, "pool": pool, "qkv": qkv,
                       "dropout": dropout, "moe": None if moe is None else dict(moe.__dict__)}
        self.patch_size, self.pool = patch_size, pool
        self.grid = (ih // patch_size, iw // patch_size)
        n = self.grid[0] * self.grid[1] + (pool == "cls")
        self.patch_embed = nn.Linear(patch_size * patch_size * channels, dim)
        self.pos = nn.Parameter(torch.empty(1, n, dim))
        self.cls = nn.Parameter(torch.empty(1, 1, dim)) if pool == "cls" else None
        hidden = max(1, round(mlp_ratio * dim))
        blocks = []
        for i in range(depth):
            if moe is not None and (i + 1) % moe.every == 0:
                mlp: nn.Module = ExpertChoiceMoE(dim, moe, route_over="example")
            else:
                mlp = MLP(dim, hidden)
            blocks.append(Block(dim, heads, mlp, qkv, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The class token and position embedding, N(0, 0.02) as in ViT; the Linear and LayerNorm layers keep
        PyTorch's default initialisation (their own `reset_parameters`, which a random re-initialisation reuses)."""
        nn.init.trunc_normal_(self.pos, std=0.02)
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=0.02)

    def tokens(self, x: Tensor) -> Tensor:
        """Images (b, c, H, W) -> token states (b, n, d) after the last block and norm."""
        p = self.patch_size
        t = self.patch_embed(rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p))  # (b, h w, d)
        if self.cls is not None:
            t = torch.cat([repeat(self.cls, "1 1 d -> b 1 d", b=t.shape[0]), t], dim=1)  # (b, n, d)
        t = t + self.pos
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(x)
        feats = t[:, 0] if self.cls is not None else reduce(t, "b n d -> b d", "mean")  # (b, d)
        return self.head(feats)

    # ------------------------------------------------------------------ figures of the MoE layers
    def scalars(self) -> dict[str, float]:
        """Routing figures of the MoE layers' last forward (`agentlab.backbones.moe.moe_scalars`)."""
        return moe_scalars(self)

    def images(self) -> dict[str, Any]:
        img = usage_image(self)
        return {} if img is None else {"moe/expert_usage": torch.from_numpy(img).permute(2, 0, 1).float() / 255}


@register("backbone", "vit", ViTConfig)
def build_vit(cfg: ViTConfig, env: BuildEnv) -> ViT:
    """Vision Transformer: patch embedding, class token or mean pooling, pre-norm blocks, optional expert-choice MoE."""
    shape = tuple(getattr(env.stream, "input_shape", ()) or ())
    if cfg.image_size and cfg.channels:
        c, size = cfg.channels, (cfg.image_size, cfg.image_size)
    elif len(shape) == 3:
        c, size = cfg.channels or shape[0], (cfg.image_size, cfg.image_size) if cfg.image_size else (shape[1], shape[2])
    else:
        raise ConfigError(f"backbone vit needs images (channels, height, width); the stream's input shape is {shape or 'unknown'}: "
                          "set backbone.image_size and backbone.channels, or use an image stream")
    _, out = env.stream_sizes(1, cfg.out_features, where="backbone")
    return ViT(image_size=size, channels=c, out_features=out, patch_size=cfg.patch_size, dim=cfg.dim, depth=cfg.depth,
               heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, pool=cfg.pool, qkv=cfg.qkv, dropout=cfg.dropout, moe=cfg.moe)
