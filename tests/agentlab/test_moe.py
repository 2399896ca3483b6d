"""Expert-choice MoE (Zhou et al. 2022): each expert takes exactly k tokens, softmax over experts, gate-weighted sums,
tokens taken by none or several experts, routing groups, the MLP's MoE layer, checkpoints with added groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agentlab import registry
from agentlab.backbones.moe import ExpertChoiceMoE, MoEConfig, ResidualMoE, moe_scalars
from agentlab.config import ConfigError


def _layer(experts=4, capacity=1.0, dim=6, route_over="example", seed=0):
    torch.manual_seed(seed)
    return ExpertChoiceMoE(dim, MoEConfig(experts=experts, capacity=capacity, hidden=5), route_over=route_over)


def _by_hand(layer: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for one group x (n, d), token by token and expert by expert."""
    experts = layer.experts()
    probs = torch.cat([g.router(x) for g in layer.groups], -1).softmax(-1)  # (n, e): a distribution per token
    n = x.shape[0]
    k = max(1, min(n, round(n * layer.cfg.capacity / len(experts))))
    y = torch.zeros_like(x)
    for e, ex in enumerate(experts):
        chosen = sorted(range(n), key=lambda t: -float(probs[t, e].detach()))[:k]
        for t in chosen:
            y[t] += probs[t, e] * ex(x[t])
    return y


def test_output_is_the_gate_weighted_sum_over_the_experts_that_chose_each_token():
    layer = _layer(experts=4, capacity=1.5)
    x = torch.randn(3, 10, 6)
    y = layer(x)
    for b in range(3):
        assert torch.allclose(y[b], _by_hand(layer, x[b]), atol=1e-6)


def test_every_expert_takes_exactly_k_tokens_and_the_load_ratio_is_one():
    layer = _layer(experts=4, capacity=2.0)
    layer(torch.randn(5, 12, 6))
    assert layer.capacity_k(12, 4) == 6
    assert layer.last["tokens_per_expert"] == 6.0 and layer.last["capacity_k"] == 6.0
    assert layer.last["max_load_ratio"] == 1.0
    assert layer.last["experts_per_token"] == pytest.approx(2.0)  # c experts per token on average
    assert torch.allclose(layer.last_probs.sum(-1), torch.ones(5, 12))  # softmax over experts, per token


def test_a_token_may_get_several_experts_or_none_and_the_residual_carries_a_dropped_one():
    layer = _layer(experts=4, capacity=1.0)
    # router logits per token (rows) and expert (columns); token t is the one-hot vector e_t
    logits = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 5], [0, 0, 0, 4], [0, 0, 0, 3], [0, 0, 0, 2], [0, 0, 0, 1.0]])
    with torch.no_grad():
        layer.groups[0].router.weight.copy_(logits.T)
        layer.groups[0].router.bias.zero_()
    x = torch.eye(6)[None]  # (1, 6 tokens, 6)
    y = layer(x)
    usage = layer.usage_share()  # (e, n); k = round(6 * 1 / 4) = 2 tokens per expert
    # experts 0-2 find token 0 (p = 1/4) and token 5 (p = 0.14) the most theirs; expert 3 takes tokens 1 and 2
    assert usage[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0] and usage[:, 5].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert usage[:, 1].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert usage[:, 3].tolist() == [0.0] * 4 and usage[:, 4].tolist() == [0.0] * 4  # tokens 3 and 4: no expert
    assert layer.last["dropped_token_share"] == pytest.approx(2 / 6) and layer.last["max_load_ratio"] == 1.0
    assert torch.equal(y[0, 3], torch.zeros(6))
    res = ResidualMoE(6, MoEConfig(experts=4, capacity=1.0, hidden=5), route_over="example")
    res.moe.load_state_dict(layer.state_dict())
    assert torch.equal(res(x)[0, 3], x[0, 3])  # a token no expert takes passes through unchanged


def test_per_example_routing_ignores_the_rest_of_the_batch_and_batch_routing_does_not():
    ex, bt = _layer(route_over="example"), _layer(route_over="batch")
    x = torch.randn(4, 8, 6)
    assert torch.allclose(ex(x)[:1], ex(x[:1]), atol=1e-6)
    assert not torch.allclose(bt(x)[:1], bt(x[:1]), atol=1e-6)


def test_gradients_reach_router_and_experts():
    layer = _layer()
    layer(torch.randn(2, 8, 6)).pow(2).sum().backward()
    assert layer.groups[0].router.weight.grad.abs().sum() > 0
    assert all(e.fc1.weight.grad is not None and e.fc1.weight.grad.abs().sum() > 0 for e in layer.experts())


def test_visible_groups_limit_routing_and_added_groups_load_into_a_fresh_layer():
    layer = _layer(experts=2)
    x = torch.randn(2, 8, 6)
    before = layer(x)
    layer.add_group(3, generator=torch.Generator().manual_seed(1))
    assert layer.group_sizes() == [2, 3]
    layer.visible = 1
    assert torch.equal(layer(x), before)  # the first group alone computes as before the group was added
    layer.visible = None
    assert layer.last["experts"] == 2.0 and not torch.equal(layer(x), before) and layer.last["experts"] == 5.0
    fresh = _layer(experts=2, seed=5)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.group_sizes() == [2, 3] and torch.equal(fresh(x), layer(x))


def test_figures_over_layers():
    vit = registry.build("backbone", {"name": "vit", "patch_size": 4, "dim": 8, "depth": 2, "heads": 2,
                                      "moe": {"experts": 2, "capacity": 1.0}},
                         registry.BuildEnv(stream=type("S", (), {"input_shape": (1, 8, 8), "n_classes": 3})()))
    vit(torch.rand(4, 1, 8, 8))
    s = moe_scalars(vit)
    assert s["moe/max_load_ratio"] == 1.0 and "blocks.0.mlp/router_entropy" in s and "blocks.1.mlp/experts_per_token" in s
    assert 0 <= s["moe/router_entropy"] <= s["blocks.0.mlp/router_entropy_max"] + 1e-6
    img = vit.images()["moe/expert_usage"]
    assert img.shape[0] == 3 and 0 <= float(img.min()) and float(img.max()) <= 1


def test_the_mlp_backbone_takes_an_moe_layer():
    env = registry.BuildEnv(stream=type("S", (), {"input_shape": (1, 4, 4), "n_classes": 3})())
    mlp = registry.build("backbone", {"name": "mlp", "hidden": [12, 12], "moe": {"experts": 4, "capacity": 1.0},
                                      "moe_layers": [1]}, env)
    names = [n for n, _ in mlp.named_modules()]
    assert "layers.0" in names and "layers.2" in names and "layers.3.moe.moe.groups.0.router" in names
    x = torch.rand(16, 1, 4, 4)
    out = mlp(x)
    assert out.shape == (16, 3)
    moe = mlp.get_submodule("layers.3.moe.moe")
    assert moe.route_over == "batch" and moe.last["capacity_k"] == 4.0  # 16 examples * 1.0 / 4 experts
    with pytest.raises(ConfigError, match=r"moe_layers=\[2\]"):
        registry.build("backbone", {"name": "mlp", "hidden": [12, 12], "moe": {}, "moe_layers": [2]}, env)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="capacity=9"):
        MoEConfig(experts=4, capacity=9)
    with pytest.raises(ConfigError, match="route_over"):
        registry.build("backbone", {"name": "vit", "moe": {"route_over": "batch"}},
                       registry.BuildEnv(stream=type("S", (), {"input_shape": (1, 8, 8), "n_classes": 3})()))


def test_a_learned_moe_beats_chance_on_a_token_task():
    """Tokens of two kinds need different maps: the MoE learns them (a smoke test of the whole path)."""
    torch.manual_seed(0)
    layer = ExpertChoiceMoE(4, MoEConfig(experts=4, capacity=2.0, hidden=16), route_over="example")
    head = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], 1e-2)
    x = torch.randn(64, 6, 4)
    y = (x[:, :, 0] * x[:, :, 1] > 0).long()  # (b, n) a product: not linear in the token
    for _ in range(150):
        loss = F.cross_entropy(head(x + layer(x)).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (head(x + layer(x)).argmax(-1) == y).float().mean() > 0.8
