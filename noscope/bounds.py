"""Confidence limits for error rates: the interval math behind the optimizer and verification.

    from noscope import bounds
    bounds.rate_upper(k=0, n=12, alpha=0.05)          # Clopper-Pearson: 0.221
    bounds.count_upper(k=0, population=6000, sample=100, alpha=0.025)   # hypergeometric: 214
    bounds.label_runs(truth, frames)                  # (positive runs, negative runs, changes)

Two kinds of evidence, two kinds of limit:

* Held-out frames (the optimizer). Neighbouring frames of a video are near copies, so 300
  positive frames of one parked car are one piece of evidence, not 300. We count evidence per
  *run of equal labels* (a maximal stretch of consecutive frames with the same answer): the
  effective sample size of a false-negative rate is the number of positive runs, of a
  false-positive rate the number of negative runs, and the observed rate is applied to it
  (k_eff = rate * n_eff). The limit is Clopper-Pearson's exact binomial one (a beta quantile),
  which is defined for fractional counts and never collapses to 0 when no error was seen.
  No runs of a label means no evidence: the limit is 1.

* A uniform random sample of frames drawn without replacement (verification). The frames of the
  queried video are a finite population and the only randomness is the draw, so the number of
  wrong frames K among N, seen k times in n draws, has exact hypergeometric limits; the truth's
  autocorrelation in time does not matter. Never a normal (Wald) interval: with zero errors
  seen, which is the usual case, it claims a width of zero.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def rate_upper(k: float, n: float, alpha: float) -> float:
    """One-sided upper (1 - alpha) limit of a rate seen k times in n trials (Clopper-Pearson).
    k may be fractional (an effective count); n <= 0 (no evidence) gives 1."""
    if n <= 0 or k >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - alpha, k + 1.0, n - k))


def count_upper(k: int, population: int, sample: int, alpha: float) -> int:
    """Largest count K of bad items among `population` such that drawing `sample` items without
    replacement shows at most k bad ones with probability above alpha (exact hypergeometric)."""
    k, N, n = int(k), int(population), int(sample)
    _check_draw(k, N, n)
    lo, hi = k, N - (n - k)  # K cannot be below what was seen, nor leave too few good items
    while lo < hi:  # P(X <= k | K) falls as K grows: find the last K where it is above alpha
        mid = (lo + hi + 1) // 2
        if stats.hypergeom.cdf(k, N, mid, n) > alpha:
            lo = mid
        else:
            hi = mid - 1
    return lo


def count_lower(k: int, population: int, sample: int, alpha: float) -> int:
    """Smallest count K of bad items such that the draw shows at least k with probability above alpha."""
    k, N, n = int(k), int(population), int(sample)
    _check_draw(k, N, n)
    lo, hi = k, N - (n - k)
    while lo < hi:  # P(X >= k | K) grows with K: find the first K where it is above alpha
        mid = (lo + hi) // 2
        if stats.hypergeom.sf(k - 1, N, mid, n) > alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _check_draw(k: int, population: int, sample: int) -> None:
    if not 0 <= sample <= population or not 0 <= k <= sample:
        raise ValueError(f"a draw of {sample} from {population} cannot show {k} bad items")


def label_runs(truth, frames=None) -> tuple[int, int, int]:
    """(positive runs, negative runs, label changes) of per-frame labels in video order.

    A run is a maximal stretch of consecutive frames with one label; a gap in `frames` (frame
    numbers) ends a run without counting as a change, so separately sampled stretches of video
    never look like one."""
    truth = np.asarray(truth, bool)
    if len(truth) == 0:
        return 0, 0, 0
    gap = np.zeros(len(truth) - 1, bool) if frames is None else np.diff(np.asarray(frames)) != 1
    change = truth[1:] != truth[:-1]
    starts = np.r_[True, gap | change]
    pos = int(np.count_nonzero(starts & truth))
    neg = int(np.count_nonzero(starts & ~truth))
    return pos, neg, int(np.count_nonzero(change & ~gap))
