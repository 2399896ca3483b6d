"""The ViT backbone: shapes for grey and colour images, named Linear layers, patching, the seed recipe, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from agentlab import recipe, registry
from agentlab.backbones.vit import ViT
from agentlab.config import ConfigError


class _Stream:
    def __init__(self, shape, classes=10):
        self.input_shape, self.n_classes = shape, classes


def _build(shape, **cfg):
    return registry.build("backbone", {"name": "vit", **cfg}, registry.BuildEnv(stream=_Stream(shape)))


@pytest.mark.parametrize("shape,patch", [((1, 28, 28), 7), ((1, 28, 28), 4), ((3, 32, 32), 4), ((3, 32, 32), 8)])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_shapes_for_grey_and_colour_images(shape, patch, pool):
    vit = _build(shape, patch_size=patch, dim=16, depth=2, heads=2, pool=pool)
    n = (shape[1] // patch) * (shape[2] // patch)
    assert vit.pos.shape == (1, n + (pool == "cls"), 16)
    assert vit.patch_embed.in_features == patch * patch * shape[0]
    assert vit(torch.rand(3, *shape)).shape == (3, 10)


def test_every_weight_is_a_named_linear():
    vit = _build((1, 28, 28), patch_size=7, dim=16, depth=2, heads=2, qkv="separate",
                 moe={"experts": 2, "capacity": 1.0, "every": 2})
    names = [n for n, m in vit.named_modules() if isinstance(m, nn.Linear)]
    assert names[:7] == ["patch_embed", "blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.out",
                         "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert "blocks.1.mlp.groups.0.router" in names and "blocks.1.mlp.groups.0.experts.1.fc2" in names
    assert names[-1] == "head"
    # every matrix-shaped parameter belongs to one of those Linear layers (or is the class token / position embedding)
    linear = {id(m.weight) for m in vit.modules() if isinstance(m, nn.Linear)}
    assert {n for n, p in vit.named_parameters() if p.ndim >= 2 and id(p) not in linear} == {"pos", "cls"}


def test_patches_are_the_image_tiles():
    """The einops patching equals torch's unfold (channel-major there, (p1 p2 c) here)."""
    vit = ViT(image_size=(8, 8), channels=3, out_features=2, patch_size=4, dim=8, depth=1, heads=2)
    x = torch.rand(2, 3, 8, 8)
    seen = {}
    vit.patch_embed.register_forward_hook(lambda m, i, o: seen.update({"in": i[0]}))
    vit(x)
    ref = rearrange(F.unfold(x, 4, stride=4), "b (c p1 p2) l -> b l (p1 p2 c)", c=3, p1=4)
    assert torch.equal(seen["in"], ref)


def test_a_patch_size_that_does_not_divide_the_image_is_refused():
    with pytest.raises(ConfigError, match=r"patch_size=5 does not divide the image size 28x28"):
        _build((1, 28, 28), patch_size=5)
    with pytest.raises(ConfigError, match="heads=3"):
        _build((1, 28, 28), dim=16, heads=3)
    with pytest.raises(ConfigError, match="needs images"):
        _build((20,))


def test_the_seed_configuration_is_a_recipe():
    name, table = recipe.read_recipe("vit-cifar10")
    resolved = recipe.resolve(name, table)
    spec = next(iter(resolved.agents.values()))
    bb = dict(spec["backbone"])
    assert {k: bb[k] for k in ("depth", "heads", "dim", "patch_size")} == {"depth": 6, "heads": 6, "dim": 192, "patch_size": 4}
    vit = _build((3, 32, 32), **{k: v for k, v in bb.items() if k != "name"})
    assert vit.pos.shape == (1, 65, 192)  # 64 patches of 4x4 and the class token
    assert 2.6e6 < sum(p.numel() for p in vit.parameters()) < 2.8e6


def test_reset_parameters_redraws_the_tokens_only():
    vit = ViT(image_size=(8, 8), channels=1, out_features=2, patch_size=4, dim=8, depth=1, heads=2)
    w, pos = vit.head.weight.detach().clone(), vit.pos.detach().clone()
    vit.reset_parameters()
    assert torch.equal(vit.head.weight, w) and not torch.equal(vit.pos, pos)


def test_a_small_vit_learns_where_the_bright_quadrant_is():
    torch.manual_seed(0)
    x = torch.rand(256, 1, 8, 8) * 0.3
    y = torch.randint(0, 4, (256,))
    for i in range(256):
        r, c = divmod(int(y[i]), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 0.7
    vit = ViT(image_size=(8, 8), channels=1, out_features=4, patch_size=2, dim=16, depth=2, heads=2, pool="mean")
    opt = torch.optim.Adam(vit.parameters(), 3e-3)
    for _ in range(60):
        loss = F.cross_entropy(vit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (vit(x).argmax(1) == y).float().mean() > 0.95
