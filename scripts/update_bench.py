"""Does a bundle get better from what its queries paid for? Train on the first third, query the second, update, query the last.

    .venv/bin/python scripts/update_bench.py --set train.grid=small --out update-bench          # .md + .json
    .venv/bin/python scripts/update_bench.py --set train.grid=small --night 6000 --out update-bench   # + looped nights
    .venv/bin/python scripts/update_bench.py --cases storefront:person --targets 0.01

For each (clip, object) (harness.UPDATE; the protocol: scripts/harness.py), in a cache and model
folder of its own (`--work`; only the detector's weights and exports are shared with
~/.cache/noscope, so nothing another run labelled is learnt from):

  1. `noscope train CLIP --object O --end A` (the first third, frames [0, A));
  2. `noscope query CLIP --model B --start A --end B` (the second third, the default check at the
     target T): the reference answers it pays for land in the label cache;
  3. `noscope train --update B CLIP --start A --end B` at T: a new version from those answers,
     validated on the last part in time of them; it becomes B only if it validates at least as well;
  4. `noscope evaluate CLIP --model B@1` and `--model B` on the last third (frames [B, end): neither
     version saw it) at T (FPR = FNR = T): errors against the reference on every frame, `met`,
     escalations, the share of frames the cheap stages settled, reference calls, speed-up end to end.
     An update kept aside leaves B the original: its row says so and is measured once.

Each target T is a chain of its own, as a nightly job at T would run it (query and update at T), in
its own caches (`--work`/T<T>): one target's query answers are never learnt from at another.

`--night N` repeats this on looped nights: the second third re-encoded losslessly (x264 qp 0, the
decoded pictures of exactly those frames) and looped into a night of at least N frames that moves
forward in time as a real one does: its first 60% loops the second third's first 60%, its last 40%
the rest (an update holds out the last part in time, about 40%, and learns from no frame showing a
held-out picture, so it validates on pictures it did not learn). That night is queried as a new
video and a copy of the original bundle is updated from it; the last third looped whole is queried
with both versions (`noscope query`, the default check). Errors are against the reference's answers
on the original frames each looped frame repeats (labelled in step 4; a spot check of 24 looped
frames says how often the reference answers a looped frame as its original), the speed-up against
the reference on every frame at the per-frame time `evaluate` measured on the last third.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np

import harness
from harness import fmt


def noscope(*args, env: dict, refusal_ok: bool = False) -> harness.Ran:
    """`python -m noscope.cli ARGS` in this benchmark's caches (`env`), from the repository's root."""
    return harness.cli(*args, env=env, cwd=harness.ROOT, refusal_ok=refusal_ok)


def at_target(t: float) -> list[str]:
    """The learning query's and the update's flags for target T (FPR = FNR = T)."""
    return ["--set", f"query.target_fpr={t}", "--set", f"query.target_fnr={t}"]


def update(bundle: Path, *args, env: dict) -> tuple[dict, str, float]:
    """`noscope train --update BUNDLE ARGS` -> (version 2's lineage entry, its line, seconds); an update
    that refuses (one error line, exit 1: nothing to learn) is a row too: status "refused", its reason."""
    import yaml

    ran = noscope("train", "--update", bundle.name, *args, env=env, refusal_ok=True)
    line = ran.out.strip()
    if ran.refused:
        why = line.removeprefix("noscope: error:").strip()
        return dict(status="refused", reason=why, learnt_frames=0, validation=None), line, ran.seconds
    entry = yaml.safe_load((bundle / "versions" / "2" / "bundle.yaml").read_text())["lineage"][-1]
    return entry, line, ran.seconds


# Long: the four steps of the module docstring for one (clip, object), then its looped nights.
def run_case(clip: str, obj: str, t: float, extra: list[str], env: dict, work: Path, night: int) -> dict:
    video = harness.VIDEOS / clip
    at = at_target(t)
    with av.open(str(video)) as c:  # the frames that decode (a container may claim more)
        n = sum(1 for _ in c.decode(video=0))
    a, b = harness.thirds(n)
    name = f"ub-{Path(clip).stem}-{obj}"
    bundle = work / "models" / name
    case = dict(clip=clip, object=obj, target=t, frames=n, cuts=[a, b], seconds={})
    for old in (bundle, work / "models" / f"{name}-night"):  # a run starts from a bundle as trained
        shutil.rmtree(old, ignore_errors=True)
    case["seconds"]["train"] = noscope("train", video, "--object", obj, "--end", f"{a}f", "--name", name, "-q", *extra,
                                       env=env).seconds
    if night:
        shutil.copytree(bundle, work / "models" / f"{name}-night")
    ran = noscope("query", video, "--model", name, "--start", f"{a}f", "--end", f"{b}f", "--json", "-q", "--no-plot",
                  "--out", work / "out" / name / "night", *at, *extra, env=env)
    case["night"], case["seconds"]["night_query"] = brief(harness.last_json(ran.out)), ran.seconds
    case["update"], case["update_line"], case["seconds"]["update"] = update(bundle, video, "--start", f"{a}f", "--end",
                                                                            f"{b}f", *at, *extra, env=env)
    good = case["update"]["status"] == "good"
    row = dict(target=t)
    for label, model in (("original", f"{name}@1"), ("updated", name)):
        if label == "updated" and not good:
            row[label] = dict(row["original"], same_as_original=True)
            continue
        out = noscope("evaluate", video, "--model", model, "--start", f"{b}f", "--target-fpr", t, "--target-fnr", t,
                      "--json", "-q", *extra, env=env).out
        row[label] = measured(harness.last_json(out))
    case["rows"] = [row]
    print(json.dumps(dict(clip=clip, object=obj, target=t, original=row["original"]["speedup"],
                          updated=row["updated"]["speedup"])), file=sys.stderr)
    if night:
        case["looped"] = run_night(video, obj, name, (a, b, n), t, extra, env, work, night, case)
    return case


def brief(summary: dict) -> dict:
    v = summary["verified"]
    return dict(frames=summary["frames"], positives=summary["positives"], reference_calls=summary["reference_calls"],
                met=v["met"], escalations=len(v.get("escalations") or []) + bool(v.get("reference_answered")),
                cheap=1 - summary["fractions"]["reference"], seconds=summary["wall_seconds"])


def measured(rep: dict) -> dict:
    """One evaluate report, as the table shows it."""
    v = rep["verified"]
    return dict(frames=rep["frames_compared"], positives=rep["positives"], fpr=rep["frames"]["fpr"], fnr=rep["frames"]["fnr"],
                met=v["met"], escalations=len(v.get("escalations") or []) + bool(v.get("reference_answered")),
                escalation_words="; ".join((v.get("escalations") or []) + (["reference on cheap " + "+".join(
                    v["reference_answered"])] if v.get("reference_answered") else [])),
                cheap=1 - rep["fractions"]["reference"], reference_calls=rep["reference_calls"], speedup=rep["speedup"],
                seconds=rep["cascade_seconds"], reference_seconds=rep["reference_seconds"],
                reference_per_frame=rep["reference_seconds"] / max(rep["frames_compared"], 1), model=rep["model"])


# Long: a night looped, the copy of the bundle updated from it, the last third looped and queried with both versions.
def run_night(video: Path, obj: str, name: str, cuts: tuple[int, int, int], t: float, extra: list[str], env: dict,
              work: Path, min_frames: int, case: dict) -> dict:
    from noscope.video import open_video

    a, b, n = cuts
    at = at_target(t)
    loops_dir = work / "loops"
    loops_dir.mkdir(exist_ok=True)
    copy = f"{name}-night"
    m = a + round(0.6 * (b - a))  # the night moves forward: the first 60% of the third, then the rest
    night = harness.reencode_loop(video, loops_dir / f"{name}-night.mp4", [(a, m, round(0.6 * min_frames)),
                                                                           (m, b, round(0.4 * min_frames))])
    ran = noscope("query", night.path, "--model", copy, "--json", "-q", "--no-plot", "--out",
                  work / "out" / name / "looped-night", *at, *extra, env=env)
    res = dict(night=dict(brief(harness.last_json(ran.out)), loops=night.loops), seconds=dict(night_query=ran.seconds))
    res["update"], res["update_line"], res["seconds"]["update"] = update(work / "models" / copy, night.path, *at, *extra,
                                                                          env=env)
    good = res["update"]["status"] == "good"
    last = harness.reencode_loop(video, loops_dir / f"{name}-last.mp4", [(b, n, min_frames)])
    judge = harness.Referee(harness.settings_of(extra))
    answered, truth = judge.answers(video, np.arange(b, n), obj)  # evaluate labelled them: cached
    assert np.array_equal(answered, np.arange(b, n)), "the last third's frames must all decode"
    per_frame = case["rows"][0]["original"]["reference_per_frame"]
    row = dict(target=t)
    for label, model in (("original", f"{copy}@1"), ("updated", copy)):
        if label == "updated" and not good:
            row[label] = dict(row["original"], same_as_original=True)
            continue
        folder = work / "out" / name / f"looped-last-{label}-{t}"
        harness.forget(last.path)  # each query of the looped last third starts with nothing cached, as a first night does
        out = noscope("query", last.path, "--model", model, "--target-fpr", t, "--target-fnr", t, "--json", "-q",
                      "--no-plot", "--out", folder, *extra, env=env).out
        row[label] = looped_measure(harness.last_json(out), folder, truth, n - b, per_frame, last.loops)
    res["rows"] = [row]
    # a spot check of 24 looped frames: does the reference answer each as it answers its original?
    spot = np.linspace(0, open_video(last.path).frame_count - 1, 24).astype(np.int64)
    res["mapping_agreement"] = judge.agreement(last.path, {int(f): truth[f % (n - b)] for f in spot}, obj)
    return res


def looped_measure(summary: dict, folder: Path, truth: np.ndarray, length: int, per_frame: float, loops: int) -> dict:
    """A looped query's answers against the reference's answers on the frames they repeat."""
    frames, labels = harness.query_answers(folder)
    expect = truth[frames % length]
    fpr, fnr, n_pos = harness.error_rates(labels, expect)
    v = summary["verified"]
    return dict(frames=len(frames), positives=n_pos, loops=loops, fpr=fpr, fnr=fnr, met=v["met"],
                escalations=len(v.get("escalations") or []) + bool(v.get("reference_answered")),
                cheap=1 - summary["fractions"]["reference"], reference_calls=summary["reference_calls"],
                seconds=summary["wall_seconds"], speedup=len(frames) * per_frame / summary["wall_seconds"])


def side(r: dict) -> str:
    return (f"{fmt(r['fpr'])} / {fmt(r['fnr'])} | {r['met']} | {r['escalations']} | {r['cheap']:.0%} | {r['reference_calls']} "
            f"| {r['speedup']:.1f}x")


def table(cases: list[dict], looped: bool = False) -> str:
    head = ("| clip | object | T | frames (pos) | update | original: FPR / FNR | met | escalations | cheap share "
            "| reference calls | speed-up | updated: FPR / FNR | met | escalations | cheap share | reference calls | speed-up |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cases:
        part = c["looped"] if looped else c
        up = part["update"]
        status = f"v2 {up['status']}" + (f" ({up['reason']})" if up["status"] != "good" else "")
        same = "as original (update kept aside)" if up["status"] == "aside" else "as original (no update)"
        for row in part["rows"]:
            o = row["original"]
            size = f"{o['frames']} ({o['positives']})" + (f", {o['loops']}x" if looped else "")
            lines.append(f"| {Path(c['clip']).stem} | {c['object']} | {row['target']} | {size} | {status} | {side(o)} "
                         f"| {side(row['updated']) if not row['updated'].get('same_as_original') else same} |")
    return "\n".join(lines)


def updates(cases: list[dict], looped: bool = False) -> str:
    head = ("| clip | object | night: frames, reference calls, escalations, cheap share | learnt frames | held-out frames (pos) "
            "| best AUC new / current | plan's reference share new / current | current's own plan there: FPR / FNR, reference share "
            "| status |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cases:
        part = c["looped"] if looped else c
        u, nt = part["update"], part["night"]
        v = u["validation"]
        if v is None:  # the update refused: nothing to learn
            lines.append(f"| {Path(c['clip']).stem} | {c['object']} | {nt['frames']}, {nt['reference_calls']}, "
                         f"{nt['escalations']}, {nt['cheap']:.0%} | 0 | | | | | refused ({u['reason']}) |")
            continue
        auc = lambda f: "/".join(fmt(x) for x in f["best_auc"].values())  # noqa: E731
        cap = v["current_as_planned"]
        err = "; ".join(f"{fmt(e['fpr'])} / {fmt(e['fnr'])}" for e in cap["errors"].values())
        lines.append(f"| {Path(c['clip']).stem} | {c['object']} | {nt['frames']}, {nt['reference_calls']}, {nt['escalations']}, "
                     f"{nt['cheap']:.0%} | {u['learnt_frames']} | {v['heldout_frames']} ({sum(v['heldout_positives'].values())}) "
                     f"| {auc(v['new'])} / {auc(v['current'])} | {v['new']['reference_share']:.0%} / "
                     f"{v['current']['reference_share']:.0%} | {err}, {cap['reference_share']:.0%} | {u['status']}"
                     f"{' (' + u['reason'] + ')' if u['reason'] else ''} |")
    return "\n".join(lines)


def acceptance(cases: list[dict], looped: bool = False) -> list[str]:
    """Never less accurate; faster wherever the original escalated."""
    worse, slower, escalated = [], [], 0
    for c in cases:
        for row in (c["looped"] if looped else c)["rows"]:
            o, u = row["original"], row["updated"]
            tag = f"{Path(c['clip']).stem} {c['object']} T={row['target']}"
            for k in ("fpr", "fnr"):
                if u[k] is not None and o[k] is not None and u[k] > o[k] + 1e-9:
                    worse.append(f"{tag} {k.upper()} {u[k]:.3f} > {o[k]:.3f}")
            if o["escalations"]:
                escalated += 1
                if not u["speedup"] > o["speedup"]:
                    slower.append(f"{tag} {u['speedup']:.1f}x <= {o['speedup']:.1f}x")
    return [f"- updated less accurate than the original (measured FPR or FNR higher): {len(worse)}"
            f"{': ' + '; '.join(worse) if worse else ''}",
            f"- rows where the original escalated: {escalated}; of them the updated not faster: {len(slower)}"
            f"{': ' + '; '.join(slower) if slower else ''}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.05, 0.01])
    ap.add_argument("--cases", nargs="+", help="clip-prefix:object, e.g. storefront:person (default: all five)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--night", type=int, default=0, metavar="N", help="also the looped nights (module docstring), N frames")
    ap.add_argument("--work", type=Path, default=Path("/tmp/noscope-update-bench"), help="caches, bundles, loops, results")
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = harness.read_args(ap, harness.UPDATE)
    extra = harness.set_flags(args.sets)
    report = harness.Report(args.out)
    t0 = time.perf_counter()
    done = []
    for t in args.targets:
        env = harness.workspace(args.work / f"T{t}")  # a chain per target, in caches of its own
        for clip, obj in args.cases:
            done.append(run_case(clip, obj, t, extra, env, args.work / f"T{t}", args.night))
            report.save(done)
    md = "\n".join([
        f"{' '.join(args.sets) or 'default config'}; {(time.perf_counter() - t0) / 60:.0f} min in all. Each clip and "
        "target T (a chain of its own): trained on its first third, the second third queried at T (default check), the "
        "bundle updated at T from that query's reference answers, the last third answered by the original (v1) and the "
        "updated bundle at T, against the reference on every frame of it.", "",
        table(done), "", "The updates:", "", updates(done), "", *acceptance(done)]
        + (["", f"Looped nights (at least {args.night} frames): the second third looped is the night queried and learnt "
                "from (its first 60% loops the third's first 60%, the rest the rest), the last third looped is answered by both "
                "versions.", "", table(done, True), "", updates(done, True),
            "", *acceptance(done, True),
            "- spot checks: a looped frame's reference answer equals its original's on "
            f"{min(c['looped']['mapping_agreement'] for c in done):.0%} of the checked frames or more"] if args.night else []))
    report.write(md, done)


if __name__ == "__main__":
    main()
