"""A night decoded once: today's code against a baseline copy, on one looped clip, in one run.

    .venv/bin/python scripts/decode_bench.py --baseline 065475d --out decode-bench      # .md + .json
    .venv/bin/python scripts/decode_bench.py --baseline 065475d --clip highway-cctv --object car --loops 8

For each side (the baseline: the package as it was at `--baseline`, exported with `git archive`;
then this checkout's), in caches and a model folder of its own (harness.workspace: nothing one side
labelled or decoded is seen by the other): a bundle is trained on the first 60% of the clip
(`--set train.grid=small`), and the whole clip looped `--loops` times (its own packets, no
re-encoding: harness.stream_loop) is queried end to end per frame at T (FPR = FNR = T, the default
check), as a new video. The sides run one after the other, with the default threads, as a user
runs a query. Each row: the query's wall time; its decode stage (seconds the pass waited on the
decoder, and frames per second of it); the first pass's reference time and the check's (its
reference calls, its re-runs, its repairs); the decoding passes and frames decoded (this
checkout's summary.json says; the baseline's does not); reference calls; and the final answers'
FPR and FNR against the reference's answers on the original frames each looped frame repeats (by
picture, harness.same_pictures). Decoding alone (the looped night, nothing else: the decoder and
the luma plane this checkout's difference detectors read) is timed beside them, as the ceiling of
any pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import harness

CLIP, OBJECT = "storefront-cctv_people.mp4", "person"


def side(name: str, src: Path | None, work: Path, night: harness.Loop, clip: Path, obj: str, target: float,
         sets: list[str]) -> dict:
    """Train (or reuse) this side's bundle, then query the night: the row's figures."""
    env = harness.workspace(work / name)
    harness.forget(night.path)  # a new video to this side, on a second run of the bench too
    bundle = work / name / "models" / f"decode-{clip.stem}-{obj}"
    harness.cli("train", clip, "--object", obj, "--end", harness.CUT, "--name", bundle, "-q", *sets, env=env, src=src)
    out = work / name / "night"
    ran = harness.cli("query", night.path, "--model", bundle, "--target-fpr", target, "--target-fnr", target, "--out", out,
                      "--no-plot", "-q", "--json", *sets, env=env, src=src)
    summary = json.loads((out / "summary.json").read_text())
    st = summary["stage_seconds"]
    decoding = summary.get("decoding") or {}
    return dict(side=name, seconds=ran.seconds, wall=summary["wall_seconds"], frames=summary["frames"],
                decode_s=st.get("decode", 0.0), decode_fps=summary["frames"] / st["decode"] if st.get("decode") else None,
                reference_s=st.get("reference", 0.0), check_s=st.get("verify", 0.0),
                check_reference_s=st.get("check_reference", 0.0), check_reruns_s=st.get("check_reruns", 0.0),
                check_repairs_s=st.get("check_repairs", 0.0), passes=decoding.get("passes"),
                frames_decoded=decoding.get("frames"), reference_calls=summary["reference_calls"],
                met=summary["verified"]["met"], escalations=summary["verified"].get("escalations"),
                plan=summary["cascade"], peak_rss_mb=ran.peak_rss_mb, out=str(out))


def judged(row: dict, night: harness.Loop, clip: Path, obj: str, referee: harness.Referee) -> dict:
    """The row's final FPR / FNR against the reference's answers on the original frames (by picture)."""
    same = harness.same_pictures(night.path, clip, 0)
    frames, said = harness.query_answers(Path(row["out"]))
    mapped = [(f, same[f]) for f in frames.tolist() if f in same]
    originals = sorted({o for _, o in mapped})
    got, truth = referee.answers(clip, originals, obj)
    truth_of = dict(zip(got.tolist(), truth.tolist()))
    idx = {f: i for i, f in enumerate(frames.tolist())}
    pairs = [(said[idx[f]], truth_of[o]) for f, o in mapped if o in truth_of]
    fpr, fnr, pos = harness.error_rates(np.array([p for p, _ in pairs], bool), np.array([t for _, t in pairs], bool))
    return dict(row, fpr=fpr, fnr=fnr, positives=pos, compared=len(pairs))


def table(rows: list[dict], decode_only: dict) -> str:
    f = harness.fmt
    lines = ["| side | wall s | decode stage s | decode stage frames/s | first pass reference s | check s (reference / "
             "re-runs / repairs) | decoding passes, frames decoded | reference calls | FPR / FNR | met |",
             "|---|---:|---:|---:|---:|---|---|---:|---|---|"]
    for r in rows:
        passes = "n/a" if r["passes"] is None else f"{r['passes']}, {r['frames_decoded']}"
        lines.append(f"| {r['side']} | {r['wall']:.1f} | {r['decode_s']:.2f} | {f(r['decode_fps'], 0)} | "
                     f"{r['reference_s']:.2f} | {r['check_s']:.2f} ({r['check_reference_s']:.2f} / {r['check_reruns_s']:.2f} / "
                     f"{r['check_repairs_s']:.2f}) | {passes} | {r['reference_calls']} | {f(r['fpr'])} / {f(r['fnr'])} | "
                     f"{r['met']} |")
    base, now = rows[0], rows[-1]
    lines.append("")
    lines.append(f"- decoding alone (the night, nothing else): {decode_only['plain_fps']:.0f} frames/s; with the luma plane "
                 f"at 50x50: {decode_only['luma_fps']:.0f} frames/s")
    lines.append(f"- decode stage: {f(now['decode_fps'], 0)} against {f(base['decode_fps'], 0)} frames/s "
                 f"({now['decode_fps'] / base['decode_fps']:.2f}x); wall time {now['wall'] / base['wall']:.0%} of the baseline's")
    return "\n".join(lines)


def decoding_alone(night: harness.Loop) -> dict:
    from noscope.video import Luma, open_video

    v = open_video(night.path)
    out = {}
    for key, sizes in (("plain_fps", {}), ("luma_fps", {"l": Luma(50, 50)})):
        import time

        t = time.perf_counter()
        with v.batches(sizes, 0, None, batch_size=256, prefetch=0) as decoding:
            n = sum(len(b) for b in decoding)
        out[key] = n / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the commit whose package is the baseline (git archive)")
    ap.add_argument("--clip", default=CLIP, help="a clip of the shared folder (a prefix is enough)")
    ap.add_argument("--object", default=OBJECT)
    ap.add_argument("--loops", type=int, default=4)
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--work", type=Path, default=Path("/tmp/noscope-decode-bench"))
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    report = harness.Report(args.out)
    ((clip_name, obj),) = harness.parse_cases([f"{args.clip}:{args.object}"], harness.FORWARD, any_object=True)
    clip = harness.VIDEOS / clip_name
    args.work.mkdir(parents=True, exist_ok=True)
    night = harness.stream_loop(clip, args.work / f"night{clip.suffix}", at=0.0, loops=args.loops)
    sets = harness.set_flags(["train.grid=small", *args.sets])
    base = harness.export_package(args.baseline, args.work / "baseline-src")
    rows = [side("baseline", base, args.work, night, clip, obj, args.target, sets),
            side("this checkout", None, args.work, night, clip, obj, args.target, sets)]
    harness.workspace(args.work / "judge")
    referee = harness.Referee(harness.settings_of(sets))
    rows = [judged(r, night, clip, obj, referee) for r in rows]
    alone = decoding_alone(night)
    report.write(f"{clip_name} {obj}, the whole clip looped {night.loops}x ({night.frames} frames), per frame at "
                 f"T = {args.target}:\n\n" + table(rows, alone), dict(rows=rows, decode_only=alone, night=night.frames))


if __name__ == "__main__":
    main()
