"""Run a windowed cascade over a video: `noscope.window_simulate`'s answers, on every window of a segment.

    out = window_pass(video, bundle, plan, reference, (start, end), opts)      # plan: window_plans.WindowedPlan
    out.labels, out.stage, out.calls          # per window: the answer, what settled it, reference calls
    out.asked                                 # frame -> the reference's class scores, every call of the pass

One decoding pass over every frame of the segment (a window's reference stage may ask for any of
its frames): the cheap stages run on every `skip`-th frame exactly as the per-frame cascade runs
them (noscope.cascade: the difference detector on the luma plane, the model on the frames it lets
through), the decoded pictures of a window wait until its last frame has come, and then the window
is settled: by its processed frames' cheap answers where they decide it, else by the reference on
its frames in `windows.spread_order` (`Sampling`), the windows that finish together asked in one
batch per step. A window whose answer became certain is "reference" (exact, like a frame the
reference answered), one the sampling answered without certainty "sampled", one the cheap stages
settled "cheap". `label_windows` gives drawn windows their exact answer (the check's truth): the
reference's answers already in hand first, then a sparse pass over the frames still needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .cascade import COPY, EMPTY, REF, CheapAnswers, PassOptions, Stages, batch_states
from .video import KEEP_PICTURES
from .window_simulate import cheap_answer, window_scores
from .windows import Sampling, WindowGrid

WINDOW_STAGES = ("cheap", "sampled", "reference")


@dataclass
class WindowPass:
    """What a windowed pass answered and kept, per window of `grid` (and per processed frame)."""

    grid: WindowGrid
    labels: np.ndarray  # bool per window
    stage: np.ndarray  # str per window: one of WINDOW_STAGES ("" where no frame of it decoded)
    calls: np.ndarray  # int per window: reference calls its answer took
    cheap: CheapAnswers  # the cheap stages' answers on the processed frames (scores kept for re-deciding)
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float per window: its cheap score (NaN: none)
    asked: dict = field(default_factory=dict)  # frame -> the reference's class scores
    decoded: set = field(default_factory=set)  # frames of the segment that decoded
    seconds: float = 0.0


class Pictures:
    """Decoded frames waiting for their window to be whole: frame -> (batch, row)."""

    def __init__(self):
        self.at: dict[int, tuple] = {}

    def add(self, batch) -> None:
        for i, f in enumerate(batch.indices.tolist()):
            self.at[f] = (batch, i)

    def rgb(self, frames: list[int], size) -> np.ndarray:
        return np.concatenate([self.at[f][0].rgb(np.array([self.at[f][1]]), size) for f in frames]) if frames else \
            np.zeros((0, size[1], size[0], 3), np.uint8)

    def drop_before(self, frame: int) -> None:
        self.at = {f: v for f, v in self.at.items() if f >= frame}


class Sampler:
    """The reference stage over whole windows: each asks its frames (those that decoded) in spread
    order until `how.sampling` stops it; frames whose answer is known are read, the others asked
    together, one batch per step (`ask(frames) -> (N, classes) scores`)."""

    def __init__(self, grid: WindowGrid, how: "Settling", decoded: set | None = None):
        self.grid, self.how, self.decoded = grid, how, decoded

    def order(self, w: int) -> np.ndarray:
        frames = self.grid.spread(w)
        return frames if self.decoded is None else frames[[f in self.decoded for f in frames.tolist()]]

    def run(self, windows: list[int], ask, sampling: Sampling | None = None) -> dict:
        """window -> (answer, calls, exact), asking `ask` for what is not known (and keeping it in
        `how.known`)."""
        sampling = sampling or self.how.sampling
        order = {w: self.order(w) for w in windows}
        seen = {w: [0, 0, 0] for w in windows}  # positive, negative, calls
        out, open_ = {}, [w for w in windows if len(order[w])]
        while open_:
            want = {}
            for w in list(open_):
                done = self.advance(order[w], seen[w], sampling)
                if done is not None:
                    out[w] = done
                    open_.remove(w)
                else:
                    want[w] = int(order[w][seen[w][0] + seen[w][1]])
            if want:
                for (w, f), s in zip(want.items(), ask(list(want.values()))):
                    self.how.known[f] = s
                    seen[w][2] += 1
        return out

    def advance(self, order: np.ndarray, seen: list, sampling: Sampling):
        """Read known answers in `order` until the sampling stops ((answer, calls, exact)) or the next
        frame is unknown (None)."""
        how, size = self.how, len(order)
        while True:
            stop = sampling.stop(seen[0], seen[1], size, self.grid.share) if seen[0] + seen[1] else None
            if stop is not None:
                return stop[0], seen[2], stop[1]
            f = int(order[seen[0] + seen[1]])
            if f not in how.known:
                return None
            how.used.add(f)
            seen[0 if float(how.known[f][how.column]) >= how.min_score else 1] += 1


def cheap_decisions(cheap: CheapAnswers, grid: WindowGrid, windows: np.ndarray, plan) -> tuple[dict, np.ndarray]:
    """(window -> True / False where its score settles it by `plan`'s window thresholds, with an answer
    the plan lets the cheap stages give; every window's score), for `windows` whose processed frames
    are all in `cheap` (window_simulate: a frame's score is the model's, 0 for the empty scene, the
    previous processed frame's for a frame unchanged since)."""
    score = window_scores(frame_scores(cheap), np.ones(len(cheap.processed), bool), grid.index_of(cheap.processed),
                          grid.count)
    sure = cheap_answer(score[windows], plan)
    return {int(w): bool(a) for w, a in zip(windows.tolist(), sure.tolist()) if a >= 0}, score


def frame_scores(cheap: CheapAnswers) -> np.ndarray:
    """Each processed frame's cheap score: the model's where it ran, 0 where the empty-scene detector
    found the scene empty, the previous processed frame's where nothing changed since; NaN elsewhere."""
    state, own = cheap.state[:, 0], cheap.pscore[:, 0].astype(float)
    own = np.where(state == EMPTY, 0.0, own)
    idx = np.arange(len(state))
    src = np.maximum.accumulate(np.where(state != COPY, idx, -1)) if len(state) else idx
    return np.where(src >= 0, own[np.maximum(src, 0)], np.nan)


@dataclass
class Settling:
    """What settling windows needs besides the windows: the plan (its window thresholds, sampling and
    the answers its cheap stages may give), the reference (`ask`), the answers known, the object's
    column of the reference's scores and the score that is a yes."""

    plan: object  # window_plans.WindowPlan
    ask: object  # frames, pictures -> (N, classes) scores
    known: dict
    column: int
    min_score: float
    used: set = field(default_factory=set)  # frames whose reference answer settled a window

    @property
    def sampling(self) -> Sampling:
        return self.plan.sampling


def settle(out: WindowPass, windows: np.ndarray, pictures: Pictures, how: Settling, size) -> None:
    """Settle whole `windows`: cheaply where the cheap answers decide (with an answer the plan lets
    them give), else by the reference's sampling (their pictures in `pictures`)."""
    grid = out.grid
    cheap, score = cheap_decisions(out.cheap, grid, windows, how.plan)
    out.score[windows] = score[windows]
    for w, answer in cheap.items():
        out.labels[w], out.stage[w] = answer, "cheap"
    rest = [w for w in windows.tolist() if w not in cheap]
    if not rest:
        return
    got = Sampler(grid, how, out.decoded).run(rest, lambda frames: how.ask(frames, pictures.rgb(frames, size)))
    for w, (answer, calls, exact) in got.items():
        out.labels[w], out.calls[w], out.stage[w] = answer, calls, "reference" if exact else "sampled"


def window_pass(video, stages: Stages, grid: WindowGrid, how: Settling, opts: PassOptions) -> WindowPass:
    """Decode every frame of the grid's segment once: the cheap stages on every `skip`-th frame, and
    each window settled once its last frame has come (module docstring)."""
    t0 = time.perf_counter()
    skip = stages.skip
    processed = np.arange(grid.start, grid.end, skip, dtype=np.int64)
    cheap = CheapAnswers(processed, np.full((len(processed), 1), REF, np.int8), np.full((len(processed), 1), np.nan, np.float32),
                         np.full(len(processed), np.nan, np.float32), [], None,
                         {"decode": 0.0, "diff": 0.0, "model": 0.0, "reference": 0.0}, stages.shape)
    out = WindowPass(grid, np.zeros(grid.count, bool), np.full(grid.count, "", dtype=object), np.zeros(grid.count, np.int64),
                     cheap, np.full(grid.count, np.nan), how.known)
    pictures, prev_last, got, next_w = Pictures(), [None], np.zeros(len(processed), bool), 0
    d = opts.decode
    diff = stages.sizes.get("diff")  # made for the processed frames alone
    decoding = video.batches({"pictures": KEEP_PICTURES}, grid.start, grid.end, batch_size=opts.batch_size,
                             prefetch=d.prefetch, keep=opts.keep)
    t_dec = time.perf_counter()
    with decoding:
        for batch in decoding:
            cheap.stage_t["decode"] += time.perf_counter() - t_dec
            rows = np.flatnonzero((batch.indices - grid.start) % skip == 0)
            sub = batch.subset(rows)
            if diff is not None:
                sub.frames["diff"] = sub.made(np.arange(len(sub)), diff)
            at = np.searchsorted(processed, sub.indices)
            cheap.state[at] = batch_states(stages, sub, at, cheap, prev_last)
            got[at] = True
            out.decoded.update(batch.indices.tolist())
            pictures.add(batch)
            whole = int(grid.index_of([int(batch.indices[-1]) + 1])[0])  # windows before this one are whole
            next_w = _settle_upto(out, next_w, whole, pictures, how, opts.ref_size)
            t_dec = time.perf_counter()
    _settle_upto(out, next_w, grid.count, pictures, how, opts.ref_size)
    cheap.found(decoding)
    cheap.keep(got)
    out.seconds = time.perf_counter() - t0
    return out


def _settle_upto(out: WindowPass, first: int, upto: int, pictures: Pictures, how: Settling, size) -> int:
    """Settle windows [first, upto) with a decoded frame (the others have no answer); -> upto."""
    if upto <= first:
        return first
    t = time.perf_counter()
    windows = np.arange(first, upto)
    have = np.array([any(f in out.decoded for f in range(int(out.grid.first[w]), int(out.grid.last[w]) + 1))
                     for w in windows.tolist()], bool)
    settle(out, windows[have], pictures, how, size)
    pictures.drop_before(int(out.grid.first[upto]) if upto < out.grid.count else out.grid.end)
    out.cheap.stage_t["reference"] += time.perf_counter() - t
    return upto
