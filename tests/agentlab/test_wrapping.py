"""The one layer wrapper: effective weights in list order, `.weight` readers see them, refusals, targeting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agentlab.agent import Agent
from agentlab.errors import UserError
from agentlab.plasticity.lora import LoRA, LoRAConfig
from agentlab.plasticity.set import SET, SETConfig
from agentlab.plasticity.supsup import SupSup, SupSupConfig
from agentlab.task import Task
from agentlab.wrapping import WrappedLayer, wrap


def _task(i: int) -> Task:
    return Task(id=i, name=f"t{i}", kind="classification", train=None, eval=None)


def test_an_idle_wrapper_is_the_base_layer_bit_for_bit():
    torch.manual_seed(0)
    lin, conv = nn.Linear(5, 3), nn.Conv2d(2, 4, 3, padding=1)
    x, xc = torch.randn(7, 5), torch.randn(2, 2, 6, 6)
    seq = nn.Sequential(lin, conv)
    a, b = wrap(seq, "0"), wrap(seq, "1")
    assert isinstance(a, WrappedLayer) and a.base_layer is lin and b.base_layer is conv
    assert torch.equal(a(x), lin(x)) and torch.equal(b(xc), conv(xc))
    assert a.weight is lin.weight and a.bias is lin.bias  # no transform: the very same tensors


def test_stacked_transforms_apply_in_list_order_and_weight_readers_see_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    set_ = SET(SETConfig(epsilon=2.0, zeta=0.0))
    sup = SupSup(SupSupConfig())
    lora = LoRA(LoRAConfig(rank=2, backbone_phase="population"))
    agent = Agent(net, plasticity=[set_, sup, lora])
    layer = net[0]
    assert list(layer.transforms) == ["set", "supsup", "lora"]
    agent.start_task(_task(0))
    with torch.no_grad():
        for p in lora.tasks["0"].values():
            p.normal_()  # a non-zero delta
    agent.set_task(0)
    base = layer.base_layer.weight
    m_set = (set_.layers["0"].owner >= 0).float()
    m_sup = sup._layers["0"].mask(0)
    expect = base * m_set * m_sup + lora.delta_weight(lora.tasks["0"], 0)
    assert torch.allclose(layer.weight, expect)
    x = torch.randn(4, 6)
    assert torch.allclose(layer(x), x @ expect.T, atol=1e-6)


def test_attention_output_projection_read_through_weight_is_masked():
    """nn.MultiheadAttention reads `out_proj.weight` itself instead of calling out_proj: it must get the masked one."""
    torch.manual_seed(0)

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    net = Attn()
    sup = SupSup(SupSupConfig(layers=["attn.out_proj"]))
    agent = Agent(net, plasticity=[sup])
    agent.start_task(_task(0))
    x = torch.randn(3, 5, 8)
    plain = nn.MultiheadAttention(8, 2, batch_first=True)
    plain.load_state_dict({**{k: v for k, v in net.attn.state_dict().items() if not k.startswith("out_proj")},
                           "out_proj.weight": net.attn.out_proj.weight.detach(), "out_proj.bias": net.attn.out_proj.bias.detach()})
    agent.eval()
    with torch.no_grad():
        got = agent(x, 0)
        masked_ref = plain(x, x, x, need_weights=False)[0]
        assert torch.allclose(got, masked_ref, atol=1e-6)  # the effective (masked) projection was used
        plain.out_proj.weight.copy_(net.attn.out_proj.base_layer.weight)
        assert not torch.allclose(got, plain(x, x, x, need_weights=False)[0])  # not the raw weight


def test_a_pair_that_cannot_stack_is_refused_naming_both_and_the_layer():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UserError) as e:
        Agent(net, plasticity=[SET(SETConfig(epsilon=2.0)), SupSup(SupSupConfig())])
    msg = str(e.value)
    assert "'set' and 'supsup' cannot stack on layer '0'" in msg and "exclude" in msg


def test_targeting_is_one_syntax_with_include_and_exclude():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    sup = SupSup(SupSupConfig(layers=["*"], exclude=["4"]))
    Agent(net, plasticity=[sup])
    assert list(sup._layers) == ["0", "2"] and not isinstance(net[4], WrappedLayer)
    with pytest.raises(UserError, match=r"lora.layers=\['blocks.\*'\].*matches no Linear layer.*0, 2, 4"):
        Agent(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
              plasticity=[LoRA(LoRAConfig(layers=["blocks.*"]))])
