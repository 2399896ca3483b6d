"""Omniglot loader: missing files, atomic extraction and cache on a tiny zip, the real zips' counts and splits."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agentlab.errors import DataNotFoundError
from agentlab.scenarios import omniglot as om


def _png(value_at: tuple[int, int]) -> bytes:
    """A 105x105 white page with one black 15x15 stroke block at `value_at` (like Omniglot's black-on-white)."""
    a = np.full((105, 105), 255, dtype=np.uint8)
    r, c = value_at
    a[r : r + 15, c : c + 15] = 0
    buf = io.BytesIO()
    Image.fromarray(a).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _tiny_zip(root: Path, which: str) -> None:
    folder = root / om.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"images_{which}.zip", "w") as z:
        for a in ("Alpha", "Beta"):
            for c in ("character01", "character02"):
                for k in range(3):
                    z.writestr(f"images_{which}/{a}/{c}/{k:04d}_{k:02d}.png", _png((0, 0)))


def test_missing_zips_raise_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="images_background.zip"):
        om.load_omniglot(tmp_path, "background")


def test_extract_once_and_cache_on_a_tiny_zip(tmp_path):
    _tiny_zip(tmp_path, "background")
    s = om.load_omniglot(tmp_path, "background")
    assert s.x.shape == (12, 1, 28, 28) and s.y.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert s.characters == ("Alpha/character01", "Alpha/character02", "Beta/character01", "Beta/character02")
    # inverted: the black stroke block in the top-left corner becomes bright, the white page 0
    assert float(s.x[0, 0, 0, 0]) == pytest.approx(1.0) and float(s.x[0, 0, -1, -1]) == 0.0
    folder = tmp_path / om.FOLDER
    assert (folder / "images_background" / "Beta" / "character02").is_dir()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary folder or file left behind
    # later loads read the cached arrays, not the extracted PNGs
    for png in (folder / "images_background").rglob("*.png"):
        png.unlink()
    again = om.load_omniglot(tmp_path, "background")
    assert again.x.equal(s.x) and again.characters == s.characters


def test_real_zips_counts_and_splits(data_root):
    bg, ev = om.load_omniglot(data_root, "background"), om.load_omniglot(data_root, "evaluation")
    assert (bg.x.shape[0], len(bg.characters)) == (19280, 964)
    assert (ev.x.shape[0], len(ev.characters)) == (13180, 659)
    assert bg.x.shape[1:] == (1, 28, 28) and 0.0 <= float(bg.x.min()) and float(bg.x.max()) <= 1.0
    assert float(bg.x.mean()) < 0.2  # strokes bright on a dark page: mostly zeros
    train, test = om.standard_split_names(data_root)
    assert len(train) == 1200 and len(test) == 423 and not set(train) & set(test)
    assert train[-1] == "evaluation/Gurmukhi/character41" and test[0] == "evaluation/Gurmukhi/character42"
    s = om.omniglot_split(data_root, "standard")
    assert s.train_x.shape[0] == 1200 * 20 and s.test_x.shape[0] == 423 * 20
    assert int(s.train_y.max()) == 1199 and int(s.test_y.max()) == 422
    b = om.omniglot_split(data_root, "background")
    assert b.train_names[0].startswith("background/") and b.test_names[0].startswith("evaluation/")
    assert b.train_x.shape[0] == 19280 and b.test_x.shape[0] == 13180
