"""A bounded store of tokenized episodes with eviction, exact top-k retrieval and safe persistence.

Axis legend: C capacity, E key dim, N tokens per episode, Q queries, k results.

Each entry is (token sequence (N,) int32 padded with -1, unit key (E,), label, JSON metadata).

Eviction order (when the store is full and a new entry arrives), documented and tested:

* ``lru`` (default): the entry whose last use is oldest goes first. An entry is *used*
  when it is written and whenever a retrieval returns it among the top-k. Ties (entries
  returned by the same retrieval) go by insertion order, oldest first.
* ``fifo``: the oldest inserted entry goes first; retrievals do not matter.

Retrieval is exact by default: cosine similarity of unit keys by one matrix product over
the occupied slots, then `topk`. With `index="ivf"`, a store holding at least
`ann_min_size` entries searches a FAISS inverted-file index instead (`agentlab.memory.ann`), built
on first use from the stored keys and kept in step with every write; it is not saved
(it is rebuilt from the keys after a load). Exact search reads every key per query, which
at 10^5 entries dominated retrieval latency (docs/memory-sense.md has the figures).

A retrieval is a *hit* when its best score reaches `hit_threshold`.

Persistence: one safetensors file (tensors, no pickle) whose string metadata carries the
configuration, the clock and the JSON metadata of every entry. Saving writes a temporary
file in the same folder, fsyncs it and renames it over the target, so a crash never leaves
half a store. Loading validates everything before it touches the store it loads into:
a corrupt or foreign file raises `StoreCorruptError` naming the file and the problem and
changes nothing (neither the store in memory nor any file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.checkpoint import atomic_write_bytes

FORMAT = "agentlab-mini-rag/1"
EVICTIONS = ("lru", "fifo")


class StoreCorruptError(ValueError):
    """A store file that cannot be read back; the message names the file and what is wrong."""


class Retrieval(NamedTuple):
    scores: Tensor  # (Q, k) cosine similarity, best first
    slots: Tensor  # (Q, k) long, slot of each result
    labels: Tensor  # (Q, k) long
    tokens: Tensor  # (Q, k, N) int32, -1 = padding
    hit: Tensor  # (Q,) bool, best score >= hit_threshold


class EpisodeStore:
    """At most `capacity` tokenized episodes; exact top-k retrieval by cosine similarity."""

    def __init__(
        self, *, capacity: int, key_dim: int, max_tokens: int, eviction: str = "lru", hit_threshold: float = 0.5,
        index: str = "exact", ann_min_size: int = 20000, nprobe: int = 8,
    ) -> None:
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction={eviction!r} must be one of {EVICTIONS}")
        if index not in ("exact", "ivf"):
            raise ValueError(f"index={index!r} must be 'exact' or 'ivf'")
        self.index, self.ann_min_size, self.nprobe = index, ann_min_size, nprobe
        if capacity < 1 or key_dim < 1 or max_tokens < 1:
            raise ValueError("capacity, key_dim and max_tokens must be >= 1")
        self.capacity, self.key_dim, self.max_tokens = capacity, key_dim, max_tokens
        self.eviction, self.hit_threshold = eviction, hit_threshold
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Empty the store and its statistics."""
        c = self.capacity
        self.tokens = torch.full((c, self.max_tokens), -1, dtype=torch.int32)
        self.keys = torch.zeros(c, self.key_dim)
        self.labels = torch.full((c,), -1, dtype=torch.long)
        self.inserted = torch.full((c,), -1, dtype=torch.long)  # insertion number, -1 = empty slot
        self.last_used = torch.full((c,), -1, dtype=torch.long)
        self.meta: list[Any] = [None] * c
        self.clock = 0  # counts writes and retrievals
        self.n_inserted = 0
        self.n_queries = self.n_hits = 0
        self.latency_s_total = 0.0
        self.last_latency_s = 0.0
        self._ann = None  # agentlab.memory.ann.IVFIndex once built

    def __len__(self) -> int:
        return min(self.n_inserted, self.capacity)  # slots are never freed singly, only by `reset`

    @property
    def occupancy(self) -> float:
        return len(self) / self.capacity

    def nbytes(self) -> int:
        """Bytes of the occupied entries as held (tokens, keys, labels; metadata as JSON text)."""
        n = len(self)
        row = self.max_tokens * 4 + self.key_dim * 4 + 8
        return n * row + sum(len(json.dumps(m)) for m in self.meta if m is not None)

    def stats(self) -> dict[str, float]:
        return {
            "capacity": float(self.capacity),
            "size": float(len(self)),
            "occupancy": self.occupancy,
            "hit_rate": self.n_hits / self.n_queries if self.n_queries else 0.0,
            "retrieval_latency_ms": 1000 * self.latency_s_total / self.n_queries if self.n_queries else 0.0,
            "bytes": float(self.nbytes()),
        }

    # ------------------------------------------------------------------ writing
    def _victim(self) -> int:
        """The slot the next write takes: an empty one, else the first in eviction order."""
        empty = (self.inserted < 0).nonzero()
        if len(empty):
            return int(empty[0])
        if self.eviction == "fifo":
            return int(self.inserted.argmin())
        oldest = (self.last_used == self.last_used.min()).nonzero().squeeze(1)  # least recently used
        return int(oldest[self.inserted[oldest].argmin()])  # ties: earliest inserted

    def eviction_order(self) -> list[int]:
        """Occupied slots in the order they would be evicted (first = next to go)."""
        occ = (self.inserted >= 0).nonzero().squeeze(1).tolist()
        if self.eviction == "lru":
            return sorted(occ, key=lambda s: (int(self.last_used[s]), int(self.inserted[s])))
        return sorted(occ, key=lambda s: int(self.inserted[s]))

    def write(self, keys: Tensor, tokens: Tensor, labels: Tensor | Sequence[int], meta: Sequence[Any] | None = None) -> list[int]:
        """Store episodes: keys (B, E), tokens (B, n <= N) ints, labels (B,); returns the slots used."""
        keys = F.normalize(keys.detach().float().cpu(), dim=-1)
        tokens = tokens.detach().cpu()
        labels = torch.as_tensor(labels).long().cpu()
        if keys.shape[1] != self.key_dim or tokens.shape[1] > self.max_tokens:
            raise ValueError(f"keys (B, {self.key_dim}) and tokens (B, <= {self.max_tokens}) expected, got {tuple(keys.shape)} and {tuple(tokens.shape)}")
        slots: list[int] = []
        empty = (self.inserted < 0).nonzero().squeeze(1)[: keys.shape[0]]
        if len(empty):  # bulk path: empty slots in index order, as `_victim` would pick them one by one
            n = len(empty)
            self.tokens[empty] = -1
            self.tokens[empty, : tokens.shape[1]] = tokens[:n].to(torch.int32)
            self.keys[empty], self.labels[empty] = keys[:n], labels[:n]
            self.inserted[empty] = torch.arange(self.n_inserted, self.n_inserted + n)
            self.last_used[empty] = torch.arange(self.clock + 1, self.clock + n + 1)
            self.n_inserted += n
            self.clock += n
            for j, s in enumerate(empty.tolist()):
                self.meta[s] = None if meta is None else meta[j]
            slots = empty.tolist()
            if self._ann is not None:
                self._ann.add(keys[:n], empty)
        for i in range(len(slots), keys.shape[0]):
            s = self._victim()
            self.tokens[s] = -1
            self.tokens[s, : tokens.shape[1]] = tokens[i].to(torch.int32)
            self.keys[s] = keys[i]
            self.labels[s] = labels[i]
            self.inserted[s] = self.n_inserted
            self.n_inserted += 1
            self.clock += 1
            self.last_used[s] = self.clock
            self.meta[s] = None if meta is None else meta[i]
            if self._ann is not None:
                self._ann.remove(torch.tensor([s]))
                self._ann.add(keys[i : i + 1], torch.tensor([s]))
            slots.append(s)
        return slots

    # ------------------------------------------------------------------ reading
    def retrieve(self, query: Tensor, k: int = 1, *, touch: bool = True) -> Retrieval:
        """Top-k entries (exact cosine) for each query key (Q, E); empty store -> ValueError."""
        t0 = time.perf_counter()
        n = len(self)
        if n == 0:
            raise ValueError("retrieve from an empty store")
        q = F.normalize(query.detach().float().cpu(), dim=-1)
        if self.index == "ivf" and n >= self.ann_min_size:
            if self._ann is None:
                from agentlab.memory.ann import IVFIndex

                occ = (self.inserted >= 0).nonzero().squeeze(1)
                self._ann = IVFIndex(self.keys[occ], occ, nprobe=self.nprobe)
                t0 = time.perf_counter()  # building the index is not a retrieval
            scores, slots = self._ann.search(q, min(k, n))
            slots = torch.where(slots < 0, slots.new_zeros(()), slots)  # too few found: pad with slot 0
        elif n == self.capacity:  # full store: no gather of occupied rows
            scores, slots = (q @ self.keys.t()).topk(min(k, n), dim=1)  # (Q, k)
        else:
            occ = (self.inserted >= 0).nonzero().squeeze(1)
            scores, idx = (q @ self.keys[occ].t()).topk(min(k, n), dim=1)
            slots = occ[idx]
        dt = time.perf_counter() - t0
        hit = scores[:, 0] >= self.hit_threshold
        self.n_queries += q.shape[0]
        self.n_hits += int(hit.sum())
        self.latency_s_total += dt
        self.last_latency_s = dt / max(q.shape[0], 1)
        if touch:
            self.clock += 1
            self.last_used[slots.reshape(-1)] = self.clock
        return Retrieval(scores, slots, self.labels[slots], self.tokens[slots], hit)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the store atomically to `path` (safetensors; metadata as JSON strings)."""
        from safetensors.torch import save

        tensors = {"tokens": self.tokens, "keys": self.keys, "labels": self.labels, "inserted": self.inserted,
                   "last_used": self.last_used}
        header = {
            "format": FORMAT,
            "config": json.dumps({"capacity": self.capacity, "key_dim": self.key_dim, "max_tokens": self.max_tokens,
                                  "eviction": self.eviction, "hit_threshold": self.hit_threshold, "index": self.index,
                                  "ann_min_size": self.ann_min_size, "nprobe": self.nprobe}),
            "counters": json.dumps({"clock": self.clock, "n_inserted": self.n_inserted, "n_queries": self.n_queries,
                                    "n_hits": self.n_hits, "latency_s_total": self.latency_s_total}),
            "meta": json.dumps(self.meta),
        }
        data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=header)
        atomic_write_bytes(Path(path), data)

    @classmethod
    def load(cls, path: str | Path) -> "EpisodeStore":
        """A new store read from `path`; `StoreCorruptError` if the file is not a whole, valid store."""
        from safetensors.torch import load

        path = Path(path)

        def bad(why: str) -> StoreCorruptError:
            return StoreCorruptError(f"mini-RAG store file {path} is corrupt or not a store: {why}; the file was left untouched")

        try:
            raw = path.read_bytes()
        except OSError as e:
            raise bad(f"cannot read it ({e})") from None
        try:
            tensors = load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
        except Exception as e:  # safetensors raises its own error types for truncation and bad headers
            raise bad(f"{type(e).__name__}: {e}") from None
        if header.get("format") != FORMAT:
            raise bad(f"format is {header.get('format')!r}, expected {FORMAT!r}")
        try:
            cfg = json.loads(header["config"])
            counters = json.loads(header["counters"])
            meta = json.loads(header["meta"])
            store = cls(**cfg)
        except Exception as e:
            raise bad(f"bad header ({type(e).__name__}: {e})") from None
        c, e_dim, n = store.capacity, store.key_dim, store.max_tokens
        expect = {"tokens": (c, n), "keys": (c, e_dim), "labels": (c,), "inserted": (c,), "last_used": (c,)}
        for name, shape in expect.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                raise bad(f"tensor {name!r} has shape {got}, expected {shape}")
        if not isinstance(meta, list) or len(meta) != c:
            raise bad(f"metadata has {len(meta) if isinstance(meta, list) else type(meta).__name__} entries, expected {c}")
        if not torch.isfinite(tensors["keys"]).all():
            raise bad("keys hold NaN or infinite values")
        store.tokens, store.keys, store.labels = tensors["tokens"], tensors["keys"], tensors["labels"]
        store.inserted, store.last_used, store.meta = tensors["inserted"], tensors["last_used"], meta
        store.clock, store.n_inserted = int(counters["clock"]), int(counters["n_inserted"])
        store.n_queries, store.n_hits = int(counters["n_queries"]), int(counters["n_hits"])
        store.latency_s_total = float(counters["latency_s_total"])
        return store

    def restore(self, path: str | Path) -> None:
        """Replace this store's content by the file's; on any error this store is left exactly as it was."""
        other = EpisodeStore.load(path)
        self.__dict__.update(other.__dict__)
