"""Answer every frame of a video with a plan, then check the answers on that video and repair them.

    results, reports = answer(video, tb, plan, reference, ref_key, start, end, cfg, targets)
    results["car"].labels, reports["car"]["met"], reports["car"]["fnr"]["high"]

`noscope query` and `noscope evaluate` both answer through here, so what evaluate measures is
what a query returns: the cascade (noscope.cascade) and its verification (noscope.escalate),
timed together; every reference call, verification included, is in the result.
"""

from __future__ import annotations

import time
import zlib

import numpy as np

from .cascade import run_cascade
from .escalate import Settings, check_and_repair
from .joint import JointPlan
from .labels import label_frames
from .optimizer import Plan, Targets
from .video import decode_options


def verify_settings(cfg: dict) -> Settings:
    q, o = cfg["query"], cfg["optimizer"]
    return Settings(per_stratum=int(q["verify"]), rounds=int(q["verify_rounds"]), guarantee=bool(q["guarantee"]),
                    confidence=float(o["confidence"]), skips=tuple(int(s) for s in o["skips"]))


def answer(video, tb, plan: Plan | JointPlan, reference, ref_key: str, start: int, end: int, cfg: dict,
           targets: Targets, *, use_label_cache: bool = True, frame_cache: bool = True,
           quiet: bool = False, first_pass: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """object -> CascadeResult with every reference answer in it, and object -> verification report.
    Each result's `seconds` is the whole answer's; stage_seconds["verify"] is the checking and repairing.
    `first_pass`, when given, receives the cascade's own results before any check (for evaluate)."""
    t0 = time.perf_counter()
    joint = isinstance(plan, JointPlan)
    plans = plan.plans if joint else {tb.object: plan}
    known: dict[int, np.ndarray] = {}  # frame -> the reference's class scores, every call of this answer
    options = dict(decode_options(cfg), frame_cache=frame_cache and decode_options(cfg)["frame_cache"])

    def run(p: dict[str, Plan]) -> dict:
        arg = JointPlan(p, plan.expected_cost, plan.fractions) if joint else p[tb.object]
        r = run_cascade(video, tb, arg, reference, ref_key, start, end, batch_size=cfg["query"]["batch_size"],
                        use_label_cache=use_label_cache, quiet=quiet, known=known, **options)
        return r if joint else {tb.object: r}

    def ask(frames: np.ndarray) -> dict[int, dict[str, float]]:
        lab = label_frames(video, reference, ref_key, frames, use_cache=use_label_cache, quiet=True, desc="verify")
        known.update(zip(lab.frames.tolist(), lab.scores))
        return {f: {o: float(s[tb.class_index(o)]) for o in plans} for f, s in zip(lab.frames.tolist(), lab.scores)}

    results = run(plans)
    first = time.perf_counter() - t0
    if first_pass is not None:
        first_pass.update(results)
    stages = next(iter(results.values())).stage_seconds  # the first pass's; re-runs count as verifying
    rng = np.random.default_rng([int(cfg["seed"]), zlib.crc32(video.hash.encode()), int(start), int(end)])
    results, reports = check_and_repair(results, plans, ask, run, targets, verify_settings(cfg), rng,
                                        float(tb.meta["labels"]["min_score"]))
    seconds = time.perf_counter() - t0
    for o, r in results.items():
        r.seconds = seconds
        r.stage_seconds = dict(stages, verify=seconds - first)
        reports[o]["seconds"] = round(seconds - first, 3)
    return results, reports
