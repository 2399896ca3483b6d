"""Binary masks packed 8 to a byte, so a stored supermask costs 1 bit per weight.

    packed = pack_bits(mask)            # (ceil(N / 8),) uint8, N = mask.numel()
    mask == unpack_bits(packed, shape)  # bit-exact round trip, any shape

Bit order inside a byte is most-significant first (bit 7 = the first element),
the same convention as `numpy.packbits`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def packed_size(n: int) -> int:
    """Bytes needed for `n` bits."""
    return (n + 7) // 8


def pack_bits(mask: Tensor) -> Tensor:
    """A binary tensor (any shape, any dtype; nonzero = 1) as (ceil(N / 8),) uint8."""
    bits = (mask.detach().reshape(-1) != 0).to(torch.uint8)  # (N,)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    groups = bits.view(-1, 8)  # (N / 8, 8)
    return (groups * _WEIGHTS.to(bits.device)).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """The mask `pack_bits` packed, with `shape` and `dtype` (0/1 values)."""
    n = math.prod(shape)
    if packed.numel() != packed_size(n):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold a mask of shape {tuple(shape)} ({n} bits)")
    w = _WEIGHTS.to(packed.device)
    bits = (packed.reshape(-1, 1) & w) != 0  # (N / 8, 8)
    return bits.reshape(-1)[:n].reshape(*shape).to(dtype)
