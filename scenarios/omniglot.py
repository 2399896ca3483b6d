"""Omniglot (Lake et al. 2015): 1,623 handwritten characters of 50 alphabets, 20 drawings each.

Files: `<data_root>/omniglot-py/images_background.zip` (30 alphabets, 964 characters)
and `images_evaluation.zip` (20 alphabets, 659 characters), laid out
`images_<set>/<Alphabet>/characterNN/XXXX_YY.png`. torchvision's `Omniglot`
refuses these zips (its MD5 list differs), so this module reads them itself:

1. each zip is extracted once beside itself, into a temporary folder renamed
   into place when complete (`omniglot-py/images_<set>/`), so a killed
   extraction never leaves a half folder that looks finished;
2. every PNG is converted to grey, inverted (strokes 1, paper 0, as in the
   prototypical-networks code) and resized to 28x28 with area averaging; the
   result is cached as `omniglot-py/omniglot28-<set>.npz` (uint8 arrays, read
   with `allow_pickle=False`) plus a JSON list of character names, so later
   runs load in about a second.

Splits (`omniglot_split`):

* `"background"` / `"evaluation"`: Lake et al.'s own split, by alphabet
  (train on the 964 background characters, test on the 659 evaluation ones).
* `"standard"`: the 1,200 / 423 character split of Vinyals et al. (2016) used
  by matching and prototypical networks. Their exact list file is not shipped
  with the data, so this split is defined here, deterministically: all 1,623
  characters in the order (set, alphabet, character) with the background set
  first, every name sorted; the first 1,200 train (all 964 background
  characters, then the evaluation alphabets Angelic, Atemayar_Qelisayer,
  Atlantean, Aurek-Besh, Avesta, Ge_ez, Glagolitic whole and Gurmukhi
  character01..41), the last 423 test (Gurmukhi character42..45 and the
  alphabets Kannada .. ULOG). `standard_split_names()` returns the exact lists. Training characters
  are augmented with rotations by 90, 180 and 270 degrees as new classes
  (4,800 training classes), as in Santoro et al. (2016) and Vinyals et al.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agentlab.datasets import require_files

SETS = ("background", "evaluation")
FOLDER = "omniglot-py"
SIZE = 28
N_STANDARD_TRAIN = 1200
CACHE_VERSION = 1
HINT = (
    "Omniglot comes as images_background.zip and images_evaluation.zip from "
    "https://github.com/brendenlake/omniglot (python/); put both zips in <data_root>/omniglot-py/"
)


@dataclass(frozen=True)
class OmniglotSet:
    """One zip's images as a tensor: `x` (N, 1, 28, 28) float in [0, 1], `y` (N,) character index, and names."""

    x: Tensor  # (N, 1, 28, 28)
    y: Tensor  # (N,) index into `characters`
    characters: tuple[str, ...]  # "Alphabet/characterNN"


def _zip_path(root: Path, which: str) -> Path:
    return require_files(root, [f"{FOLDER}/images_{which}.zip"], dataset="Omniglot", hint=HINT)[0]


def extract_once(root: Path, which: str) -> Path:
    """`<root>/omniglot-py/images_<which>/`, extracted from its zip the first time (atomically)."""
    if which not in SETS:
        raise ValueError(f"which={which!r} must be one of {SETS}")
    root = Path(root)
    zpath = _zip_path(root, which)
    final = root / FOLDER / f"images_{which}"
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{which}-", dir=root / FOLDER))
    try:
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        inner = tmp / f"images_{which}"
        if not inner.is_dir():
            raise ValueError(f"{zpath} does not hold an images_{which}/ folder; is it the original Omniglot zip?")
        try:
            os.rename(inner, final)  # atomic on one file system; a concurrent winner makes this fail harmlessly
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _to_array(png: bytes) -> np.ndarray:
    """One drawing as (28, 28) uint8: grey, inverted (strokes bright), area-resized."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")  # 105x105, paper 255, strokes 0
    img = img.resize((SIZE, SIZE), Image.Resampling.BOX)
    return 255 - np.asarray(img, dtype=np.uint8)


def _build_cache(folder: Path, npz: Path, names_path: Path) -> None:
    characters = sorted(
        f"{a.name}/{c.name}" for a in folder.iterdir() if a.is_dir() for c in a.iterdir() if c.is_dir()
    )
    images, labels = [], []
    for k, name in enumerate(characters):
        for png in sorted((folder / name).glob("*.png")):
            images.append(_to_array(png.read_bytes()))
            labels.append(k)
    x, y = np.stack(images), np.asarray(labels, dtype=np.int32)
    for path, write in (
        (npz, lambda f: np.savez(f, x=x, y=y)),
        (names_path, lambda f: f.write(json.dumps({"version": CACHE_VERSION, "characters": characters}).encode())),
    ):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


def load_omniglot(root: Path, which: str) -> OmniglotSet:
    """The `background` or `evaluation` set at 28x28, from the cache (built on first use)."""
    root = Path(root)
    _zip_path(root, which)
    npz = root / FOLDER / f"omniglot{SIZE}-{which}.npz"
    names_path = root / FOLDER / f"omniglot{SIZE}-{which}.json"
    fresh = npz.is_file() and names_path.is_file()
    if fresh:
        meta = json.loads(names_path.read_text())
        fresh = meta.get("version") == CACHE_VERSION
    if not fresh:
        _build_cache(extract_once(root, which), npz, names_path)
        meta = json.loads(names_path.read_text())
    with np.load(npz, allow_pickle=False) as d:
        x = torch.from_numpy(d["x"]).float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
        y = torch.from_numpy(d["y"]).long()
    return OmniglotSet(x, y, tuple(meta["characters"]))


def standard_split_names(root: Path) -> tuple[list[str], list[str]]:
    """The exact training (1,200) and test (423) characters of the standard split, as 'set/Alphabet/characterNN'."""
    names = [f"{w}/{c}" for w in SETS for c in load_omniglot(root, w).characters]
    return names[:N_STANDARD_TRAIN], names[N_STANDARD_TRAIN:]


@dataclass(frozen=True)
class OmniglotSplit:
    """Train and test images with per-split class labels 0..C-1 (characters, before rotation)."""

    train_x: Tensor  # (N_train, 1, 28, 28)
    train_y: Tensor  # (N_train,)
    test_x: Tensor  # (N_test, 1, 28, 28)
    test_y: Tensor  # (N_test,)
    train_names: tuple[str, ...]
    test_names: tuple[str, ...]


def omniglot_split(root: Path, split: str = "standard") -> OmniglotSplit:
    """`standard` (1,200 / 423 characters) or `background` (train background, test evaluation)."""
    if split not in ("standard", "background"):
        raise ValueError(f"split={split!r} must be 'standard' or 'background'")
    bg, ev = load_omniglot(root, "background"), load_omniglot(root, "evaluation")
    names = [f"background/{c}" for c in bg.characters] + [f"evaluation/{c}" for c in ev.characters]
    x = torch.cat([bg.x, ev.x])
    y = torch.cat([bg.y, ev.y + len(bg.characters)])  # global character index in `names` order
    cut = N_STANDARD_TRAIN if split == "standard" else len(bg.characters)
    tr = y < cut
    return OmniglotSplit(x[tr], y[tr], x[~tr], y[~tr] - cut, tuple(names[:cut]), tuple(names[cut:]))
