"""Compressed replay: a replay buffer of a fixed number of *bytes* holding VQ tokens instead of pixels.

Axis legend: B batch, N = 49 tokens, P bytes per stored example.

An image costs 785 bytes raw (784 8-bit pixels + a label byte) but 44 bytes as
bit-packed VQ tokens (49 x 7 bits + a label byte), so at the same byte budget the
token buffer holds about 18x more examples (the NCS compression ratio). Replayed
tokens are decoded back to images by the VQ-VAE decoder and mixed into every batch,
as in experience replay (Chaudhry et al. 2019); admission is class-balanced
(Chrysakis & Moens 2020) via `agentlab.learners.replay.ReplayBuffer`.

The tokenizer is trained on the *first task's* training images only and then
frozen (later tasks must not change the meaning of codes already stored), so no
future data leaks into the codebook. `codec = "raw8"` runs the same learner with
8-bit pixels: the fair baseline at the same byte budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from agentlab.config import check
from agentlab.errors import CannotForget
from agentlab.data import Batch
from agentlab.driver import StepOutput
from agentlab.learners.finetune import require_classification, train_split
from agentlab.learners.replay import ReplayBuffer
from agentlab.learners.sgd import SGDConfig, supervised_loss
from agentlab.memory.vqvae import ImageVQVAE, pack_codes, unpack_codes
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class TokenReplayConfig(SGDConfig):
    """Replay from a buffer of `budget_bytes` bytes of bit-packed VQ tokens (or 8-bit pixels)."""

    budget_bytes: int = 100_000
    """bytes the replay buffer may hold (payload plus one label byte per example)"""
    codec: Literal["vq", "raw8"] = "vq"
    """how examples are stored: VQ tokens (compressed) or 8-bit pixels (the baseline)"""
    num_codes: int = 128
    """codebook size of the VQ tokenizer (128 = 7 bits per token, 18.3:1 on 28x28)"""
    tokenizer_steps: int = 1500
    """VQ-VAE training steps (batches of 64) on the first task's images"""
    policy: Literal["reservoir", "class_balanced"] = "class_balanced"
    """which examples stay when the buffer is full"""
    replay_batch_size: int = 0
    """replayed examples per step; 0 = batch_size"""
    roundtrip_current: bool = True
    """also pass the current task's inputs through the codec, so every training input looks like a replayed one"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.budget_bytes >= 1000, "budget_bytes", self.budget_bytes, "an integer >= 1000")
        check(2 <= self.num_codes <= 65536, "num_codes", self.num_codes, "in [2, 65536]")
        check(self.tokenizer_steps >= 1, "tokenizer_steps", self.tokenizer_steps, "an integer >= 1")


class Codec:
    """Turns (B, 1, 28, 28) images in [0, 1] into (B, P) uint8 and back."""

    def __init__(self, kind: str, vqvae: ImageVQVAE | None = None) -> None:
        self.kind, self.vqvae = kind, vqvae

    @property
    def payload_bytes(self) -> int:
        return self.vqvae.bytes_per_image() if self.kind == "vq" else 28 * 28

    def encode(self, x: Tensor) -> Tensor:
        if self.kind == "raw8":
            return (x.reshape(x.shape[0], -1) * 255).round().clamp(0, 255).to(torch.uint8)
        return pack_codes(self.vqvae.encode(x), self.vqvae.vq.bits_per_code)

    def decode(self, packed: Tensor) -> Tensor:
        if self.kind == "raw8":
            return packed.float().reshape(-1, 1, 28, 28) / 255
        codes = unpack_codes(packed, self.vqvae.tokens_per_image, self.vqvae.vq.bits_per_code)
        return self.vqvae.decode(codes)


class TokenReplay:
    name = "token_replay"

    def __init__(self, cfg: TokenReplayConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.vqvae = ImageVQVAE(num_codes=cfg.num_codes) if cfg.codec == "vq" else None
        self.codec = Codec(cfg.codec, self.vqvae)
        self.tokenizer_fitted = cfg.codec == "raw8"
        self.buffer: ReplayBuffer | None = None
        self.tokenizer_stats: dict[str, float] = {}
        self.tokenizer_task: int | None = None  # the task whose images fitted the VQ tokenizer

    @property
    def bytes_per_example(self) -> int:
        return self.codec.payload_bytes + 1  # one label byte

    @property
    def capacity(self) -> int:
        return self.cfg.budget_bytes // self.bytes_per_example

    def _fit_tokenizer(self, task: Any, ctx: Any) -> None:
        assert self.vqvae is not None
        x, _ = task.train.all()
        g = torch.Generator().manual_seed(self.seed)
        epochs = -(-self.cfg.tokenizer_steps * 64 // x.shape[0])  # enough passes to reach the step count
        self.tokenizer_stats = self.vqvae.fit(x, epochs=epochs, batch_size=64, generator=g, max_steps=self.cfg.tokenizer_steps)
        self.vqvae.requires_grad_(False)
        self.tokenizer_fitted = True
        self.tokenizer_task = int(task.id)

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        require_classification(task, self.name)
        if not self.tokenizer_fitted:
            self._fit_tokenizer(task, ctx)
        if self.buffer is None:
            self.buffer = ReplayBuffer(self.capacity, self.cfg.policy)
        buffer = self.buffer
        n_replay = self.cfg.replay_batch_size or self.cfg.batch_size

        def step(batch: Batch) -> StepOutput:
            observed = batch  # the examples as they arrived, before the codec's round trip
            memory = buffer.sample(n_replay, ctx.generator)
            packed = self.codec.encode(batch.x.cpu())
            if self.cfg.roundtrip_current and self.cfg.codec == "vq":
                with torch.no_grad():
                    batch = Batch(self.codec.decode(packed).to(batch.x.device), batch.y, batch.task_id)
            mixed = batch
            if memory is not None:
                with torch.no_grad():
                    replay_x = self.codec.decode(memory.x).to(batch.x.device)
                mixed = Batch(torch.cat([batch.x, replay_x]), torch.cat([batch.y, memory.y.to(batch.y.device)]), task.id)
            out = supervised_loss(agent, mixed, task, observed=observed)
            buffer.add(packed, batch.y, task.id, ctx.generator)  # after the replayed sample is drawn, as in replay
            return out

        train_split(agent, task, task.train, self.cfg, ctx, step_fn=step)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict() if self.buffer is not None else {},
                "vqvae": self.vqvae.state_dict() if self.vqvae is not None else {},
                "tokenizer_fitted": self.tokenizer_fitted, "tokenizer_task": self.tokenizer_task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.vqvae is not None and state["vqvae"]:
            self.vqvae.load_state_dict(state["vqvae"])
            self.vqvae.requires_grad_(False)
        self.tokenizer_fitted = bool(state["tokenizer_fitted"])
        self.tokenizer_task = state.get("tokenizer_task")
        if state["buffer"]:
            self.buffer = ReplayBuffer(self.capacity, self.cfg.policy)
            self.buffer.load_state_dict(state["buffer"])

    def state_bytes(self) -> int:
        """Bytes the buffer holds as counted against the budget (payload + label byte per example)."""
        return len(self.buffer) * self.bytes_per_example if self.buffer is not None else 0

    def forget_task(self, task_id: int) -> int:
        """Refused once the task trained: its images fitted the tokenizer (the first task's) or entered the buffer."""
        if self.tokenizer_task == task_id:
            raise CannotForget(f"learner 'token_replay': its VQ tokenizer was fitted on task {task_id}'s images and "
                               "encodes every example it stores")
        held = int((self.buffer.t[: self.buffer.size] == task_id).sum()) if self.buffer is not None else 0
        if held:
            raise CannotForget(f"learner 'token_replay' holds {held} of task {task_id}'s examples in place of others "
                               "and replayed them while later tasks trained")
        return 0


@register("learner", "token_replay", TokenReplayConfig)
def build_token_replay(cfg: TokenReplayConfig, env: BuildEnv) -> TokenReplay:
    """Replay from a byte-budgeted buffer of VQ tokens (or 8-bit pixels)."""
    return TokenReplay(cfg, env.seed)
