"""Checkpoints: round trip without pickle, atomic writes, corruption detected and an older one kept."""

import json
import warnings

import pytest
import torch

from agentlab.checkpoint import (
    CheckpointError, atomic_write_text, flatten_state, list_checkpoints, load_checkpoint_dir, load_latest,
    save_checkpoint, unflatten_state,
)


def _state(v: float):
    return {"agent": {"w": torch.full((3, 2), v), "b": torch.arange(4)}, "loop": {"next_task": int(v), "names": ["a", "b"], "x": None},
            "nested": [torch.ones(2), {"k": 1.5}]}


def test_round_trip(tmp_path):
    save_checkpoint(tmp_path, 0, _state(1.0))
    got = load_checkpoint_dir(list_checkpoints(tmp_path)[0])
    assert torch.equal(got["agent"]["w"], torch.full((3, 2), 1.0))
    assert torch.equal(got["agent"]["b"], torch.arange(4))
    assert got["loop"] == {"next_task": 1, "names": ["a", "b"], "x": None}
    assert torch.equal(got["nested"][0], torch.ones(2)) and got["nested"][1] == {"k": 1.5}


def test_files_hold_no_pickle(tmp_path):
    path = save_checkpoint(tmp_path, 0, _state(1.0))
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "state.json", "tensors.safetensors"]
    json.loads((path / "state.json").read_text())  # plain JSON
    json.loads((path / "manifest.json").read_text())


def test_keeps_only_the_newest(tmp_path):
    for i in range(4):
        save_checkpoint(tmp_path, i, _state(float(i)), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0002", "ckpt_0003"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left


def test_corrupt_newest_is_named_and_older_used(tmp_path):
    save_checkpoint(tmp_path, 0, _state(0.0))
    newest = save_checkpoint(tmp_path, 1, _state(1.0))
    data = bytearray((newest / "tensors.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (newest / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ckpt_0001 is corrupt"):
        load_checkpoint_dir(newest)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        path, state = load_latest(tmp_path)
    assert path.name == "ckpt_0000" and state["loop"]["next_task"] == 0
    assert any("ckpt_0001 is corrupt" in str(x.message) for x in w)


def test_truncated_json_is_reported(tmp_path):
    p = save_checkpoint(tmp_path, 0, _state(0.0))
    (p / "state.json").write_text("{\"format\": 1, ")
    with pytest.raises(CheckpointError, match="ckpt_0000 is (corrupt|unreadable)"):
        load_checkpoint_dir(p)


def test_flatten_refuses_objects():
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        flatten_state({"a": object()})
    t, tree = flatten_state({"a": [torch.zeros(1)]})
    assert torch.equal(unflatten_state(tree, t)["a"][0], torch.zeros(1))


def test_atomic_write_text_replaces_whole_file(tmp_path):
    f = tmp_path / "x.json"
    atomic_write_text(f, "old")
    atomic_write_text(f, "new")
    assert f.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
