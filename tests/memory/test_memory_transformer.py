"""Memory-augmented transformer: read/write shapes and masks, LRU writes, reset, causality, figures."""

import torch

from agentlab import registry
from agentlab.memory.memory_transformer import (KVMemoryState, MemoryTransformer, MemoryTransformerConfig, least_used, read,
                                       write)


def _model(**kw):
    torch.manual_seed(0)
    cfg = MemoryTransformerConfig(**{"in_features": 6, "dim": 16, "heads": 2, "layers": 1, "slots": 10, **kw})
    return MemoryTransformer(cfg)


def test_default_slots_and_registry():
    m = registry.build("memory", {"name": "memory_transformer"}, registry.BuildEnv())
    assert m.cfg.slots == 500 and m.bind(64) == 64 and isinstance(m.core, MemoryTransformer)
    st = m.initial_state(3)
    assert st.keys.shape == (3, 500, 128) and st.usage.shape == (3, 500) and not st.written.any()


def test_forward_shapes_and_write_mask():
    m = _model()
    x = torch.randn(2, 7, 6)
    y, st = m(x, m.initial_state(2))
    assert y.shape == (2, 7, 16) and st.keys.shape == (2, 10, 16)
    assert int(st.written[0].sum()) == 7  # one slot per step while free slots remain
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, :3] = True
    _, st2 = m(x, m.initial_state(2), write_mask=mask)
    assert st2.written.sum(1).tolist() == [3, 3]  # masked steps write nothing
    assert torch.all(st2.values[:, 3:] == 0)


def test_read_ignores_unwritten_slots_and_empty_memory_reads_zero():
    st = KVMemoryState(torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.zeros(1, 4),
                       torch.tensor([[False, True, False, False]]), torch.zeros(1, 4))
    r, w = read(torch.randn(1, 3), st)
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(r, st.values[:, 1])
    empty = st._replace(written=torch.zeros(1, 4, dtype=torch.bool))
    r, w = read(torch.randn(1, 3), empty)
    assert torch.all(r == 0) and torch.all(w == 0)


def test_lru_write_chooses_least_used_slot():
    usage = torch.tensor([[0.9, 0.2, 0.5, 0.7], [0.1, 0.3, 0.05, 0.4]])
    assert least_used(usage).argmax(-1).tolist() == [1, 2]
    st = KVMemoryState(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), usage, torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, 4))
    k, v = torch.ones(2, 3), 2 * torch.ones(2, 3)
    new = write(k, v, least_used(usage), st, torch.zeros(2, 4), gamma=0.95)
    assert torch.equal(new.values[0, 1], v[0]) and torch.equal(new.values[1, 2], v[1])
    assert new.values[0, [0, 2, 3]].abs().sum() == 0  # nothing else touched
    assert torch.allclose(new.usage[0], 0.95 * usage[0] + torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # inside the module: with the gate closed, step t writes the least-used slot, which is the next empty one
    m = _model(write_gate_init=-30.0, slots=5)
    _, st = m(torch.randn(1, 8, 6), m.initial_state(1))
    w = m.trace["write"].argmax(-1).tolist()
    assert w[:5] == [0, 1, 2, 3, 4]  # fills free slots in order, then recycles the least used
    assert w[5] == int(m.trace["usage"][4].argmin())


def test_episode_reset_clears_memory():
    m = _model()
    _, st = m(torch.randn(1, 5, 6), m.initial_state(1))
    assert st.written.any()
    m.carried = st
    assert m.state_bytes() > 0
    m.reset()
    assert m.carried is None and m.state_bytes() == 0
    fresh = m.initial_state(1)
    assert not fresh.written.any() and fresh.usage.abs().sum() == 0 and fresh.values.abs().sum() == 0


def test_causal_output_at_t_ignores_later_inputs():
    m = _model()
    x = torch.randn(1, 6, 6)
    y1, _ = m(x, m.initial_state(1))
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 6)
    y2, _ = m(x2, m.initial_state(1))
    assert torch.allclose(y1[:, :4], y2[:, :4], atol=1e-5)
    assert not torch.allclose(y1[:, 4:], y2[:, 4:])


def test_gradients_and_figures():
    m = _model()
    y, _ = m(torch.randn(2, 5, 6), m.initial_state(2))
    y.sum().backward()
    assert m.to_k.weight.grad.abs().sum() > 0 and m.write_gate.grad is not None
    sc = m.scalars()
    assert sc["read_entropy"] >= 0 and sc["slots_used"] == 5
    im = m.images()
    assert im["usage_heatmap"].shape == (1, 5, 5) and im["write_locations"].max() <= 1


def test_reset_configuration_episode_vs_kept_across_tasks():
    x = torch.randn(1, 4, 6)
    per_episode = _model(reset="episode")
    _, st = per_episode(x, per_episode.start_state(1))
    per_episode.keep(st)
    assert per_episode.carried is None and not per_episode.start_state(1).written.any()
    kept = _model(reset="never")
    _, st = kept(x, kept.start_state(1))
    kept.keep(st)
    kept.on_task_start(None)  # "never": survives a task boundary
    assert kept.start_state(1).written.sum() == 4
    per_task = _model(reset="task")
    _, st = per_task(x, per_task.start_state(1))
    per_task.keep(st)
    assert per_task.start_state(1).written.sum() == 4  # kept between episodes of a task
    per_task.on_task_start(None)
    assert not per_task.start_state(1).written.any()  # emptied at the next task


def test_learns_to_bind_labels_through_memory():
    """3-way 1-shot episodes of random class vectors: supports write, queries read. The model learns to answer,
    and the answer travels through the memory (ablating the writes drops accuracy towards chance)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    e, n, b, q = 8, 3, 8, 4
    m = MemoryTransformer(MemoryTransformerConfig(in_features=2 * e + n, dim=16, heads=2, layers=1, slots=8, address_features=e))
    head = torch.nn.Linear(16, n)
    opt = torch.optim.Adam([*m.parameters(), *head.parameters()], 3e-3)
    t = n + q
    idx = torch.arange(t)
    blocked = ~(((idx[None] < n) & (idx[None] <= idx[:, None])) | (idx[None] == idx[:, None]))
    wm = (idx < n).expand(b, t)
    for step in range(120):
        cls = torch.randn(b, n, e)
        qy = torch.randint(0, n, (b, q))
        zq = cls.gather(1, qy[..., None].expand(-1, -1, e)) + 0.1 * torch.randn(b, q, e)
        rows = torch.cat([torch.cat([cls, cls, torch.eye(n).expand(b, n, n)], -1),
                          torch.cat([zq, torch.zeros_like(zq), torch.zeros(b, q, n)], -1)], 1)
        y, _ = m(rows, m.initial_state(b), write_mask=wm, attend=blocked, read_address=rows[..., :e], write_address=rows[..., e : 2 * e])
        logits = head(y[:, n:])
        loss = F.cross_entropy(logits.reshape(-1, n), qy.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = float((logits.argmax(-1) == qy).float().mean())
    assert acc >= 0.9, f"episode accuracy {acc} after 120 steps (chance 0.33)"
    # the answer comes through the memory: with the memory emptied (no writes) accuracy falls to about chance
    with torch.no_grad():
        y0, _ = m(rows, m.initial_state(b), write_mask=torch.zeros_like(wm), attend=blocked,
                  read_address=rows[..., :e], write_address=rows[..., e : 2 * e])
    acc0 = float((head(y0[:, n:]).argmax(-1) == qy).float().mean())
    assert acc0 < acc - 0.3
