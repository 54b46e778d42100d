"""`noscope evaluate`: the answers a query gives against the reference on every frame, both timed end to end.

    noscope evaluate storefront.mp4 --model store --start 60% --target-fpr 0.01 --target-fnr 0.01 --json
    reports = evaluate(q, targets, settings)          # object -> report (q: prepare.open_query)

A several-objects bundle is answered in one pass, as a query answers it, and measured per object.

Both runs decode the same file with the same decoder, and neither reads the label cache (the
reference pass refreshes it; the cascade's and the verification's reference calls go to the
detector), so the speed-up is the honest end-to-end one, decoding and verification included.
The answers measured are the query's final ones (after verification and any repair); the
cascade's first pass is measured too, so a repair shows.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .answer import QueryRun
from .errors import NoscopeError
from .labels import label_frames, object_truth
from .metrics import evaluate as rates
from .metrics import window_labels
from .planning import choose_plan, choose_window_plan
from .plans import Plan, Targets
from .prepare import Query
from .reference import reference_runtime
from .settings import Settings
from .window_answer import WindowRun
from .windows import WindowQuestion

log = logging.getLogger("noscope")


def measured(result, frames: np.ndarray, truth: np.ndarray, window: int) -> dict:
    """Frame and window FPR/FNR of a result against the reference's answers on `frames` (None
    where a rate has no frame, or no window, of its kind: a rate from zero positives is not a
    measurement; one positive window and no negative one has a window FNR and no window FPR)."""
    common = np.intersect1d(frames, result.frames)
    t = truth[np.searchsorted(frames, common)]
    pred = result.labels[np.searchsorted(result.frames, common)]
    f_fpr, f_fnr = rates(pred, t, "frames", window)
    w_fpr, w_fnr = rates(pred, t, "windows", window)
    w_truth = window_labels(t, window)
    return dict(frames_compared=int(len(common)), positives=int(t.sum()),
                frames=dict(fpr=defined(f_fpr, ~t), fnr=defined(f_fnr, t)),
                windows=dict(fpr=defined(w_fpr, ~w_truth), fnr=defined(w_fnr, w_truth), window=window))


def defined(rate: float, kind: np.ndarray) -> float | None:
    """A rate where frames (or windows) of its kind exist, else None (n/a, never 0)."""
    return float(rate) if bool(kind.any()) else None


def reference_on_every_frame(q: Query, quiet: bool):
    """The reference's answers on every frame of the segment, asked afresh (the run being timed
    against them), and the seconds they took; a segment with no frame to compare is an error."""
    t0 = time.perf_counter()
    labels = label_frames(q.video, q.reference, q.ref_key, np.arange(q.start, q.end), refresh=True, quiet=quiet,
                          desc="reference")
    t_ref = time.perf_counter() - t0
    if not len(labels.frames):
        nothing_to_compare(q, labels.decoding.stopped_at if labels.decoding is not None else None)
    return labels, t_ref


def evaluate(q: Query, targets: Targets, settings: Settings, quiet: bool = False) -> dict[str, dict]:
    """object -> report: the query's answers (after its check and any repair) and its first pass,
    against the reference on every frame of the segment, and both runs' speed."""
    labels, t_ref = reference_on_every_frame(q, quiet)
    plan = choose_plan(q.bundle, targets, q.objects, settings.optimizer)
    run = QueryRun(q, settings, use_label_cache=False, frame_cache=False, quiet=quiet)
    results, reports = run.answer(plan, targets)
    out = {}
    for o in q.objects:
        truth = object_truth(labels.score_of(q.bundle.class_index(o)), q.bundle.min_score, q.bundle.smooth)
        out[o] = _report(q, o, labels.frames, truth, t_ref, results[o], run.first[o], reports[o], plan, targets)
    return out


def evaluate_windows(q: Query, targets: Targets, settings: Settings, question: WindowQuestion,
                     quiet: bool = False) -> dict[str, dict]:
    """object -> report for a windowed query (one object): its final window answers against the
    reference's windows (the share rule over every frame of each), the frames carrying those answers
    against the reference per frame, side by side; the first pass's too; speed as `evaluate`."""
    (obj,) = q.objects
    labels, t_ref = reference_on_every_frame(q, quiet)
    plan = choose_window_plan(q.bundle, targets, obj, settings.optimizer, question)
    run = WindowRun(q, settings, question, use_label_cache=False, quiet=quiet)
    run.spec = str(settings.query.window)
    results, reports = run.answer(plan, targets)
    truth = object_truth(labels.score_of(q.bundle.class_index(obj)), q.bundle.min_score, q.bundle.smooth)
    frames = run.frame_answers(results[obj])
    report = _report(q, obj, labels.frames, truth, t_ref, frames, frames, reports[obj], plan, targets)
    truth_w = run.grid.truth(truth, labels.frames)
    return {obj: dict(report, unit="windows", window=dict(frames=run.grid.size, share=run.grid.share, spec=run.spec),
                      windows=window_errors(results[obj], truth_w),
                      first_pass=dict(window_errors(run.first[obj], truth_w), fractions=run.first[obj].fractions()),
                      fractions=results[obj].fractions(), reference_calls=len(run.used))}


def window_errors(result, truth_w: np.ndarray) -> dict:
    """A windowed result's FPR / FNR over its windows against the reference's windows (None: no window of the kind)."""
    t, said = truth_w[result.frames], np.asarray(result.labels, bool)
    f_fpr, f_fnr = rates(said, t, "frames", 1)
    return dict(fpr=defined(f_fpr, ~t), fnr=defined(f_fnr, t), count=int(len(t)), positives=int(t.sum()))


def _report(q: Query, obj: str, frames: np.ndarray, truth: np.ndarray, t_ref: float, result, first, verified: dict,
            plan: Plan, targets: Targets) -> dict:
    """One object's report: measured errors of the final answers and of the first pass, the check's
    report, and the speed-up end to end against the reference on every frame."""
    s, e = q.start, q.end
    if not len(np.intersect1d(frames, result.frames)):
        nothing_to_compare(q, result.stopped_at)
    segment = compared_segment(frames, result.frames, s, e, result.stopped_at)
    ref_fps = len(frames) / t_ref if t_ref else float("nan")
    ref_per_frame = t_ref / len(frames) if len(frames) else float("nan")  # nothing decoded: no speed
    per_frame = result.seconds / max(len(result.frames), 1)
    cascade_s = result.seconds - result.stage_seconds.get("verify", 0.0)
    return dict(
        video=str(q.video.path), object=obj, model=str(q.bundle.root), segment=segment,
        requested_segment=[int(s), int(e)], **measured(result, frames, truth, targets.window),
        first_pass=dict(measured(first, frames, truth, targets.window), fractions=first.fractions()),
        targets=targets.to_dict(), verified=verified,
        reference_seconds=round(t_ref, 3), cascade_seconds=round(result.seconds, 3),
        verify_seconds=round(result.stage_seconds.get("verify", 0.0), 3),
        reference_fps=ref_fps,
        cascade_fps=len(result.frames) / result.seconds if result.seconds else float("nan"),
        speedup=ref_per_frame / per_frame if result.seconds else float("nan"),
        speedup_without_verify=ref_per_frame / (cascade_s / max(len(result.frames), 1)) if cascade_s > 0 else float("nan"),
        reference_calls=len(result.reference_scores), fractions=result.fractions(), cascade=plan.plans[obj].to_dict(),
        stage_seconds={k: round(v, 4) for k, v in result.stage_seconds.items()},
        device=str(q.reference.device), reference_runtime=reference_runtime(q.reference),
    )


def nothing_to_compare(q: Query, stopped_at: int | None) -> None:
    """An evaluation that compares no frame measures nothing: an error, not a report of nothing."""
    why = f": the video stops decoding at frame {stopped_at}" if stopped_at is not None else ""
    raise NoscopeError(f"nothing to compare in {q.video.path}: no frame of [{q.start}, {q.end}) could be decoded{why}")


def compared_segment(frames: np.ndarray, answered: np.ndarray, s: int, e: int, stopped_at: int | None) -> list[int]:
    """The frames actually compared (those both the reference and the query answered), [first,
    last + 1); one warning line when that is fewer than asked for (a video that stops decoding
    part-way), so a short measurement is never read as the whole segment's."""
    common = np.intersect1d(frames, answered)
    if len(common) < e - s:
        why = f"; the video stops decoding at frame {stopped_at}" if stopped_at is not None else ""
        got = f"[{common[0]}, {common[-1] + 1})" if len(common) else "nothing"
        log.warning("only %d of the %d frames asked for ([%d, %d)) could be compared%s; measured %s", len(common),
                    e - s, s, e, why, got)
    return [int(common[0]), int(common[-1]) + 1] if len(common) else [int(s), int(s)]
