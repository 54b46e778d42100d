"""A model refitted on the queried video's own reference answers: what a repair that learns does.

    learnt = refit_on_video(bundle, "L6-320x192-linear", cheap, known, frames_of, device)
    name, scores, n = learnt        # the new model's name, object -> its scores on a result's frames, frames learnt from

The check on a video (noscope.check) pays the reference for hundreds of frames of exactly the
footage being answered; a model whose head can be refitted (a head on the reference's own
features: its features of every frame it scored are kept by the pass, noscope.cascade) learns from
them at once: fitted again on its training frames plus this video's answered frames, it scores
every frame again from the kept features, with no decoding. The refitted model lives for the query
(the bundle keeps it under its new name while the query runs); the frames it was fitted on carry
the reference's answer, so the next round of the check certifies it on fresh frames only.
"""

from __future__ import annotations

import numpy as np

from .bundle import TrainedBundle
from .cascade import CheapAnswers, frame_scores

MIN_FRAMES = 20  # fewer answered frames of this video than this: nothing to learn from yet


def refit_on_video(bundle: TrainedBundle, model: str, cheap: CheapAnswers | None, known: dict[int, np.ndarray],
                   frames_of: dict[str, np.ndarray], device) -> tuple[str, dict[str, np.ndarray], int] | None:
    """(new model's name, object -> scores on `frames_of[object]` to choose its thresholds on, frames
    of this video it learnt from), or None where the model cannot learn (no head to refit, no kept
    features) or there is too little to learn from. `known`: frame -> the reference's class scores.

    The frames it learnt from get the scores of a head fitted without them (two folds: each half
    scored by a head fitted on the training frames and the other half), so thresholds chosen on
    them expect what the new head does on frames it has not seen; every other frame gets the new
    head's score."""
    scorer = bundle.model(model, device)  # loaded already: the pass that made `cheap` ran it
    if not scorer.can_refit or cheap is None or cheap.features is None or cheap.scores is None:
        return None
    ran = np.isfinite(cheap.scores[:, 0])
    answered = ran & np.isin(cheap.processed, np.fromiter(known, np.int64, len(known)))
    if answered.sum() < MIN_FRAMES:
        return None
    rows = np.flatnonzero(answered)
    classes = [bundle.class_index(o) for o in bundle.objects]
    # what the head learnt in training: the reference's scores themselves (soft targets)
    targets = np.clip(np.stack([known[f][classes] for f in cheap.processed[rows].tolist()]), 0, 1)
    z = cheap.features[rows].astype(np.float32)
    new = scorer.refit(z, targets)
    name = bundle.adopt(f"{scorer.base}~", new)
    every = np.full(cheap.scores.shape, np.nan, np.float32)
    every[ran] = new.from_features(cheap.features[ran].astype(np.float32))
    every[rows] = out_of_fold(scorer, z, targets)
    scores = {o: frame_scores(cheap, every[:, bundle.objects.index(o)], frames) for o, frames in frames_of.items()}
    return name, scores, len(rows)


def out_of_fold(scorer, z: np.ndarray, targets: np.ndarray, seed: int = 0) -> np.ndarray:
    """Scores of frames `z` each from a head refitted without it (two interleaved folds)."""
    fold = np.random.default_rng(seed).permutation(len(z)) % 2 == 0
    out = np.empty((len(z), targets.shape[1]), np.float32)
    for held in (fold, ~fold):
        out[held] = scorer.refit(z[~held], targets[~held]).from_features(z[held]) if (~held).any() else \
            scorer.from_features(z[held])
    return out
