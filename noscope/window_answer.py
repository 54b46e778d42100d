"""Answer every window of a query with a windowed plan, then check the answers on that video and repair them.

    run = WindowRun(q, settings, WindowQuestion(30, 0.5))              # q: prepare.open_query (one object)
    results, reports = run.answer(plan, targets)                        # plan: window_plans.WindowedPlan
    results["car"].labels, results["car"].decided_by                   # per window; .frames: window numbers
    per_frame = run.frame_answers(results["car"])                        # every frame carries its window's answer

The check on the video (noscope.check) is the per-frame one with windows as its units: draws windows
uniformly within the cheap answers' strata, learns a drawn window's answer exactly (the reference on
its frames in spread order until its share rule is decided: `ask_reference`), bounds the window
rates exactly, repairs (`repair`: the reference samples more frames of a window, up to every frame;
the cheap stages stop settling the answer found wrong) and answers the windows again from what the
pass kept (`answer_again`: the cheap answers' scores and every reference answer in hand; the frames
a window still needs are decoded in one sparse pass over those windows alone).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from .answer import CheckClock
from .cascade import CascadeResult, PassOptions, Stages, restate
from .check import check_and_repair
from .check_stats import DrawOrder
from .labels import ReferenceStream
from .prepare import Query
from .settings import Settings
from .video import KEEP_PICTURES
from .window_cascade import Pictures, Sampler, Settling, WindowPass, cheap_decisions, window_pass
from .window_plans import WindowedPlan
from .window_repair import Replay, repair_windows
from .windows import Sampling, WindowGrid, WindowQuestion


@dataclass
class WindowResult:
    """One object's answers per window, as the check reads a result: `frames` are window numbers."""

    frames: np.ndarray  # the windows answered (a window none of whose frames decoded has no answer)
    labels: np.ndarray  # bool
    decided_by: np.ndarray  # str: "cheap", "sampled" or "reference" (exact)
    reference_scores: dict  # window -> 1.0 / 0.0 where its answer is exact (the reference's own)
    calls: np.ndarray  # reference calls each window took
    score: np.ndarray  # each window's cheap score (NaN: none): what a repair moves the window thresholds past
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    first_fractions: dict | None = None
    decoding: list = field(default_factory=list)

    def fractions(self) -> dict[str, float]:
        n = max(len(self.frames), 1)
        return {s: float(np.sum(self.decided_by == s)) / n for s in ("cheap", "sampled", "reference")}


class WindowRun(CheckClock):
    """One windowed query's run over its segment: what its pass and its check share (the reference's
    answers so far, frame by frame; the latest pass; the clock), and what the check asks of it
    (noscope.check.Run). One object."""

    min_score = 0.5  # a window's "score" is its answer, 1.0 or 0.0

    def __init__(self, q: Query, settings: Settings, question: WindowQuestion, *, use_label_cache: bool = True,
                 quiet: bool = False):
        self.started = time.perf_counter()
        self.q, self.settings, self.quiet, self.use_label_cache = q, settings, quiet, use_label_cache
        (self.obj,) = q.objects
        self.grid = WindowGrid(q.start, q.end, question.size, question.share)
        self.spec = str(question.size) + "f"  # the window as the user gave it (the caller says: 1s)
        rng = np.random.default_rng([int(settings.seed), zlib.crc32(q.video.hash.encode()), int(q.start), int(q.end),
                                     int(question.size)])
        self.order = DrawOrder(0, self.grid.count, rng)  # the check's draws of windows, fixed before the pass
        self.stream = ReferenceStream(q.video, q.reference, q.ref_key, (q.start, q.end), use_label_cache)
        self.known: dict = dict(self.stream.cached)  # frame -> the reference's class scores
        super().__init__()
        self.passes: list[dict] = []
        self.last: WindowPass | None = None
        self.plan: WindowedPlan | None = None
        self.used: set = set()  # frames whose reference answer settled or checked a window
        self.first: dict | None = None  # the first pass's results, before any check
        self.ref_size = tuple(q.reference.input_size or (q.video.width, q.video.height))

    # -- what the check asks (noscope.check.Run)

    def answer(self, plan: WindowedPlan, targets) -> tuple[dict, dict]:
        """object -> WindowResult with every exact answer in it, and object -> check report."""
        try:
            results = self.first_pass(plan)
            self.first = dict(results)
            first = time.perf_counter() - self.started
            stages = dict(self.last.cheap.stage_t)
            shares = {o: r.fractions() for o, r in results.items()}
            results, reports = check_and_repair(self, results, plan, targets, self.settings.window_check)
        finally:
            self.stream.close()
        seconds = time.perf_counter() - self.started
        for o, r in results.items():
            r.seconds, r.first_fractions, r.decoding = seconds, shares[o], list(self.passes)
            r.stage_seconds = dict(stages, verify=seconds - first, **self.clock)
            reports[o]["seconds"] = round(seconds - first, 3)
        return results, reports

    def first_pass(self, plan: WindowedPlan) -> dict:
        q, op = self.q, plan.shared
        self.plan = plan
        stages = Stages.of(q.bundle, {self.obj: op.plan.frame}, q.reference)
        opts = PassOptions(self.settings.decode, self.settings.query.batch_size, self.use_label_cache, self.quiet,
                           ref_size=self.ref_size)
        self.last = window_pass(q.video, stages, self.grid, self.settling(op), opts)
        self.note(self.last.cheap.passes, "first pass")
        return {self.obj: self.result(self.last)}

    def answer_again(self, plan: WindowedPlan) -> dict:
        """The windows answered again with repaired plans, from what the pass kept where the cheap
        stages' skip and difference detector are the same (else a new pass)."""
        with self.timed("check_reruns"):
            op, q = plan.shared, self.q
            stages = Stages.of(q.bundle, {self.obj: op.plan.frame}, q.reference)
            cheap = restate(self.last.cheap, stages)
            if cheap is None or len(cheap.unscored):  # frames the model never saw: a new pass
                return self.first_pass(plan)
            out = WindowPass(self.grid, np.zeros(self.grid.count, bool), np.full(self.grid.count, "", dtype=object),
                             np.zeros(self.grid.count, np.int64), cheap, np.full(self.grid.count, np.nan), self.known,
                             self.last.decoded)
            answered = np.flatnonzero(self.last.stage != "")
            how = self.settling(op)
            settled, score = cheap_decisions(cheap, self.grid, answered, op.plan)
            out.score[answered] = score[answered]
            for w, a in settled.items():
                out.labels[w], out.stage[w] = a, "cheap"
            rest = [w for w in answered.tolist() if out.stage[w] == ""]
            for w, (a, calls, exact) in self.sampled(rest, how.sampling).items():
                out.labels[w], out.calls[w], out.stage[w] = a, calls, "reference" if exact else "sampled"
            self.plan, self.last = plan, out
            return {self.obj: self.result(out)}

    def ask_reference(self, windows: np.ndarray) -> dict[int, dict[str, float]]:
        """Each window's exact answer (1.0 yes, 0.0 no): the reference on its frames in spread order
        until the share rule decides it; a window none of whose frames decodes is left out."""
        with self.timed("check_reference"):
            got = self.sampled([int(w) for w in windows], Sampling(0, self.grid.size))
        return {w: {self.obj: 1.0 if a else 0.0} for w, (a, _, exact) in got.items() if exact}

    def repair(self, plans: dict, evidence: dict, targets, skips) -> tuple[dict, list[str]]:
        truth = {int(w): float(s) >= 0.5 for w, s in evidence[self.obj].result.reference_scores.items()}
        sampler = Sampler(self.grid, self.settling(self.plan.shared), self.last.decoded if self.last is not None else None)
        return repair_windows(plans, evidence, targets,
                              Replay(truth, lambda w: self.spread_answers(sampler, w), self.grid.share))

    def spread_answers(self, sampler: Sampler, w: int) -> tuple:
        """(window w's size, the reference's answers on its frames in spread order, as far as known)."""
        order, how, known = sampler.order(w), sampler.how, []
        for f in order.tolist():
            if f not in self.known:
                break
            known.append(float(self.known[f][how.column]) >= how.min_score)
        return (len(order), *known)

    def refit(self, model: str, seen: dict):
        return None  # a windowed query does not refit models on the video (yet)

    # -- the windows' reference answers

    def settling(self, op) -> Settling:
        column = self.q.bundle.class_index(self.obj)
        return Settling(op.plan, lambda frames, pictures: self.stream.answer(np.asarray(frames, np.int64), pictures),
                        self.known, column, float(self.q.bundle.min_score), self.used)

    def sampled(self, windows: list[int], sampling: Sampling) -> dict:
        """window -> (answer, calls, exact) by `sampling`: from the answers in hand where they suffice,
        else decoding the frames of those windows alone (one sparse pass) and asking the reference."""
        how = self.settling(self.plan.shared)
        sampler = Sampler(self.grid, how, self.last.decoded if self.last is not None else None)
        out, short = {}, []
        for w in windows:
            seen = [0, 0, 0]
            done = sampler.advance(sampler.order(w), seen, sampling)
            (out.__setitem__(w, done) if done is not None else short.append(w))
        if short:
            out.update(self.decode_and_sample(sampler, short, sampling))
        return out

    def decode_and_sample(self, sampler: Sampler, windows: list[int], sampling: Sampling) -> dict:
        """The windows' frames decoded in one pass (pictures kept), each window sampled once whole."""
        g, out = self.grid, {}
        frames = np.concatenate([np.arange(g.first[w], g.last[w] + 1) for w in windows])
        pictures, todo = Pictures(), sorted(windows)
        decoding = self.q.video.batches({"pictures": KEEP_PICTURES}, frames=frames, batch_size=256, prefetch=0)
        with decoding:
            for batch in decoding:
                pictures.add(batch)
                whole = [w for w in todo if g.last[w] <= batch.indices[-1]]
                out.update(sampler.run(whole, lambda fs: sampler.how.ask(fs, pictures.rgb(fs, self.ref_size)), sampling))
                todo = [w for w in todo if w not in whole]
                if whole:
                    pictures.drop_before(int(g.first[todo[0]]) if todo else g.end)
        out.update(sampler.run(todo, lambda fs: sampler.how.ask(fs, pictures.rgb(fs, self.ref_size)), sampling))
        self.note([decoding], "check")
        return out

    def note(self, passes: list, step: str) -> None:
        for d in passes:
            self.passes.append(dict(step=step, decoded=int(d.decoded), converted=int(d.converted)))

    # -- results

    def result(self, p: WindowPass) -> WindowResult:
        answered = np.flatnonzero(p.stage != "")
        exact = {int(w): 1.0 if p.labels[w] else 0.0 for w in answered.tolist() if p.stage[w] == "reference"}
        return WindowResult(answered, p.labels[answered].copy(), p.stage[answered].astype(str), exact, p.calls[answered].copy(),
                            p.score[answered].copy())

    def frame_answers(self, result: WindowResult) -> CascadeResult:
        """Every answered frame of the segment carrying its window's answer (and that window's stage),
        with the reference's score on the frames it answered: frames.csv, intervals, the timeline."""
        g = self.grid
        frames = np.array(sorted(f for f in self.last.decoded if g.start <= f < g.end), np.int64)
        w = g.index_of(frames)
        at = np.searchsorted(result.frames, w)
        ok = (at < len(result.frames)) & (result.frames[np.minimum(at, len(result.frames) - 1)] == w)
        frames, at = frames[ok], at[ok]
        column = self.q.bundle.class_index(self.obj)
        scores = {f: float(self.known[f][column]) for f in frames.tolist() if f in self.used}
        return CascadeResult(frames, self.q.video.times_of(frames), result.labels[at], result.decided_by[at], scores,
                             result.seconds, result.stage_seconds, decoding=result.decoding, windows=g.index_of(frames))
