"""Train on the first 60% of shared clips, evaluate on the last 40%, print a markdown table.

    .venv/bin/python scripts/evaluate_shared.py                   # the two clips of the README
    .venv/bin/python scripts/evaluate_shared.py --targets 0.05 0.01 --set train.grid=small

Each row: measured frame-level and windowed FPR/FNR of the cascade against the reference on
every frame of the unseen 40%, both timed end to end on this machine (decode included).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "videos"
CASES = [("storefront-cctv_people.mp4", "person"), ("urban-road-cctv_cars-buses-motorbikes.mp4", "bus")]


def noscope(*args) -> str:
    cmd = [sys.executable, "-m", "noscope.cli", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.05, 0.01])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    extra = [x for s in args.sets for x in ("--set", s)]
    rows = []
    for clip, obj in CASES:
        video = VIDEOS / clip
        name = f"shared-{Path(clip).stem}-{obj}"
        noscope("train", video, "--object", obj, "--end", "60%", "--name", name, "-q", *extra)
        for t in args.targets:
            rep = json.loads(noscope("evaluate", video, "--model", name, "--start", "60%", "--target-fpr", t,
                                     "--target-fnr", t, "--json", "-q", *extra))
            rows.append(dict(clip=clip, object=obj, target=t, **{k: rep[k] for k in (
                "frames_compared", "positives", "frames", "windows", "reference_fps", "cascade_fps", "speedup",
                "reference_calls", "cascade", "fractions")}))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, device {rep['device']}\n")
    print("| clip | object | target FPR=FNR | frames (positives) | frame FPR | frame FNR | window FPR | window FNR "
          "| reference fps | cascade fps | speed-up | reference calls | cascade |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["cascade"]
        desc = "reference only" if c["reference_only"] else (
            f"skip {c['skip']}" + (f", {c['diff']}" if c["diff"] else "") + (f", {c['model']}" if c["model"] else ""))
        print(f"| {r['clip']} | {r['object']} | {r['target']} | {r['frames_compared']} ({r['positives']}) "
              f"| {r['frames']['fpr']:.3f} | {r['frames']['fnr']:.3f} | {r['windows']['fpr']:.3f} | {r['windows']['fnr']:.3f} "
              f"| {r['reference_fps']:.1f} | {r['cascade_fps']:.1f} | {r['speedup']:.1f}x | {r['reference_calls']} | {desc} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
