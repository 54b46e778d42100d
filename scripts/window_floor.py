"""How few reference calls can answer a scene's windows? The reference's own sampling, with no cheap model.

    .venv/bin/python scripts/window_floor.py                                   # the ten pairs, 1 s windows
    .venv/bin/python scripts/window_floor.py --cases highway-cctv:car --out floor

Per (clip, object), over the frames the forward table measures (the last 40%, never trained on),
cut into windows of about a second (round(fps) frames) from the first: the windows' shares of
frames the reference calls positive, and for each sampling of window_optimizer.samplings and the
repairs' finer ones (the reference on the window's frames in spread order until one answer leads
by `lead` or `most` frames are asked; noscope.windows.Sampling) the calls a window takes and the
window FPR / FNR it gives against the reference's own windows (the share rule over every frame).
"Ceiling": the window's frames over the calls of the cheapest sampling whose errors are within T
(default 0.05) on this part: the most a windowed query could gain where no cheap stage settles a
window, with decoding and the check free. Windows hovering near the majority are what cost.
Reference answers come from the label cache; missing ones are labelled.
"""

from __future__ import annotations

import argparse

import numpy as np

import harness
from harness import fmt
from noscope.video import open_video
from noscope.window_repair import candidates
from noscope.windows import WindowGrid

SHOWN = ((2, 3), (3, 5), (3, 8), (3, 13), (4, 12), (4, 13), (5, 20), (5, None), (0, None))  # (lead, most); None: every frame


def window_answers(truth: np.ndarray, grid: WindowGrid):
    """(the reference's answer per window, each window's share of positive frames)."""
    share = np.array([truth[grid.first[w] - grid.start:grid.last[w] - grid.start + 1].mean() for w in range(grid.count)])
    return grid.truth(truth), share


def sampled(sampling, truth: np.ndarray, grid: WindowGrid, said: np.ndarray) -> dict:
    """Calls per window and window FPR / FNR of `sampling` alone on every window."""
    calls, got = 0, np.zeros(grid.count, bool)
    for w in range(grid.count):
        got[w], n, _ = sampling.run(truth[grid.spread(w) - grid.start], grid.share)
        calls += n
    fpr, fnr, _ = harness.error_rates(got, said)
    return dict(calls=calls / max(grid.count, 1), fpr=fpr, fnr=fnr)


def pair_row(clip: str, obj: str, judge: harness.Referee, target: float) -> dict:
    video = open_video(harness.VIDEOS / clip)
    start, end = harness.unseen(video)
    frames, said = judge.answers(harness.VIDEOS / clip, np.arange(start, end), obj)
    truth = np.zeros(end - start, bool)
    truth[frames - start] = said
    grid = WindowGrid(start, end, max(1, int(round(video.fps))))
    answer, share = window_answers(truth, grid)
    every = {s: sampled(s, truth, grid, answer) for s in candidates(grid.size)}
    within = [s for s, r in every.items() if (r["fpr"] or 0.0) <= target and (r["fnr"] or 0.0) <= target]
    best = min(within, key=lambda s: every[s]["calls"])
    return dict(clip=clip, object=obj, size=grid.size, windows=grid.count, positive=int(answer.sum()),
                hovering=float(np.mean((share > 0.2) & (share < 0.8))), samplings=every, best=best,
                ceiling=grid.size / every[best]["calls"])


def table(rows: list[dict], target: float) -> str:
    heads = [f"lead {lead}, {'every frame' if most is None else f'{most} at most'}" if lead else "exact"
             for lead, most in SHOWN]
    out = ["| clip | object | frames a window | windows (positive) | hovering (20-80% positive frames) | "
           + " | ".join(heads) + f" | cheapest within T = {target:g} | ceiling |",
           "|" + "---|" * (7 + len(heads))]
    for r in rows:
        cells = []
        for lead, most in SHOWN:
            got = next((v for s, v in r["samplings"].items() if s.lead == lead and s.most == min(most or r["size"], r["size"])),
                       None)
            cells.append("-" if got is None else f"{got['calls']:.1f} calls, {fmt(got['fpr'], 2)} / {fmt(got['fnr'], 2)}")
        b = r["best"]
        out.append(f"| {r['clip']} | {r['object']} | {r['size']} | {r['windows']} ({r['positive']}) | {r['hovering']:.2f} | "
                   + " | ".join(cells) + f" | {b.describe()} | {r['ceiling']:.2f}x |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", help="clip-prefix:object, e.g. highway-cctv:car (default: all ten)")
    ap.add_argument("--target", type=float, default=0.05, help="window FPR and FNR the ceiling's sampling must meet")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", help="write OUT.md and OUT.json")
    args = harness.read_args(ap, harness.FORWARD)
    judge = harness.Referee(harness.settings_of(harness.set_flags(args.sets)))
    rows = [pair_row(clip, obj, judge, args.target) for clip, obj in args.cases]
    md = (f"{table(rows, args.target)}\n\nEach cell: reference calls a window, window FPR / FNR of that sampling alone "
          "on the last 40% of the clip (no cheap stage, no check).")
    data = [dict(r, samplings={s.describe(): v for s, v in r["samplings"].items()}, best=r["best"].describe())
            for r in rows]
    harness.Report(args.out).write(md, data)


if __name__ == "__main__":
    main()
