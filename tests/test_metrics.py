"""noscope.metrics: hand-computed cases plus the monotonicity the optimizer relies on."""

import numpy as np
import pytest

from noscope.errors import UsageError
from noscope.metrics import (
    NOSCOPE_WINDOW_MIN_FRACTION,
    confusion,
    evaluate,
    rates,
    smooth,
    window_labels,
    windowed_rates,
)

T, F = True, False


def test_confusion_and_rates_by_hand():
    pred = [1, 1, 0, 0, 1, 0]
    truth = [1, 0, 0, 1, 1, 0]
    assert confusion(pred, truth) == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    fpr, fnr = rates(pred, truth)
    assert fpr == pytest.approx(1 / 3)
    assert fnr == pytest.approx(1 / 3)


def test_rates_are_zero_when_there_is_nothing_to_get_wrong():
    assert rates([1, 0], [0, 0]) == (0.5, 0.0)  # no positives: FNR 0
    assert rates([0, 0], [1, 1]) == (0.0, 1.0)  # no negatives: FPR 0
    assert rates([], []) == (0.0, 0.0)


def test_rates_reject_mismatched_lengths():
    with pytest.raises(UsageError):
        rates([1, 0], [1])


def test_window_labels_majority_by_hand():
    labels = [1, 1, 0, 0, 0, 1, 1]
    # Windows [1,1,0] [0,0,1] [1]: 2 of 3 yes, 1 of 3 no, the short last window 1 of 1 yes.
    assert window_labels(labels, 3).tolist() == [T, F, T]
    assert window_labels([1, 0, 1, 0], 2).tolist() == [T, T]  # exactly half is a majority
    assert window_labels([], 5).tolist() == []
    assert window_labels(labels, 1).tolist() == [bool(x) for x in labels]


def test_window_labels_noscope_threshold():
    window = np.ones(30, bool)
    window[:2] = False  # 28 of 30
    assert window_labels(window, 30, NOSCOPE_WINDOW_MIN_FRACTION).tolist() == [T]
    window[2] = False  # 27 of 30
    assert window_labels(window, 30, NOSCOPE_WINDOW_MIN_FRACTION).tolist() == [F]


def test_window_labels_validate():
    with pytest.raises(UsageError):
        window_labels([1, 0], 0)
    with pytest.raises(UsageError):
        window_labels([1, 0], 2, min_fraction=0.0)


def test_windowed_rates_by_hand():
    truth = [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    pred = [1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1]
    # truth windows [T, F, T, F], pred windows [F, F, T, T]: one FN of 2 positives, one FP of 2 negatives.
    assert window_labels(truth, 3).tolist() == [T, F, T, F]
    assert window_labels(pred, 3).tolist() == [F, F, T, T]
    assert windowed_rates(pred, truth, 3) == (0.5, 0.5)
    assert evaluate(pred, truth, "windows", 3) == (0.5, 0.5)
    assert evaluate(pred, truth, "frames") == rates(pred, truth)


def test_evaluate_rejects_unknown_metric():
    with pytest.raises(UsageError, match="unknown accuracy metric"):
        evaluate([1], [1], "seconds")


def test_smooth_by_hand():
    x = [0, 1, 0, 0, 1, 1, 0, 1, 1, 1]
    assert smooth(x, 3).tolist() == [F, F, F, F, T, T, T, T, T, T]
    assert smooth(x, 1).tolist() == [bool(v) for v in x]
    assert smooth(x, 0).tolist() == [bool(v) for v in x]
    # Width 5, ends padded with their own label: [0,0,1,0,0] -> 0 ... [1,1,1,1,1] -> 1.
    assert smooth(x, 5).tolist() == [F, F, F, T, F, T, T, T, T, T]


def test_smooth_respects_blocks():
    # Each block is filtered alone and padded with its own end labels: block [0, 1] stays [0, 1]
    # (frame 1 sees [0, 1, 1]); across the boundary frame 1 would see [0, 1, 0] and turn no.
    assert smooth([0, 1, 0, 1], 3, [0, 0, 1, 1]).tolist() == [F, T, F, T]
    assert smooth([0, 1, 0, 1], 3).tolist() == [F, F, T, T]


def test_smooth_rejects_even_width():
    with pytest.raises(UsageError, match="odd"):
        smooth([0, 1, 0], 4)


def test_smooth_removes_single_frame_flicker():
    x = np.zeros(50, bool)
    x[10:30] = True
    noisy = x.copy()
    noisy[[5, 20, 40]] = ~noisy[[5, 20, 40]]
    assert (smooth(noisy, 3) == x).all()


def test_window_labels_are_monotone_in_frame_labels():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 200))
        window = int(rng.integers(1, 40))
        fraction = float(rng.choice([0.5, NOSCOPE_WINDOW_MIN_FRACTION, rng.uniform(0.01, 1.0)]))
        labels = rng.random(n) < rng.random()
        before = window_labels(labels, window, fraction)
        off = np.flatnonzero(~labels)
        if off.size == 0:
            continue
        raised = labels.copy()
        raised[rng.choice(off, size=int(rng.integers(1, off.size + 1)), replace=False)] = True
        after = window_labels(raised, window, fraction)
        assert not (before & ~after).any()  # no window went from yes to no


def test_window_labels_restart_at_blocks():
    labels = [1, 1, 0, 0, 1, 1, 1]
    blocks = [0, 0, 0, 0, 1, 1, 1]
    # Block 0: [1,1,0] [0]; block 1: [1,1,1].
    assert window_labels(labels, 3, blocks=blocks).tolist() == [T, F, T]
    assert window_labels(labels, 3).tolist() == [T, T, T]  # [1,1,0] [0,1,1] [1]
    assert window_labels(labels, 3, blocks=np.zeros(7)).tolist() == window_labels(labels, 3).tolist()
    pred = [1, 1, 1, 1, 1, 1, 1]
    assert windowed_rates(pred, labels, 3, blocks=blocks) == (1.0, 0.0)
    assert evaluate(pred, labels, "windows", 3, blocks=blocks) == (1.0, 0.0)


def test_window_labels_with_blocks_are_monotone():
    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(1, 200))
        blocks = np.cumsum(rng.random(n) < 0.05)
        labels = rng.random(n) < 0.5
        raised = labels | (rng.random(n) < 0.2)
        before = window_labels(labels, 7, blocks=blocks)
        assert not (before & ~window_labels(raised, 7, blocks=blocks)).any()
