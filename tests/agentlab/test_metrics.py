"""The metrics against a hand-computed matrix and against Avalanche's own functional forgetting."""

import math

import numpy as np
import pytest

from agentlab import metrics as M

# R[i, j]: accuracy on task j after training task i (3 tasks).
R = np.array(
    [
        [0.90, 0.10, 0.05],
        [0.70, 0.80, 0.20],
        [0.60, 0.75, 0.95],
    ]
)
b = np.array([0.10, 0.12, 0.08])


def test_average_accuracy_by_hand():
    assert M.average_accuracy(R) == pytest.approx((0.60 + 0.75 + 0.95) / 3)
    assert M.average_accuracy(R, 2) == pytest.approx((0.70 + 0.80) / 2)
    assert M.average_accuracy(R, 1) == pytest.approx(0.90)


def test_backward_transfer_by_hand():
    # ((0.60 - 0.90) + (0.75 - 0.80)) / 2
    assert M.backward_transfer(R) == pytest.approx(-0.175)
    assert math.isnan(M.backward_transfer(R, 1))


def test_forward_transfer_by_hand():
    # ((R[0,1] - b[1]) + (R[1,2] - b[2])) / 2 = ((0.10 - 0.12) + (0.20 - 0.08)) / 2
    assert M.forward_transfer(R, b) == pytest.approx(0.05)


def test_chaudhry_forgetting_uses_the_best_earlier_accuracy():
    R2 = np.array([[0.5, 0, 0], [0.9, 0.8, 0], [0.6, 0.7, 0.9]])
    # task 0: best before the last = max(0.5, 0.9) = 0.9 -> 0.3; task 1: 0.8 - 0.7 = 0.1
    assert M.forgetting_per_task(R2) == pytest.approx([0.3, 0.1])
    assert M.average_forgetting(R2) == pytest.approx(0.2)


def test_forgetting_matrix_equals_avalanche_functional():
    from avalanche.evaluation.functional import forgetting

    rng = np.random.default_rng(0)
    for _ in range(5):
        A = rng.uniform(size=(6, 6))
        np.testing.assert_allclose(M.avalanche_forgetting_matrix(A), forgetting(A), atol=1e-12)
    np.testing.assert_allclose(M.avalanche_forgetting_matrix(R), forgetting(R), atol=1e-12)


def test_nan_entries_are_skipped():
    Rn = R.copy()
    Rn[1, 0] = np.nan  # an "eval_seen=final" run does not measure old tasks in the middle
    assert M.average_forgetting(Rn) == pytest.approx(((0.90 - 0.60) + (0.80 - 0.75)) / 2)
    Rn[2, 2] = np.nan
    assert M.average_accuracy(Rn) == pytest.approx((0.60 + 0.75) / 2)


def test_summarize_keys_and_shape_errors():
    s = M.summarize(R, b)
    assert set(s) == {"avg_acc", "bwt", "fwt", "forgetting"}
    with pytest.raises(ValueError, match="2-D"):
        M.average_accuracy(np.zeros(3))
