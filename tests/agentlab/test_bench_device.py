"""`agentlab bench --device`: device names are checked; the MLP's dropout keeps its layer names."""

import pytest
import torch

from agentlab.backbones.mlp import MLP, MLPConfig
from agentlab.bench import check_device
from agentlab.config import ConfigError
from agentlab.errors import UserError


def test_check_device_accepts_cpu_and_names_bad_devices():
    assert check_device("cpu") == "cpu"
    with pytest.raises(UserError, match="not a torch device"):
        check_device("gpu0")
    with pytest.raises(UserError, match="cpu or cuda"):
        check_device("meta")


def test_check_device_cuda_only_where_torch_sees_a_gpu():
    if torch.cuda.is_available():
        assert check_device("cuda") == "cuda"
    else:
        with pytest.raises(UserError, match="no CUDA GPU"):
            check_device("cuda")


def test_mlp_dropout_keeps_linear_names_and_acts_only_in_training():
    plain = MLP(8, [16, 16], 3)
    drop = MLP(8, [16, 16], 3, dropout=0.5)
    linear = lambda m: [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert linear(plain) == linear(drop) == ["layers.0", "layers.2", "layers.4"]
    x = torch.randn(64, 8)
    drop.train()
    assert not torch.equal(drop(x), drop(x))  # two dropout masks
    drop.eval()
    assert torch.equal(drop(x), drop(x))
    with pytest.raises(ConfigError, match="dropout"):
        MLPConfig(dropout=1.0)


def test_bench_refuses_device_where_it_stays_on_the_cpu(capsys):
    from agentlab.cli import main

    code = main(["bench", "hopfield-capacity", "--quick", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code != 0 and "runs on the CPU only" in err and "set-mnist" in err
