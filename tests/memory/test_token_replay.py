"""token_replay: byte accounting, codecs, and a tiny class-incremental run that stays within its budget."""

import torch

from agentlab.agent import Agent
from agentlab.backbones.mlp import MLP
from agentlab.data import Split
from agentlab.loop import LoopConfig, run
from agentlab.learners.token_replay import Codec, TokenReplay, TokenReplayConfig
from agentlab.scenarios.splits import class_split_stream


def test_bytes_per_example_and_capacity():
    vq = TokenReplay(TokenReplayConfig(budget_bytes=50_000, codec="vq"))
    raw = TokenReplay(TokenReplayConfig(budget_bytes=50_000, codec="raw8"))
    assert vq.bytes_per_example == 44 and raw.bytes_per_example == 785  # 49 x 7 bits -> 43 bytes, + label byte
    assert vq.capacity == 1136 and raw.capacity == 63


def test_raw8_codec_round_trip_within_quantisation():
    x = torch.rand(5, 1, 28, 28)
    c = Codec("raw8")
    packed = c.encode(x)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 784)
    assert (c.decode(packed) - x).abs().max() <= 0.5 / 255 + 1e-6


def test_tiny_stream_stays_within_budget_and_tokenizer_frozen_after_task0():
    torch.manual_seed(0)
    x = torch.rand(120, 1, 28, 28)
    y = torch.arange(120) % 4
    stream = class_split_stream("toy", Split(x, y), Split(x[:40], y[:40]), [0, 1, 2, 3], 2, "class", input_shape=(1, 28, 28))
    learner = TokenReplay(TokenReplayConfig(budget_bytes=1000, codec="vq", tokenizer_steps=3, batch_size=16))
    agent = Agent(MLP(784, [32], 4), learner=learner)
    run(agent, stream, generator=torch.Generator().manual_seed(0), cfg=LoopConfig(checkpoint=False, eval_next=False))
    assert learner.tokenizer_fitted and not any(p.requires_grad for p in learner.vqvae.parameters())
    assert len(learner.buffer) == learner.capacity == 22
    assert learner.state_bytes() <= 1000
    assert set(learner.buffer.y[: len(learner.buffer)].tolist()) == {0, 1, 2, 3}  # class-balanced across both tasks
