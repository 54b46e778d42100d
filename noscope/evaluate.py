"""`noscope evaluate`: the cascade against the reference on every frame, both timed end to end.

    noscope evaluate storefront.mp4 --model store --start 60% --target-fpr 0.01 --target-fnr 0.01 --json

Both runs decode the same file with the same decoder, and neither reads the label cache (the
reference pass refreshes it; the cascade's reference calls go to the detector), so the
speed-up is the honest end-to-end one, decoding included.
"""

from __future__ import annotations

import time

import numpy as np

from .cascade import choose_plan, run_cascade
from .labels import label_frames
from .metrics import evaluate as rates
from .train import object_truth
from .video import decode_options, open_video


def evaluate(video_path, tb, reference, ref_key, targets, cfg, start=None, end=None, quiet=False) -> dict:
    video = open_video(video_path, cfg["decode"]["backend"])
    s, e = video.segment(start, end)
    cls = tb.meta["class_index"]
    lab = tb.meta["labels"]

    t0 = time.perf_counter()
    labels = label_frames(video, reference, ref_key, np.arange(s, e), refresh=True, quiet=quiet, desc="reference")
    t_ref = time.perf_counter() - t0

    plan = choose_plan(tb, targets, cfg["optimizer"])
    result = run_cascade(video, tb, plan, reference, ref_key, s, e, batch_size=cfg["query"]["batch_size"],
                         use_label_cache=False, **dict(decode_options(cfg), frame_cache=False), quiet=quiet)

    common = np.intersect1d(labels.frames, result.frames)
    truth_all = object_truth(labels.score_of(cls), lab["min_score"], lab["smooth"])
    truth = truth_all[np.searchsorted(labels.frames, common)]
    pred = result.labels[np.searchsorted(result.frames, common)]
    f_fpr, f_fnr = rates(pred, truth, "frames", targets.window)
    w_fpr, w_fnr = rates(pred, truth, "windows", targets.window)
    n = len(common)
    return dict(
        video=str(video.path), object=tb.object, model=str(tb.root), segment=[int(s), int(e)], frames_compared=int(n),
        positives=int(truth.sum()),
        targets=dict(fpr=targets.fpr, fnr=targets.fnr, metric=targets.metric, window=targets.window),
        frames=dict(fpr=float(f_fpr), fnr=float(f_fnr)),
        windows=dict(fpr=float(w_fpr), fnr=float(w_fnr), window=targets.window),
        reference_seconds=round(t_ref, 3), cascade_seconds=round(result.seconds, 3),
        reference_fps=len(labels.frames) / t_ref if t_ref else float("nan"),
        cascade_fps=len(result.frames) / result.seconds if result.seconds else float("nan"),
        speedup=t_ref / result.seconds * len(result.frames) / max(len(labels.frames), 1) if result.seconds else float("nan"),
        reference_calls=len(result.reference_scores), fractions=result.fractions(), cascade=plan.to_dict(),
        stage_seconds={k: round(v, 4) for k, v in result.stage_seconds.items()},
        device=str(reference.device),
    )
