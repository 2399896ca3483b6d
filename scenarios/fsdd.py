"""Free Spoken Digit Dataset (Jackson et al.): 3,000 recordings of spoken digits as log-spectrograms.

Read straight from `<data_root>/fsdd/fsdd-recordings.tar.gz` (no extraction):
`recordings/<digit>_<speaker>_<index>.wav`, 8 kHz mono 16-bit PCM, parsed with
the standard library's `wave`. Official split: recording indices 0-4 are the
test set, 5-49 the training set (every speaker appears in both).

Features: |STFT| with a 256-sample Hann window and hop 128 (32 ms / 16 ms at
8 kHz), 129 bins averaged in pairs to 64, log(1 + 100 |X|), standardised per clip,
then centre-cropped or zero-padded to `frames` frames (64 frames = 1.02 s; most
clips are shorter).

Shapes: spectrograms (N, F=64, T=frames) float32; labels (N,) long; speakers (N,) long.
"""

from __future__ import annotations

import io
import re
import tarfile
import wave
from pathlib import Path

import torch
from torch import Tensor

from agentlab.datasets import require_files

ARCHIVE = "fsdd/fsdd-recordings.tar.gz"
_NAME = re.compile(r"recordings/(\d)_([a-z]+)_(\d+)\.wav$")


def read_wav(data: bytes) -> Tensor:
    """Samples in [-1, 1] (S,) of a 16-bit mono PCM wav file's bytes."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"expected 16-bit mono PCM, got width {w.getsampwidth()} channels {w.getnchannels()}")
        raw = w.readframes(w.getnframes())
    return torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768.0


def log_spectrogram(wav: Tensor, *, frames: int = 64) -> Tensor:
    """(F=64, T=frames) standardised log-magnitude spectrogram of one clip."""
    spec = torch.stft(wav, n_fft=256, hop_length=128, window=torch.hann_window(256), return_complex=True).abs()  # (129, T)
    spec = spec[:128].reshape(64, 2, -1).mean(1)  # (64, T) pairs of bins averaged
    spec = torch.log1p(100 * spec)
    spec = (spec - spec.mean()) / (spec.std() + 1e-5)
    t = spec.shape[1]
    if t >= frames:
        start = (t - frames) // 2
        return spec[:, start : start + frames]
    return torch.nn.functional.pad(spec, (0, frames - t))


def load_fsdd(root: Path, split: str = "train", *, frames: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """(spectrograms (N, 64, frames), digits (N,), speaker ids (N,)) of the official `split` ('train' or 'test')."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r} must be 'train', 'test' or 'all'")
    (path,) = require_files(Path(root), [ARCHIVE], dataset="FSDD")
    specs, digits, speakers, names = [], [], [], {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            m = _NAME.search(member.name)
            if m is None or not member.isfile():
                continue
            digit, speaker, index = int(m.group(1)), m.group(2), int(m.group(3))
            if (split == "test" and index > 4) or (split == "train" and index <= 4):
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            specs.append(log_spectrogram(read_wav(data), frames=frames))
            digits.append(digit)
            speakers.append(names.setdefault(speaker, len(names)))
    if not specs:
        raise ValueError(f"no recordings found in {path}")
    return torch.stack(specs), torch.tensor(digits), torch.tensor(speakers)
