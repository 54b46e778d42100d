"""Forward in time: train on the first 60% of shared clips, answer the last 40%, compare with the reference.

    .venv/bin/python scripts/evaluate_shared.py --set train.grid=small --out eval      # eval.md + eval.json
    .venv/bin/python scripts/evaluate_shared.py --cases storefront:person --targets 0.01
    .venv/bin/python scripts/evaluate_shared.py --set train.grid=small --night 6000 --out eval   # + a looped night
    .venv/bin/python scripts/evaluate_shared.py --set train.grid=small --window 1s --night-minutes 30 --out win

For each (clip, object) of the forward table (harness.FORWARD; the protocol: scripts/harness.py) a
bundle is trained on the first 60% of the clip (reused when already trained with the same
settings) and `noscope evaluate` answers the last 40%, which the bundle never saw, at each target
(FPR = FNR = T), against the reference on every frame of it. Each row: the measured frame and
window FPR/FNR of the query's final answers (after verification and any repair) and of the
cascade's first pass; what the check on the video said (estimate and upper bound of each rate,
met); whether it escalated; the speed-up end to end (decoding and every reference call,
verification included) and without the verification; the share of the query's time
verification took; the stages' shares of frames; reference calls. Then the acceptance
checks over all rows, and the geometric mean speed-up.

`--night N` adds, per (clip, object, T), a night: the unseen last 40% looped (its own packets from
the keyframe at or before the 60% mark, no re-encoding) until at least N frames, answered end to
end by `noscope query` with the default check, as a new video (nothing cached). Its speed-up is
against the reference on every frame at the per-frame time `evaluate` measured on the 40% once
(decoding included, the reference's fastest runtime here); its errors are against the reference's
answers on the original frames each looped frame repeats, found by picture, not by count (a looped
frame counts where its decoded picture is exactly an original frame's: an AVI whose first packets
do not decode numbers its frames two apart from its packets, and a loop's first frames decode
against the previous loop's pictures; those are left out), and a sample of looped frames is
labelled by the reference to show the mapping holds. `--night-minutes M` makes nights of at least M
minutes of video instead (or as well); each clip is looped once for both targets and its objects, and
decoding that night alone (the decoder and nothing else) is timed: the reference's time on every
frame over that is the most any pass over the night could gain, the night's decoding cap.

`--window SPEC` asks every query per window (`--window SPEC` on `evaluate` and the nights): the
table's window FPR / FNR are then the final answers' window errors against the reference's windows
(the share rule over every frame of each window), beside the per-frame errors of the frames carrying
those answers, and the acceptance checks (targets, bounds) are judged in windows. A night's windows
are judged where every frame of them has a known original (by picture), by the share rule over
those: a window holding a loop's seam (frames decoded against the previous loop's pictures, or
not decoded) is left out.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import harness
from harness import fmt

SLACK = 0.02  # a row breaking its target by more than this must not say met: true


@dataclass
class Night:
    """A pair's night: the looped video, the reference's answer on each looped frame's original (by
    picture: frames without an exact original are left out), its decoding alone."""

    video: Path
    obj: str
    looped: harness.Loop
    tmp: Path
    truth: dict[int, bool]
    agreement: float
    decode_fps: float


@dataclass
class Nights:
    """How nights are made: the unseen 40% looped to at least `min_frames` frames and `min_seconds`
    seconds; answered per frame, or per window where `window` is set (the same spec `--window` takes)."""

    min_frames: int
    min_seconds: float
    window: str | None

    def loop(self, video: Path, obj: str, extra: list[str]) -> Night:
        """Loop the pair's unseen part once (both targets answer the same night), find each looped frame's
        original by picture, and time decoding it alone: the ceiling of any pass over it."""
        from noscope.video import open_video

        tmp = Path(tempfile.mkdtemp(prefix="noscope-night-"))
        looped = harness.stream_loop(video, tmp / f"night{video.suffix if video.suffix == '.mp4' else '.mkv'}",
                                     at=harness.CUT, min_frames=self.min_frames, min_seconds=self.min_seconds)
        judge = harness.Referee(harness.settings_of(extra))
        answered, said = judge.answers(video, np.arange(looped.first, looped.first + looped.length), obj)
        truth_of = dict(zip(answered.tolist(), said))
        origin = harness.looped_pictures(video, harness.CUT, looped, tmp)
        truth = {f: bool(truth_of[o]) for f, o in origin.items() if o in truth_of}
        frames = np.array(sorted(truth), np.int64)
        spot = frames[np.linspace(0, len(frames) - 1, 24).astype(np.int64)]
        agree = judge.agreement(looped.path, {int(f): truth[int(f)] for f in spot}, obj)
        n, seconds = harness.decode_only(open_video(looped.path), size=None)
        return Night(video, obj, looped, tmp, truth, agree, n / seconds)

    # Long: query, then judge per frame or per window, with the night's speed-up and its decoding cap.
    def query(self, night: Night, name: str, t: float, rep: dict, extra: list[str]) -> dict:
        """One night at T: queried end to end as a new video; speed-up and errors (module docstring)."""
        harness.forget(night.looped.path)  # a night is a first query: nothing of it cached
        out = night.tmp / f"out-{t}"
        window = ["--window", self.window] if self.window else []
        summary = harness.last_json(harness.cli("query", night.looped.path, "--model", name, "--target-fpr", t,
                                                "--target-fnr", t, *window, "--json", "-q", "--no-plot", "--out", out,
                                                *extra).out)
        all_frames, all_labels = harness.query_answers(out)
        keep = np.array([int(i) in night.truth for i in all_frames], bool)
        frames, labels = all_frames[keep], all_labels[keep]
        expect = np.array([night.truth[int(i)] for i in frames], bool)
        fpr, fnr, n_pos = harness.error_rates(labels, expect)
        per_frame = dict(fpr=fpr, fnr=fnr, positives=n_pos)
        if self.window:
            fpr, fnr, n_pos = window_errors(out, frames, expect, all_frames)
        reference_s = len(all_frames) / rep["reference_fps"]
        v = summary["verified"]
        return dict(frames=len(all_frames), compared=len(frames), loops=night.looped.loops, positives=n_pos, fpr=fpr,
                    fnr=fnr, per_frame=per_frame, unit=summary.get("unit", "frames"), windows=summary.get("windows"),
                    met=v["met"], escalations=v.get("escalations", []), reference_answered=v.get("reference_answered", []),
                    checked=v.get("checked"), reference_calls=summary["reference_calls"],
                    wall_seconds=summary["wall_seconds"], stage_seconds=summary["stage_seconds"],
                    fractions=summary.get("window_fractions") or summary["fractions"],
                    first_pass_fractions=summary.get("first_pass_window_fractions") or summary.get("first_pass_fractions"),
                    reference_seconds_projected=reference_s, speedup=reference_s / summary["wall_seconds"],
                    decode_fps=night.decode_fps, decode_cap=night.decode_fps / rep["reference_fps"],
                    mapping_agreement=night.agreement, seconds_of_video=len(all_frames) / open_fps(night.looped.path))


def run_case(clip: str, obj: str, targets: list[float], extra: list[str], nights: Nights | None = None,
             window: str | None = None) -> list[dict]:
    video = harness.VIDEOS / clip
    name = f"shared-{Path(clip).stem}-{obj}"
    harness.cli("train", video, "--object", obj, "--end", harness.CUT, "--name", name, "-q", *extra)
    rows, night = [], None
    for t in targets:
        rep = json.loads(harness.cli("evaluate", video, "--model", name, "--start", harness.CUT, "--target-fpr", t,
                                     "--target-fnr", t, *(["--window", window] if window else []), "--json", "-q",
                                     *extra).out)
        rows.append({**rep, "clip": clip, "object": obj, "target": t})
        if nights:
            night = night or nights.loop(video, obj, extra)
            rows[-1]["night"] = nights.query(night, name, t, rep, extra)
        print(json.dumps({k: rows[-1][k] for k in ("clip", "object", "target", "frames", "speedup")}), file=sys.stderr)
    if night:
        shutil.rmtree(night.tmp, ignore_errors=True)
    return rows


def window_errors(out: Path, frames: np.ndarray, expect: np.ndarray, answered: np.ndarray) -> tuple:
    """(FPR, FNR, positive windows) of a windowed query's windows.csv against the reference's windows:
    the share rule over each window's frames, judged only where every frame the query answered in it
    has a known original (`frames`, `expect`): a window holding a loop's seam (pictures decoded
    against the previous loop's, no original) is the reference's on frames the truth does not have."""
    from noscope.windows import WindowGrid

    summary = json.loads((out / "summary.json").read_text())
    rows = np.loadtxt(out / "windows.csv", delimiter=",", skiprows=1, usecols=(0, 5), dtype=np.int64, ndmin=2)
    first = int(np.loadtxt(out / "windows.csv", delimiter=",", skiprows=1, usecols=1, dtype=np.int64, ndmin=1)[0])
    grid = WindowGrid(first, int(answered.max()) + 1, summary["window"]["frames"], summary["window"]["share"])
    truth = grid.truth(expect, frames)
    whole = np.bincount(grid.index_of(frames), minlength=grid.count) == \
        np.bincount(grid.index_of(answered[answered >= first]), minlength=grid.count)
    judged = whole[rows[:, 0]] & np.isin(rows[:, 0], np.unique(grid.index_of(frames)))
    return harness.error_rates(rows[judged, 1].astype(bool), truth[rows[judged, 0]])


def open_fps(path: Path) -> float:
    from noscope.video import open_video

    return open_video(path).fps


def _verified(rate: dict | None) -> str:
    if rate is None:
        return "unchecked"
    if rate["high"] is None:
        return f"count <= {rate['count_high']}"
    return f"{rate['estimate']:.3f} [<= {rate['high']:.3f}]"


def _plan(c: dict) -> str:
    if c["reference_only"]:
        return "reference only"
    lattice = [f"{c['sampling']['most']} reference frames a window at most"] if c.get("sampling") else []
    return ", ".join([f"skip {c['skip']}"] + [c[k] for k in ("diff", "model") if c[k]] + lattice)


def shares(fr: dict) -> str:
    """The stages' shares of frames (per frame) or of windows (per window: cheap / sampled / reference)."""
    keys = ("cheap", "sampled", "reference") if "cheap" in fr else ("skip", "diff", "model", "reference")
    return " / ".join(f"{fr.get(k, 0.0):.2f}" for k in keys)


def table(rows: list[dict]) -> str:
    stages = "cheap / sampled / reference windows" if rows[0].get("unit") == "windows" else "skip / diff / model / reference"
    head = ("| clip | object | T | frames (pos) | frame FPR | frame FNR | window FPR | window FNR | first pass FPR / FNR "
            "| verified FPR est [bound] | verified FNR est [bound] | met | escalation | speed-up | without verification "
            f"| verification share | {stages} | reference calls | plan |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        v, f, w, fr = r["verified"], r["frames"], r["windows"], r["fractions"]
        fp = r["first_pass"] if r.get("unit") == "windows" else r["first_pass"]["frames"]
        esc = "; ".join(v.get("escalations") or []) + ("; reference on cheap " + "+".join(v["reference_answered"])
                                                       if v.get("reference_answered") else "")
        share = r["verify_seconds"] / r["cascade_seconds"] if r["cascade_seconds"] else 0.0
        lines.append(
            f"| {Path(r['clip']).stem} | {r['object']} | {r['target']} | {r['frames_compared']} ({r['positives']}) "
            f"| {fmt(f['fpr'])} | {fmt(f['fnr'])} | {fmt(w['fpr'])} | {fmt(w['fnr'])} | {fmt(fp['fpr'])} / {fmt(fp['fnr'])} "
            f"| {_verified(v['fpr'])} | {_verified(v['fnr'])} | {v['met']} | {esc or 'no'} | {r['speedup']:.1f}x "
            f"| {r['speedup_without_verify']:.1f}x | {share:.0%} "
            f"| {shares(fr)} | {r['reference_calls']} | {_plan(r['cascade'])} |")
    return "\n".join(lines)


def asked(r: dict) -> dict:
    """The measured rates of the question the row asked: its windows' where it asked per window."""
    return r["windows"] if r.get("unit") == "windows" else r["frames"]


def acceptance(rows: list[dict]) -> list[str]:
    """The issue's checks over the rows, each as one line with its verdict (in the rows' own unit)."""
    def rates(r):
        return [x for x in (asked(r)["fpr"], asked(r)["fnr"]) if x is not None]

    unit = "window" if rows[0].get("unit") == "windows" else "frame"
    over = [r for r in rows if any(x > r["target"] + SLACK for x in rates(r))]
    silent = [r for r in over if r["verified"]["met"] is True]
    worst = max((x for r in rows for x in rates(r)), default=0.0)
    pairs = [(asked(r)[k], r["verified"][k]["high"]) for r in rows for k in ("fpr", "fnr")
             if asked(r)[k] is not None and r["verified"][k] and r["verified"][k]["high"] is not None]
    held = sum(m <= h + 1e-12 for m, h in pairs)
    speed = math.exp(sum(math.log(r["speedup"]) for r in rows) / len(rows))
    speed_off = math.exp(sum(math.log(r["speedup_without_verify"]) for r in rows) / len(rows))
    share = sum(r["verify_seconds"] for r in rows) / sum(r["cascade_seconds"] for r in rows)
    return [
        f"- rows whose measured {unit} FPR or FNR exceeds T + {SLACK}: {len(over)}; of them saying met: true: "
        f"{len(silent)} ({'ok' if not silent else 'FAIL'})",
        f"- largest final measured {unit} FPR or FNR: {worst:.3f} ({'ok' if worst <= 0.25 else 'FAIL'}, limit 0.25)",
        f"- verification bounds: the measured rate is at or below the reported upper bound in {held} of {len(pairs)} "
        f"rates where both are defined ({held / max(len(pairs), 1):.0%}; {'ok' if held >= 0.9 * len(pairs) else 'FAIL'}, "
        f"at least 90%)",
        f"- geometric mean speed-up over the rows: {speed:.2f}x with verification, {speed_off:.2f}x without; "
        f"verification took {share:.0%} of the queries' time in all",
    ]


def night_table(rows: list[dict]) -> str:
    unit = "window" if rows[0]["night"]["unit"] == "windows" else "frame"
    head = (f"| clip | object | T | looped frames ({unit}s, positive) | {unit} FPR | {unit} FNR | frame FPR / FNR | met "
            f"| repairs | first pass settled without the reference | final: "
            f"{'cheap / sampled / reference' if unit == 'window' else 'skip / diff / model / reference'} "
            f"| reference calls | check share of time | query s | reference s (projected) | speed-up | decoding alone caps at |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        n = r["night"]
        fr, first, sec = n["fractions"], n["first_pass_fractions"] or n["fractions"], n["stage_seconds"]
        repairs = len(n["escalations"]) + (1 if n["reference_answered"] else 0)
        count = f"{n['windows']} windows, {n['positives']}" if n["unit"] == "windows" else str(n["positives"])
        lines.append(
            f"| {Path(r['clip']).stem} | {r['object']} | {r['target']} | {n['frames']} ({count}; {n['loops']}x, "
            f"{n['seconds_of_video'] / 60:.0f} min) | {fmt(n['fpr'])} | {fmt(n['fnr'])} "
            f"| {fmt(n['per_frame']['fpr'])} / {fmt(n['per_frame']['fnr'])} | {n['met']} | {repairs} "
            f"| {1 - first['reference']:.2f} | {shares(fr)} "
            f"| {n['reference_calls']} | {sec.get('verify', 0.0) / n['wall_seconds']:.0%} | {n['wall_seconds']:.1f} "
            f"| {n['reference_seconds_projected']:.0f} | {n['speedup']:.1f}x | {n['decode_cap']:.1f}x |")
    return "\n".join(lines)


def night_acceptance(rows: list[dict]) -> list[str]:
    """Per target: the geometric mean speed-up of the nights, the slowest night against 3x or 80% of
    its decoding cap, every night's final errors within T + SLACK and none met: true above T."""
    out = []
    for t in sorted({r["target"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["target"] == t]
        nights = [r["night"] for r in mine]
        speed = math.exp(sum(math.log(n["speedup"]) for n in nights) / len(nights))
        slow = [f"{Path(r['clip']).stem} {r['object']} {r['night']['speedup']:.1f}x (cap {r['night']['decode_cap']:.1f}x)"
                for r in mine if r["night"]["speedup"] < min(3.0, 0.8 * r["night"]["decode_cap"])]
        rates = [(r, x) for r in mine for x in (r["night"]["fpr"], r["night"]["fnr"]) if x is not None]
        over = {id(r) for r, x in rates if x > t + SLACK}
        silent = {id(r) for r, x in rates if x > t and r["night"]["met"] is True}
        mapping = min(n["mapping_agreement"] for n in nights)
        out.append(f"- nights at T = {t}: geometric mean speed-up {speed:.2f}x over {len(nights)} pairs; below 3x and "
                   f"below 80% of their decoding cap: {'; '.join(slow) or 'none'}; final errors above T + {SLACK}: "
                   f"{len(over)} ({'ok' if not over else 'FAIL'}); met: true above T: {len(silent)} "
                   f"({'ok' if not silent else 'FAIL'}); the looped frames' reference answers matched their originals' "
                   f"on {mapping:.0%} of the spot-checked frames or more")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.05, 0.01])
    ap.add_argument("--cases", nargs="+", help="clip-prefix:object, e.g. storefront:person (default: all ten)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    ap.add_argument("--night", type=int, default=0, metavar="N",
                    help="also answer the last 40%% looped to at least N frames as a night (module docstring)")
    ap.add_argument("--night-minutes", type=float, default=0.0, metavar="M",
                    help="nights of at least M minutes of video (with or without --night)")
    ap.add_argument("--window", help="ask per window (as `noscope query --window`, e.g. 1s): the table, the nights and "
                                     "the checks in windows")
    args = harness.read_args(ap, harness.FORWARD)
    extra = harness.set_flags(args.sets)
    report = harness.Report(args.out)
    looping = args.night or args.night_minutes
    nights = Nights(args.night, 60 * args.night_minutes, args.window) if looping else None
    rows = []
    for clip, obj in args.cases:
        rows += run_case(clip, obj, args.targets, extra, nights, args.window)
        report.save(rows)  # what is measured so far survives a later case's failure
    settings = " ".join(args.sets) or "default config"
    asked = f"per window of {args.window} (a window is yes when the reference sees the object in most of its frames)" \
        if args.window else "per frame"
    at_least = " and ".join(x for x in (f"{args.night} frames" if args.night else "",
                                          f"{args.night_minutes:g} minutes of video" if args.night_minutes else "") if x)
    md = "\n".join([
        f"Device {rows[0]['device']}, reference runtime {rows[0].get('reference_runtime', 'cpu-fp32')}; {settings}. "
        "Trained on the first 60% of each clip, measured on the last 40% (never seen in training) against the "
        f"reference on every frame; asked {asked}; speed-ups end to end, decoding and every reference call included.", "",
        table(rows), "", *acceptance(rows)]
        + (["", f"Nights: the last 40% looped to at least {at_least}, answered end to end as a new video (nothing "
                "cached), one at a time, default threads; errors against the reference's answers on the original frames "
                "(by picture); the decoding cap is the reference's time on every frame over decoding the night alone.", "",
            night_table(rows), "", *night_acceptance(rows)] if looping else []))
    report.write(md, rows)


if __name__ == "__main__":
    main()
