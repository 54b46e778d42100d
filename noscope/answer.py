"""Answer every frame of a query with a plan, then check the answers on that video and repair them.

    results, reports = answer(q, plan, targets, settings)                  # q: prepare.open_query
    results["car"].labels, reports["car"]["met"], reports["car"]["fnr"]["high"]

`noscope query` and `noscope evaluate` both answer through here, so what evaluate measures is
what a query returns: the cascade (noscope.cascade) and its check (noscope.check), timed together;
every reference call, the check's included, is in the result.
"""

from __future__ import annotations

import dataclasses
import time
import zlib

import numpy as np

from .cascade import run_cascade
from .check import check_and_repair
from .check_stats import DrawOrder
from .labels import label_frames
from .plans import Plan, Targets
from .prepare import Query
from .refit import refit_on_video
from .settings import Settings
from .update import learnt_answers
from .video import Keep

# Frames whose pictures the first pass keeps for the check, per frame it checks in a stratum and
# round: enough for the first round and most of the next ones; the rest are decoded after the pass
# (416x416 RGB: 0.5 MB a frame, so 400 frames hold about 200 MB while the query runs).
RESERVE = 4


def answer(q: Query, plan: Plan, targets: Targets, settings: Settings, *, use_label_cache: bool = True,
           frame_cache: bool = True, quiet: bool = False, first_pass: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """object -> CascadeResult with every reference answer in it, and object -> check report.

    Each result's `seconds` is the whole answer's. Its stage_seconds hold the first pass's stages
    (decode, diff, model, reference) and the check's: "verify" in all, of which "check_reference"
    (the reference on drawn frames and on strata it answers), "check_reruns" (the cascade run again
    after a repair) and "check_repairs" (refitting thresholds and models). Each result's
    `first_fractions` are the shares of frames each stage settled in the first pass. `first_pass`,
    when given, receives the cascade's own results before any check (for evaluate)."""
    t0 = time.perf_counter()
    known: dict[int, np.ndarray] = {}  # frame -> the reference's class scores, every call of this answer
    decode = dataclasses.replace(settings.decode, frame_cache=frame_cache and settings.decode.frame_cache)
    rng = np.random.default_rng([int(settings.seed), zlib.crc32(q.video.hash.encode()), int(q.start), int(q.end)])
    order = DrawOrder(q.start, q.end, rng)  # the check's draws, fixed before anything is answered
    reserve = Keep(set(order.reserve(RESERVE * settings.check.per_stratum).tolist()),
                   tuple(q.reference.input_size or (q.video.width, q.video.height)))
    clock = {"check_reference": 0.0, "check_reruns": 0.0, "check_repairs": 0.0}

    last: list = [None]  # the latest pass's cheap answers: a repair that keeps skip and detector re-answers from them

    def run(p: Plan) -> dict:
        out = run_cascade(q.video, q.bundle, p, q.reference, q.ref_key, q.start, q.end, decode=decode,
                          batch_size=settings.query.batch_size, use_label_cache=use_label_cache, quiet=quiet, known=known,
                          previous=last[0], keep=reserve if last[0] is None else None)
        last[0] = next(iter(out.values())).cheap
        return out

    def rerun(p: Plan) -> dict:
        t = time.perf_counter()
        out = run(p)
        clock["check_reruns"] += time.perf_counter() - t
        return out

    def ask(frames: np.ndarray) -> dict[int, dict[str, float]]:
        t = time.perf_counter()
        lab = label_frames(q.video, q.reference, q.ref_key, frames, use_cache=use_label_cache, quiet=True, desc="verify",
                           pixels=reserve.sink)
        known.update(zip(lab.frames.tolist(), lab.scores))
        clock["check_reference"] += time.perf_counter() - t
        return {f: {o: float(s[q.bundle.class_index(o)]) for o in plan.objects} for f, s in zip(lab.frames.tolist(), lab.scores)}

    def learn(model: str, seen: dict):
        frames_of = {o: r.frames for o, r in seen.items()}
        return refit_on_video(q.bundle, model, last[0], known, min_score, frames_of, q.reference.device)

    min_score = float(q.bundle.min_score)
    results = learnt_answers(q.bundle, q.video.hash, q.start, q.end, run(plan), ask, min_score)  # never certified on
    first = time.perf_counter() - t0
    if first_pass is not None:
        first_pass.update(results)
    stages = next(iter(results.values())).stage_seconds  # the first pass's; re-runs count as checking
    shares = {o: r.fractions() for o, r in results.items()}
    results, reports = check_and_repair(results, plan, ask, rerun, targets, settings.check, order, min_score, clock,
                                        learn)
    seconds = time.perf_counter() - t0
    for o, r in results.items():
        r.seconds = seconds
        r.stage_seconds = dict(stages, verify=seconds - first, **clock)
        r.first_fractions = shares[o]
        reports[o]["seconds"] = round(seconds - first, 3)
    return results, reports
