"""`agentlab bench --device`: device names are checked; the MLP's dropout keeps its layer names."""

import pytest
import torch

from agentlab.backbones.mlp import MLP, MLPConfig
from agentlab.devices import check_device
from agentlab.config import ConfigError
from agentlab.errors import UserError


def test_check_device_accepts_cpu_and_names_bad_devices():
    assert check_device("cpu") == "cpu"
    with pytest.raises(UserError, match="not a torch device"):
        check_device("gpu0")
    with pytest.raises(UserError, match="cpu, cuda or cuda:N"):
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


def test_bench_resume_only_where_a_benchmark_can_continue(capsys):
    from agentlab.cli import main

    code = main(["bench", "hopfield-capacity", "--quick", "--resume"])
    err = capsys.readouterr().err
    assert code != 0 and "nothing to resume" in err and "supsup-pmnist" in err and "dnc-copy" not in err


def test_supsup_pmnist_work_dir_guards_earlier_runs(tmp_path, monkeypatch):
    """A new full run never overwrites an earlier run's checkpoints; --resume needs the same settings."""
    from agentlab.bench import BenchArgs
    from agentlab.bench.supsup import _work_dir

    monkeypatch.chdir(tmp_path)
    settings = {"tasks": 250, "seed": 0, "overrides": ["a=1"]}
    with pytest.raises(UserError, match="no supsup-pmnist run to continue"):
        _work_dir(BenchArgs(resume=True), settings)
    work = _work_dir(BenchArgs(), settings)
    (work / "supsup").mkdir()
    with pytest.raises(UserError, match="continue it with --resume"):
        _work_dir(BenchArgs(), settings)
    assert _work_dir(BenchArgs(resume=True), settings) == work
    with pytest.raises(UserError, match="other settings"):
        _work_dir(BenchArgs(resume=True), {**settings, "tasks": 10})
