"""`noscope query` for one video: pick the cascade, run it, write the answers.

    from noscope.query import query_video
    summary = query_video("cam.mp4", cfg, targets, model="store", out=Path("out/cam"))

The command line, the many-videos runner and the Ray executor all call `query_video`, so a
video answered on a cluster is answered exactly as it is locally.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .bundle import bundle_path
from .errors import NoscopeError, UsageError
from .optimizer import Targets

log = logging.getLogger("noscope")


def parse_objects(object_name) -> list[str] | None:
    """--object "car,person" -> ["car", "person"] (None stays None); order kept, repeats refused."""
    if object_name is None:
        return None
    names = [o.strip() for o in ([object_name] if isinstance(object_name, str) else object_name) for o in o.split(",")]
    if not all(names):
        raise UsageError(f"--object {object_name!r} has an empty name; give e.g. --object car or --object car,person")
    if len(set(names)) < len(names):
        raise UsageError(f"--object {object_name!r} names an object twice")
    return names


def default_name(video, object_name) -> str:
    """VIDEOSTEM-OBJECT, or VIDEOSTEM-car+person for several objects."""
    objects = parse_objects(object_name)
    return f"{Path(video).stem}-{'+'.join(objects)}"


def make_targets(cfg, fpr=None, fnr=None, metric=None) -> Targets:
    fpr = cfg["query"]["target_fpr"] if fpr is None else fpr
    fnr = cfg["query"]["target_fnr"] if fnr is None else fnr
    for what, v in (("FPR", fpr), ("FNR", fnr)):
        if not 0 < v < 1:
            raise UsageError(f"target {what} must be between 0 and 1 (exclusive), got {v}")
    return Targets(fpr=fpr, fnr=fnr, metric=metric or cfg["optimizer"]["metric"], window=int(cfg["optimizer"]["window"]))


def apply_reference_options(cfg, reference_name=None, reference_weights=None, reference_cfg=None) -> None:
    r = cfg["reference"]
    if reference_name:
        r["name"] = reference_name
    if reference_weights:
        r["weights"] = reference_weights
    if reference_cfg:
        r["cfg"] = reference_cfg


def make_reference(cfg):
    from .reference import configured_reference

    return configured_reference(cfg)


def own_bundle_paths(root: Path, video_hash: str) -> list[Path]:
    """Where the bundle trained on demand for a video lives: ROOT (VIDEOSTEM-OBJECT), or
    ROOT-<video hash> when ROOT holds a bundle of another video that shared the file name."""
    return [root, root.with_name(f"{root.name}-{video_hash}")]


def trained_on(root: Path) -> str | None:
    """The content hash of the video the bundle at `root` was trained on, read from its bundle.yaml
    alone (loading the bundle checks the rest); None if that says nothing readable."""
    import yaml

    try:
        return str(yaml.safe_load((root / "bundle.yaml").read_text())["video"]["hash"])
    except (OSError, yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError):
        return None


def own_bundle(root: Path, video, backend: str = "auto") -> Path:
    """The bundle of this very video (same contents) for training on demand, never one that
    merely shares its file name: another camera's clip once called b.mp4 trained `b-car`."""
    from .video import open_video

    v = open_video(video, backend)
    for p in own_bundle_paths(root, v.hash):
        if not (p / "bundle.yaml").is_file() or trained_on(p) in (v.hash, None):
            return p
    raise NoscopeError(f"bundles {root} and {p} were both trained on other videos than {video}; "
                       f"give --model to pick one or remove {p}")


def bundle_destination(video, objects, cfg: dict) -> Path:
    """Where `train` and training on demand put a bundle named for VIDEO (VIDEOSTEM-OBJECT): there,
    unless that holds another video's bundle; then VIDEOSTEM-OBJECT-<hash> (see own_bundle)."""
    return own_bundle(bundle_path(default_name(video, objects)), video, cfg["decode"]["backend"])


def resolve_model(cfg, video, model, object_name, quiet, start=None, end=None, say=None, own=False):
    """Load the bundle; with --object and no bundle, train one on this video first.

    Without --model (or with `own`: `model` is the path a batch gave this video's own bundle)
    only a bundle trained on this video is used (see own_bundle); with --model the user's bundle
    is used whatever video it was trained on (the same camera, say)."""
    from .bundle import load_bundle
    from .train import train as run_train

    if model is None and object_name is None:
        raise UsageError("give --model NAME (a trained bundle) or --object OBJ (trains one on this video first)")
    if model is None and not video:
        raise UsageError("--object without --model trains a bundle on VIDEO: give the video")
    say = say or (lambda *a, **k: None)
    objects = parse_objects(object_name)
    root = bundle_path(model) if model else bundle_destination(video, objects, cfg)
    if own and model and objects and video:  # a batch names this video's own bundle by its path
        root = own_bundle(root, video, cfg["decode"]["backend"])
    if not (root / "bundle.yaml").is_file() and objects and video:
        say(f"no bundle at {root}; training one on {video} for {', '.join(objects)}")
        run_train(video, objects if len(objects) > 1 else objects[0], root, cfg, start, end, quiet=quiet, say=say)
    tb = load_bundle(root)
    # A several-objects bundle answers any of its objects; a single-object one only its own.
    if objects and not (set(objects) <= set(tb.objects) if tb.multi else objects == tb.objects):
        raise NoscopeError(f"bundle {root} was trained for {tb.object!r}, not {','.join(objects)!r}")
    return tb


def warn_min_score(cfg, tb) -> None:
    """What counts as a positive frame is the bundle's labels.min_score: its models, thresholds and
    held-out estimates were all fit to the labels it made, and the check on the video judges the
    answers by it too. A different value in the configuration is said, not silently dropped."""
    asked, used = float(cfg["labels"]["min_score"]), float(tb.meta["labels"]["min_score"])
    if asked != used:
        log.warning("labels.min_score is %g in the configuration but bundle %s was trained with %g: the answers use "
                    "%g; train a bundle with labels.min_score=%g to use that", asked, tb.root, used, used, asked)


def check_reference_matches(tb, ref_key) -> None:
    if tb.meta["reference"]["key"] != ref_key:
        raise NoscopeError(f"bundle {tb.root} was trained with reference {tb.meta['reference']['key']}, "
                           f"but this run uses {ref_key}; retrain or pass the same --reference")


def bundle_reference_cfg(cfg, tb, reference_name=None) -> None:
    """Use the reference the bundle was trained with unless the user names one."""
    from .reference import REFERENCES

    if not reference_name:
        r = tb.meta["reference"]
        cfg["reference"].update(name=r["name"] if r["name"] in REFERENCES else cfg["reference"]["name"])
        for k in ("weights", "cfg", "names"):
            if r.get(k) and not cfg["reference"].get(k):
                cfg["reference"][k] = r[k]
        if r.get("input_size"):
            cfg["reference"]["input_size"] = r["input_size"]


def query_video(video, cfg, targets: Targets, *, model=None, object_name=None, out=None, start=None, end=None,
                reference_name=None, plot=True, quiet=False, say=None, summary_extra=None, tell=True,
                own_model=False) -> dict:
    """Answer every frame of [start, end) of `video`; write the result folder; return its summary.

    `summary_extra` adds keys to summary.json (the batch runner's record of what was asked).
    `say` takes progress lines for a person (stderr at the command line); warnings go to the
    "noscope" logger. `tell`: say what the check on the video found (one line; a warning when the
    targets are not shown met); a batch says it in each video's line instead. `own_model`: `model`
    names this video's own bundle, trained on demand (a batch with --object; see resolve_model).
    Raises NoscopeError for bad input, like every pipeline step.
    """
    from .answer import answer
    from .planning import choose_plan, usable_models
    from .optimizer import plan_summary
    from .report import write_result
    from .video import open_video

    say = say or (lambda *a, **k: None)
    tb = resolve_model(cfg, video, model, object_name, quiet, say=say, own=own_model)
    warn_min_score(cfg, tb)
    video = video or tb.meta["video"]["path"]
    v = open_video(video, cfg["decode"]["backend"])
    s, e = v.segment(start, end)
    bundle_reference_cfg(cfg, tb, reference_name)
    ref, key = make_reference(cfg)
    check_reference_matches(tb, key)
    if tb.multi:
        objects = parse_objects(object_name) or tb.objects
        return _query_joint(v, tb, objects, cfg, targets, ref, key, s, e, out, plot, quiet, say, summary_extra, tell)
    plan = choose_plan(tb, targets, cfg["optimizer"])
    offered = len(usable_models(tb, cfg["optimizer"]["min_auc"]))
    say(f"cascade: {plan_summary(plan)} ({offered} of {len(tb.meta['candidates'])} specialized models "
        f"passed the held-out AUC >= {cfg['optimizer']['min_auc']} guard)")
    results, reports = answer(v, tb, plan, ref, key, s, e, cfg, targets, quiet=quiet)
    result, verified = results[tb.object], reports[tb.object]
    out = Path(out) if out else Path("noscope-out") / default_name(video, tb.object)
    summary = dict(_summary(v, tb, tb.object, result, plan, targets, key, s, e, out), verified=verified,
                   **(summary_extra or {}))
    _warn_if_stopped(v, result, s, e, summary)
    if tell:
        tell_verified(verified, targets, say)
    return write_result(out, result, v, summary, tb.meta["labels"]["min_score"], plot=plot)


def bundle_video(tb, v) -> dict:
    """What the bundle was trained on, for the summary: its video's path and contents hash, and
    whether that is the queried video (a bundle of the same camera is fine when the user named it)."""
    trained = tb.meta["video"]
    return dict(video=trained["path"], hash=trained["hash"], this_video=trained["hash"] == v.hash)


def model_words(summary: dict) -> str:
    """'bundle NAME (trained on this video)' or '... (trained on PATH)', for a summary line."""
    t = summary.get("trained_on") or {}
    where = "this video" if t.get("this_video") else t.get("video", "an unknown video")
    return f"bundle {Path(summary['model']).name} (trained on {where})"


def _summary(v, tb, obj, result, plan, targets, key, s, e, out) -> dict:
    """One object's summary.json (the same fields whether it was answered alone or with others)."""
    from .optimizer import STAGES

    n = len(result.frames)
    return dict(
        video=str(v.path), video_abspath=str(v.path.resolve()), video_hash=v.hash, fps=v.fps,
        object=obj, model=str(tb.root), trained_on=bundle_video(tb, v), segment=[s, e], frames=n,
        positives=int(result.labels.sum()), wall_seconds=round(result.seconds, 3),
        frames_per_s=round(n / result.seconds, 1) if result.seconds else None,
        reference_calls=len(result.reference_scores), fractions=result.fractions(),
        decided_frames={st: int((result.decided_by == st).sum()) for st in STAGES},
        stage_seconds={k: round(x, 3) for k, x in result.stage_seconds.items()},
        cascade=plan.to_dict(), targets=dict(fpr=targets.fpr, fnr=targets.fnr, metric=targets.metric, window=targets.window),
        min_score=tb.meta["labels"]["min_score"], reference=key, out=str(out),
    )


def verified_line(verified: dict, targets: Targets) -> str:
    """One line on what the check on the queried video says of the targets."""
    def one(name: str, rate: dict | None, target: float) -> str:
        if rate is None:
            return f"{name} unchecked"
        if rate["high"] is None:
            kind = "positive" if name == "FNR" else "negative"
            return f"{name}: no {kind} frame seen, at most {rate['count_high']} frames wrong"
        est = "n/a" if rate["estimate"] is None else f"{rate['estimate']:.2%}"  # no drawn frame could be answered
        return f"{name} {est} (bound {rate['high']:.2%}, target {target:.2%})"

    conf = f"{verified.get('confidence', 0.95):.0%}"
    what = {True: f"targets met ({conf} bounds)", False: "targets missed", None: "targets not verified"}[verified["met"]]
    rates = f"{one('FPR', verified['fpr'], targets.fpr)}, {one('FNR', verified['fnr'], targets.fnr)}"
    extra = f"; repaired: {'; '.join(verified['escalations'])}" if verified.get("escalations") else ""
    if verified.get("reference_answered"):
        extra += f"; the reference answered every cheap {' and '.join(verified['reference_answered'])} frame"
    hint = "" if verified["met"] or verified.get("mode") == "guarantee" else "; --guarantee checks until they are met"
    return f"{what} on this video: {rates}, {verified.get('checked', 0)} frames checked{extra}{hint}"


def tell_verified(verified: dict, targets: Targets, say, prefix: str = "") -> None:
    """A met target is a progress line; anything else is one warning line on stderr."""
    if verified.get("met"):
        say(f"{prefix}verified: {verified_line(verified, targets)}")
    else:
        log.warning("%s%s", prefix, verified_line(verified, targets))


def _warn_if_stopped(v, result, s, e, summary: dict) -> None:
    """One warning when decoding stopped well before the end of the segment or of the file,
    judged in time (the frames' presentation times): a frame count is only the container's guess."""
    from .video import stop_is_truncation, stopped_early

    stop_time = (float(result.times[-1]) + 1 / v.fps) if len(result.times) else s / v.fps
    early = stopped_early(result.stopped_at, stop_time, v.fps, s, e)
    if result.stopped_at is not None and (early or stopped_early(result.stopped_at, stop_time, v.fps, 0, v.frame_count)
                                          or stop_is_truncation(v)):
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


def _all_met(each: list) -> bool | None:
    return False if False in each else (True if all(m is True for m in each) else None)


def _query_joint(v, tb, objects, cfg, targets, ref, key, s, e, out, plot, quiet, say, summary_extra=None,
                 tell=True) -> dict:
    """Several objects from one pass: OUT/VIDEOSTEM-OBJECT/ per object (the single-object result
    folder, so downstream tools work unchanged), then OUT/summary.json last."""
    import numpy as np

    from .answer import answer
    from .optimizer import STAGES
    from .planning import choose_joint_plan, usable_models
    from .joint import joint_decided, joint_summary
    from .optimizer import stage_fractions
    from .report import clear_result, write_json, write_result

    plan = choose_joint_plan(tb, targets, cfg["optimizer"], objects)
    guard = cfg["optimizer"]["min_auc"]
    offered = ", ".join(f"{o} {len(usable_models(tb, guard, o))}" for o in objects)
    say(f"cascade: {joint_summary(plan)} (specialized models of {len(tb.meta['candidates'])} passing the held-out "
        f"AUC >= {guard} guard, per object: {offered})")
    results, reports = answer(v, tb, plan, ref, key, s, e, cfg, targets, quiet=quiet)
    out = Path(out) if out else Path("noscope-out") / default_name(v.path, objects)
    first = results[objects[0]]  # frames, timings and reference calls are the pass's, shared by all
    clear_result(out)  # an earlier result (its summary.json first) must not mix with, or vouch for, this one
    stop: dict = {}
    _warn_if_stopped(v, first, s, e, stop)  # once: every object has the same frames
    per = {}
    for o in objects:
        sub = out / default_name(v.path, o)
        summary = dict(_summary(v, tb, o, results[o], plan.plans[o], targets, key, s, e, sub), answered_with=objects,
                       verified=reports[o], **stop)
        per[o] = write_result(sub, results[o], v, summary, tb.meta["labels"]["min_score"], plot=plot)
        if tell:
            tell_verified(reports[o], targets, say, prefix=f"{o}: ")
    # The pass's stage per frame: a frame reached the reference if any object sent it there.
    codes = joint_decided([np.select([r.decided_by == st for st in STAGES], range(len(STAGES))) for r in results.values()])
    n = len(first.frames)
    top = dict(
        video=str(v.path), objects=objects, model=str(tb.root), trained_on=bundle_video(tb, v), segment=[s, e], frames=n,
        wall_seconds=round(first.seconds, 3), frames_per_s=round(n / first.seconds, 1) if first.seconds else None,
        reference_calls=len(first.reference_scores),
        fractions=stage_fractions(codes),
        stage_seconds={k: round(x, 3) for k, x in first.stage_seconds.items()},
        cascade=plan.to_dict(), targets=dict(fpr=targets.fpr, fnr=targets.fnr, metric=targets.metric, window=targets.window),
        min_score=tb.meta["labels"]["min_score"], reference=key, out=str(out),
        results={o: dict(out=per[o]["out"], positives=per[o]["positives"], intervals=per[o]["intervals"],
                         fractions=per[o]["fractions"], verified_met=reports[o]["met"]) for o in objects},
        verified_met=_all_met([reports[o]["met"] for o in objects]),
    )
    top.update(stop)
    top.update(summary_extra or {})
    write_json(out / "summary.json", top)  # last: its presence means every object's folder is complete
    return top
