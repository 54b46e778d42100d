"""A query's answers written down: each object's result folder, the summaries, and the lines a person reads.

    summary = write_results(out, q, plan, results, reports, targets)     # -> the summary written last
    verified_line(summary["verified"], targets)                          # what the check found, in words

A single-object bundle's result is one folder: frames.csv, intervals.json, timeline.png, then
summary.json (noscope.report writes the files). A several-objects bundle's result is one such
folder per object, OUT/VIDEOSTEM-OBJECT/, so downstream tools work unchanged, then OUT/summary.json
for the pass, last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .bundle import bundle_label
from .check_stats import all_met
from .plans import STAGES, WINDOW_STAGES, Plan, Targets, pass_decided, stage_fractions, stages_of
from .prepare import Query
from .atomic import atomic_write_bytes
from .report import clear_result, write_json, write_result
from .settings import default_name

log = logging.getLogger("noscope")


def write_results(out, q: Query, plan: Plan, results: dict, reports: dict, targets: Targets, *, plot: bool = True,
                  say=None, tell: bool = True, extra: dict | None = None) -> dict:
    """Write the result folder(s) and return the summary written last (`extra`: more keys for it,
    e.g. the batch runner's record of what was asked). `tell`: say what the check found (one line
    per object; a warning when the targets are not shown met)."""
    say = say or (lambda *a, **k: None)
    out = result_folder(out, q)
    if not q.bundle.multi:
        o = q.objects[0]
        summary = dict(object_summary(q, o, results[o], plan, targets, out), verified=reports[o], **(extra or {}))
        warn_if_stopped(q, results[o], summary)
        if tell:
            tell_verified(reports[o], targets, say)
        return write_result(out, results[o], q.video, summary, q.bundle.min_score, plot=plot)
    return _write_pass(out, q, plan, results, reports, targets, plot, say, tell, extra)


def write_window_results(out, q: Query, run, answered: tuple, targets: Targets, how: dict) -> dict:
    """A windowed query's result folder (one object): windows.csv (a row per window: its frames and
    times, answer, what settled it, its reference calls), frames.csv (a row per frame carrying its
    window's answer, the window's number beside it), intervals.json from the windows, timeline.png,
    then summary.json (the question, and `verified` in windows). `answered`: (plan, results, reports),
    what `run` (noscope.window_answer.WindowRun) gave; `how`: plot, say, tell, extra (as write_results)."""
    say, tell, plot, extra = how.get("say") or (lambda *a, **k: None), how.get("tell", True), how.get("plot", True), \
        how.get("extra")
    plan, results, reports = answered
    o = q.objects[0]
    result, frames = results[o], run.frame_answers(results[o])
    out = result_folder(out, q)
    summary = dict(object_summary(q, o, frames, plan, targets, out), **window_summary(run, result), verified=reports[o],
                   **(extra or {}))
    if tell:
        tell_verified(reports[o], targets, say, unit="window")
    clear_result(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "windows.csv", windows_csv(run, result, q.video.fps))
    return write_result(out, frames, q.video, summary, q.bundle.min_score, plot=plot)


def window_summary(run, result) -> dict:
    """summary.json's words for the question per window: what a window is, how many, what settled them."""
    g = run.grid
    return dict(unit="windows", window=dict(frames=int(g.size), seconds=round(g.size / run.q.video.fps, 4),
                                            share=float(g.share), count=int(g.count), spec=run.spec),
                windows=int(len(result.frames)), positive_windows=int(result.labels.sum()),
                window_fractions=result.fractions(), first_pass_window_fractions=result.first_fractions or result.fractions(),
                decided_windows={st: int(np.sum(result.decided_by == st)) for st in WINDOW_STAGES},
                reference_calls=len(run.used))


def windows_csv(run, result, fps: float) -> bytes:
    """windows.csv: window, first_frame, last_frame, start_s, end_s, answer, decided_by, reference_calls."""
    g = run.grid
    times = run.q.video.times_of(np.r_[g.first[result.frames], g.last[result.frames]]) if len(result.frames) else []
    n = len(result.frames)
    rows = ["window,first_frame,last_frame,start_s,end_s,answer,decided_by,reference_calls"]
    for i, w in enumerate(result.frames.tolist()):
        rows.append(f"{w},{g.first[w]},{g.last[w]},{times[i]:.3f},{times[n + i] + 1 / fps:.3f},{int(result.labels[i])},"
                    f"{result.decided_by[i]},{int(result.calls[i])}")
    return ("\n".join(rows) + "\n").encode()


def result_folder(out, q: Query) -> Path:
    """Where the query's result goes: `out`, or noscope-out/VIDEOSTEM-OBJECT (several objects:
    VIDEOSTEM-car+bus, one VIDEOSTEM-OBJECT folder each inside it)."""
    return Path(out) if out else Path("noscope-out") / default_name(q.video.path, q.objects)


def _write_pass(out, q: Query, plan: Plan, results: dict, reports: dict, targets: Targets, plot: bool, say, tell: bool,
                extra: dict | None) -> dict:
    """Several objects from one pass: OUT/VIDEOSTEM-OBJECT/ per object, then OUT/summary.json last."""
    objects, v = q.objects, q.video
    first = results[objects[0]]  # frames, timings and reference calls are the pass's, shared by all
    clear_result(out)  # an earlier result (its summary.json first) must not mix with, or vouch for, this one
    stop: dict = {}
    warn_if_stopped(q, first, stop)  # once: every object has the same frames
    per = {}
    for o in objects:
        sub = out / default_name(v.path, o)
        summary = dict(object_summary(q, o, results[o], plan, targets, sub), answered_with=objects, verified=reports[o],
                       **stop)
        per[o] = write_result(sub, results[o], v, summary, q.bundle.min_score, plot=plot)
        if tell:
            tell_verified(reports[o], targets, say, prefix=f"{o}: ")
    top = dict(pass_summary(q, plan, results, targets, out),
               results={o: dict(out=per[o]["out"], positives=per[o]["positives"], intervals=per[o]["intervals"],
                                fractions=per[o]["fractions"], verified_met=reports[o]["met"]) for o in objects},
               verified_met=all_met([reports[o]["met"] for o in objects]), **stop, **(extra or {}))
    write_json(out / "summary.json", top)  # last: its presence means every object's folder is complete
    return top


def object_summary(q: Query, obj: str, result, plan: Plan, targets: Targets, out: Path) -> dict:
    """One object's summary.json (the same fields whether it was answered alone or with others)."""
    v, s, e, n = q.video, q.start, q.end, len(result.frames)
    return dict(
        video=str(v.path), video_abspath=str(v.path.resolve()), video_hash=v.hash, fps=v.fps,
        object=obj, model=str(q.bundle.root), model_version=q.bundle.version, trained_on=bundle_video(q), segment=[s, e], frames=n,
        positives=int(result.labels.sum()), wall_seconds=round(result.seconds, 3),
        frames_per_s=round(n / result.seconds, 1) if result.seconds else None,
        reference_calls=len(result.reference_scores), fractions=result.fractions(),
        first_pass_fractions=result.first_fractions or result.fractions(),
        decided_frames={st: int((result.decided_by == st).sum()) for st in stages_of(result.decided_by)},
        stage_seconds={k: round(x, 3) for k, x in result.stage_seconds.items()}, decoding=passes(result),
        cascade=plan.plans[obj].to_dict(), targets=targets.to_dict(),
        min_score=q.bundle.min_score, reference=q.ref_key, out=str(out),
    )


def pass_summary(q: Query, plan: Plan, results: dict, targets: Targets, out: Path) -> dict:
    """The pass's own summary for several objects: shared frames, timings and reference calls; a
    frame counts as the reference's when any object sent it there."""
    v, first = q.video, results[q.objects[0]]
    codes = pass_decided([np.select([r.decided_by == st for st in STAGES], range(len(STAGES))) for r in results.values()])
    n = len(first.frames)
    return dict(
        video=str(v.path), objects=q.objects, model=str(q.bundle.root), model_version=q.bundle.version, trained_on=bundle_video(q),
        segment=[q.start, q.end], frames=n, wall_seconds=round(first.seconds, 3),
        frames_per_s=round(n / first.seconds, 1) if first.seconds else None,
        reference_calls=len(first.reference_scores), fractions=stage_fractions(codes),
        stage_seconds={k: round(x, 3) for k, x in first.stage_seconds.items()}, decoding=passes(first),
        cascade=plan.to_dict(), targets=targets.to_dict(), min_score=q.bundle.min_score,
        reference=q.ref_key, out=str(out),
    )


def passes(result) -> dict:
    """How often the answer decoded the video: its passes in order (what each was for, frames the
    decoder gave it, frames converted to pictures) and the frames decoded in all."""
    each = list(getattr(result, "decoding", None) or [])
    return dict(passes=len(each), frames=sum(p["decoded"] for p in each), each=each)


def bundle_video(q: Query) -> dict:
    """What the bundle was trained on, for the summary: its video's path and contents hash, and
    whether that is the queried video (a bundle of the same camera is fine when the user named it)."""
    trained = q.bundle.manifest.video
    return dict(video=trained.path, hash=trained.hash, this_video=trained.hash == q.video.hash)


def model_words(summary: dict) -> str:
    """'bundle NAME (trained on this video)' or '... (trained on PATH)', for a summary line."""
    t = summary.get("trained_on") or {}
    where = "this video" if t.get("this_video") else t.get("video", "an unknown video")
    version = summary.get("model_version") or 1
    label = bundle_label(summary["model"])
    return f"bundle {label}{f' (version {version})' if version > 1 and '@' not in label else ''} (trained on {where})"


def met_word(met) -> str:
    return {True: "met", False: "missed", None: "not verified"}[met]


def verified_line(verified: dict, targets: Targets, unit: str = "frame") -> str:
    """One line on what the check on the queried video says of the targets (`unit`: what they count,
    frames or windows)."""
    def one(name: str, rate: dict | None, target: float) -> str:
        if rate is None:
            return f"{name} unchecked"
        if rate["high"] is None:
            kind = "positive" if name == "FNR" else "negative"
            return f"{name}: no {kind} {unit} seen, at most {rate['count_high']} {unit}s wrong"
        est = "n/a" if rate["estimate"] is None else f"{rate['estimate']:.2%}"  # no drawn frame could be answered
        return f"{name} {est} (bound {rate['high']:.2%}, target {target:.2%})"

    conf = f"{verified.get('confidence', 0.95):.0%}"
    what = {True: f"targets met ({conf} bounds)", False: "targets missed", None: "targets not verified"}[verified["met"]]
    rates = f"{one('FPR', verified['fpr'], targets.fpr)}, {one('FNR', verified['fnr'], targets.fnr)}"
    extra = f"; repaired: {'; '.join(verified['escalations'])}" if verified.get("escalations") else ""
    if verified.get("reference_answered"):
        extra += f"; the reference answered every cheap {' and '.join(verified['reference_answered'])} {unit}"
    hint = "" if verified["met"] or verified.get("mode") == "guarantee" else "; --guarantee checks until they are met"
    return f"{what} on this video: {rates}, {verified.get('checked', 0)} {unit}s checked{extra}{hint}"


def tell_verified(verified: dict, targets: Targets, say, prefix: str = "", unit: str = "frame") -> None:
    """A met target is a progress line; anything else is one warning line on stderr."""
    if verified.get("met"):
        say(f"{prefix}verified: {verified_line(verified, targets, unit)}")
    else:
        log.warning("%s%s", prefix, verified_line(verified, targets, unit))


def warn_if_stopped(q: Query, result, summary: dict) -> None:
    """One warning when decoding stopped well before the end of the segment or of the file,
    judged in time (the frames' presentation times): a frame count is only the container's guess."""
    from .video import stopped_early

    v, s, e = q.video, q.start, q.end
    stop_time = (float(result.times[-1]) + 1 / v.fps) if len(result.times) else s / v.fps
    early = stopped_early(result.stopped_at, stop_time, v.fps, s, e)
    # before the end of the file, judged by the answers' times or by the time the pass stopped at
    in_file = any(stopped_early(result.stopped_at, t, v.fps, 0, v.frame_count) for t in (stop_time, result.stop_time))
    if result.stopped_at is not None and (early or in_file):
        summary["stopped_at"] = int(result.stopped_at)
        log.warning("the video stops decoding at frame %d; answered the frames before it", result.stopped_at)
    warn_if_missing(result, summary)


def warn_if_missing(result, summary: dict) -> None:
    """summary["missing_frames"] ([a, b) ranges) and one warning line when damage left frames
    without an answer; an empty range [n, n) marks pictures lost before frame n in a file
    numbered by counting (variable frame rate), which has no numbers to give them."""
    if not result.missing:
        return
    summary["missing_frames"] = [[int(a), int(b)] for a, b in result.missing]
    lost = sum(b - a for a, b in result.missing)
    log.warning("part of the video cannot be decoded: %d frames have no answer (frames %s); answered the rest",
                lost, describe_missing(result.missing))


def describe_missing(ranges, most: int | None = 5) -> str:
    """[a, b) ranges of frames without an answer as words: "512-639, before 700" (and how many more
    past `most`; None: all of them)."""
    where = ", ".join(f"{a}-{b - 1}" if b > a else f"before {a}" for a, b in ranges[:most])
    return where + (f" and {len(ranges) - most} more" if most is not None and len(ranges) > most else "")
