"""mini-RAG: capacity, documented eviction order, save/load, corrupt files, retrieval, fusion."""

import pytest
import torch

from agentlab import registry
from agentlab.memory.mini_rag import MiniRAG, MiniRAGConfig, RAGState
from agentlab.memory.store import EpisodeStore, StoreCorruptError


def _store(cap=4, eviction="lru"):
    return EpisodeStore(capacity=cap, key_dim=3, max_tokens=5, eviction=eviction)


def _put(store, i):
    key = torch.zeros(1, 3)
    key[0, i % 3] = 1.0
    key[0, (i + 1) % 3] = 0.01 * i
    return store.write(key, torch.tensor([[i, i + 1]]), [i % 10], [{"id": i}])[0]


def test_never_exceeds_capacity():
    s = _store(cap=5)
    for i in range(37):
        _put(s, i)
        assert len(s) <= 5
    assert len(s) == 5 and s.occupancy == 1.0
    assert sorted(m["id"] for m in s.meta) == [32, 33, 34, 35, 36]  # no retrievals: LRU = oldest written


def test_fifo_evicts_oldest_inserted_even_if_used():
    s = _store(cap=3, eviction="fifo")
    slots = [_put(s, i) for i in range(3)]
    s.retrieve(s.keys[slots[0]][None], k=1)  # using entry 0 does not save it under FIFO
    _put(s, 3)
    assert sorted(m["id"] for m in s.meta) == [1, 2, 3]


def test_lru_evicts_least_recently_used_ties_by_insertion():
    s = _store(cap=3, eviction="lru")
    slots = [_put(s, i) for i in range(3)]
    s.retrieve(s.keys[slots[0]][None], k=1)  # entry 0 is now the most recently used
    assert s.eviction_order() == [slots[1], slots[2], slots[0]]
    _put(s, 3)
    assert sorted(m["id"] for m in s.meta) == [0, 2, 3]  # entry 1 went first
    # one retrieval touching two entries: they tie on last use and leave by insertion order
    s2 = _store(cap=3)
    a, b, c = (_put(s2, i) for i in range(3))
    s2.retrieve(torch.ones(1, 3), k=3)  # touches all three at one clock tick
    assert s2.eviction_order() == [a, b, c]


def test_retrieval_is_exact_top_k_and_counts_hits():
    torch.manual_seed(0)
    s = EpisodeStore(capacity=100, key_dim=8, max_tokens=4, hit_threshold=0.99)
    keys = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    s.write(keys, torch.randint(0, 9, (50, 4)), torch.arange(50) % 10)
    q = torch.randn(6, 8)
    r = s.retrieve(q, k=3)
    brute = (torch.nn.functional.normalize(q, dim=-1) @ keys.t()).topk(3, dim=1)
    assert torch.allclose(r.scores, brute.values, atol=1e-6)
    assert torch.equal(r.labels, brute.indices % 10)
    r2 = s.retrieve(keys[:4], k=1)
    assert r2.hit.all()  # a stored key finds itself with similarity 1
    assert s.stats()["hit_rate"] == pytest.approx((int(r.hit.sum()) + 4) / 10)
    assert s.stats()["retrieval_latency_ms"] > 0


def test_save_load_gives_identical_retrieval(tmp_path):
    torch.manual_seed(1)
    s = EpisodeStore(capacity=20, key_dim=8, max_tokens=6)
    s.write(torch.randn(25, 8), torch.randint(0, 50, (25, 6)), torch.arange(25) % 10, [{"i": i} for i in range(25)])
    path = tmp_path / "store.safetensors"
    s.save(path)
    t = EpisodeStore.load(path)
    q = torch.randn(7, 8)
    a, b = s.retrieve(q, k=5, touch=False), t.retrieve(q, k=5, touch=False)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert t.meta == s.meta and t.eviction_order() == s.eviction_order()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_file_gives_clear_error_and_loses_nothing(tmp_path, damage):
    s = _store(cap=4)
    for i in range(3):
        _put(s, i)
    good, other = tmp_path / "good.safetensors", tmp_path / "other.safetensors"
    s.save(good)
    s.save(other)
    other_bytes = other.read_bytes()
    raw = good.read_bytes()
    if damage == "truncate":
        good.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        good.write_bytes(b"\x00not a store at all" * 10)
    else:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(good))
    before = good.read_bytes()
    snapshot = (s.keys.clone(), s.tokens.clone(), list(s.meta), len(s))
    with pytest.raises(StoreCorruptError, match=str(good.name)):
        s.restore(good)
    assert torch.equal(s.keys, snapshot[0]) and torch.equal(s.tokens, snapshot[1])
    assert s.meta == snapshot[2] and len(s) == snapshot[3]
    assert good.read_bytes() == before and other.read_bytes() == other_bytes  # no file touched
    assert len(EpisodeStore.load(other)) == 3


def test_mini_rag_module_fuses_retrieved_tokens_and_reports():
    torch.manual_seed(0)
    cfg = MiniRAGConfig(capacity=8, key_dim=4, max_tokens=5, num_codes=16, dim=8, k=2, heads=2)
    m = MiniRAG(cfg)
    x = torch.randn(3, 6, 8)
    y, st = m(x, m.initial_state(3))
    assert torch.equal(y, x) and st.retrieved_slots is None  # empty store: pass-through
    for i in range(12):
        m.write(torch.randn(1, 4), torch.randint(0, 16, (1, 3)), [i % 10])
    assert len(m.store) == 8
    y, st = m(x, RAGState(torch.randn(3, 4), None))
    assert y.shape == x.shape and st.retrieved_slots.shape == (3, 2) and not torch.allclose(y, x)
    y.sum().backward()
    assert m.attn.in_proj_weight.grad.abs().sum() > 0
    sc = m.scalars()
    assert sc["occupancy"] == 1.0 and sc["capacity"] == 8 and "hit_rate" in sc and "retrieval_latency_ms" in sc
    m.reset()
    assert len(m.store) == 0


def test_attached_mini_rag_writes_labelled_features_and_reads_them_by_cross_attention():
    torch.manual_seed(0)
    m = registry.build("memory", {"name": "mini_rag", "capacity": 8, "key_dim": 4, "num_labels": 3, "k": 2}, registry.BuildEnv())
    assert m.bind(6) == 6 and m.fuse_kind == "cross_attention"
    h = torch.randn(5, 6)
    y, _ = m.read(h, None)
    assert torch.equal(y, h) and len(m.store) == 0  # empty store: the features pass through
    m.observe(h, torch.tensor([0, 1, 2, 0, 1]), torch.zeros(5, dtype=torch.long))
    assert len(m.store) == 5 and sorted(m.store.labels[:5].tolist()) == [0, 0, 1, 1, 2]
    with torch.no_grad():
        m.fusion.gate.fill_(1.0)  # past its identity start
    y, _ = m.read(h, None)
    assert y.shape == h.shape and not torch.allclose(y, h)
    y.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (m.fusion.attn.q_proj_weight, m.fusion.gate))


def test_state_dict_round_trip_keeps_store():
    cfg = MiniRAGConfig(capacity=4, key_dim=4, max_tokens=3, num_codes=8, dim=8, k=1, heads=2)
    a = MiniRAG(cfg)
    a.write(torch.randn(3, 4), torch.randint(0, 8, (3, 3)), [1, 2, 3])
    b = MiniRAG(cfg)
    b.load_state_dict(a.state_dict())
    q = torch.randn(2, 4)
    assert torch.equal(a.store.retrieve(q, 2, touch=False).slots, b.store.retrieve(q, 2, touch=False).slots)


def test_ivf_index_agrees_with_exact_and_follows_writes():
    torch.manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    keys = centers.repeat(100, 1) + 0.05 * torch.randn(2000, 16)
    exact = EpisodeStore(capacity=2000, key_dim=16, max_tokens=2)
    ivf = EpisodeStore(capacity=2000, key_dim=16, max_tokens=2, index="ivf", ann_min_size=500, nprobe=4)
    for s in (exact, ivf):
        s.write(keys, torch.zeros(2000, 2, dtype=torch.long), torch.arange(2000) % 20)
    q = keys[:50] + 0.01 * torch.randn(50, 16)
    a, b = exact.retrieve(q, k=1, touch=False), ivf.retrieve(q, k=1, touch=False)
    assert ivf._ann is not None and len(ivf._ann) == 2000
    assert (a.labels == b.labels).float().mean() >= 0.95
    new = torch.nn.functional.normalize(torch.randn(1, 16), dim=-1)
    slot = ivf.write(new, torch.zeros(1, 2, dtype=torch.long), [7])[0]  # evicts one entry and takes its slot
    assert len(ivf._ann) == 2000
    assert ivf.retrieve(new, k=1, touch=False).slots[0, 0] == slot


def test_checkpoint_round_trip_keeps_store(tmp_path):
    from agentlab.checkpoint import load_checkpoint_dir, save_checkpoint

    cfg = MiniRAGConfig(capacity=5, key_dim=4, max_tokens=3, num_codes=8, dim=8, k=2, heads=2)
    a = MiniRAG(cfg)
    a.write(torch.randn(4, 4), torch.randint(0, 8, (4, 3)), [1, 2, 3, 4], [{"m": "image"}, None, {"m": "audio"}, {"i": 3}])
    path = save_checkpoint(tmp_path, 0, {"memory": a.state_dict()})
    b = MiniRAG(cfg)
    b.load_state_dict(load_checkpoint_dir(path)["memory"])
    q = torch.randn(3, 4)
    assert torch.equal(a.store.retrieve(q, 2, touch=False).slots, b.store.retrieve(q, 2, touch=False).slots)
    assert b.store.meta == a.store.meta and b.store.eviction_order() == a.store.eviction_order()


def test_sense_rag_backbone_writes_training_batches_and_retrieves_them():
    from agentlab.agent import Agent
    from agentlab.data import Split
    from agentlab.learners.finetune import FineTune
    from agentlab.learners.sgd import SGDConfig
    from agentlab.loop import LoopConfig, run
    from agentlab.backbones.sense_rag import RAGClassifier, RAGClassifierConfig
    from agentlab.scenarios.splits import class_split_stream

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28), torch.arange(64) % 4
    stream = class_split_stream("toy", Split(x, y), Split(x[:16], y[:16]), [0, 1, 2, 3], 2, "class", input_shape=(1, 28, 28))
    net = RAGClassifier(RAGClassifierConfig(num_codes=16, dim=16, key_dim=8, capacity=40, k=2), 4)
    agent = Agent(net, learner=FineTune(SGDConfig(batch_size=16)))
    assert agent.memories() == [net.rag]  # found inside the backbone
    run(agent, stream, generator=torch.Generator().manual_seed(0), cfg=LoopConfig(checkpoint=False, eval_next=False))
    store = net.rag.store
    assert len(store) == 40  # 64 training examples written, capacity 40
    assert set(store.labels.tolist()) == {0, 1, 2, 3}  # the second task's batches sit beside the first's
    sc = agent.scalars()
    assert sc["memory/mini_rag/occupancy"] == 1.0 and sc["memory/mini_rag/retrieval_latency_ms"] > 0
