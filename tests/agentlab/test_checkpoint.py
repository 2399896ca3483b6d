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


def _rewrite_state(ckpt, edit):
    """Change state.json and update the manifest to match: a consistent checkpoint whose content is wrong."""
    import hashlib

    meta = json.loads((ckpt / "state.json").read_text())
    body = json.dumps(edit(meta)).encode()
    (ckpt / "state.json").write_bytes(body)
    manifest = ckpt / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        m["files"]["state.json"] = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
        manifest.write_text(json.dumps(m))


def test_checkpoints_are_ordered_by_their_integer_index(tmp_path):
    """`ckpt_10000` comes after `ckpt_9999`: it is kept and loaded, not pruned as the oldest."""
    for i in (9998, 9999, 10000):
        save_checkpoint(tmp_path, i, _state(float(i % 7)), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_9999", "ckpt_10000"]
    path, state = load_latest(tmp_path)
    assert path.name == "ckpt_10000" and state["loop"]["next_task"] == 10000 % 7


def test_only_folders_named_like_checkpoints_count(tmp_path):
    save_checkpoint(tmp_path, 0, _state(0.0))
    for stray in ("ckpt_zzz", "ckpt_0003.bak", "ckpt_"):
        (tmp_path / stray).mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ckpt_0009").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "ckpt_0008").write_text("a file")
    save_checkpoint(tmp_path, 1, _state(1.0), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000", "ckpt_0001"]
    assert load_latest(tmp_path)[0].name == "ckpt_0001"
    for stray in ("ckpt_zzz", "ckpt_0003.bak", "ckpt_", "elsewhere"):
        assert (tmp_path / stray).is_dir()  # never pruned: not ours


def test_state_json_is_covered_by_the_checksum(tmp_path):
    save_checkpoint(tmp_path, 0, _state(0.0))
    newest = save_checkpoint(tmp_path, 1, _state(1.0))
    text = (newest / "state.json").read_text().replace('"next_task": 1', '"next_task": 3')
    (newest / "state.json").write_text(text)  # still valid JSON, silently different
    with pytest.raises(CheckpointError, match=r"ckpt_0001 is corrupt: state.json"):
        load_checkpoint_dir(newest)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        path, state = load_latest(tmp_path)
    assert path.name == "ckpt_0000" and state["loop"]["next_task"] == 0


@pytest.mark.parametrize("edit, why", [
    (lambda m: [1, 2, 3], "holds no state"),
    (lambda m: {k: v for k, v in m.items() if k != "state"}, "holds no state"),
    (lambda m: {**m, "state": {**m["state"], "agent": {"w": {"__tensor__": "nope"}}}}, "missing tensor"),
    (lambda m: {**m, "index": 7}, "says it is checkpoint 7"),
])
def test_a_consistent_but_wrong_state_json_is_a_checkpoint_error(tmp_path, edit, why):
    p = save_checkpoint(tmp_path, 0, _state(0.0))
    _rewrite_state(p, edit)
    with pytest.raises(CheckpointError, match=why):
        load_checkpoint_dir(p)


def test_stale_temporary_folders_are_removed_at_the_next_save(tmp_path):
    save_checkpoint(tmp_path, 0, _state(0.0))
    stale = tmp_path / ".ckpt_0001.k1ll3d"  # what a kill during the save of checkpoint 1 leaves
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"half")
    (tmp_path / ".x.json.abc.tmp").write_text("half")
    save_checkpoint(tmp_path, 1, _state(1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000", "ckpt_0001"]


def test_saving_an_earlier_index_drops_the_abandoned_later_ones(tmp_path):
    """After a fallback (or a restart) the run saves index 2 again: a later ckpt_0003 is from an abandoned timeline."""
    for i in range(4):
        save_checkpoint(tmp_path, i, _state(float(i)), keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0001", "ckpt_0002", "ckpt_0003"]
    save_checkpoint(tmp_path, 2, _state(9.0), keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0001", "ckpt_0002"]
    assert float(load_latest(tmp_path)[1]["agent"]["w"][0, 0]) == 9.0


def test_a_checkpoint_does_not_hold_the_whole_task_matrix(tmp_path):
    """With eval_seen="final" a long stream measures two entries a task: a checkpoint holds those, not T x T."""
    from agentlab.agent import Agent
    from agentlab.backbones.mlp import MLP
    from agentlab.learners.finetune import FineTune
    from agentlab.learners.sgd import SGDConfig
    from agentlab.loop import LoopConfig, run
    from tests_helpers import permuted_stream

    T = 400
    stream = permuted_stream(n_tasks=T, n=40)
    agent = Agent(MLP(20, [8], 4), learner=FineTune(SGDConfig(epochs=1, batch_size=16, max_steps=1)))
    cfg = LoopConfig(eval_seen="final", stop_after_tasks=3)
    r = run(agent, stream, generator=torch.Generator().manual_seed(0), out_dir=tmp_path, cfg=cfg)
    assert r.status == "interrupted"
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    size = (newest / "tensors.safetensors").stat().st_size
    assert size < 8 * T * T / 20, size  # a dense T x T float64 matrix alone would be 1.28 MB
    state = load_checkpoint_dir(newest)
    assert state["loop"]["R_values"].numel() == 6  # R[i, i] and R[i, i + 1] for the 3 tasks done

