"""FSDD loader: the official test split (recording indices 0-4) from the real archive."""

import io
import wave

import pytest
import torch

from agentlab.errors import DataNotFoundError
from agentlab.scenarios.fsdd import load_fsdd, log_spectrogram, read_wav


def test_official_test_split(data_root):
    x, y, spk = load_fsdd(data_root, "test")
    assert x.shape == (300, 64, 64) and x.dtype == torch.float32
    assert torch.bincount(y).tolist() == [30] * 10  # 6 speakers x 5 recordings per digit
    assert torch.bincount(spk).tolist() == [50] * 6
    assert torch.isfinite(x).all()


def test_wav_parsing_and_spectrogram_shape():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((torch.sin(torch.arange(4000) * 0.3) * 20000).to(torch.int16).numpy().tobytes())
    wav = read_wav(buf.getvalue())
    assert wav.shape == (4000,) and wav.abs().max() <= 1
    spec = log_spectrogram(wav, frames=64)
    assert spec.shape == (64, 64)
    assert spec[:, 40:].abs().sum() == 0  # 0.5 s = 32 frames, zero-padded to 64


def test_missing_archive_names_the_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="fsdd-recordings.tar.gz"):
        load_fsdd(tmp_path, "test")
