"""What a cascade answers on held-out frames: THE definition, which the executor reproduces on video.

    labels, decided = simulate(cascade, heldout)          # one object
    per_object = simulate_plan(plan, heldouts)            # object -> (labels, decided), one pass

The optimizer only ever reasons about cascades through this module (or code it shares with it).
Semantics, over held-out frames that come in `blocks` (frames with one block id are consecutive
frames of the video, in order; block boundaries are where the id changes):

1. Frame skip s. Within each block only positions 0, s, 2s, ... are *processed*; every other
   frame copies the label of the last processed frame before it.
2. Difference detector d with threshold delta (optional). A processed frame whose score is
   < delta is "unchanged". For a "prev" detector (score of frame t against frame t - s) an
   unchanged frame copies the label of the previous processed frame; a block's first processed
   frame has nothing to compare with and is always "changed". For a "ref" detector (score against
   an image of the empty scene) an unchanged frame is labelled no. A NaN score means "changed".
3. Specialized model m with thresholds c_low <= c_high (optional), on the processed frames that
   the difference detector let through: score < c_low -> no, score > c_high -> yes, otherwise
   the reference decides (label = truth). Without a model every such frame goes to the reference.

Several objects in one pass (`simulate_plan`): each object's answers are exactly `simulate` of its
own ObjectPlan. An object the model decided keeps the model's answer even on a frame the
reference saw for another object: using the reference's answer there instead would look free,
but it can raise that object's false-positive rate (its label is copied to skipped frames) or,
under the window metric, either rate, so the per-object guarantee would be lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .bounds import label_runs
from .errors import NoscopeError
from .plans import DIFF, DIFF_KINDS, MODEL, REFERENCE, SKIP, Cascade, HeldOut, Plan, as_cascade, high, low


class HeldOutArrays:
    """A HeldOut checked once, plus each frame's position within its block and its runs of evidence."""

    def __init__(self, heldout: HeldOut):
        self.truth = np.asarray(heldout.truth).astype(bool, copy=False)
        n = self.n = len(self.truth)
        if self.truth.ndim != 1 or n == 0:
            raise NoscopeError("held-out set is empty: nothing to choose a cascade on")
        blocks = np.asarray(heldout.blocks)
        if blocks.shape != (n,):
            raise NoscopeError(f"held-out blocks must have one entry per frame ({n}), got shape {blocks.shape}")
        self.blocks = blocks
        self.idx = np.arange(n)
        starts = np.r_[True, blocks[1:] != blocks[:-1]]
        self.pos = self.idx - np.maximum.accumulate(np.where(starts, self.idx, 0))
        self.heldout = heldout
        frames = heldout.frames
        if frames is None or np.shape(frames) != (n,):
            frames = self.idx + 2 * np.cumsum(starts)  # without frame numbers, blocks are separate stretches
        self.runs = label_runs(self.truth, frames)  # (positive runs, negative runs, label changes)
        for name, kind in heldout.diff_kinds.items():
            if kind not in DIFF_KINDS:
                raise NoscopeError(f"difference detector {name!r} has unknown kind {kind!r}; valid: prev, ref")
        self._model_cache: dict[str, np.ndarray] = {}

    def model_scores(self, name: str) -> np.ndarray:
        if name not in self._model_cache:
            if name not in self.heldout.model_scores:
                raise NoscopeError(f"no held-out scores for specialized model {name!r}")
            p = np.asarray(self.heldout.model_scores[name], dtype=np.float64)
            if p.shape != (self.n,):
                raise NoscopeError(f"scores of model {name!r} must have one entry per frame ({self.n}), got {p.shape}")
            if not np.isfinite(p).all():
                raise NoscopeError(f"scores of model {name!r} contain NaN or infinite values")
            self._model_cache[name] = p
        return self._model_cache[name]

    def diff_scores(self, name: str, skip: int) -> np.ndarray | None:
        """Scores of detector `name` for frame skip `skip`, or None if they were not computed."""
        if name not in self.heldout.diff_scores or name not in self.heldout.diff_kinds:
            raise NoscopeError(f"no held-out scores for difference detector {name!r}")
        by_skip = self.heldout.diff_scores[name]
        scores = by_skip.get(skip)
        if scores is None and self.heldout.diff_kinds[name] == "ref" and by_skip:
            # A "ref" score compares a frame to the empty scene, so it does not depend on the skip.
            scores = next(iter(by_skip.values()))
        if scores is None:
            return None
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (self.n,):
            raise NoscopeError(
                f"scores of difference detector {name!r} must have one entry per frame ({self.n}), got {scores.shape}"
            )
        return scores


@dataclass
class Layout:
    """Everything about a (skip, diff, threshold) choice that does not depend on the model.

    A *source* is a frame whose label is decided on the frame itself (by the model/reference, or
    "no" from a "ref" difference detector); every other frame copies the label of the last source
    before it in its block (`src`). Every block starts with a source, so a plain forward fill over
    the whole array never crosses a block boundary.
    """

    reach: np.ndarray  # indices of frames that reach the model (or the reference, without one)
    src: np.ndarray  # (N,) index of the source each frame takes its label from
    decided: np.ndarray  # (N,) int8 stage codes, with REFERENCE for every frame in `reach`


def layout_of(arrays: HeldOutArrays, skip: int, diff_scores: np.ndarray | None, kind: str | None,
           threshold: float | None) -> Layout:
    processed = arrays.pos % skip == 0
    if diff_scores is None:
        unchanged = np.zeros(arrays.n, dtype=bool)
    else:
        with np.errstate(invalid="ignore"):
            unchanged = processed & (diff_scores < threshold)  # NaN < x is False: NaN means changed
        if kind == "prev":
            unchanged &= arrays.pos != 0  # nothing earlier in the block to copy from
    reach = processed & ~unchanged
    source = (reach | unchanged) if kind == "ref" else reach
    # Forward fill: each frame points at the latest source at or before it.
    src = np.maximum.accumulate(np.where(source, arrays.idx, 0))
    decided = np.full(arrays.n, SKIP, dtype=np.int8)
    decided[unchanged] = DIFF
    decided[reach] = REFERENCE
    return Layout(np.flatnonzero(reach), src, decided)


def assemble(arrays: HeldOutArrays, lay: Layout, reach_labels: np.ndarray) -> np.ndarray:
    """Labels of all frames from the labels of the frames that reached the model/reference.

    Sources that did not reach (a "ref" detector's unchanged frames) are labelled no.
    """
    own = np.zeros(arrays.n, dtype=bool)
    own[lay.reach] = reach_labels
    return own[lay.src]


def simulate_arrays(arrays: HeldOutArrays, cascade: Cascade) -> tuple[np.ndarray, np.ndarray]:
    """`simulate` on already checked arrays (the optimizer calls it many times on one set)."""
    scores, kind = None, None
    if cascade.diff is not None:
        scores = arrays.diff_scores(cascade.diff, int(cascade.skip))
        if scores is None:
            raise NoscopeError(
                f"no held-out scores for difference detector {cascade.diff!r} at frame skip {cascade.skip}"
            )
        kind = arrays.heldout.diff_kinds[cascade.diff]
    lay = layout_of(arrays, int(cascade.skip), scores, kind, cascade.diff_threshold)
    truth_r = arrays.truth[lay.reach]
    decided = lay.decided.copy()
    if cascade.model is None:
        reach_labels = truth_r
    else:
        p = arrays.model_scores(cascade.model)[lay.reach]
        no, yes = p < low(cascade.c_low), p > high(cascade.c_high)
        reach_labels = np.where(no, False, np.where(yes, True, truth_r))
        decided[lay.reach[no | yes]] = MODEL
    return assemble(arrays, lay, reach_labels), decided


def simulate(cascade, heldout: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """Run a cascade over the held-out frames: (labels bool (N,), decided_by int8 (N,)).

    `cascade` is a Cascade, an ObjectPlan, a mapping or a tuple (skip, diff, diff_threshold, model,
    c_low, c_high). decided_by holds stage codes; STAGES[code] is "skip", "diff", "model" or
    "reference". Semantics: module docstring.
    """
    return simulate_arrays(HeldOutArrays(heldout), as_cascade(cascade))


def simulate_plan(plan: Plan, heldouts: Mapping[str, HeldOut]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """object -> (labels, decided_by codes) on the held-out frames: `simulate` per object."""
    return {k: simulate(p, heldouts[k]) for k, p in plan.plans.items()}
