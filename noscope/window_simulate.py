"""What a windowed cascade answers on held-out frames: THE definition of answers per window, which
the executor reproduces on video.

    answers = simulate_windows(plan, arrays)            # plan: WindowPlan, arrays: simulate.HeldOutArrays
    answers.labels, answers.stage, answers.calls, answers.exact, answers.score

A window is `plan.size` consecutive frames (windows restart at every block of held-out frames, as
metrics.Windowing cuts them; the last of a block may be shorter). Its answer:

1. The cheap stages run per frame exactly as the per-frame cascade's (noscope.simulate: frame skip,
   difference detector), on the frames they process, and give each processed frame a score: the
   model's (a probability that the reference says yes), 0 where the empty-scene detector finds the
   scene empty, the previous processed frame's where the previous-frame detector finds nothing
   changed; no score where a frame reaches no model.
2. The window's score is the mean of its processed frames' scores (`window_scores`): what share of
   its frames the model expects the reference to call positive. Below `w_low` the window is "no",
   above `w_high` "yes" (stage "cheap", with an answer the plan lets the cheap stages give); a window
   with no score (a frame without one) goes on.
3. Otherwise the reference answers frames of the window in `windows.spread_order`
   (`plan.sampling`: until one answer leads by `lead`, `most` frames are asked, or the window's own
   answer is certain), and the window is "yes" when at least `share` of those are (stage
   "reference"; `exact` when its answer was certain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plans import Cascade, high, low
from .simulate import HeldOutArrays, layout_of
from .window_plans import WindowPlan
from .windows import need, spread_order

CHEAP, SAMPLED = 0, 1  # the stage that settled a window
WINDOW_STAGES = ("cheap", "reference")


@dataclass
class WindowAnswers:
    """One entry per held-out window (in order), and what the frames cost."""

    labels: np.ndarray  # bool: the cascade's answer
    truth: np.ndarray  # bool: the reference's answer (by the share rule over every frame)
    stage: np.ndarray  # int8: CHEAP or SAMPLED
    calls: np.ndarray  # int: reference calls the window took
    exact: np.ndarray  # bool: the answer is certain (a sampled window whose answer was decided)
    score: np.ndarray  # float: the window's cheap score (NaN: none)
    starts: np.ndarray  # first held-out index of each window
    processed: int  # frames the cheap stages processed
    reached: int  # frames the model ran on


def window_starts(arrays: HeldOutArrays, size: int, offset: int = 0) -> np.ndarray:
    """First held-out index of each window: every `size` frames of a block, from its first (or from
    `offset` frames in: the same footage cut into windows at another phase, more evidence)."""
    block_start = np.r_[True, arrays.blocks[1:] != arrays.blocks[:-1]]
    return np.flatnonzero(block_start | ((arrays.pos - offset) % size == 0))


def frame_scores(arrays: HeldOutArrays, frame: Cascade) -> tuple[np.ndarray, np.ndarray, int]:
    """(each held-out frame's cheap score: its source's, module docstring step 1; processed mask;
    frames reaching the model)."""
    scores, kind = None, None
    if frame.diff is not None:
        scores = arrays.diff_scores(frame.diff, int(frame.skip))
        kind = arrays.heldout.diff_kinds[frame.diff]
    lay = layout_of(arrays, int(frame.skip), scores, kind, frame.diff_threshold)
    own = np.zeros(arrays.n)  # a "ref" detector's unchanged frames are sources with score 0: the empty scene
    own[lay.reach] = np.nan
    if frame.model is not None and len(lay.reach):
        own[lay.reach] = arrays.model_scores(frame.model)[lay.reach]
    processed = arrays.pos % int(frame.skip) == 0
    return own[lay.src], processed, len(lay.reach) if frame.model is not None else 0


def window_scores(score: np.ndarray, processed: np.ndarray, w_of: np.ndarray, windows: int) -> np.ndarray:
    """Each window's score: the mean of its processed frames' scores; NaN where one has none, or the
    window has no processed frame."""
    mine = processed.astype(float)
    total = np.bincount(w_of, weights=np.where(processed, np.nan_to_num(score, nan=0.0), 0.0), minlength=windows)
    n = np.bincount(w_of, weights=mine, minlength=windows)
    unknown = np.bincount(w_of, weights=processed & np.isnan(score), minlength=windows)
    return np.where((n > 0) & (unknown == 0), total / np.maximum(n, 1), np.nan)


def cheap_answer(score: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """int8 per window: 1 yes, 0 no (the cheap stages settle it: its score past a threshold, with an
    answer the plan lets them give), -1 the reference samples it."""
    with np.errstate(invalid="ignore"):
        out = np.where(score < low(plan.w_low), 0, np.where(score > high(plan.w_high), 1, -1)).astype(np.int8)
    for answer in (False, True):
        if answer not in plan.settles:
            out[out == int(answer)] = -1
    return out


def simulate_windows(plan: WindowPlan, arrays: HeldOutArrays, offset: int = 0) -> WindowAnswers:
    """The windows' answers on the held-out frames (module docstring), windows cut `offset` frames
    into each block (and at its first frame)."""
    score, processed, reached = frame_scores(arrays, plan.frame)
    starts = window_starts(arrays, plan.size, offset)
    lengths = np.r_[starts[1:], arrays.n] - starts
    w_of = np.repeat(np.arange(len(starts)), lengths)
    w_score = window_scores(score, processed, w_of, len(starts))
    sure = cheap_answer(w_score, plan)
    truth_w = np.bincount(w_of, weights=arrays.truth, minlength=len(starts)) >= need(lengths, plan.share)
    labels, stage = sure == 1, np.where(sure >= 0, CHEAP, SAMPLED).astype(np.int8)
    calls, exact = np.zeros(len(starts), np.int64), np.zeros(len(starts), bool)
    for w in np.flatnonzero(sure < 0):
        order = starts[w] + spread_order(int(lengths[w]))
        labels[w], calls[w], exact[w] = plan.sampling.run(arrays.truth[order], plan.share)
    return WindowAnswers(labels, truth_w, stage, calls, exact, w_score, starts, int(processed.sum()), reached)
