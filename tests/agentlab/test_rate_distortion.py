"""The rate-distortion helpers of the `forget` benchmark: what a setting stores, and that it reads back what it says."""

from __future__ import annotations

import math

import pytest
import torch

from agentlab.bench._rate_distortion import quantize, smallest_at


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_quantize_counts_its_bytes_and_errs_by_at_most_half_a_step(bits):
    t = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    back, n = quantize(t, bits)
    assert back.shape == t.shape and back.dtype == t.dtype
    if bits == 32:
        assert torch.equal(back, t) and n == 4 * 60
    elif bits == 16:
        assert torch.equal(back, t.half().float()) and n == 2 * 60
    else:
        step = t.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert ((back - t).abs() <= step / 2 + 1e-6).all()
        assert n == math.ceil(60 * bits / 8) + 2 * 6  # the values and one fp16 scale per row
        assert len(torch.unique(back[0])) <= 2**bits - 1


def test_fewer_bits_never_store_more():
    t = torch.randn(100)
    sizes = [quantize(t, b)[1] for b in (32, 16, 8, 4)]
    assert sizes == sorted(sizes, reverse=True)


def test_smallest_at_reads_the_cheapest_setting_keeping_the_share():
    rows = [{"bytes_per_task": 100, "avg_acc": 0.90}, {"bytes_per_task": 50, "avg_acc": 0.895},
            {"bytes_per_task": 10, "avg_acc": 0.80}]
    assert smallest_at(rows, 0.90) == 50  # 0.895 >= 0.99 * 0.90
    assert smallest_at(rows, 0.90, share=0.999) == 100
    assert math.isnan(smallest_at(rows, 1.0))
