"""Benchmark: decode ceiling, reference on every frame, and the cascade, end to end.

    .venv/bin/python scripts/bench.py                                  # shared clips, targets 0.01/0.01
    .venv/bin/python scripts/bench.py --set train.grid=small --out bench   # writes bench.md, bench.json
    .venv/bin/python scripts/bench.py --rss-loops 10 --heavy          # + peak memory, + projected heavy refs

For each (clip, object) (harness.BENCH; the protocol: scripts/harness.py) it trains a bundle on the
first 60% (reused if already trained with the same settings) and measures, on the unseen last 40%:
  - the reference on every frame, end to end (decode included, no caches), and the cascade's
    frame-level FPR/FNR against it;
then, for timing, the cascade end to end on that last 40% looped until it is long enough for a
stable number (the clip's own packets from the keyframe before the 40% mark, repeated, so the
codec is the clip's; the table says how often; cascades that send most frames to the reference
are timed on the 40% once, from the error run):
  - decode-only frames/s: the decoder and resize to 50x50 that the cascade uses (PyAV: its own
    frame threads; decode.workers processes), no prefetch thread and nothing else (the ceiling
    of a full pass),
  - the query end to end as a first query of the video runs it: nothing cached, its decoding
    thread overlapping the cheap stages, then the check of its answers on the video (the
    reference on query.verify randomly drawn frames per cheap answer) and any repair, all counted,
  - a repeat query of the same video, reading the frame and label caches the first one filled
    (decode once, query many),
  - the cascade's stages alone on already-decoded frames (the NoScope paper's way of counting).
`--heavy` also times heavier references on this machine (torchvision Faster R-CNN and Mask
R-CNN, random weights: timing only) and projects the speed-up the cascade's measured
reference-call share would give against them. `--rss-loops N` runs `noscope query` on the first
clip looped 1x and Nx in fresh processes and reports their peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import harness
from harness import fmt
from noscope.answer import answer
from noscope.bundle import bundle_path
from noscope.config import load_config
from noscope.evaluate import evaluate
from noscope.planning import choose_plan
from noscope.plans import Targets
from noscope.prepare import Query, open_query, open_reference
from noscope.settings import Settings
from noscope.train import train
from noscope.video import decode_workers, open_video


def decode_fps(video, start, end, workers: int) -> float:
    n, seconds = harness.decode_only(video, start, end, workers)
    return n / seconds


def timed_query(q: Query, plan, settings: Settings, targets):
    """The query over the whole video as `noscope query` answers it: the cascade, then the check on
    the video and any repair (frame and label caches on). -> (result, its verification, frames/s)."""
    t = time.perf_counter()
    results, reports = answer(q, plan, targets, settings, quiet=True)
    o = q.objects[0]
    return results[o], reports[o], len(results[o].frames) / (time.perf_counter() - t)


def heavy_reference_seconds(width: int, height: int, frames: int = 2) -> dict[str, float]:
    """Seconds per frame of torchvision's two-stage detectors at this resolution (random weights)."""
    from torchvision.models import detection

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for name, make in (("faster-rcnn-r50", detection.fasterrcnn_resnet50_fpn),
                       ("mask-rcnn-r50", detection.maskrcnn_resnet50_fpn)):
        m = make(weights=None, weights_backbone=None).eval().to(dev)
        x = [torch.rand(3, height, width, device=dev) for _ in range(frames)]
        with torch.inference_mode(), torch.autocast("cuda", enabled=dev == "cuda"):
            m(x[:1])  # warm-up
            t = time.perf_counter()
            m(x)
            if dev == "cuda":
                torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t) / frames
    return out


def peak_rss_mb(video: Path, model: Path, cfg_sets: list[str], out: Path) -> tuple[float, float]:
    """Peak resident memory (MB) and wall seconds of a fresh `noscope query` process."""
    ran = harness.cli("query", video, "--model", model, "--out", out, "-q", "--no-plot", "--set", "decode.frame_cache=false",
                      *harness.set_flags(cfg_sets), cwd=harness.ROOT)
    return ran.peak_rss_mb, ran.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--loop-frames", type=int, default=6000, help="loop clips until this many frames are timed")
    ap.add_argument("--heavy", action="store_true", help="time Faster/Mask R-CNN and project speed-ups against them")
    ap.add_argument("--rss-loops", type=int, default=0, help="peak RSS of a query on the first clip, 1x and this many x")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    settings = Settings.from_config(load_config(None, args.sets))
    targets = Targets(args.target, args.target)
    ref, key = open_reference(settings.reference)
    tmp = Path(tempfile.mkdtemp(prefix="noscope-bench-"))
    try:
        run(args, settings, targets, ref, key, tmp)
    finally:  # the looped videos and the --rss-loops results (and their caches) are the bench's alone
        for v in tmp.glob("*.*"):
            if v.is_file():
                try:
                    harness.forget(v)
                except Exception:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


# Long: one row per clip: train, evaluate the unseen 40%, time the looped query, project heavy references.
def run(args, settings: Settings, targets, ref, key, tmp: Path) -> None:
    rows, heavy_rows, rss_rows = [], [], []
    heavy_cache: dict[tuple[int, int], dict[str, float]] = {}
    workers = decode_workers(settings.decode.workers)
    for clip, obj in harness.BENCH:
        path = harness.VIDEOS / clip
        root = bundle_path(f"bench-{Path(clip).stem}-{obj}")
        train(path, obj, root, settings, None, harness.CUT, quiet=True, say=lambda *a: None)
        q = open_query(settings, path, str(root.absolute()), None, harness.CUT, None)
        plan = choose_plan(q.bundle, targets, q.objects, settings.optimizer)
        rep = evaluate(q, targets, settings, quiet=True)[obj]
        ref_share = rep["fractions"]["reference"]
        n_clip = open_video(path).frame_count
        if ref_share > 0.2:  # the reference dominates: long enough already, and looping would take hours
            loops, tv = 0, None
            cascade_fps, second_fps, dec = rep["cascade_fps"], None, decode_fps(open_video(path), *harness.unseen(open_video(path)), workers)
            n_timed, stages, verified = rep["frames_compared"], rep["stage_seconds"], rep["verified"]
        else:
            s40, _ = harness.unseen(open_video(path))
            loops = harness.loops_for(n_clip - s40, min_frames=args.loop_frames, max_loops=40)
            tv = open_video(harness.stream_loop(path, tmp / f"loop{loops}-{clip}", s40 / open_video(path).fps, loops).path)
            dec = decode_fps(tv, 0, tv.frame_count, workers)
            harness.forget(tv.path)  # a first query: nothing cached yet
            looped = Query(tv, 0, tv.frame_count, q.bundle, q.objects, q.reference, q.ref_key)
            res, verified, cascade_fps = timed_query(looped, plan, settings, targets)  # fills both caches
            _, _, second_fps = timed_query(looped, plan, settings, targets)  # a repeat query reads them
            n_timed, stages = len(res.frames), res.stage_seconds
        cheap_s = stages["diff"] + stages["model"] + stages["reference"]
        predecoded = n_timed / max(cheap_s, 1e-9)
        rows.append(dict(clip=clip, object=obj, plan=plan.plans[obj].to_dict(), frames=rep["frames_compared"], positives=rep["positives"],
                         timed_frames=n_timed, loops=loops, decode_fps=dec, reference_fps=rep["reference_fps"],
                         cascade_fps=cascade_fps, speedup=cascade_fps / rep["reference_fps"], cascade_of_decode=cascade_fps / dec,
                         second_query_fps=second_fps, predecoded_fps=predecoded, fpr=rep["frames"]["fpr"], fnr=rep["frames"]["fnr"],
                         reference_calls=rep["reference_calls"], reference_share=ref_share, device=rep["device"],
                         verify_share=stages.get("verify", 0.0) * cascade_fps / n_timed, verified_met=verified["met"],
                         checked=verified.get("checked", 0), escalations=verified.get("escalations", []),
                         timed_reference_calls=len(res.reference_scores) if tv is not None else rep["reference_calls"],
                         threads=torch.get_num_threads(), reference_batch=ref.batch_size, query_batch=settings.query.batch_size,
                         prefetch=settings.decode.prefetch, decode_workers=workers))
        print(json.dumps(rows[-1]), file=sys.stderr)
        if args.heavy:
            v = open_video(path)
            wh = (v.width, v.height)
            if wh not in heavy_cache:
                heavy_cache[wh] = heavy_reference_seconds(*wh)
            # the timed query's share of frames the reference ran on (its check included): on the looped
            # video the check's fixed number of frames is a smaller share than on the 40% alone
            timed_share = rows[-1]["timed_reference_calls"] / n_timed
            cheap = 1 / cascade_fps - timed_share / rep["reference_fps"]  # per-frame cost without its reference calls
            for name, sec in heavy_cache[wh].items():
                full = 1 / dec + sec  # decode + the heavy detector on every frame
                casc = cheap + timed_share * sec
                heavy_rows.append(dict(clip=clip, object=obj, reference=name, reference_fps=1 / sec, projected_cascade_fps=1 / casc,
                                       projected_speedup=full / casc, reference_share=timed_share))
        if tv is not None:
            harness.forget(tv.path)
    if args.rss_loops:
        clip, obj = harness.BENCH[0]
        root = bundle_path(f"bench-{Path(clip).stem}-{obj}")
        for loops in (1, args.rss_loops):
            lv = harness.stream_loop(harness.VIDEOS / clip, tmp / f"rss{loops}-{clip}", loops=loops).path
            mb, sec = peak_rss_mb(lv, root, args.sets, tmp / f"rss-out{loops}")
            rss_rows.append(dict(clip=clip, object=obj, loops=loops, frames=open_video(lv).frame_count, peak_rss_mb=mb, seconds=sec))
            print(json.dumps(rss_rows[-1]), file=sys.stderr)

    report = harness.Report(args.out)
    report.write(tables(args, rows, heavy_rows, rss_rows), dict(cases=rows, heavy=heavy_rows, rss=rss_rows,
                                                                machine=report.machine))


def tables(args, rows: list[dict], heavy_rows: list[dict], rss_rows: list[dict]) -> str:
    """The report's markdown (its columns: the module docstring)."""
    x0 = rows[0]
    lines = [f"Device {x0['device']}, torch threads {x0['threads']}, "
             f"reference batch {x0['reference_batch']}, query batch {x0['query_batch']}, decode prefetch {x0['prefetch']}, decode workers {x0['decode_workers']}; "
             f"target FPR=FNR={args.target}. Errors: the last 40% of each clip (unseen in training) against the reference "
             f"on every frame. Timing: that last 40% looped N times (its own packets, no re-encode) where the table says so.", "",
             "| clip | object | frames (pos) | timed frames | decode-only fps | reference fps | query fps | speed-up "
             "| query / decode | verification: share of time, frames checked, met | repeat query fps (caches) "
             "| stages fps, pre-decoded | FPR | FNR | reference calls (last 40%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        timed = f"{x['timed_frames']} (looped {x['loops']}x)" if x["loops"] else f"{x['timed_frames']} (last 40%)"
        second = f"{x['second_query_fps']:.0f}" if x["second_query_fps"] else "n/a"
        lines.append(f"| {x['clip']} | {x['object']} | {x['frames']} ({x['positives']}) | {timed} | {x['decode_fps']:.0f} "
                     f"| {x['reference_fps']:.1f} | {x['cascade_fps']:.0f} | {x['speedup']:.1f}x | {100 * x['cascade_of_decode']:.0f}% "
                     f"| {x['verify_share']:.0%}, {x['checked']}, {x['verified_met']} "
                     f"| {second} | {x['predecoded_fps']:.0f} | {fmt(x['fpr'])} | {fmt(x['fnr'])} "
                     f"| {x['reference_calls']} ({100 * x['reference_share']:.1f}%) |")
    if heavy_rows:
        lines += ["", "Projected (not measured end to end): heavier references timed here with random weights, and the timed "
                  "query's measured reference-call share (its check included) and cheap-stage cost.", "",
                  "| clip | object | reference | its fps here | projected cascade fps | projected speed-up |", "|---|---|---|---|---|---|"]
        for h in heavy_rows:
            lines.append(f"| {h['clip']} | {h['object']} | {h['reference']} | {h['reference_fps']:.2f} "
                         f"| {h['projected_cascade_fps']:.1f} | {h['projected_speedup']:.0f}x |")
    if rss_rows:
        lines += ["", "Peak resident memory of `noscope query` (fresh process, frame cache off):", "",
                  "| clip | looped | frames | peak RSS | wall |", "|---|---|---|---|---|"]
        for m in rss_rows:
            lines.append(f"| {m['clip']} | {m['loops']}x | {m['frames']} | {m['peak_rss_mb']:.0f} MB | {m['seconds']:.0f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
