"""An approximate nearest-neighbour index for large episode stores: FAISS inverted lists (IVF-Flat).

Axis legend: n stored keys, E key dim, Q queries, k results.

Exact search over 10^5 unit keys reads the whole 25 MB key matrix per query; an
inverted-file index (Jegou et al. 2011; FAISS, Johnson et al. 2019) clusters the keys
into `nlist` cells by k-means and scans only the `nprobe` cells nearest to the query,
a few percent of the keys. FAISS is a well-kept library that does this better than we
would, so we use it rather than write our own. Inner product on unit keys = cosine.
Ids are the store's slot numbers, so overwriting a slot removes and re-adds its id.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from agentlab.extras import require


class IVFIndex:
    """FAISS IndexIVFFlat (inner product) over (n, E) keys with slot ids."""

    def __init__(self, keys: Tensor, slots: Tensor, *, nprobe: int = 8, nlist: int = 0) -> None:
        faiss = require("faiss", extra="ann", feature="the approximate index of large episode stores (ann_min_size)")
        n, dim = keys.shape
        self.nlist = nlist or max(1, int(4 * math.sqrt(n)))  # FAISS guideline: 4 sqrt(n) .. 16 sqrt(n) cells
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        x = np.ascontiguousarray(keys.numpy(), dtype=np.float32)
        self.index.train(x)
        self.index.nprobe = nprobe
        self.add(keys, slots)

    def add(self, keys: Tensor, slots: Tensor) -> None:
        self.index.add_with_ids(np.ascontiguousarray(keys.numpy(), dtype=np.float32), slots.numpy().astype(np.int64))

    def remove(self, slots: Tensor) -> None:
        self.index.remove_ids(slots.numpy().astype(np.int64))

    def search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores (Q, k), slots (Q, k)); a slot of -1 means fewer than k were found in the probed cells."""
        d, i = self.index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), k)
        return torch.from_numpy(d), torch.from_numpy(i)

    def __len__(self) -> int:
        return int(self.index.ntotal)
