"""fnnsp-pairs: binary tasks mixing MNIST and Fashion-MNIST."""

from __future__ import annotations

import pytest

from agentlab.config import ConfigError
from agentlab.registry import BuildEnv, build
from agentlab.scenarios.fnnsp import fnnsp_pairs
from agentlab.scenarios.vision_data import load_tensors


def test_default_pairs(data_root):
    s = fnnsp_pairs(data_root, max_per_task=30, max_eval_per_task=10)
    assert len(s) >= 10 and s.scenario == "task" and s.n_classes == 2
    datasets = {t.meta["dataset"] for t in s}
    assert datasets == {"mnist", "fashion"}
    t0, t1 = s[0], s[1]
    assert t0.meta["original_classes"] == [2, 3] and t0.classes == (0, 1) and t0.task_label_at_test
    assert t1.meta["class_names"] == ["Shirt", "T-shirt/top"]
    x, y = t1.train.all()
    assert x.shape == (30, 1, 28, 28) and set(y.tolist()) <= {0, 1}


def test_labels_follow_the_pair(data_root):
    s = fnnsp_pairs(data_root, pairs=["fashion:6-0"])
    x_all, y_all = load_tensors("fashion", data_root, train=False)
    t = s[0]
    assert len(t.eval) == int(((y_all == 6) | (y_all == 0)).sum()) == 2000
    # label 0 is class a (shirt), label 1 is class b (T-shirt)
    first_shirt = int((y_all == 6).nonzero()[0])
    row = (t.eval.x == x_all[first_shirt]).flatten(1).all(1).nonzero()[0]
    assert int(t.eval.y[row]) == 0


def test_class_scenario_new_outputs(data_root):
    s = build("stream", {"name": "fnnsp-pairs", "scenario": "class", "max_per_task": 8, "max_eval_per_task": 8}, BuildEnv(data_root=data_root))
    assert s.n_classes == 2 * len(s) and s[3].classes == (6, 7)
    assert set(s[3].train.y.tolist()) <= {6, 7} and not s[3].task_label_at_test


def test_bad_pair_is_a_config_error():
    with pytest.raises(ConfigError, match="pairs"):
        fnnsp_pairs("/nonexistent", pairs=["mnist:3-3"])
