"""Benchmark: decode ceiling, reference on every frame, and the cascade, end to end.

    .venv/bin/python scripts/bench.py                       # shared clips, targets 0.01/0.01
    .venv/bin/python scripts/bench.py --set train.grid=small --out bench   # writes bench.md, bench.json

For each (clip, object): trains a bundle on the first 60% (reused if already trained with the
same settings), then on the last 40% measures
  - decode-only frames/s: the same OpenCV decode + resize to 50x50 the cascade uses (the ceiling),
  - reference on every frame, end to end (decode included, no label cache),
  - the cascade end to end (decode included, no label cache) and its speed-up,
  - the cascade on already-decoded frames (the NoScope paper's way of counting: its stage
    times without decoding),
  - frame-level FPR/FNR against the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from noscope.bundle import bundle_path
from noscope.cascade import load_bundle
from noscope.config import load_config
from noscope.evaluate import evaluate
from noscope.optimizer import Targets
from noscope.reference import load_reference, reference_key
from noscope.train import _device, train
from noscope.video import open_video

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "videos"
CASES = [("storefront-cctv_people.mp4", "person"), ("urban-road-cctv_cars-buses-motorbikes.mp4", "bus")]


def decode_fps(video, start, end, size=50) -> float:
    t = time.perf_counter()
    n = sum(len(b) for b in video.batches({"s": (size, size)}, start, end, batch_size=256))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    cfg = load_config(None, args.sets)
    targets = Targets(args.target, args.target)
    r = cfg["reference"]
    ref = load_reference(r["name"], device=_device(cfg), batch_size=r["batch_size"])
    key = reference_key(ref)
    rows = []
    for clip, obj in CASES:
        path = VIDEOS / clip
        video = open_video(path)
        s, e = video.segment("60%", None)
        root = bundle_path(f"bench-{Path(clip).stem}-{obj}")
        train(path, obj, root, cfg, None, "60%", quiet=True, say=lambda *a: None)
        tb = load_bundle(root)
        dec = decode_fps(video, s, e)
        rep = evaluate(path, tb, ref, key, targets, cfg, "60%", None, quiet=True)
        n = rep["frames_compared"]
        st = rep["stage_seconds"]
        predecoded = n / max(st["diff"] + st["model"] + st["reference"], 1e-9)
        rows.append(dict(clip=clip, object=obj, frames=n, decode_fps=dec, reference_fps=rep["reference_fps"],
                         cascade_fps=rep["cascade_fps"], speedup=rep["speedup"], cascade_of_decode=rep["cascade_fps"] / dec,
                         predecoded_fps=predecoded, fpr=rep["frames"]["fpr"], fnr=rep["frames"]["fnr"],
                         positives=rep["positives"], reference_calls=rep["reference_calls"], device=rep["device"],
                         threads=torch.get_num_threads(), reference_batch=ref.batch_size,
                         query_batch=cfg["query"]["batch_size"]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, device {rows[0]['device']}, torch threads "
             f"{rows[0]['threads']}; target FPR=FNR={args.target}; last 40% of each clip (no looping)", "",
             "| clip | object | frames (pos) | decode-only fps | reference fps | cascade fps | speed-up | cascade / decode "
             "| cascade fps, pre-decoded | FPR | FNR | reference calls |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['clip']} | {x['object']} | {x['frames']} ({x['positives']}) | {x['decode_fps']:.0f} "
                     f"| {x['reference_fps']:.1f} | {x['cascade_fps']:.0f} | {x['speedup']:.1f}x | {100 * x['cascade_of_decode']:.0f}% "
                     f"| {x['predecoded_fps']:.0f} | {x['fpr']:.3f} | {x['fnr']:.3f} | {x['reference_calls']} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
