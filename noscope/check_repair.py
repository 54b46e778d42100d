"""Repairs: what the check changes in a plan when it finds the cascade's answers wrong on this video.

    plans, actions = repair(plans, evidence, targets, min_score, skips, learn)   # evidence: object -> Evidence

Only the stages that made the wrong answers seen change, and each by the least that removes them:
the frame skip steps down to the next smaller one (to 1 where it has stepped down before: the caller
passes only 1 in `skips` then), the difference detector's threshold moves
below the scores of the frames it let copy a wrong answer (or the detector is dropped). A model
that answered wrong learns where it can: a model whose head can be refitted (`learn`) is fitted
again on its training frames plus every frame of this video the reference has answered, and both
its thresholds are chosen anew on this video's answered frames; otherwise its thresholds move past
the wrong answers the reference has shown on this video. Thresholds count each frame for the
frames its draw stands for. The check then runs the cascade again and checks it on fresh frames
(noscope.check), never on a frame the model was fitted on: those carry the reference's answer.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .plans import ObjectPlan, Targets

SIDES = {"fpr": True, "fnr": False}  # the rate, and the cheap answer whose frames hold its errors


@dataclass(frozen=True)
class Evidence:
    """What the check has shown of one object's answers on this video, as a repair reads it."""

    result: object  # its answers (a CascadeResult), every reference answer so far in `reference_scores`
    broken: set[str]  # the rates whose estimate misses the target ("fpr", "fnr"); empty: nothing to repair
    wrong_stages: dict[bool, Counter]  # cheap answer -> the stages that answered the wrong frames drawn
    weights: dict[int, float]  # drawn frame -> how many frames of its stratum it stands for


def repair(plans: dict[str, ObjectPlan], evidence: dict[str, Evidence], targets: Targets, min_score: float, skips,
           learn=None) -> tuple[dict[str, ObjectPlan], list[str]]:
    """Plans with the stages that made the wrong answers seen repaired (module docstring), and what
    was done. Skip and difference detector are shared by every object's plan. `learn(model, results)`,
    where given, refits the model on this video's reference answers (`results`: object -> its
    Evidence's result): (new model's name, object -> its scores on each result's frames, frames it
    learnt from), or None when it cannot."""
    shared = next(iter(plans.values()))
    broken = {o: e.broken for o, e in evidence.items() if e.broken}
    results = {o: e.result for o, e in evidence.items()}
    stages = Counter()
    for o, rates in broken.items():
        for r in rates:
            stages.update(evidence[o].wrong_stages[SIDES[r]])
    skip, diff, thr = shared.skip, shared.diff, shared.diff_threshold
    actions = []
    if stages["skip"] and skip > 1:
        skip = max([s for s in skips if s < skip] or [1])
        actions.append(f"frame skip {shared.skip} -> {skip} ({stages['skip']} wrong answers copied to skipped frames)")
    if stages["diff"] and diff is not None:
        thr = _refit_diff(evidence, thr, targets, min_score)
        diff, thr = (None, None) if thr is None else (diff, thr)
        if thr != shared.diff_threshold:  # a threshold the errors do not move is no repair
            actions.append(f"difference detector {shared.diff} " + (f"threshold {shared.diff_threshold:.4g} -> {thr:.4g}"
                           if diff else "dropped") + f" ({stages['diff']} wrong answers)")
    learnt = _learn(learn, shared.model, stages, results)
    if learnt is not None:
        name, scores, n = learnt
        actions.append(f"model {shared.model} re-fitted on {n} reference answers of this video -> {name}")
        cuts = {o: _fitted_cuts(dataclasses.replace(results[o], model_scores=scores[o]), evidence[o].weights, targets,
                                min_score) for o in plans}
        return {o: dataclasses.replace(p, skip=skip, diff=diff, diff_threshold=thr, model=name, c_low=cuts[o][0],
                                       c_high=cuts[o][1]) for o, p in plans.items()}, actions
    new = {}
    for o, p in plans.items():
        c_low, c_high = p.c_low, p.c_high
        for r in sorted(broken.get(o, ())):
            if not evidence[o].wrong_stages[SIDES[r]]["model"] or (c_low if r == "fnr" else c_high) is None:
                continue
            (c_low, c_high), what = _refit_model(results[o], r, (c_low, c_high), evidence[o].weights,
                                                 getattr(targets, r), min_score)
            if what:  # a threshold the errors do not move is no repair
                actions.append(f"{o}: {what}" if len(plans) > 1 else what)
        new[o] = dataclasses.replace(p, skip=skip, diff=diff, diff_threshold=thr, c_low=c_low, c_high=c_high)
    return new, actions


def _learn(learn, model: str | None, stages: Counter, results: dict):
    """A refitted model when the model made wrong answers and can learn, else None."""
    if learn is None or model is None or not stages["model"]:
        return None
    return learn(model, results)


def _fitted_cuts(result, weights: dict[int, float], targets: Targets, min_score: float) -> tuple[float | None, float | None]:
    """(c_low, c_high) for a refitted model, each fitted on this video's answered frames as
    `_refit_model` moves one (from no threshold at all); crossed thresholds meet in the middle."""
    (c_low, _), _ = _refit_model(result, "fnr", (np.inf, None), weights, targets.fnr, min_score)
    (_, c_high), _ = _refit_model(result, "fpr", (None, -np.inf), weights, targets.fpr, min_score)
    if c_low is not None and c_high is not None and c_low > c_high:
        c_low = c_high = (c_low + c_high) / 2
    return (None if c_low is None or not np.isfinite(c_low) else c_low,
            None if c_high is None or not np.isfinite(c_high) else c_high)


def _answered(result, min_score: float, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames' positions, the reference's answers, `scores` there) where both are known."""
    at = np.flatnonzero(np.isfinite(scores) & np.isin(result.frames, np.fromiter(result.reference_scores, np.int64)))
    truth = np.array([result.reference_scores[f] >= min_score for f in result.frames[at].tolist()], bool)
    return at, truth, scores[at]


def _refit_model(result, rate: str, cuts: tuple, weights: dict[int, float], target: float, min_score: float):
    """The model's thresholds `cuts` (c_low, c_high) with the one `rate` names moved past the wrong
    answers the reference has shown on this video, until the errors it would still make there, each
    frame counted for the frames its draw stands for (`weights`; 1 for frames not drawn), are at most
    half the target; and what moved (None: nothing). No frame of the kind needed (no positive for
    c_low): the model stops answering that way."""
    c_low, c_high = cuts
    at, truth, p = _answered(result, min_score, result.model_scores)
    w = np.array([weights.get(f, 1.0) for f in result.frames[at].tolist()])
    kind = truth if rate == "fnr" else ~truth
    if not kind.any():
        return ((None, c_high), "the model no longer answers no") if rate == "fnr" else \
            ((c_low, None), "the model no longer answers yes")
    order = np.argsort(p[kind] if rate == "fnr" else -p[kind], kind="stable")
    scores, cum = p[kind][order], np.cumsum(w[kind][order])
    j = int(np.searchsorted(cum, target / 2 * cum[-1], side="right"))  # the first frame that must not be wrong
    cut = float(scores[min(j, len(scores) - 1)])
    old = c_low if rate == "fnr" else c_high
    new = min(old, cut) if rate == "fnr" else max(old, cut)
    what = f"model {'c_low' if rate == 'fnr' else 'c_high'} {old:.4g} -> {new:.4g} (re-fitted to the reference on this video)"
    what = what if new != old else None
    return ((new, c_high) if rate == "fnr" else (c_low, new)), what


def _refit_diff(evidence: dict[str, Evidence], threshold: float, targets: Targets, min_score: float) -> float | None:
    """A lower difference threshold, below which the wrong answers the detector let copy, each
    counted for the frames its draw stands for, are at most half of each broken rate's target share
    of the frames of its kind seen (as a model threshold moves); where even the lowest-scoring wrong
    copy is too many, a threshold below every wrong copy seen; None (drop the detector) where no
    score is known."""
    cut = threshold
    for e in (e for e in evidence.values() if e.broken):
        res = e.result
        at, truth, d = _answered(res, min_score, res.diff_scores)
        w = np.array([e.weights.get(f, 1.0) for f in res.frames[at].tolist()])
        copied = res.decided_by[at] == "diff"
        for r in e.broken:
            kind = truth if r == "fnr" else ~truth  # misses are positives answered no; false alarms the reverse
            wrong = copied & kind & (res.labels[at] != truth)
            if not wrong.any():
                continue
            allowed = getattr(targets, r) / 2 * w[kind].sum()
            order = np.argsort(d[wrong], kind="stable")
            cum = np.cumsum(w[wrong][order])  # keep the j lowest-scoring wrong copies below the threshold
            j = int(np.searchsorted(cum, allowed, side="right"))
            if j < len(order):
                cut = min(cut, float(d[wrong][order][j]))
    return cut if np.isfinite(cut) else None
