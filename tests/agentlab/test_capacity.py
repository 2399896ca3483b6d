"""The capacity estimate (NNCTD): its factors on synthetic data with known label noise and duplication, the
Lambert-W count, the width arithmetic, the probe, `agentlab size` and `backbone.hidden = "auto"`."""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import pytest
import torch

from agentlab import capacity
from agentlab.capacity import (CapacityConfig, confident_noise_rate, data_quality, estimate, lambert_count, mlp_params,
                               mlp_width, smallest_width)
from tests_helpers import REPO

FAST = CapacityConfig(sample=800, probe_n=600, probe_eval=600, probe_steps=150, probe_widths=[1, 2, 4, 16, 64])


def blobs(n: int, *, k: int = 4, d: int = 20, noise: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated Gaussian classes; a fraction `noise` of the labels flipped to another class at random."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    flip = torch.rand(n, generator=g) < noise
    other = (y + torch.randint(1, k, (n,), generator=g)) % k
    return x, torch.where(flip, other, y)


def checkerboard(n: int, *, cells: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on a cells x cells checkerboard in the unit square: no linear boundary."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g)
    y = ((x * cells).floor().long().sum(1) % 2)
    return x, y


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.25])
def test_label_noise_is_measured(noise):
    x, y = blobs(3000, noise=noise)
    q = data_quality(x, y, 4, FAST)
    assert q.noise_rate == pytest.approx(noise, abs=0.03)
    assert q.margin == pytest.approx(1 - q.noise_rate * 4 / 3)
    assert q.unique_fraction == pytest.approx(1.0, abs=0.01)  # no duplicates planted


@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("jitter", [0.0, 0.01])
def test_duplication_is_measured(copies, jitter):
    x, y = blobs(1000)
    xx, yy = x.repeat(copies, 1), y.repeat(copies)
    xx = xx + jitter * torch.randn(xx.shape, generator=torch.Generator().manual_seed(1))  # near, not exact, copies
    q = data_quality(xx, yy, 4, FAST)
    assert q.unique_fraction == pytest.approx(1 / copies, abs=0.02)
    assert q.n_eff == pytest.approx(len(xx) * q.unique_fraction * q.margin ** 2)
    assert q.n_eff == pytest.approx(1000, rel=0.06)  # copies add nothing
    assert q.noise_rate < 0.02  # a copy's own label is not a neighbour's vote


def test_noise_and_duplication_together():
    x, y = blobs(1500, noise=0.2)
    q = data_quality(x.repeat(2, 1), y.repeat(2), 4, FAST)
    assert q.unique_fraction == pytest.approx(0.5, abs=0.02) and q.noise_rate == pytest.approx(0.2, abs=0.04)
    assert q.n_eff == pytest.approx(3000 * 0.5 * (1 - 0.2 * 4 / 3) ** 2, rel=0.15)


def test_confident_learning_on_known_probabilities():
    # 100 examples per class; in class 0, 20 carry label 1 with probabilities pointing at class 0
    probs = torch.tensor([[0.9, 0.1]] * 100 + [[0.1, 0.9]] * 80 + [[0.9, 0.1]] * 20)
    given = torch.tensor([0] * 100 + [1] * 100)
    assert confident_noise_rate(probs, given, 2) == pytest.approx(0.1)


def test_lambert_count_solves_p_ln_p():
    for n, n0 in [(60000, 1.0), (1000, 20.0), (5e6, 3.0)]:
        p = lambert_count(n, n0)
        assert p * math.log(p) == pytest.approx(n / n0, rel=1e-9)
    assert lambert_count(120000, 1.0) < 2 * lambert_count(60000, 1.0)  # slower than linear in the data


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_width_inverts_the_parameter_count(depth):
    for w in (1, 7, 50, 400):
        assert mlp_width(mlp_params(w, 784, 10, depth), 784, 10, depth) == pytest.approx(w)
    assert mlp_params(400, 784, 10, 2) == sum(p.numel() for p in torch.nn.Sequential(
        torch.nn.Linear(784, 400), torch.nn.Linear(400, 400), torch.nn.Linear(400, 10)).parameters())


def test_smallest_width_interpolates_in_log_width():
    assert smallest_width([4, 16, 64], [0.5, 0.9, 0.95], 0.9) == pytest.approx(16)
    assert smallest_width([4, 16, 64], [0.5, 0.9, 0.95], 0.7) == pytest.approx(8.0)
    assert smallest_width([4, 16], [0.9, 0.95], 0.8) == 4
    assert math.isnan(smallest_width([4, 16], [0.5, 0.6], 0.9))


def test_a_nonlinear_task_needs_more_capacity_than_a_linear_one():
    cfg = CapacityConfig(sample=500, probe_n=1000, probe_eval=1000, probe_steps=400, probe_widths=[1, 2, 4, 8, 32])
    easy = estimate(*blobs(2000, k=2, d=2), 2, cfg)
    hard = estimate(*checkerboard(2000), 2, cfg)
    assert hard.probe["width"] > 2 * easy.probe["width"]
    assert hard.factor("task complexity f_task") > easy.factor("task complexity f_task") and hard.width > easy.width
    names = [f.name for f in hard.factors]
    assert names[:2] == ["examples N", "unique fraction u"] and "architecture eff. f_arch" in names
    text = hard.report()
    assert "confident learning" in text and "Lambert-W" in text and f"{hard.width}" in text


def test_estimate_scales_with_the_effective_data():
    x, y = blobs(1200, seed=3)
    one = estimate(x, y, 4, FAST)
    more = estimate(x, y, 4, FAST, n_total=12000)  # the same sample standing for ten times the data
    assert more.factor("examples N") == 12000 and more.params == pytest.approx(
        one.params * lambert_count(12000 * more.factor("unique fraction u"), FAST.n0)
        / lambert_count(1200 * one.factor("unique fraction u"), FAST.n0), rel=1e-6)


def test_estimate_refuses_unknown_families_and_tiny_data():
    x, y = blobs(100)
    with pytest.raises(ValueError, match="family 'vit'"):
        estimate(x, y, 4, FAST, family="vit")
    with pytest.raises(ValueError, match=">= 20"):
        estimate(x[:5], y[:5], 4, FAST)


def test_mlp_hidden_auto_takes_the_estimated_width(monkeypatch):
    from agentlab.backbones.mlp import MLPConfig, build_mlp
    from agentlab.registry import BuildEnv
    from agentlab.scenarios.digits import DigitsSplitConfig, build_digits_split

    monkeypatch.setattr(capacity, "CapacityConfig", functools.partial(CapacityConfig, sample=300, probe_n=300,
                                                                      probe_eval=300, probe_steps=60, probe_widths=[2, 8, 32]))
    stream = build_digits_split(DigitsSplitConfig(), BuildEnv())
    net = build_mlp(MLPConfig(hidden="auto", auto_depth=3), BuildEnv(stream=stream))
    assert len(net.config["hidden"]) == 3 and len(set(net.config["hidden"])) == 1 and net.config["hidden"][0] >= 1


def test_mlp_hidden_rejects_other_words():
    from agentlab.backbones.mlp import MLPConfig
    from agentlab.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="backbone.hidden"):
        build_config(MLPConfig, {"hidden": "wide"}, where="backbone")
    assert build_config(MLPConfig, {"hidden": "auto"}, where="backbone").hidden == "auto"


def _agentlab(*args):
    return subprocess.run([sys.executable, "-m", "agentlab", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_size_command_prints_every_factor():
    p = _agentlab("size", "digits-split", "--probe-steps", "20", "--threads", "1")
    assert p.returncode == 0, p.stderr
    for name in ("unique fraction u", "label noise eta", "effective data N_eff", "Lambert-W count P_W", "task complexity f_task",
                 "architecture eff. f_arch", "width"):
        assert name in p.stdout
    assert 'hidden = [' in p.stdout and "1,258 training examples" in p.stdout


def test_size_command_names_what_it_accepts():
    p = _agentlab("size", "no-such-thing")
    assert p.returncode == 2 and "registered stream" in p.stderr and "Traceback" not in p.stderr
