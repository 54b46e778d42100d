"""Reference speed per runtime: `predict` and the whole `label_frames` path, plus agreement with PyTorch.

    .venv/bin/python scripts/reference_speed.py                         # storefront clip, CPU, every runtime installed
    .venv/bin/python scripts/reference_speed.py --frames 400 --batch-size 16 --repeats 5 --device cpu
    .venv/bin/python scripts/reference_speed.py --runtimes torch,onnxruntime --label-frames 0
    # and the code as it was before a change (any commit), timed in the same process:
    git archive 2ec6695 noscope | tar -x -C /tmp/base && .venv/bin/python scripts/reference_speed.py --baseline-src /tmp/base

For each runtime (noscope.reference.runtime) it prints one markdown table row:
  - predict frames/s: `Reference.predict` on frames decoded beforehand at the reference's input
    size (as label_frames hands them over), network, decoding and NMS included, in batches of
    --batch-size; --frames frames spread evenly over the clip;
  - label_frames frames/s: `noscope.labels.label_frames` on --label-frames consecutive frames from
    --label-start, no label cache: decoding at the input size (PyAV, its prefetch thread) included;
  - max |score - torch|: the largest difference of any class score from PyTorch's on the predict frames;
  - positives: whether the (frame, class) pairs scoring >= --min-score are the same as PyTorch's.
Runtimes are timed interleaved (torch, onnxruntime, openvino, torch, ...) --repeats times and the
median is reported, so load from other jobs hits all of them alike; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import harness
from noscope.errors import NoscopeError
from noscope.labels import label_frames
from noscope.reference import load_reference, reference_key, reference_runtime
from noscope.reference.runtime import RUNTIMES, problem
from noscope.video import open_video

STOREFRONT = harness.VIDEOS / "storefront-cctv_people.mp4"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=STOREFRONT)
    ap.add_argument("--reference", default="yolov3-tiny")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--runtimes", default=",".join(r for r in RUNTIMES if r != "auto"),
                    help="comma-separated; those not installed here are listed and skipped")
    ap.add_argument("--frames", type=int, default=400, help="frames spread over the clip for predict and agreement")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--label-frames", type=int, default=400, help="consecutive frames for label_frames; 0 = skip")
    ap.add_argument("--label-start", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--min-score", type=float, default=0.5)
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="a folder holding another `noscope` package (e.g. git archive of an older commit): "
                         "its yolov3-tiny in PyTorch is timed as one more row")
    return ap.parse_args(argv)


class Row:
    """One thing to time: a reference and the label_frames (and video opener) that go with it."""

    def __init__(self, name: str, ref, key: str, labels_fn, open_fn, runtime_id: str):
        self.name, self.ref, self.key, self.runtime_id = name, ref, key, runtime_id
        self.labels_fn, self.open_fn = labels_fn, open_fn
        self.predict_fps: list[float] = []
        self.label_fps: list[float] = []
        self.scores: np.ndarray | None = None


def rows_for(args) -> tuple[list[Row], list[str]]:
    rows, skipped = [], []
    for name in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
        why = problem(name, torch.device(args.device)) if name != "torch" else None
        if why:
            skipped.append(f"{name}: {why}")
            continue
        ref = load_reference(args.reference, device=args.device, batch_size=args.batch_size, runtime=name)
        rows.append(Row(name, ref, reference_key(ref), label_frames, open_video, reference_runtime(ref)))
    if args.baseline_src:
        rows.append(baseline_row(args))
    return rows, skipped


def baseline_row(args) -> Row:
    """The reference of another copy of the package (imported as `noscope_baseline`), in PyTorch."""
    try:
        harness.import_copy(args.baseline_src, "noscope_baseline")
    except FileNotFoundError as e:
        raise NoscopeError(f"--baseline-src {e}") from None
    from noscope_baseline import labels as base_labels, reference as base_reference, video as base_video

    ref = base_reference.load_reference(args.reference, device=args.device, batch_size=args.batch_size)
    return Row(f"baseline ({args.baseline_src})", ref, base_reference.reference_key(ref), base_labels.label_frames,
               base_video.open_video, base_reference.reference_runtime(ref))


def spread_frames(args, ref) -> np.ndarray:
    """--frames frames spread over the clip, decoded at the reference's input size."""
    video = open_video(args.video)
    wanted = np.unique(np.linspace(0, video.frame_count - 1, args.frames).astype(np.int64))
    size = ref.input_size or (video.width, video.height)
    return np.concatenate([b.frames["det"] for b in video.batches({"det": size}, frames=wanted, batch_size=64)])


def time_predict(row: Row, frames: np.ndarray, batch: int) -> np.ndarray:
    t0 = time.perf_counter()
    scores = [row.ref.predict(frames[i : i + batch])[0] for i in range(0, len(frames), batch)]
    row.predict_fps.append(len(frames) / (time.perf_counter() - t0))
    return np.concatenate(scores)


def time_labels(row: Row, args) -> None:
    video = row.open_fn(args.video)
    frames = np.arange(args.label_start, min(args.label_start + args.label_frames, video.frame_count))
    t0 = time.perf_counter()
    row.labels_fn(video, row.ref, row.key, frames, use_cache=False, quiet=True)
    row.label_fps.append(len(frames) / (time.perf_counter() - t0))


def table(rows: list[Row], min_score: float) -> str:
    base = next((r.scores for r in rows if r.name == "torch"), None)
    out = ["| runtime | label cache runtime | predict frames/s | label_frames frames/s | max \\|score - torch\\| "
           f"| positives >= {min_score:g} same as torch |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        label = f"{statistics.median(r.label_fps):.1f}" if r.label_fps else "-"
        if base is None or r.scores is None:
            diff, same = "-", "-"
        else:
            diff = f"{np.abs(r.scores - base).max():.1e}"
            flips = int(((r.scores >= min_score) != (base >= min_score)).sum())
            same = f"yes ({int((base >= min_score).sum())} pairs)" if flips == 0 else f"no: {flips} pairs differ"
        out.append(f"| {r.name} | {r.runtime_id} | {statistics.median(r.predict_fps):.1f} | {label} | {diff} | {same} |")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rows, skipped = rows_for(args)
    except NoscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if not rows:
        print("nothing to time: " + "; ".join(skipped), file=sys.stderr)
        return 2
    frames = spread_frames(args, rows[0].ref)
    for r in rows:  # warm-up (first-call allocations, lazy kernel choices), and the agreement scores
        r.scores = np.concatenate([r.ref.predict(frames[i : i + args.batch_size])[0] for i in range(0, len(frames), args.batch_size)])
    for _ in range(args.repeats):
        for r in rows:
            time_predict(r, frames, args.batch_size)
            if args.label_frames > 0:
                time_labels(r, args)
    print(f"{args.reference} {rows[0].ref.input_size}, {args.video.name}, device {args.device}, batch {args.batch_size}, "
          f"{len(frames)} spread frames for predict, {args.label_frames} consecutive from {args.label_start} for "
          f"label_frames, median of {args.repeats} interleaved rounds")
    print(f"{harness.machine_line(harness.machine())} Load average at the end {os.getloadavg()[0]:.1f}.\n")
    print(table(rows, args.min_score))
    for s in skipped:
        print(f"\nskipped {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
