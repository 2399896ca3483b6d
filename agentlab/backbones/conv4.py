"""The conv-4 embedding network of few-shot learning (Vinyals et al. 2016; Snell et al. 2017).

Four blocks of 3x3 convolution (64 filters, padding 1), batch norm, ReLU and
2x2 max-pooling. A 28x28 Omniglot image becomes 64 x 1 x 1 (28 -> 14 -> 7 -> 3 -> 1),
i.e. a 64-dimensional embedding; an 84x84 miniImageNet image becomes 1,600.
With `out_features > 0` a linear classifier follows the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

from einops import rearrange
import torch
from torch import Tensor, nn

from agentlab.config import ConfigError, check
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class Conv4Config:
    """Four conv3x3-BN-ReLU-maxpool blocks; the flattened output is the embedding."""

    in_channels: int = 0
    """input channels; 0 = from the stream's input shape"""
    hidden: int = 64
    """filters in every block (64 in the papers)"""
    out_features: int = 0
    """a linear classifier on top with this many outputs; 0 = none (an embedding network)"""
    channels_last: bool = True
    """keep activations in channels-last layout (about 1.6x faster convolutions on CPU; same results)"""

    def __post_init__(self) -> None:
        check(self.in_channels >= 0, "in_channels", self.in_channels, "an integer >= 0")
        check(self.hidden >= 1, "hidden", self.hidden, "an integer >= 1")
        check(self.out_features >= 0, "out_features", self.out_features, "an integer >= 0")


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))


class Conv4(nn.Module):
    """(B, C, H, W) -> (B, hidden * H/16 * W/16) embeddings, or (B, out_features) logits with a head."""

    def __init__(self, *, in_channels: int = 1, hidden: int = 64, out_features: int = 0, embed_dim: int | None = None,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "hidden": hidden, "out_features": out_features, "channels_last": channels_last}
        self.channels_last = channels_last
        self.blocks = nn.Sequential(*(conv_block(in_channels if i == 0 else hidden, hidden) for i in range(4)))
        self.head = nn.LazyLinear(out_features) if out_features and embed_dim is None else (
            nn.Linear(embed_dim, out_features) if out_features else None
        )
        if channels_last:
            self.blocks.to(memory_format=torch.channels_last)

    def embed(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return rearrange(self.blocks(x), "b c h w -> b (c h w)")  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        z = self.embed(x)
        return self.head(z) if self.head is not None else z


@register("backbone", "conv4", Conv4Config)
def build_conv4(cfg: Conv4Config, env: BuildEnv) -> Conv4:
    """Conv-4 embedding network (4 x conv3x3-64, BN, ReLU, maxpool) of few-shot learning."""
    channels, embed_dim = cfg.in_channels, None
    shape = getattr(env.stream, "input_shape", None)
    if not channels:
        if shape is None:
            raise ConfigError("backbone.in_channels=0 but the stream does not say its input shape; set backbone.in_channels")
        channels = shape[0]
    if shape is not None and len(shape) == 3:
        embed_dim = cfg.hidden * (shape[1] // 16) * (shape[2] // 16)
    return Conv4(in_channels=channels, hidden=cfg.hidden, out_features=cfg.out_features, embed_dim=embed_dim,
                 channels_last=cfg.channels_last)
