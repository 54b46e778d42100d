"""Accuracy of a cascade's labels against the reference detector's labels.

Everything here is a pure function of boolean arrays, one entry per frame, in video order:
`pred` is what a cascade answered ("is there a car in this frame?"), `truth` is what the
reference detector answered. A positive is a frame (or window) with the object in it.

    FPR = FP / (FP + TN)   the share of truly empty frames we wrongly called positive
    FNR = FN / (FN + TP)   the share of truly positive frames we missed

Both are 0.0 when their denominator is 0 (no negatives / no positives): there is nothing to get
wrong, and a target like "FNR <= 0.01" is then met.

Two ways to count (`evaluate(metric=...)`):

* "frames": every frame counts once.
* "windows": the video is cut into consecutive, non-overlapping windows of `window` frames
  (the last one may be shorter; with `blocks`, windows restart at every block) and each window
  gets one label; rates are over windows. This
  forgives what a user watching the video would not care about: a label that flickers for a
  frame, or a cascade that notices a car a few frames late because it skips frames.

How a window is labelled (see `window_labels`). NoScope's own code (stanford-futuredata/noscope)
is not consistent about it: `optimizer/noscope_accuracy.py` calls a reference window positive
when at least WINDOW_THRES=28 of WINDOW_SIZE=30 frames are positive (a rolling sum, shifted by
half a window and zero-padded at the end), but windows its own cascade's output by the *maximum*
confidence in the window (i.e. "any frame"), and `noscope/StatsUtils.windowed_accuracy` uses
"more than 10 of 15". We use one rule for both sides: a window is positive when at least
`min_fraction` of its frames are, default 0.5 (a majority). That is symmetric (isolated wrong
frames are forgiven in both directions), and NoScope's 28/30 rule is `min_fraction=28/30`.

Any count-threshold rule is *monotone*: turning a frame from no to yes can only turn its window
from no to yes, never back. The optimizer relies on this (see noscope/optimizer.py).
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError

METRICS = ("frames", "windows")

# Default share of positive frames that makes a window positive: a majority (see module docstring).
WINDOW_MIN_FRACTION = 0.5
# NoScope's published code: a 30-frame window is positive when >= 28 of its frames are.
NOSCOPE_WINDOW_MIN_FRACTION = 28 / 30


def _as_bool(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise UsageError(f"{name} must be a 1-D array of per-frame labels, got shape {a.shape}")
    return a.astype(bool, copy=False)


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_bool(pred, "pred"), _as_bool(truth, "truth")
    if pred.shape != truth.shape:
        raise UsageError(f"pred and truth must have the same length, got {len(pred)} and {len(truth)}")
    return pred, truth


def confusion(pred, truth) -> dict[str, int]:
    """Counts of true/false positives/negatives: dict(tp, fp, tn, fn)."""
    pred, truth = _pair(pred, truth)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return {"tp": tp, "fp": fp, "tn": len(pred) - tp - fp - fn, "fn": fn}


def _ratio(num: int, den: int) -> float:
    # Nothing to get wrong -> a rate of 0, so "rate <= target" holds trivially.
    return num / den if den else 0.0


def rates(pred, truth) -> tuple[float, float]:
    """(FPR, FNR) over frames; each 0.0 when its denominator is 0."""
    c = confusion(pred, truth)
    return _ratio(c["fp"], c["fp"] + c["tn"]), _ratio(c["fn"], c["fn"] + c["tp"])


def _check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise UsageError(f"window must be a positive number of frames, got {window!r}")
    return int(window)


def _check_fraction(min_fraction) -> float:
    if not 0.0 < float(min_fraction) <= 1.0:
        raise UsageError(f"window min_fraction must be in (0, 1], got {min_fraction!r}")
    return float(min_fraction)


def _block_starts(blocks, n: int) -> np.ndarray:
    """bool (N,): True where a block starts (the block id changes)."""
    blocks = np.asarray(blocks)
    if blocks.shape != (n,):
        raise UsageError(f"blocks must have one entry per frame ({n}), got shape {blocks.shape}")
    return np.r_[True, blocks[1:] != blocks[:-1]] if n else np.zeros(0, bool)


class Windowing:
    """The windows over N frames, computed once for labelling many label arrays of that length.

    Windows are consecutive runs of `window` frames; with `blocks` (int (N,), equal ids =
    consecutive frames of the video) they restart at every block, so no window mixes two
    unrelated stretches of video. The last window of each block may be shorter and is judged on
    its own length.
    """

    def __init__(self, n: int, window: int, min_fraction: float = WINDOW_MIN_FRACTION, blocks=None):
        window = _check_window(window)
        self.n = n
        self.min_fraction = _check_fraction(min_fraction)
        if blocks is None:
            self.starts = np.arange(0, n, window)
        else:
            idx = np.arange(n)
            block_start = _block_starts(blocks, n)
            pos = idx - np.maximum.accumulate(np.where(block_start, idx, 0))  # position in block
            self.starts = np.flatnonzero(block_start | (pos % window == 0))
        self.lengths = np.diff(np.r_[self.starts, n])
        # Positive frames needed per window; the slack keeps 28/30 * 30 from needing 28.000000000000004.
        self.needed = self.min_fraction * self.lengths - 1e-9

    def labels(self, labels) -> np.ndarray:
        labels = _as_bool(labels, "labels")
        if len(labels) != self.n:
            raise UsageError(f"expected {self.n} frame labels, got {len(labels)}")
        if self.n == 0:
            return np.zeros(0, bool)
        return np.add.reduceat(labels, self.starts, dtype=np.int64) >= self.needed


def window_labels(labels, window: int, min_fraction: float = WINDOW_MIN_FRACTION, blocks=None) -> np.ndarray:
    """One label per window of `window` frames: bool (ceil(N / window),) without `blocks`.

    A window is positive iff at least `min_fraction` of its frames are positive; short windows
    (the last one, or each block's last one when `blocks` is given, see `Windowing`) are judged
    on their own length. Monotone in `labels` (see module docstring).
    """
    labels = _as_bool(labels, "labels")
    return Windowing(len(labels), window, min_fraction, blocks).labels(labels)


def windowed_rates(pred, truth, window: int, min_fraction: float = WINDOW_MIN_FRACTION,
                   blocks=None) -> tuple[float, float]:
    """(FPR, FNR) over windows (`window_labels` applied to both sides)."""
    pred, truth = _pair(pred, truth)
    return rates(window_labels(pred, window, min_fraction, blocks), window_labels(truth, window, min_fraction, blocks))


def smooth(truth, k: int, blocks=None) -> np.ndarray:
    """Centred majority (= binary median) filter of odd width `k` over per-frame labels.

    Used on the reference's own labels to decide what counts as a positive frame: a detector that
    misses a car for one frame in the middle of a pass, or fires on one frame of shadow, is not
    what the user asked about. k <= 1 returns the labels unchanged. The ends are padded by
    repeating the first/last label, so an odd width never ties. If `blocks` (int (N,), equal
    ids = consecutive frames of the video) is given, each block is filtered on its own, since
    neighbouring blocks need not be neighbouring in time.
    """
    truth = _as_bool(truth, "truth")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise UsageError(f"smoothing width must be an integer, got {k!r}")
    if k <= 1 or len(truth) == 0:
        return truth.copy()
    if k % 2 == 0:
        raise UsageError(f"smoothing width must be odd, got {k}")
    if blocks is None:
        return _majority(truth, int(k))
    starts = np.flatnonzero(_block_starts(blocks, len(truth)))
    ends = np.r_[starts[1:], len(truth)]
    return np.concatenate([_majority(truth[a:b], int(k)) for a, b in zip(starts, ends)])


def _majority(x: np.ndarray, k: int) -> np.ndarray:
    half = k // 2
    padded = np.concatenate([np.repeat(x[:1], half), x, np.repeat(x[-1:], half)]).astype(np.int32)
    csum = np.concatenate([[0], np.cumsum(padded)])
    window_sums = csum[k:] - csum[:-k]  # sum of the k labels centred on each frame
    return 2 * window_sums > k


def evaluate(pred, truth, metric: str = "frames", window: int = 30,
             min_fraction: float = WINDOW_MIN_FRACTION, blocks=None) -> tuple[float, float]:
    """(FPR, FNR) by `metric`: "frames" (per frame) or "windows" (per window of `window` frames,
    restarting at every block when `blocks` is given)."""
    if metric == "frames":
        return rates(pred, truth)
    if metric == "windows":
        return windowed_rates(pred, truth, window, min_fraction, blocks)
    raise UsageError(f"unknown accuracy metric {metric!r}; valid: {', '.join(METRICS)}")
