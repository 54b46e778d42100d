"""`noscope query` for one video: open it, pick the cascade, answer and check, write the answers.

    from noscope.query import query_video
    summary = query_video("cam.mp4", settings, targets, model="store", out=Path("out/cam"))

One path for one object or several (one object is a plan with K = 1). The command line, the
many-videos runner and the Ray executor all call `query_video`, so a video answered on a cluster
is answered exactly as it is locally.
"""

from __future__ import annotations

from .answer import answer
from .atomic import hold_folder
from .labels import note_check, store_dir
from .errors import UsageError
from .planning import choose_plan, choose_window_plan, usable_models
from .plans import Targets
from .prepare import Query, open_query
from .results import result_folder, write_results, write_window_results
from .settings import Settings
from .window_answer import WindowRun
from .windows import WindowQuestion, parse_window


def query_video(video, settings: Settings, targets: Targets, *, model=None, objects=None, out=None, start=None,
                end=None, reference_named=False, plot=True, quiet=False, say=None, summary_extra=None, tell=True,
                own_model=False) -> dict:
    """Answer every frame of [start, end) of `video`; write the result folder; return its summary.

    `summary_extra` adds keys to summary.json (the batch runner's record of what was asked).
    `say` takes progress lines for a person (stderr at the command line); warnings go to the
    "noscope" logger. `tell`: say what the check on the video found (one line; a warning when the
    targets are not shown met); a batch says it in each video's line instead. `own_model`: `model`
    names this video's own bundle, trained on demand (a batch with --object; see prepare.resolve_bundle).
    Raises NoscopeError for bad input, like every pipeline step.
    """
    say = say or (lambda *a, **k: None)
    q = open_query(settings, video, model, objects, start, end, reference_named=reference_named, quiet=quiet, say=say,
                   own=own_model)
    question = window_question(settings, q)
    out = result_folder(out, q)
    with hold_folder(out):  # two queries into one folder at once: the second is told, not the last one winning
        if question is not None and question.size > 1:
            return query_windows(q, settings, targets, question, out, dict(plot=plot, say=say, tell=tell,
                                                                            extra=summary_extra, quiet=quiet))
        plan = choose_plan(q.bundle, targets, q.objects, settings.optimizer)
        say(f"cascade: {plan.describe()} ({offered_models(q, settings.optimizer.min_auc)})")
        results, reports = answer(q, plan, targets, settings, quiet=quiet)
        summary = write_results(out, q, plan, results, reports, targets, plot=plot, say=say, tell=tell,
                                extra=dict(summary_extra or {}, **one_frame_windows(question)))
    note_check(store_dir(q.video, q.ref_key, q.reference), check_record(q, summary, reports, targets))
    return summary


def window_question(settings: Settings, q: Query) -> WindowQuestion | None:
    """The question per window the settings ask (query.window, --window), in frames of this video;
    None: per frame. A windowed query answers one object."""
    if settings.query.window is None:
        return None
    spec = parse_window(settings.query.window)
    if len(q.objects) > 1:
        raise UsageError(f"--window answers one object at a time; give --object with one of {', '.join(q.objects)}")
    return WindowQuestion(spec.frames_at(q.video.fps), float(settings.query.window_share))


def one_frame_windows(question: WindowQuestion | None) -> dict:
    """--window 1f: the per-frame question itself (every window one frame), said so in summary.json."""
    return {} if question is None else dict(unit="windows", window=dict(frames=1, share=question.share))


def query_windows(q: Query, settings: Settings, targets: Targets, question: WindowQuestion, out, how: dict) -> dict:
    """A windowed query of one object (noscope.window_answer): plan, answer and check per window, write."""
    (obj,) = q.objects
    plan = choose_window_plan(q.bundle, targets, obj, settings.optimizer, question)
    how["say"](f"cascade: {plan.describe()}")
    run = WindowRun(q, settings, question, quiet=how["quiet"])
    run.spec = str(settings.query.window)
    results, reports = run.answer(plan, targets)
    return write_window_results(out, q, run, (plan, results, reports), targets, how)


def check_record(q: Query, summary: dict, reports: dict, targets: Targets) -> dict:
    """What the check on this video found, for a later update of the bundle (noscope.update.vouched):
    which version answered at which targets, the share of frames the cheap stages settled in the end,
    how many frames the check drew, and whether it repaired anything."""
    return dict(bundle=str(q.bundle.root.resolve()), version=q.bundle.version, segment=[q.start, q.end],
                targets=dict(fpr=targets.fpr, fnr=targets.fnr), cheap=round(1 - summary["fractions"]["reference"], 4),
                checked=sum(int(r.get("checked") or 0) for r in reports.values()),
                escalated=any(bool(r.get("escalated")) for r in reports.values()),
                met={o: r.get("met") for o, r in reports.items()})


def offered_models(q: Query, min_auc: float) -> str:
    """How many models the optimizer was offered, for the cascade line."""
    total = len(q.bundle.candidates)
    counts = {o: len(usable_models(q.bundle, min_auc, o)) for o in q.objects}
    each = f"{counts[q.objects[0]]}" if len(q.objects) == 1 else "per object " + ", ".join(f"{o} {n}" for o, n in counts.items())
    guard = f" with a held-out AUC >= {min_auc}" if min_auc > 0 else ""
    return f"{each} of {total} models offered{guard}"
