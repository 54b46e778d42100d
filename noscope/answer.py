"""Answer every frame of a query with a plan, then check the answers on that video and repair them.

    results, reports = answer(q, plan, targets, settings)                  # q: prepare.open_query
    results["car"].labels, reports["car"]["met"], reports["car"]["fnr"]["high"]

    run = QueryRun(q, settings, use_label_cache=False, frame_cache=False)   # as `noscope evaluate` runs it
    results, reports = run.answer(plan, targets)
    run.first["car"]                                                        # the cascade's own answers, before the check

`noscope query` and `noscope evaluate` both answer through here, so what evaluate measures is
what a query returns: the cascade (noscope.cascade) and its check (noscope.check), timed together;
every reference call, the check's included, is in the result. A query's run (`QueryRun`) holds
what its first pass and its check share, and the check asks it for what it needs (noscope.check.Run).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from contextlib import contextmanager

import numpy as np

from .cascade import CheapAnswers, PassOptions, run_cascade
from .check import apply_known, check_and_repair
from .check_repair import repair
from .check_stats import DrawOrder
from .labels import ReferenceStream, label_frames
from .plans import Plan, Targets
from .prepare import Query
from .refit import refit_on_video
from .settings import Settings
from .video import Keep

# Frames whose pictures the first pass keeps for the check, per frame it checks in a stratum and
# round: enough for the first round and most of the next ones; the rest are decoded after the pass
# (416x416 RGB: 0.5 MB a frame, so 400 frames hold about 200 MB while the query runs). Where the
# pictures are small, as many as RESERVE_BYTES holds (a short video's every frame: a repair that
# sends more frames to the reference then decodes nothing again).
RESERVE = 4
RESERVE_BYTES = 256 << 20


def answer(q: Query, plan: Plan, targets: Targets, settings: Settings, *, quiet: bool = False) -> tuple[dict, dict[str, dict]]:
    """object -> CascadeResult with every reference answer in it, and object -> check report
    (QueryRun.answer, with the label and frame caches as the settings say)."""
    return QueryRun(q, settings, quiet=quiet).answer(plan, targets)


class CheckClock:
    """The seconds a run's check spends, per part (summary.json's stage_seconds)."""

    def __init__(self):
        self.clock = {"check_reference": 0.0, "check_reruns": 0.0, "check_repairs": 0.0}

    @contextmanager
    def timed(self, part: str):
        """Counts the seconds of a `with` block as `part` of the check's time."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.clock[part] += time.perf_counter() - t


class QueryRun(CheckClock):
    """One query's run over its segment: what its first pass and its check share, and what the check
    asks of it (noscope.check.Run). It holds the reference's answers so far (frame -> class scores,
    every call of this run), the latest pass's cheap answers (a repair that keeps skip and difference
    detector is answered again from them, without decoding), the pictures the first pass keeps for
    the check (the first frames of the draw order, fixed before anything is answered), and the clock
    of the check's parts. `use_label_cache` and `frame_cache` off: nothing is read from those caches
    (evaluate's honest timing)."""

    def __init__(self, q: Query, settings: Settings, *, use_label_cache: bool = True, frame_cache: bool = True,
                 quiet: bool = False):
        self.started = time.perf_counter()  # the answer's seconds count from here
        self.q, self.settings, self.use_label_cache, self.quiet = q, settings, use_label_cache, quiet
        self.decode = dataclasses.replace(settings.decode, frame_cache=frame_cache and settings.decode.frame_cache)
        self.known: dict[int, np.ndarray] = {}  # frame -> the reference's class scores, every call of this run
        rng = np.random.default_rng([int(settings.seed), zlib.crc32(q.video.hash.encode()), int(q.start), int(q.end)])
        self.order = DrawOrder(q.start, q.end, rng)  # the check's draws, fixed before anything is answered
        size = tuple(q.reference.input_size or (q.video.width, q.video.height))
        held = max(RESERVE * settings.check.per_stratum, RESERVE_BYTES // (size[0] * size[1] * 3))
        self.reserve = Keep(set(self.order.reserve(held).tolist()), size)
        super().__init__()
        self.min_score = float(q.bundle.min_score)
        self.cheap: CheapAnswers | None = None  # the latest pass's cheap answers
        self.objects: list[str] = []  # the objects of the plan answered
        self.first: dict | None = None  # the first pass's results, before any check
        self.passes: list[dict] = []  # every decoding pass of the answer: what it was for, frames decoded and converted

    def answer(self, plan: Plan, targets: Targets) -> tuple[dict, dict[str, dict]]:
        """object -> CascadeResult with every reference answer in it, and object -> check report.

        Each result's `seconds` is the whole answer's. Its stage_seconds hold the first pass's stages
        (decode, diff, model, reference) and the check's: "verify" in all, of which "check_reference"
        (the reference on drawn frames and on strata it answers), "check_reruns" (the cascade run again
        after a repair) and "check_repairs" (refitting thresholds and models). Each result's
        `first_fractions` are the shares of frames each stage settled in the first pass, whose results
        stay in `self.first`."""
        results = self.learnt_frames_answered(self.first_pass(plan))  # never certified on
        first = time.perf_counter() - self.started
        self.first = dict(results)
        stages = next(iter(results.values())).stage_seconds  # the first pass's; re-runs count as checking
        shares = {o: r.fractions() for o, r in results.items()}
        results, reports = check_and_repair(self, results, plan, targets, self.settings.check)
        seconds = time.perf_counter() - self.started
        for o, r in results.items():
            r.seconds = seconds
            r.stage_seconds = dict(stages, verify=seconds - first, **self.clock)
            r.decoding = list(self.passes)
            r.first_fractions = shares[o]
            reports[o]["seconds"] = round(seconds - first, 3)
        return results, reports

    def first_pass(self, plan: Plan) -> dict:
        """The cascade's answers to `plan` (object -> result): one decoding pass, which keeps the
        pictures of the check's reserve."""
        self.objects = plan.objects
        return self._cascade(plan)

    def answer_again(self, plan: Plan) -> dict:
        """The cascade's answers to a repaired plan, from the latest pass's cheap answers where the
        plan keeps its skip and difference detector (noscope.cascade.restate, decoding only the frames a
        repaired threshold newly sends to the model), else decoding again."""
        with self.timed("check_reruns"):
            return self._cascade(plan)

    def _cascade(self, plan: Plan) -> dict:
        q = self.q
        first = self.cheap is None
        stream = ReferenceStream(q.video, q.reference, q.ref_key, (q.start, q.end), self.use_label_cache) if first else None
        opts = PassOptions(self.decode, self.settings.query.batch_size, self.use_label_cache, self.quiet, stream,
                           self.known, self.reserve.sink, self.reserve if first else None, self.reserve.size)
        try:
            out = run_cascade(q.video, q.bundle, plan, q.reference, q.ref_key, (q.start, q.end), opts, self.cheap)
        finally:
            if stream is not None:
                stream.close()  # the answers it was given go to the label cache, even when the pass stops
        seen = {id(p) for p in self.cheap.passes} if self.cheap is not None else set()
        self.cheap = next(iter(out.values())).cheap
        for d in self.cheap.passes:
            if id(d) not in seen:
                self.note_pass("first pass" if first and not self.passes else ("answer again" if not first else "reference"), d)
        return out

    def note_pass(self, step: str, decoding) -> None:
        """Count a decoding pass of this answer (summary.json's `decoding`)."""
        self.passes.append(dict(step=step, decoded=int(decoding.decoded), converted=int(decoding.converted)))

    def ask_reference(self, frames: np.ndarray) -> dict[int, dict[str, float]]:
        """The reference on `frames` (the reserve's pictures where it kept them): frame -> {object:
        score}; a frame it cannot decode is left out."""
        q = self.q
        with self.timed("check_reference"):
            lab = label_frames(q.video, q.reference, q.ref_key, frames, use_cache=self.use_label_cache, quiet=True,
                               desc="verify", pixels=self.reserve.sink)
            self.known.update(zip(lab.frames.tolist(), lab.scores))
            if lab.decoding is not None:
                self.note_pass("check", lab.decoding)
        return {f: {o: float(s[q.bundle.class_index(o)]) for o in self.objects} for f, s in
                zip(lab.frames.tolist(), lab.scores)}

    def repair(self, plans: dict, evidence: dict, targets: Targets, skips) -> tuple[dict, list[str]]:
        """The check's repair of the per-frame plans (check_repair.repair), a model refitted on this
        video's reference answers where it can learn (`refit`)."""
        return repair(plans, evidence, targets, self.min_score, skips, self.refit)

    def refit(self, model: str, seen: dict):
        """`model` fitted again on every frame of this video the reference has answered (noscope.refit),
        scored on the frames of each object's result in `seen`; None where it cannot learn."""
        frames_of = {o: r.frames for o, r in seen.items()}
        return refit_on_video(self.q.bundle, model, self.cheap, self.known, frames_of, self.q.reference.device)

    def learnt_frames_answered(self, results: dict) -> dict:
        """`results` with the reference's answer on every frame of the segment the bundle's version was
        fitted on (`train --update`; those answers were paid for and sit in the label cache): they are
        reference answers then, so the check's uniform draws come from the other frames and it never
        certifies a version on frames it learnt from."""
        q = self.q
        fitted = q.bundle.learnt_frames(q.video.hash, q.start, q.end)
        if not len(fitted):
            return results
        got = self.ask_reference(fitted)
        return {o: apply_known(r, {f: s[o] for f, s in got.items()}, self.min_score) for o, r in results.items()}

