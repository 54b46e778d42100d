"""Benchmark: decode ceiling, reference on every frame, and the cascade, end to end.

    .venv/bin/python scripts/bench.py                                  # shared clips, targets 0.01/0.01
    .venv/bin/python scripts/bench.py --set train.grid=small --out bench   # writes bench.md, bench.json
    .venv/bin/python scripts/bench.py --rss-loops 10 --heavy          # + peak memory, + projected heavy refs

For each (clip, object) it trains a bundle on the first 60% (reused if already trained with the
same settings) and measures, on the unseen last 40%:
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
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import torch

from noscope.bundle import bundle_path
from noscope import decode_pool
from noscope.answer import answer
from noscope.bundle import load_bundle
from noscope.planning import choose_plan
from noscope.config import load_config
from noscope.evaluate import evaluate
from noscope.framecache import cache_root
from noscope.labels import store_dir
from noscope.optimizer import Targets
from noscope.reference import configured_device, load_reference, reference_key
from noscope.train import train
from noscope.video import decode_options, open_video

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "videos"
CASES = [("storefront-cctv_people.mp4", "person"), ("urban-road-cctv_cars-buses-motorbikes.mp4", "bus")]


def loop_video(src: Path, dst: Path, times: int, start_s: float = 0.0) -> Path:
    """Write `src`'s own video packets from the keyframe at or before `start_s` to the end,
    `times` over, into `dst` (no re-encoding; timestamps shifted)."""
    with av.open(str(src)) as inp:
        ist = inp.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe, p.duration) for p in inp.demux(ist) if p.size and p.pts is not None]
        t0 = min(p[1] for p in packets) + int(start_s / ist.time_base)
        keys = [i for i, p in enumerate(packets) if p[3] and p[1] <= t0]
        packets = packets[keys[-1] if keys else 0:]
        first = min(p[1] for p in packets)
        span = max(p[1] for p in packets) + (packets[-1][4] or 1) - first
        with av.open(str(dst), "w") as out:
            ost = out.add_stream_from_template(ist)
            for k in range(times):
                for data, pts, dts, key, dur in packets:
                    q = av.Packet(data)
                    q.pts, q.dts = pts + k * span, dts + k * span
                    q.is_keyframe, q.duration, q.time_base, q.stream = key, dur, ist.time_base, ost
                    out.mux(q)
    return dst


def decode_fps(video, start, end, workers: int, size=50) -> float:
    t = time.perf_counter()
    n = sum(len(b) for b in decode_pool.batches(video, {"s": (size, size)}, start, end, batch_size=256, prefetch=0,
                                                workers=workers))
    return n / (time.perf_counter() - t)


def timed_query(video, tb, plan, ref, key, cfg, targets):
    """The query over the whole video as `noscope query` answers it: the cascade, then the check on
    the video and any repair (frame and label caches on). -> (result, its verification, frames/s)."""
    t = time.perf_counter()
    results, reports = answer(video, tb, plan, ref, key, 0, video.frame_count, cfg, targets, quiet=True)
    return results[tb.object], reports[tb.object], len(results[tb.object].frames) / (time.perf_counter() - t)


def _rate(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


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
    args = [sys.executable, "-m", "noscope.cli", "query", str(video), "--model", str(model), "--out", str(out),
            "-q", "--no-plot", "--set", "decode.frame_cache=false"]
    for s in cfg_sets:
        args += ["--set", s]
    t = time.perf_counter()
    p = subprocess.Popen(args, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: noscope query failed on {video}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--loop-frames", type=int, default=6000, help="loop clips until this many frames are timed")
    ap.add_argument("--heavy", action="store_true", help="time Faster/Mask R-CNN and project speed-ups against them")
    ap.add_argument("--rss-loops", type=int, default=0, help="peak RSS of a query on the first clip, 1x and this many x")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    cfg = load_config(None, args.sets)
    targets = Targets(args.target, args.target)
    r = cfg["reference"]
    ref = load_reference(r["name"], device=configured_device(cfg), batch_size=r["batch_size"], runtime=r["runtime"])
    key = reference_key(ref)
    tmp = Path(tempfile.mkdtemp(prefix="noscope-bench-"))
    try:
        run(args, cfg, targets, ref, key, tmp)
    finally:  # the looped videos and the --rss-loops results (and their label caches) are the bench's alone
        for v in tmp.glob("*.*"):
            if v.is_file():
                try:
                    shutil.rmtree(store_dir(open_video(v), key, ref), ignore_errors=True)
                except Exception:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, cfg, targets, ref, key, tmp: Path) -> None:
    rows, heavy_rows, rss_rows = [], [], []
    heavy_cache: dict[tuple[int, int], dict[str, float]] = {}
    workers = decode_options(cfg)["workers"]
    for clip, obj in CASES:
        path = VIDEOS / clip
        root = bundle_path(f"bench-{Path(clip).stem}-{obj}")
        train(path, obj, root, cfg, None, "60%", quiet=True, say=lambda *a: None)
        tb = load_bundle(root)
        plan = choose_plan(tb, targets, cfg["optimizer"])
        rep = evaluate(path, tb, ref, key, targets, cfg, "60%", None, quiet=True)
        ref_share = rep["fractions"]["reference"]
        n_clip = open_video(path).frame_count
        if ref_share > 0.2:  # the reference dominates: long enough already, and looping would take hours
            loops, tv = 0, None
            cascade_fps, second_fps, dec = rep["cascade_fps"], None, decode_fps(open_video(path), *open_video(path).segment("60%", None), workers)
            n_timed, stages, verified = rep["frames_compared"], rep["stage_seconds"], rep["verified"]
        else:
            s40, _ = open_video(path).segment("60%", None)
            loops = max(1, min(40, -(-args.loop_frames // (n_clip - s40))))
            tv = open_video(loop_video(path, tmp / f"loop{loops}-{clip}", loops, s40 / open_video(path).fps))
            dec = decode_fps(tv, 0, tv.frame_count, workers)
            for d in (cache_root(tv), store_dir(tv, key, ref)):  # a first query: nothing cached yet
                shutil.rmtree(d, ignore_errors=True)
            res, verified, cascade_fps = timed_query(tv, tb, plan, ref, key, cfg, targets)  # fills both caches
            _, _, second_fps = timed_query(tv, tb, plan, ref, key, cfg, targets)  # a repeat query reads them
            n_timed, stages = len(res.frames), res.stage_seconds
        cheap_s = stages["diff"] + stages["model"] + stages["reference"]
        predecoded = n_timed / max(cheap_s, 1e-9)
        rows.append(dict(clip=clip, object=obj, plan=plan.to_dict(), frames=rep["frames_compared"], positives=rep["positives"],
                         timed_frames=n_timed, loops=loops, decode_fps=dec, reference_fps=rep["reference_fps"],
                         cascade_fps=cascade_fps, speedup=cascade_fps / rep["reference_fps"], cascade_of_decode=cascade_fps / dec,
                         second_query_fps=second_fps, predecoded_fps=predecoded, fpr=rep["frames"]["fpr"], fnr=rep["frames"]["fnr"],
                         reference_calls=rep["reference_calls"], reference_share=ref_share, device=rep["device"],
                         verify_share=stages.get("verify", 0.0) * cascade_fps / n_timed, verified_met=verified["met"],
                         checked=verified.get("checked", 0), escalations=verified.get("escalations", []),
                         timed_reference_calls=len(res.reference_scores) if tv is not None else rep["reference_calls"],
                         threads=torch.get_num_threads(), reference_batch=ref.batch_size, query_batch=cfg["query"]["batch_size"],
                         prefetch=cfg["decode"]["prefetch"], decode_workers=workers))
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
            for d in (cache_root(tv), store_dir(tv, key, ref)):
                shutil.rmtree(d, ignore_errors=True)
    if args.rss_loops:
        clip, obj = CASES[0]
        root = bundle_path(f"bench-{Path(clip).stem}-{obj}")
        for loops in (1, args.rss_loops):
            lv = loop_video(VIDEOS / clip, tmp / f"rss{loops}-{clip}", loops)
            mb, sec = peak_rss_mb(lv, root, args.sets, tmp / f"rss-out{loops}")
            rss_rows.append(dict(clip=clip, object=obj, loops=loops, frames=open_video(lv).frame_count, peak_rss_mb=mb, seconds=sec))
            print(json.dumps(rss_rows[-1]), file=sys.stderr)

    x0 = rows[0]
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, device {x0['device']}, torch threads {x0['threads']}, "
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
                     f"| {second} | {x['predecoded_fps']:.0f} | {_rate(x['fpr'])} | {_rate(x['fnr'])} "
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
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(dict(cases=rows, heavy=heavy_rows, rss=rss_rows), indent=2))


if __name__ == "__main__":
    main()
