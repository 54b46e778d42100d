"""A model refitted on the queried video's own reference answers: what a repair that learns does.

    learnt = refit_on_video(bundle, "L6-320x192-linear", cheap, known, min_score, frames_of, device)
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
                   min_score: float, frames_of: dict[str, np.ndarray], device) -> tuple[str, dict[str, np.ndarray], int] | None:
    """(new model's name, object -> the new model's scores on `frames_of[object]`, frames of this
    video it learnt from), or None where the model cannot learn (no head to refit, no kept
    features) or there is too little to learn from. `known`: frame -> the reference's class scores."""
    scorer = bundle.model(model, device)
    if not hasattr(scorer, "refit") or cheap is None or cheap.features is None or cheap.scores is None:
        return None
    ran = np.isfinite(cheap.scores[:, 0])
    answered = ran & np.isin(cheap.processed, np.fromiter(known, np.int64, len(known)))
    if answered.sum() < MIN_FRAMES:
        return None
    rows = np.flatnonzero(answered)
    classes = [bundle.class_index(o) for o in bundle.objects]
    truth = np.stack([known[f][classes] >= min_score for f in cheap.processed[rows].tolist()])
    new = scorer.refit(cheap.features[rows].astype(np.float32), truth)
    name = bundle.adopt(f"{getattr(scorer, 'base', None) or model}~", new)
    every = np.full(cheap.scores.shape, np.nan, np.float32)
    every[ran] = new.from_features(cheap.features[ran].astype(np.float32))
    scores = {o: frame_scores(cheap, every[:, bundle.objects.index(o)], frames) for o, frames in frames_of.items()}
    return name, scores, len(rows)
