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
configuration, the counters (clock, insertions, queries, hits, summed retrieval latency), the
JSON metadata of every entry and a SHA-256 over all of it and the tensors' bytes. Saving writes
a temporary file in the same folder, fsyncs it and renames it over the target, so a crash never
leaves half a store. Loading validates everything before it touches the store it loads into,
and before it allocates anything: the header's declared length and the configuration's sizes
are checked against the file's real size first, then the checksum, the tensors' dtypes and
shapes and the counters' consistency. A corrupt or foreign file raises `StoreCorruptError`
naming the file and the problem and changes nothing (neither the store in memory nor any file).
A checkpoint carries the same state (`state()` / `load_state()`), counters included, so hit
rate and latency statistics continue across a resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.checkpoint import atomic_write_bytes
from agentlab.errors import UserError

FORMAT = "agentlab-mini-rag/2"
EVICTIONS = ("lru", "fifo")


class StoreCorruptError(UserError, ValueError):
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
    def config(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "key_dim": self.key_dim, "max_tokens": self.max_tokens, "eviction": self.eviction,
                "hit_threshold": self.hit_threshold, "index": self.index, "ann_min_size": self.ann_min_size,
                "nprobe": self.nprobe}

    def counters(self) -> dict[str, Any]:
        return {"clock": self.clock, "n_inserted": self.n_inserted, "n_queries": self.n_queries, "n_hits": self.n_hits,
                "latency_s_total": self.latency_s_total}

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue this store exactly: tensors, metadata and counters."""
        return {**{k: getattr(self, k) for k in TENSORS}, "meta": list(self.meta), "counters": self.counters()}

    def load_state(self, state: dict[str, Any], *, source: str = "checkpoint") -> None:
        """Take `state()`'s output back, checked as a file is; `StoreCorruptError` naming `source` changes nothing."""
        if not isinstance(state, dict):
            raise StoreCorruptError(f"mini-RAG store state in {source} is not a table")
        counters = state.get("counters")
        if counters is None and "clock" in state:  # checkpoints written before the counters travelled whole
            counters = {"clock": state["clock"], "n_inserted": state.get("n_inserted"), "n_queries": 0, "n_hits": 0,
                        "latency_s_total": 0.0}
        tensors = {k: state.get(k) for k in TENSORS}
        _check_content(self.config(), tensors, counters, state.get("meta"), lambda why: StoreCorruptError(
            f"mini-RAG store state in {source} is corrupt: {why}"))
        self._take(tensors, list(state["meta"]), counters)

    def _take(self, tensors: dict[str, Tensor], meta: list[Any], counters: dict[str, Any]) -> None:
        self.tokens, self.keys, self.labels = tensors["tokens"], tensors["keys"], tensors["labels"]
        self.inserted, self.last_used, self.meta = tensors["inserted"], tensors["last_used"], meta
        self.clock, self.n_inserted = int(counters["clock"]), int(counters["n_inserted"])
        self.n_queries, self.n_hits = int(counters["n_queries"]), int(counters["n_hits"])
        self.latency_s_total = float(counters["latency_s_total"])
        self._ann = None

    def save(self, path: str | Path) -> None:
        """Write the store atomically to `path` (safetensors; metadata as JSON strings; a SHA-256 over everything)."""
        from safetensors.torch import save

        tensors = {k: getattr(self, k).contiguous() for k in TENSORS}
        header = {"format": FORMAT, "config": json.dumps(self.config()), "counters": json.dumps(self.counters()),
                  "meta": json.dumps(self.meta)}
        header["sha256"] = _digest(tensors, header)
        atomic_write_bytes(Path(path), save(tensors, metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> "EpisodeStore":
        """A new store read from `path`; `StoreCorruptError` if the file is not a whole, valid store."""
        from safetensors.torch import load

        path = Path(path)

        def bad(why: str) -> StoreCorruptError:
            return StoreCorruptError(f"mini-RAG store file {path} is corrupt or not a store: {why}; the file was left untouched")

        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if len(head) < 8:
                    raise bad(f"it has {size} bytes, fewer than a safetensors header")
                header_len = int.from_bytes(head, "little")
                if not 2 <= header_len <= size - 8:  # the declared header must fit in the file before we read it
                    raise bad(f"its header declares {header_len} bytes, the file has {size - 8} after the length")
                header_bytes = f.read(header_len)
        except OSError as e:
            raise bad(f"cannot read it ({e.strerror or e})") from None
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise bad(f"its header is not JSON ({type(e).__name__})") from None
        if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
            raise bad("its header has no metadata")
        meta_h = header["__metadata__"]
        if meta_h.get("format") != FORMAT:
            raise bad(f"format is {meta_h.get('format')!r}, expected {FORMAT!r}")
        try:
            cfg = json.loads(meta_h["config"])
            counters = json.loads(meta_h["counters"])
            meta = json.loads(meta_h["meta"])
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise bad(f"bad header ({type(e).__name__}: {e})") from None
        _check_config(cfg, bad)
        # sizes against the real file before anything is allocated
        c, e_dim, n = cfg["capacity"], cfg["key_dim"], cfg["max_tokens"]
        expect = _expected(c, e_dim, n)
        need = sum(math.prod(shape) * DTYPES[name][1] for name, (shape, _) in expect.items())
        if need != size - 8 - header_len:
            raise bad(f"its configuration (capacity={c}, key_dim={e_dim}, max_tokens={n}) needs {need} bytes of tensors, "
                      f"the file holds {size - 8 - header_len}")
        for name, (shape, dtype) in expect.items():
            entry = header.get(name)
            if not isinstance(entry, dict) or entry.get("dtype") != DTYPES[name][0] or entry.get("shape") != list(shape):
                got = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else "missing"
                raise bad(f"tensor {name!r} is {got}, expected {DTYPES[name][0]} of shape {list(shape)}")
        try:
            tensors = load(path.read_bytes())
        except Exception as e:  # safetensors raises its own error types for truncation and bad headers
            raise bad(f"{type(e).__name__}: {e}") from None
        if meta_h.get("sha256") != _digest(tensors, meta_h):
            raise bad("its SHA-256 does not match its content (changed bytes)")
        _check_content(cfg, tensors, counters, meta, bad)
        store = cls(**cfg)
        store._take({k: tensors[k] for k in TENSORS}, meta, counters)
        return store

    def restore(self, path: str | Path) -> None:
        """Replace this store's content by the file's; on any error this store is left exactly as it was."""
        other = EpisodeStore.load(path)
        self.__dict__.update(other.__dict__)


# name -> (safetensors dtype, bytes per element) of every tensor a store holds
DTYPES = {"tokens": ("I32", 4), "keys": ("F32", 4), "labels": ("I64", 8), "inserted": ("I64", 8), "last_used": ("I64", 8)}
TENSORS = tuple(DTYPES)
TORCH_DTYPES = {"I32": torch.int32, "F32": torch.float32, "I64": torch.int64}
LIMITS = {"capacity": 10**9, "key_dim": 2**16, "max_tokens": 2**16, "ann_min_size": 10**9, "nprobe": 2**16}


def _expected(c: int, e_dim: int, n: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    shapes = {"tokens": (c, n), "keys": (c, e_dim), "labels": (c,), "inserted": (c,), "last_used": (c,)}
    return {k: (shape, TORCH_DTYPES[DTYPES[k][0]]) for k, shape in shapes.items()}


def _digest(tensors: dict[str, Tensor], header: dict[str, Any]) -> str:
    """SHA-256 over the configuration, counters, metadata and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key in ("format", "config", "counters", "meta"):
        h.update(f"{key}\0{header.get(key)}\0".encode("utf-8"))
    for name in TENSORS:
        t = tensors.get(name)
        if not isinstance(t, Tensor):
            return ""
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_config(cfg: Any, bad: Callable[[str], Exception]) -> None:
    if not isinstance(cfg, dict) or set(cfg) != {"capacity", "key_dim", "max_tokens", "eviction", "hit_threshold", "index",
                                                  "ann_min_size", "nprobe"}:
        raise bad(f"its configuration has keys {sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}")
    for key, top in LIMITS.items():
        if not _is_int(cfg[key]) or not 1 <= cfg[key] <= top:
            raise bad(f"{key}={cfg[key]!r}, expected an integer in [1, {top}]")
    if cfg["eviction"] not in EVICTIONS or cfg["index"] not in ("exact", "ivf"):
        raise bad(f"eviction={cfg['eviction']!r} / index={cfg['index']!r} are not known")
    t = cfg["hit_threshold"]
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not -1 <= t <= 1:
        raise bad(f"hit_threshold={t!r}, expected a number in [-1, 1]")


def _check_content(cfg: dict[str, Any], tensors: dict[str, Any], counters: Any, meta: Any,
                   bad: Callable[[str], Exception]) -> None:
    """Dtypes, shapes, counters and their agreement with the slots (a store that would misbehave is refused)."""
    for name, (shape, dtype) in _expected(cfg["capacity"], cfg["key_dim"], cfg["max_tokens"]).items():
        t = tensors.get(name)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
            got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else "missing"
            raise bad(f"tensor {name!r} is {got}, expected {dtype} of shape {shape}")
    c = cfg["capacity"]
    if not isinstance(meta, list) or len(meta) != c:
        raise bad(f"metadata has {len(meta) if isinstance(meta, list) else type(meta).__name__} entries, expected {c}")
    keys = ("clock", "n_inserted", "n_queries", "n_hits")
    if not isinstance(counters, dict) or not all(_is_int(counters.get(k)) and counters[k] >= 0 for k in keys):
        raise bad(f"counters {counters!r} are not integers >= 0 for {', '.join(keys)}")
    lat = counters.get("latency_s_total")
    if not isinstance(lat, (int, float)) or isinstance(lat, bool) or not math.isfinite(lat) or lat < 0:
        raise bad(f"latency_s_total={lat!r}, expected a finite number >= 0")
    if counters["n_hits"] > counters["n_queries"]:
        raise bad(f"n_hits={counters['n_hits']} exceeds n_queries={counters['n_queries']}")
    inserted, n_ins = tensors["inserted"], counters["n_inserted"]
    if int((inserted >= 0).sum()) != min(n_ins, c) or (n_ins and int(inserted.max()) >= n_ins):
        raise bad(f"the occupied slots do not agree with n_inserted={n_ins}")
    if c and int(tensors["last_used"].max()) > counters["clock"]:
        raise bad(f"a slot was used after the clock ({counters['clock']})")
    if not torch.isfinite(tensors["keys"]).all():
        raise bad("keys hold NaN or infinite values")
    if c and (int(tensors["tokens"].min()) < -1 or int(tensors["labels"].min()) < -1):
        raise bad("tokens or labels hold negative values other than -1 (empty)")
