"""mini-RAG store files are not trusted: sizes checked against the file before any allocation, a checksum, dtype
checks, every malformed file a StoreCorruptError naming it; counters (hit rate, latency) survive a checkpoint."""

import json
import struct

import pytest
import torch

from agentlab.memory.mini_rag import MiniRAG, MiniRAGConfig
from agentlab.memory.store import EpisodeStore, StoreCorruptError


def _store():
    s = EpisodeStore(capacity=6, key_dim=4, max_tokens=3)
    torch.manual_seed(0)
    s.write(torch.randn(5, 4), torch.randint(0, 9, (5, 3)), [1, 2, 3, 4, 5], [{"i": i} for i in range(5)])
    s.retrieve(torch.randn(2, 4), k=2)
    return s


def _split(raw):
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8: 8 + n]), raw[8 + n:]


def _join(header, data):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _with_header(raw, edit):
    header, data = _split(raw)
    edit(header)
    return _join(header, data)


def _resealed(header_meta, tensors):
    """A file whose checksum matches its (wrong) content: only the content checks can refuse it."""
    from safetensors.torch import save

    from agentlab.memory.store import _digest

    meta = dict(header_meta)
    meta["sha256"] = _digest(tensors, meta)
    return save(tensors, metadata=meta)


def test_a_header_declaring_a_huge_store_is_refused_before_allocating(tmp_path, monkeypatch):
    """A small file declaring capacity=3e7 would make the loader allocate gigabytes to build the store."""
    path = tmp_path / "s.safetensors"
    _store().save(path)

    def edit(h):
        cfg = json.loads(h["__metadata__"]["config"])
        cfg["capacity"] = 30_000_000
        h["__metadata__"]["config"] = json.dumps(cfg)

    path.write_bytes(_with_header(path.read_bytes(), edit))
    assert path.stat().st_size < 4000
    built = []
    original = EpisodeStore.reset
    monkeypatch.setattr(EpisodeStore, "reset", lambda self: (built.append(self.capacity), original(self))[1])
    with pytest.raises(StoreCorruptError, match="s.safetensors"):
        EpisodeStore.load(path)
    assert not any(c >= 1_000_000 for c in built), built


def test_flipped_bytes_in_the_tensors_are_detected(tmp_path):
    path = tmp_path / "s.safetensors"
    _store().save(path)
    raw = bytearray(path.read_bytes())
    raw[-9] ^= 0x01  # the low bit of a stored value (still a valid number)
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError, match=r"s.safetensors .*SHA-256"):
        EpisodeStore.load(path)


def test_missing_counters_are_a_store_error_not_a_key_error(tmp_path):
    path = tmp_path / "s.safetensors"
    s = _store()
    s.save(path)

    def edit(h):
        h["__metadata__"]["counters"] = json.dumps({"clock": 3})

    path.write_bytes(_with_header(path.read_bytes(), edit))
    with pytest.raises(StoreCorruptError, match="s.safetensors"):
        EpisodeStore.load(path)


def test_wrong_dtypes_are_refused(tmp_path):
    s = _store()
    path = tmp_path / "s.safetensors"
    tensors = {k: getattr(s, k) for k in ("tokens", "keys", "labels", "inserted", "last_used")}
    tensors["tokens"] = tensors["tokens"].float()  # same size (4 bytes), wrong kind
    meta = {"format": "agentlab-mini-rag/2", "config": json.dumps(s.config()), "counters": json.dumps(s.counters()),
            "meta": json.dumps(s.meta)}
    path.write_bytes(_resealed(meta, tensors))
    with pytest.raises(StoreCorruptError, match=r"s.safetensors.*'tokens' is \('F32'"):
        EpisodeStore.load(path)


def _content_variants():
    def occupied_mismatch(t, c):
        c["n_inserted"] = 1

    def nan_keys(t, c):
        t["keys"][0, 0] = float("nan")

    def hits_over_queries(t, c):
        c["n_hits"] = c["n_queries"] + 1

    def used_after_clock(t, c):
        t["last_used"][0] = c["clock"] + 5

    def negative_latency(t, c):
        c["latency_s_total"] = -1.0

    def bad_token(t, c):
        t["tokens"][0, 0] = -7

    return [occupied_mismatch, nan_keys, hits_over_queries, used_after_clock, negative_latency, bad_token]


@pytest.mark.parametrize("damage", _content_variants(), ids=lambda f: f.__name__)
def test_a_sealed_but_inconsistent_store_is_refused(tmp_path, damage):
    s = _store()
    tensors = {k: getattr(s, k).clone() for k in ("tokens", "keys", "labels", "inserted", "last_used")}
    counters = s.counters()
    damage(tensors, counters)
    meta = {"format": "agentlab-mini-rag/2", "config": json.dumps(s.config()), "counters": json.dumps(counters),
            "meta": json.dumps(s.meta)}
    path = tmp_path / "s.safetensors"
    path.write_bytes(_resealed(meta, tensors))
    with pytest.raises(StoreCorruptError, match="s.safetensors"):
        EpisodeStore.load(path)


def _header_variants():
    def huge_header_len(raw):
        return struct.pack("<Q", 2**62) + raw[8:]

    def short(raw):
        return raw[:5]

    def empty(raw):
        return b""

    def header_not_json(raw):
        n = int.from_bytes(raw[:8], "little")
        return raw[:8] + b"\xff" * n + raw[8 + n:]

    def header_a_list(raw):
        return _join([1, 2], _split(raw)[1])

    def deep_json(raw):
        return _join_text(b"[" * 5000 + b"]" * 5000, _split(raw)[1])

    def no_metadata(raw):
        return _with_header(raw, lambda h: h.pop("__metadata__"))

    def old_format(raw):
        return _with_header(raw, lambda h: h["__metadata__"].update(format="agentlab-mini-rag/1"))

    def config_not_json(raw):
        return _with_header(raw, lambda h: h["__metadata__"].update(config="{"))

    def negative_capacity(raw):
        return _with_config(raw, capacity=-1)

    def bool_key_dim(raw):
        return _with_config(raw, key_dim=True)

    def unknown_eviction(raw):
        return _with_config(raw, eviction="random")

    def extra_config_key(raw):
        return _with_config(raw, x=1)

    def meta_not_list(raw):
        return _with_header(raw, lambda h: h["__metadata__"].update(meta=json.dumps({"a": 1})))

    def truncated(raw):
        return raw[: len(raw) - 10]

    def tensor_renamed(raw):
        def edit(h):
            h["keyz"] = h.pop("keys")
        return _with_header(raw, edit)

    return [huge_header_len, short, empty, header_not_json, header_a_list, deep_json, no_metadata, old_format,
            config_not_json, negative_capacity, bool_key_dim, unknown_eviction, extra_config_key, meta_not_list,
            truncated, tensor_renamed]


def _with_config(raw, **changes):
    def edit(h):
        h["__metadata__"]["config"] = json.dumps({**json.loads(h["__metadata__"]["config"]), **changes})
    return _with_header(raw, edit)


def _join_text(text, data):
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("damage", _header_variants(), ids=lambda f: f.__name__)
def test_every_malformed_file_is_a_store_corrupt_error_naming_it(tmp_path, damage):
    path = tmp_path / "s.safetensors"
    _store().save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreCorruptError, match="s.safetensors"):
        EpisodeStore.load(path)


def test_a_missing_file_is_a_store_corrupt_error(tmp_path):
    with pytest.raises(StoreCorruptError, match="nowhere.safetensors"):
        EpisodeStore.load(tmp_path / "nowhere.safetensors")


def test_save_and_load_keep_the_counters(tmp_path):
    s = _store()
    s.save(tmp_path / "s.safetensors")
    t = EpisodeStore.load(tmp_path / "s.safetensors")
    assert t.stats() == s.stats() and t.counters() == s.counters()


def test_hit_rate_and_latency_survive_a_checkpoint():
    """A resumed run's mini-RAG figures continue from the checkpoint instead of restarting at 0."""
    from agentlab.checkpoint import flatten_state, unflatten_state

    cfg = MiniRAGConfig(capacity=8, key_dim=4, max_tokens=3, num_codes=8, dim=8, k=2, heads=2, hit_threshold=0.9)
    a = MiniRAG(cfg)
    keys = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    a.write(keys, torch.randint(0, 8, (5, 3)), [1, 2, 3, 4, 5])
    a.retrieve(keys[:3])  # three hits
    a.retrieve(-keys[:2])  # two misses
    before = a.scalars()
    assert before["hit_rate"] == pytest.approx(0.6) and before["retrieval_latency_ms"] > 0
    tensors, tree = flatten_state(a.state_dict())  # what a checkpoint holds
    b = MiniRAG(cfg)
    b.load_state_dict(unflatten_state(json.loads(json.dumps(tree)), tensors))
    assert b.scalars() == before


def test_a_checkpointed_store_that_does_not_fit_is_refused():
    cfg = MiniRAGConfig(capacity=8, key_dim=4, max_tokens=3, num_codes=8, dim=8, k=2, heads=2)
    a = MiniRAG(cfg)
    a.write(torch.randn(2, 4), torch.randint(0, 8, (2, 3)), [1, 2])
    state = a.state_dict()
    extra = next(k for k in state if k.endswith("_extra_state"))
    state[extra] = {**state[extra], "keys": torch.zeros(8, 5)}
    with pytest.raises(StoreCorruptError, match=r"checkpoint is corrupt: tensor 'keys'"):
        MiniRAG(cfg).load_state_dict(state)
