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


def default_name(video, object_name) -> str:
    return f"{Path(video).stem}-{object_name}"


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
    from .reference import load_reference, reference_key
    from .train import _device

    r = cfg["reference"]
    ref = load_reference(r["name"], device=_device(cfg), weights=r["weights"], cfg=r["cfg"], names=r["names"],
                         input_size=tuple(r["input_size"]) if r["input_size"] else None, batch_size=r["batch_size"])
    return ref, reference_key(ref)


def resolve_model(cfg, video, model, object_name, quiet, start=None, end=None, say=None):
    """Load the bundle; with --object and no bundle, train one on this video first."""
    from .cascade import load_bundle
    from .train import train as run_train

    if model is None and object_name is None:
        raise UsageError("give --model NAME (a trained bundle) or --object OBJ (trains one on this video first)")
    say = say or (lambda *a, **k: None)
    root = bundle_path(model or default_name(video, object_name))
    if not (root / "bundle.yaml").is_file() and object_name and video:
        say(f"no bundle at {root}; training one on {video} for {object_name}")
        run_train(video, object_name, root, cfg, start, end, quiet=quiet, say=say)
    tb = load_bundle(root)
    if object_name and object_name != tb.object:
        raise NoscopeError(f"bundle {root} was trained for {tb.object!r}, not {object_name!r}")
    return tb


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
                reference_name=None, plot=True, quiet=False, say=None, summary_extra=None) -> dict:
    """Answer every frame of [start, end) of `video`; write the result folder; return its summary.

    `summary_extra` adds keys to summary.json (the batch runner's record of what was asked). `say` takes progress lines for a person (stderr at the command line); warnings go to the
    "noscope" logger. Raises NoscopeError for bad input, like every pipeline step.
    """
    from .cascade import choose_plan, run_cascade, usable_models
    from .optimizer import plan_summary
    from .report import write_result
    from .video import open_video, stop_is_truncation

    say = say or (lambda *a, **k: None)
    tb = resolve_model(cfg, video, model, object_name, quiet, say=say)
    video = video or tb.meta["video"]["path"]
    v = open_video(video)
    s, e = v.segment(start, end)
    bundle_reference_cfg(cfg, tb, reference_name)
    ref, key = make_reference(cfg)
    check_reference_matches(tb, key)
    plan = choose_plan(tb, targets, cfg["optimizer"])
    offered = len(usable_models(tb, cfg["optimizer"]["min_auc"]))
    say(f"cascade: {plan_summary(plan)} ({offered} of {len(tb.meta['candidates'])} specialized models "
        f"passed the held-out AUC >= {cfg['optimizer']['min_auc']} guard)")
    result = run_cascade(v, tb, plan, ref, key, s, e, batch_size=cfg["query"]["batch_size"], quiet=quiet)
    out = Path(out) if out else Path("noscope-out") / default_name(video, tb.object)
    n = len(result.frames)
    summary = dict(
        video=str(v.path), object=tb.object, model=str(tb.root), segment=[s, e], frames=n,
        positives=int(result.labels.sum()), wall_seconds=round(result.seconds, 3),
        frames_per_s=round(n / result.seconds, 1) if result.seconds else None,
        reference_calls=len(result.reference_scores), fractions=result.fractions(),
        stage_seconds={k: round(x, 3) for k, x in result.stage_seconds.items()},
        cascade=plan.to_dict(), targets=dict(fpr=targets.fpr, fnr=targets.fnr, metric=targets.metric, window=targets.window),
        min_score=tb.meta["labels"]["min_score"], reference=key, out=str(out), **(summary_extra or {}),
    )
    if stop_is_truncation(v) or (result.stopped_at is not None and e - result.stopped_at > 0.05 * (e - s) + 3):
        summary["stopped_at"] = int(result.stopped_at)
        log.warning("the video stops decoding at frame %d; answered the frames before it", result.stopped_at)
    return write_result(out, result, v, summary, tb.meta["labels"]["min_score"], plot=plot)
