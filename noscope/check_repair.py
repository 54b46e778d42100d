"""Repairs: what the check changes in a plan when it finds the cascade's answers wrong on this video.

    plans, actions = repair(plans, broken, verdicts, results, weights, targets, skips, min_score)

Only the stages that made the wrong answers seen change, and each by the least that removes them:
the frame skip steps down to the next smaller one, the difference detector's threshold moves
below the scores of the frames it let copy a wrong answer (or the detector is dropped), the
model's thresholds move past the wrong answers the reference has shown on this video (weighted
by how many frames each drawn frame stands for). The check then runs the cascade again and
checks it on fresh frames (noscope.check).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from .plans import ObjectPlan, Targets

SIDES = {"fpr": True, "fnr": False}  # the rate, and the cheap answer whose frames hold its errors


def repair(plans: dict[str, ObjectPlan], broken: dict[str, set[str]], verdicts: dict[str, dict], results: dict,
           weights: dict[str, dict[int, float]], targets: Targets, skips, min_score: float) -> tuple[dict[str, ObjectPlan], list[str]]:
    """Plans with the stages that made the wrong answers seen repaired (module docstring), and what
    was done. Skip and difference detector are shared by every object's plan."""
    shared = next(iter(plans.values()))
    stages = Counter()
    for o, rates in broken.items():
        for r in rates:
            stages.update(verdicts[o]["wrong_stages"][SIDES[r]])
    skip, diff, thr = shared.skip, shared.diff, shared.diff_threshold
    actions = []
    if stages["skip"] and skip > 1:
        skip = max([s for s in skips if s < skip] or [1])
        actions.append(f"frame skip {shared.skip} -> {skip} ({stages['skip']} wrong answers copied to skipped frames)")
    if stages["diff"] and diff is not None:
        thr = _refit_diff(results, broken, thr, min_score)
        diff, thr = (None, None) if thr is None else (diff, thr)
        actions.append(f"difference detector {shared.diff} " + (f"threshold {shared.diff_threshold:.4g} -> {thr:.4g}" if diff
                       else "dropped") + f" ({stages['diff']} wrong answers)")
    new = {}
    for o, p in plans.items():
        c_low, c_high = p.c_low, p.c_high
        for r in sorted(broken.get(o, ())):
            if not verdicts[o]["wrong_stages"][SIDES[r]]["model"] or (c_low if r == "fnr" else c_high) is None:
                continue
            c_low, c_high, what = _refit_model(results[o], r, c_low, c_high, weights[o], getattr(targets, r), min_score)
            if what:  # a threshold the errors do not move is no repair
                actions.append(f"{o}: {what}" if len(plans) > 1 else what)
        new[o] = dataclasses.replace(p, skip=skip, diff=diff, diff_threshold=thr, c_low=c_low, c_high=c_high)
    return new, actions


def _answered(result, min_score: float, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames' positions, the reference's answers, `scores` there) where both are known."""
    at = np.flatnonzero(np.isfinite(scores) & np.isin(result.frames, np.fromiter(result.reference_scores, np.int64)))
    truth = np.array([result.reference_scores[f] >= min_score for f in result.frames[at].tolist()], bool)
    return at, truth, scores[at]


def _refit_model(result, rate: str, c_low, c_high, weights: dict[int, float], target: float, min_score: float):
    """Move one model threshold past the wrong answers the reference has shown on this video, until
    the errors it would still make there, each frame counted for the frames its draw stands for
    (`weights`; 1 for frames not drawn), are at most half the target. No frame of the kind needed
    (no positive for c_low): the model stops answering that way."""
    at, truth, p = _answered(result, min_score, result.model_scores)
    w = np.array([weights.get(f, 1.0) for f in result.frames[at].tolist()])
    kind = truth if rate == "fnr" else ~truth
    if not kind.any():
        return (None, c_high, "the model no longer answers no") if rate == "fnr" else \
            (c_low, None, "the model no longer answers yes")
    order = np.argsort(p[kind] if rate == "fnr" else -p[kind], kind="stable")
    scores, cum = p[kind][order], np.cumsum(w[kind][order])
    j = int(np.searchsorted(cum, target / 2 * cum[-1], side="right"))  # the first frame that must not be wrong
    cut = float(scores[min(j, len(scores) - 1)])
    old = c_low if rate == "fnr" else c_high
    new = min(old, cut) if rate == "fnr" else max(old, cut)
    what = f"model {'c_low' if rate == 'fnr' else 'c_high'} {old:.4g} -> {new:.4g} (re-fitted to the reference on this video)"
    what = what if new != old else None
    return (new, c_high, what) if rate == "fnr" else (c_low, new, what)


def _refit_diff(results: dict, broken: dict[str, set[str]], threshold: float, min_score: float) -> float | None:
    """A difference threshold below the scores of every frame it let copy a wrong answer, or None
    (drop the detector) when no such score is known."""
    worst = []
    for o, rates in broken.items():
        res = results[o]
        at, truth, d = _answered(res, min_score, res.diff_scores)
        wrong = (res.decided_by[at] == "diff") & (res.labels[at] != truth)
        worst += d[wrong].tolist()
    return min(threshold, min(worst)) if worst else None
