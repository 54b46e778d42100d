"""What a windowed cascade answers on held-out frames: THE definition of answers per window, which
the executor reproduces on video.

    answers = simulate_windows(plan, arrays)            # plan: WindowPlan, arrays: simulate.HeldOutArrays
    answers.labels, answers.stage, answers.calls, answers.exact, answers.cost_frames

A window is `plan.size` consecutive frames (windows restart at every block of held-out frames, as
metrics.Windowing cuts them; the last of a block may be shorter). Its answer:

1. The cheap stages run per frame exactly as the per-frame cascade's (noscope.simulate: frame skip,
   difference detector, model thresholds), on the frames they process. Each processed frame ends
   "yes", "no" (the model sure, the empty scene, or a copy of an earlier processed frame's cheap
   answer) or "undecided" (where the per-frame cascade would ask the reference).
2. Where the window's processed frames already decide it by the share rule whatever the undecided
   ones say (windows.decided over the processed frames), that is its answer (stage "cheap").
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
from .windows import cheap_answer, need, spread_order

CHEAP, SAMPLED = 0, 1  # the stage that settled a window
WINDOW_STAGES = ("cheap", "reference")
_NO, _YES, _UNDECIDED = 0, 1, 2


@dataclass
class WindowAnswers:
    """One entry per held-out window (in order), and what the frames cost."""

    labels: np.ndarray  # bool: the cascade's answer
    truth: np.ndarray  # bool: the reference's answer (by the share rule over every frame)
    stage: np.ndarray  # int8: CHEAP or SAMPLED
    calls: np.ndarray  # int: reference calls the window took
    exact: np.ndarray  # bool: the answer is certain (a sampled window whose answer was decided)
    starts: np.ndarray  # first held-out index of each window
    processed: int  # frames the cheap stages processed
    reached: int  # frames the model ran on


def window_starts(arrays: HeldOutArrays, size: int, offset: int = 0) -> np.ndarray:
    """First held-out index of each window: every `size` frames of a block, from its first (or from
    `offset` frames in: the same footage cut into windows at another phase, more evidence)."""
    block_start = np.r_[True, arrays.blocks[1:] != arrays.blocks[:-1]]
    return np.flatnonzero(block_start | ((arrays.pos - offset) % size == 0))


def cheap_states(arrays: HeldOutArrays, frame: Cascade) -> tuple[np.ndarray, np.ndarray, int]:
    """(state of each held-out frame's cheap answer: _NO/_YES/_UNDECIDED, processed mask, frames
    reaching the model): every frame carries the state of the frame it copies (its source)."""
    scores, kind = None, None
    if frame.diff is not None:
        scores = arrays.diff_scores(frame.diff, int(frame.skip))
        kind = arrays.heldout.diff_kinds[frame.diff]
    lay = layout_of(arrays, int(frame.skip), scores, kind, frame.diff_threshold)
    own = np.full(arrays.n, _NO, np.int8)  # a "ref" detector's unchanged frames are sources saying no
    own[lay.reach] = _UNDECIDED
    if frame.model is not None and len(lay.reach):
        p = arrays.model_scores(frame.model)[lay.reach]
        own[lay.reach[p < low(frame.c_low)]] = _NO
        own[lay.reach[p > high(frame.c_high)]] = _YES
    processed = arrays.pos % int(frame.skip) == 0
    return own[lay.src], processed, len(lay.reach) if frame.model is not None else 0


def simulate_windows(plan: WindowPlan, arrays: HeldOutArrays, offset: int = 0) -> WindowAnswers:
    """The windows' answers on the held-out frames (module docstring), windows cut `offset` frames
    into each block (and at its first frame)."""
    state, processed, reached = cheap_states(arrays, plan.frame)
    starts = window_starts(arrays, plan.size, offset)
    ends = np.r_[starts[1:], arrays.n]
    lengths = ends - starts
    w_of = np.repeat(np.arange(len(starts)), lengths)
    count = lambda mask: np.bincount(w_of, weights=mask, minlength=len(starts)).astype(np.int64)  # noqa: E731
    n_proc = count(processed)
    sure = cheap_answer(count(processed & (state == _YES)), count(processed & (state == _NO)), n_proc, plan.share,
                        plan.unanimous)
    for answer in (False, True):
        if answer not in plan.settles:
            sure[sure == int(answer)] = -1  # the cheap stages may not settle a window with this answer
    truth_w = count(arrays.truth) >= need(lengths, plan.share)
    labels, stage = sure == 1, np.where(sure >= 0, CHEAP, SAMPLED).astype(np.int8)
    calls, exact = np.zeros(len(starts), np.int64), np.zeros(len(starts), bool)
    for w in np.flatnonzero(sure < 0):
        order = starts[w] + spread_order(int(lengths[w]))
        labels[w], calls[w], exact[w] = plan.sampling.run(arrays.truth[order], plan.share)
    return WindowAnswers(labels, truth_w, stage, calls, exact, starts, int(processed.sum()), reached)
