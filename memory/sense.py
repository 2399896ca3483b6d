"""Training the SENSE shared tokenizer across modalities, and filling a mini-RAG store with its episodes.

Axis legend: B batch per modality, E key dim.

Each step draws a batch of every modality (MNIST images, FSDD spectrograms, digit
words) and minimises SupCon over all their keys together (positives: same digit,
any modality) plus the VQ commitment and the image reconstruction term of
`SharedTokenizer.loss`. Words are drawn in several spellings ("seven", "Seven",
"SEVEN", "7") so the text encoder meets more than ten strings.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from agentlab.optim import fast_kernels
from agentlab.memory.encoders import encode_text
from agentlab.memory.store import EpisodeStore
from agentlab.memory.tokenizer import SharedTokenizer

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def word_forms(digit: int) -> list[str]:
    w = WORDS[digit]
    return [w, w.capitalize(), w.upper(), str(digit)]


@dataclass
class SenseData:
    """Training examples of each modality with their digit labels."""

    images: Tensor  # (N_i, 1, 28, 28) in [0, 1]
    image_labels: Tensor  # (N_i,)
    audio: Tensor  # (N_a, F, T) standardised log-spectrograms
    audio_labels: Tensor  # (N_a,)


def train_sense(tok: SharedTokenizer, data: SenseData, *, steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 0,
                recon_weight: float = 1.0, log_every: int = 0) -> dict[str, float]:
    """Train `tok` for `steps` steps; returns the last loss terms, codebook usage and seconds taken."""
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    params = list(tok.parameters())
    opt = torch.optim.Adam(params, lr=lr, **fast_kernels(params, fused=True))
    tok.train()
    tok.vq.reset_usage()
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    for step in range(steps):
        i = torch.randint(0, len(data.images), (batch,), generator=g)
        a = torch.randint(0, len(data.audio), (batch,), generator=g)
        digits = [rnd.randrange(10) for _ in range(batch // 2)]
        words = [rnd.choice(word_forms(d)) for d in digits]
        terms = tok.loss({
            "image": (data.images[i], data.image_labels[i]),
            "audio": (data.audio[a], data.audio_labels[a]),
            "text": (encode_text(words), torch.tensor(digits)),
        }, recon_weight=recon_weight)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = {k: float(v.detach()) for k, v in terms.items()}
        if log_every and step % log_every == 0:
            print(f"sense step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in last.items()), flush=True)
    tok.eval()
    last["usage"] = tok.vq.usage()
    last["train_s"] = time.perf_counter() - t0
    return last


@torch.no_grad()
def tokenize_all(tok: SharedTokenizer, modality: str, x: Tensor, batch: int = 500) -> tuple[Tensor, Tensor, Tensor]:
    """(codes (N, n), mask (N, n), keys (N, E)) of every example, in eval mode."""
    tok.eval()
    codes, masks, keys = [], [], []
    for s in range(0, len(x), batch):
        t = tok.tokenize(modality, x[s : s + batch])
        codes.append(t.codes)
        masks.append(t.mask)
        keys.append(tok.key(t.codes, t.mask))
    return torch.cat(codes), torch.cat(masks), torch.cat(keys)


def fill_store(store: EpisodeStore, tok: SharedTokenizer, modality: str, x: Tensor, labels: Tensor) -> None:
    """Write every example of `x` as an episode (its tokens, key and label) into `store`."""
    codes, mask, keys = tokenize_all(tok, modality, x)
    codes = codes.masked_fill(~mask, -1)
    store.write(keys, codes, labels, [{"modality": modality}] * len(x))


def top1(store: EpisodeStore, keys: Tensor, labels: Tensor) -> float:
    """Share of queries whose nearest stored episode has the query's label."""
    r = store.retrieve(keys, k=1)
    return float((r.labels[:, 0] == labels).float().mean())
