"""Which scenes can cheap models settle? How often the reference itself hovers at its threshold.

    .venv/bin/python scripts/scene_kinds.py                         # the forward table's ten pairs, last 40%
    .venv/bin/python scripts/scene_kinds.py --smooth 5 9 --out kinds

Where the reference's own score for an object lies near its threshold on many frames, and its
answer flips every few frames, nothing cheaper predicts it: on such a scene the reference has to
answer the hovering frames and its speed sets the pace. Per (clip, object) this prints, over the
frames the forward table measures (the last 40%, never trained on): the share of frames whose
reference score lies in [0.35, 0.65] (min score 0.5), the reference's answer changes per 100
frames, and what a majority filter over the answers (`labels.smooth` K) does to those changes and
to the positive share. Reference answers come from the label cache; missing ones are labelled.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import harness
from noscope.config import load_config
from noscope.labels import label_frames, object_truth
from noscope.prepare import open_reference
from noscope.settings import Settings
from noscope.video import open_video

BAND = (0.35, 0.65)


def changes_per_100(truth: np.ndarray) -> float:
    return 100.0 * float(np.count_nonzero(truth[1:] != truth[:-1])) / max(len(truth) - 1, 1)


def scene(scores: np.ndarray, min_score: float, smooths: list[int]) -> dict:
    """The reference's hovering share and answer changes, raw and smoothed, of one object's scores."""
    truth = object_truth(scores, min_score, 1)
    row = dict(frames=len(scores), positives=float(truth.mean()), hovering=float(np.mean((scores >= BAND[0]) & (scores <= BAND[1]))),
               changes=changes_per_100(truth))
    for k in smooths:
        t = object_truth(scores, min_score, k)
        row[f"smooth{k}"] = dict(changes=changes_per_100(t), positives=float(t.mean()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smooth", nargs="+", type=int, default=[5])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    settings = Settings.from_config(load_config(None, args.sets))
    reference, key = open_reference(settings.reference)
    rows = []
    for clip, obj in harness.FORWARD:
        video = open_video(harness.VIDEOS / clip, settings.decode.backend)
        frames = np.arange(*harness.unseen(video))  # the forward table's segment, by the same rule
        labels = label_frames(video, reference, key, frames, quiet=True)
        scores = labels.scores[:, reference.class_names.index(obj)]
        rows.append(dict(clip=Path(clip).stem, object=obj, **scene(scores, settings.labels.min_score, args.smooth)))
    head = "| clip | object | frames | positive share | score in [0.35, 0.65] | answer changes / 100 frames | " + \
        " | ".join(f"smooth {k}: changes / 100, positive share" for k in args.smooth) + " |"
    lines = [f"Reference {key}, min score {settings.labels.min_score}; the last 40% of each clip.", "", head,
             "|" + "---|" * (6 + len(args.smooth))]
    for r in rows:
        lines.append(f"| {r['clip']} | {r['object']} | {r['frames']} | {r['positives']:.2f} | {r['hovering']:.2f} | "
                     f"{r['changes']:.1f} | " + " | ".join(f"{r[f'smooth{k}']['changes']:.1f}, {r[f'smooth{k}']['positives']:.2f}"
                                                          for k in args.smooth) + " |")
    harness.Report(args.out).write("\n".join(lines), rows)


if __name__ == "__main__":
    main()
