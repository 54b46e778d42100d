"""The statistics of the check: how wrong can the cascade's answers on *this* video be?

    sizes = certification_sizes(N_yes, N_no, ref_pos, ref_neg, 0.01, 0.01, alpha, floor=100)  # --guarantee
    frames = draw(cheap_yes_frames, sizes[True], rng)      # a uniform draw from one stratum
    v = verdict(Check(N_yes, n_yes, k_yes), Check(N_no, n_no, k_no), ref_pos, ref_neg, 0.01, 0.01, alpha)
    v["fnr"]["high"], v["met"]                              # upper bound on FNR; True / False / None

The rounds that draw, judge and repair are in noscope.check.

After the cascade has answered every frame, the frames whose answer did not come from running the
reference on that very frame (skipped frames and copies, including copies of a reference answer,
difference-detector and model answers) are split by the cascade's answer: the cheap "yes" frames
(N_Y of them) and the cheap "no" frames (N_O). A uniform random sample of single frames is drawn
from each without replacement and the reference answers them. The only randomness is the draw, so
the truth's autocorrelation in time does not matter, and the count K of wrong frames in a stratum
has exact hypergeometric limits (noscope.bounds).

The sampled frames then take the reference's answer, so the final output errs on K_Y - k_Y false
alarms and K_O - k_O misses (k: wrong frames seen in the sample). With R_pos / R_neg the positive /
negative frames the reference itself answered:

    FPR = (K_Y - k_Y) / (K_Y + N_O - K_O + R_neg)        FNR = (K_O - k_O) / (K_O + N_Y - K_Y + R_pos)

Both grow with K_Y and with K_O, so the upper limits of both counts, each at alpha/2, give upper
bounds on both rates that hold together at 1 - alpha (and the lower limits lower bounds). A rate
is not defined when no frame of its kind was seen at all (no positive anywhere: nothing to miss
yet); then the bound is on the *count* of frames that may still be wrong.

`met` is True when both upper bounds meet the targets, False when a lower bound exceeds one
(the target is missed, with confidence), and None otherwise: not enough evidence to say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bounds import count_lower, count_upper


@dataclass(frozen=True)
class Check:
    """One stratum's draw: `sample` of its `population` frames checked, `errors` of them wrong."""

    population: int
    sample: int
    errors: int
    lost: int = 0  # drawn frames the reference could not answer: counted wrong, and left uncorrected

    def limits(self, alpha: float) -> tuple[int, float | None, int]:
        """(lower, estimate, upper) of the count of wrong frames in the whole stratum."""
        if self.population == 0:
            return self.lost, float(self.lost), self.lost
        est = self.errors * self.population / self.sample + self.lost if self.sample else None
        return (count_lower(self.errors, self.population, self.sample, alpha) + self.lost, est,
                count_upper(self.errors, self.population, self.sample, alpha) + self.lost)


def _rate(wrong: float | None, seen: int, other_population: int, other_wrong: float | None, reference: int) -> float | None:
    """(wrong - seen) / (wrong + other_population - other_wrong + reference): the module's formula."""
    if wrong is None or other_wrong is None:
        return None
    total = wrong + other_population - other_wrong + reference
    return float((wrong - seen) / total) if total > 0 else 0.0


def rate_limits(own: Check, other: Check, reference: int, alpha: float) -> dict:
    """Estimate and limits of the rate whose errors live in `own` (misses: the "no" stratum for FNR;
    false alarms: the "yes" stratum for FPR), at alpha/2 per stratum. `reference`: frames of the
    rate's kind (positives for FNR) that the reference answered itself."""
    lo, est, hi = own.limits(alpha / 2)
    olo, oest, ohi = other.limits(alpha / 2)
    seen_kind = reference + (other.sample - other.errors) + own.errors  # frames of this kind seen
    out = dict(count_high=int(hi - own.errors))
    if seen_kind == 0:  # nothing of this kind seen anywhere: no rate, only a count
        return dict(out, estimate=None, low=None, high=None)
    frames = other.population + other.lost  # the other stratum's frames; its limits count its lost ones
    return dict(out, estimate=_rate(est, own.errors, frames, oest, reference),
                low=_rate(lo, own.errors, frames, olo, reference),
                high=_rate(hi, own.errors, frames, ohi, reference))


def rate_met(limits: dict, target: float) -> bool | None:
    if limits["high"] is None:  # no rate: met only if nothing can still be wrong
        return True if limits["count_high"] == 0 else None
    if limits["high"] <= target:
        return True
    return False if limits["low"] > target else None


def verdict(yes: Check, no: Check, ref_pos: int, ref_neg: int, fpr_target: float, fnr_target: float,
            alpha: float) -> dict:
    """What one round's draw says of the final answers (module docstring)."""
    fpr = rate_limits(yes, no, ref_neg, alpha)
    fnr = rate_limits(no, yes, ref_pos, alpha)
    met = all_met([rate_met(fpr, fpr_target), rate_met(fnr, fnr_target)])
    if not (yes.population + yes.lost + no.population + no.lost + ref_pos + ref_neg):
        met = None  # no frame was answered: there is nothing a target could be met on
    return dict(fpr=fpr, fnr=fnr, met=met)


def all_met(each: list) -> bool | None:
    """The one `met` rule, for two rates or for several objects: False when any is missed, True when
    every one is met, else None (not enough evidence)."""
    return False if False in each else (True if all(m is True for m in each) else None)


def missed(limits: dict, target: float) -> bool:
    """The estimate says the target is missed: what a repair answers to."""
    return limits["estimate"] is not None and limits["estimate"] > target


def certification_size(population: int, other_kind: float, target: float, alpha: float) -> int:
    """Frames to draw from a stratum so that, if none of them is wrong, the rate's upper bound meets
    `target` (other_kind: frames of the rate's kind outside this stratum, estimated). About 3,300
    for FNR <= 0.01 at 95% with 10% positives, whatever the video's length."""
    if population == 0:
        return 0

    def ok(n: int) -> bool:
        hi = count_upper(0, population, n, alpha / 2)
        return hi == 0 or hi / (hi + other_kind) <= target

    lo, hi = 1, population  # checking the whole stratum always certifies it (no wrong frame left)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def certification_sizes(yes: int, no: int, ref_pos: int, ref_neg: int, fpr_target: float, fnr_target: float,
                        alpha: float, floor: int) -> dict[bool, int]:
    """Frames to draw from the cheap "yes" (`yes` frames) and "no" (`no`) answers so that, if none
    is wrong, both upper bounds of `verdict` meet the targets. Each rate's denominator holds the
    other stratum's frames less that stratum's own upper count of wrong frames, so the two sizes
    depend on each other: start both at `floor` and grow each to what the other's size asks, until
    neither changes (sizes only grow, and a larger draw only lowers the other's need)."""
    n = {True: min(floor, yes), False: min(floor, no)}
    while True:
        wrong_yes = count_upper(0, yes, n[True], alpha / 2) if yes else 0
        wrong_no = count_upper(0, no, n[False], alpha / 2) if no else 0
        need = {True: certification_size(yes, ref_neg + no - wrong_no, fpr_target, alpha),
                False: certification_size(no, ref_pos + yes - wrong_yes, fnr_target, alpha)}
        grown = {ans: max(n[ans], need[ans]) for ans in n}
        if grown == n:
            return n
        n = grown


class DrawOrder:
    """A random order of every frame of the segment, drawn before the video is decoded: the check
    draws from a stratum the frames that come first in it, and the pass keeps the pixels of the
    frames that come first overall (`reserve`), so most checked frames are never decoded twice.

    Why a draw taken this way is a uniform draw from the stratum, as the bounds need: the order is a
    uniformly random permutation of the segment, made before and apart from anything the cascade
    answers. Restricted to any set S of frames (a stratum, whatever its size), a uniform permutation
    of the segment orders S uniformly at random; so the first n frames of S in it are a uniform
    sample of S without replacement, given |S|. Later rounds take, from the strata as they are then,
    the first frames not yet answered: given which frames earlier rounds drew, the order of the
    others is still uniformly random (each ordering of them is as likely), so every round's draw is
    uniform in its stratum too, the reserve only saving decoding. tests/test_verify.py checks the
    bounds by simulation through this draw.
    """

    def __init__(self, start: int, end: int, rng: np.random.Generator):
        self.start = int(start)
        perm = rng.permutation(max(int(end) - self.start, 0))
        self.rank = np.empty_like(perm)
        self.rank[perm] = np.arange(len(perm))

    def reserve(self, n: int) -> np.ndarray:
        """The `n` frames that come first, in frame order."""
        return np.flatnonzero(self.rank < n) + self.start

    def first(self, candidates: np.ndarray, n: int) -> np.ndarray:
        """The `n` of `candidates` (frames of the segment) that come first, in frame order."""
        n = min(int(n), len(candidates))
        if not n:
            return candidates[:0]
        return np.sort(candidates[np.argsort(self.rank[candidates - self.start], kind="stable")[:n]])


def draw(candidates: np.ndarray, n: int, order: DrawOrder) -> np.ndarray:
    """`n` of `candidates` uniformly at random without replacement, in frame order (DrawOrder)."""
    return order.first(np.asarray(candidates, np.int64), n)
