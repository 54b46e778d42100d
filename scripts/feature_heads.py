"""Forward in time: heads on the reference's first layers vs a from-scratch CNN, on the shared clips.

    .venv/bin/python scripts/feature_heads.py --out fh.json          # the whole grid
    .venv/bin/python scripts/feature_heads.py --cases storefront:person --layers 6 --widths 320

For each (clip, object) of the forward table, every frame is labelled by the reference (YOLOv3-tiny,
CPU, fp32; through the label cache, so `noscope label` runs are reused). Frames in decoding order
are split by position: train the first 51%, validation 51-60% (early stopping and the thresholds),
test the last 40%. Each clip is decoded once, at every prefix size (and 50x50 for the
from-scratch CNN); the reference's first layers run once per frame and size, with taps after each
prefix length, and the feature maps stay in memory (float16) while that size is being studied.
Heads of one clip are trained for all its objects together (one output each), on the reference's
answers (score >= 0.5) or, for KIND/soft, on its scores themselves (targets in [0, 1]).

Per (clip, object, prefix layers, size, head): test AUC; at each T the thresholds c_low/c_high
fitted on the validation frames so that FNR (positives below c_low) and FPR (negatives above
c_high) there stay <= T, applied to the test frames: the share of test frames the head settles
(score < c_low or > c_high; the rest would go to the reference) and the FPR/FNR that results
over all test frames. A side without evidence on the validation frames (no positive, or no
negative) settles nothing. Cost: seconds per frame of prefix + head at batch 64 on uint8 frames
in memory (median of 5 batches), with the threads torch has here; training time of the head.
Also: a pooling ablation for the linear head, and a from-scratch specialized CNN (default
training settings) on the same split for comparison.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import harness
from harness import fmt as _f
from noscope.cheap import cnn as sp
from noscope.cheap import heads as ph
from noscope.cheap import prefix as pf
from noscope.cheap.common import roc_auc
from noscope.costs import measure_decode_costs, measure_reference_cost
from noscope.labels import label_frames
from noscope.reference import load_reference, reference_key
from noscope.video import open_video

TRAIN_END, VAL_END = 0.51, harness.CUT_SHARE  # validation: the last 9% before the protocol's cut
MIN_SCORE = 0.5


def fit_thresholds(scores: np.ndarray, truth: np.ndarray, t: float) -> tuple[float, float]:
    """(c_low, c_high): at most floor(t * positives) positives score below c_low, at most
    floor(t * negatives) negatives above c_high; a side with no frames of its kind settles nothing."""
    pos, neg = np.sort(scores[truth]), np.sort(scores[~truth])
    c_low = float(pos[int(math.floor(t * len(pos)))]) if len(pos) else -math.inf
    c_high = float(neg[len(neg) - 1 - int(math.floor(t * len(neg)))]) if len(neg) else math.inf
    if c_low > c_high:  # the two answers separate: every frame is settled, cut half-way
        c_low = c_high = (c_low + c_high) / 2
    return c_low, c_high


def settle(scores: np.ndarray, truth: np.ndarray, c_low: float, c_high: float) -> dict:
    no, yes = scores < c_low, (scores > c_high) & ~(scores < c_low)
    pos, neg = int(truth.sum()), int((~truth).sum())
    fn, fp = int((no & truth).sum()), int((yes & ~truth).sum())
    return dict(settled=float((no | yes).mean()) if len(scores) else None, fn=fn, fp=fp,
                fnr=fn / pos if pos else None, fpr=fp / neg if neg else None)


def judge(scores: np.ndarray, truth: np.ndarray, parts: dict, targets: list[float]) -> dict:
    """AUC on test, and the settled share / errors at each target, thresholds fitted on the
    validation frames (T...), and for comparison on all of the first 60% (T..._0to60: the training
    frames included, so optimistic, but a 9% validation slice often shows one answer only)."""
    va, te = parts["va"], parts["te"]
    out = dict(auc=_num(roc_auc(scores[te], truth[te])), val_auc=_num(roc_auc(scores[va], truth[va])))
    for t in targets:
        for name, fit_on in ((f"T{t:g}", va), (f"T{t:g}_0to60", parts["tr"] | va)):
            c_low, c_high = fit_thresholds(scores[fit_on], truth[fit_on], t)
            out[name] = dict(c_low=_num(c_low), c_high=_num(c_high), **settle(scores[te], truth[te], c_low, c_high))
    return out


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def clip_data(clip: str, objects: list[str], ref, key: str, widths: list[int], scratch: bool, say) -> dict:
    """Labels of every frame, the split, and the frames decoded once at every size."""
    video = open_video(harness.VIDEOS / clip)
    t0 = time.perf_counter()
    labels = label_frames(video, ref, key, np.arange(video.frame_count), quiet=True)
    say(f"{clip}: {len(labels.frames)} frames labelled ({labels.from_cache} from cache, {time.perf_counter() - t0:.0f} s)")
    frames = labels.frames
    scores = np.stack([labels.scores[:, ref.class_index(o)] for o in objects], axis=1)
    truth = scores >= MIN_SCORE
    n = len(frames)
    pos = np.arange(n)
    parts = dict(tr=pos < round(TRAIN_END * n), va=(pos >= round(TRAIN_END * n)) & (pos < round(VAL_END * n)),
                 te=pos >= round(VAL_END * n))
    sizes = {f"w{w}": pf.prefix_size(video.width, video.height, w) for w in widths}
    if scratch:
        sizes["s50"] = (50, 50)
    arrays = {k: np.zeros((n, h, w, 3), np.uint8) for k, (w, h) in sizes.items()}
    where = {f: i for i, f in enumerate(frames.tolist())}
    t0 = time.perf_counter()
    got = 0
    for b in video.batches(sizes, frames=frames, batch_size=256):
        idx = [where[f] for f in b.indices.tolist()]
        for k in sizes:
            arrays[k][idx] = b.frames[k]
        got += len(idx)
    if got != n:
        raise SystemExit(f"{clip}: decoded {got} of the {n} labelled frames")
    say(f"{clip}: decoded {n} frames at {', '.join(f'{w}x{h}' for w, h in sizes.values())} "
        f"in {time.perf_counter() - t0:.0f} s")
    return dict(video=video, frames=frames, truth=truth, soft=np.clip(scores, 0, 1), parts=parts, sizes=sizes,
                arrays=arrays)


def decode_costs(video, sizes: dict) -> dict:
    """Seconds per frame to convert+resize a decoded frame to each size (PyAV), 200 frames each."""
    out = {}
    for name, size in sizes.items():
        _, convert = measure_decode_costs(video, 0, min(200, video.frame_count), size)
        out[f"{size[0]}x{size[1]}"] = convert
    return out


def study_size(d: dict, objects: list[str], ref, key: str, width: int, layers: list[int], heads: list[str],
               poolings: list[str], targets: list[float], costs: dict, seed: int, say) -> tuple[list, list]:
    """Every (layers, head) at one prefix size: rows of the main table, and the pooling ablation."""
    size = d["sizes"][f"w{width}"]
    x = d["arrays"][f"w{width}"]
    parts, truth = d["parts"], d["truth"]
    prefix_all = pf.build_prefix(ref, pf.PrefixPoint(key, max(layers), *size))
    t0 = time.perf_counter()
    maps = pf.extract(prefix_all, x, taps=layers)
    extract_s = (time.perf_counter() - t0) / len(x)
    say(f"  {size[0]}x{size[1]}: prefix to layer {max(layers)} with taps {layers}: {extract_s * 1e3:.1f} ms/frame "
        f"({', '.join(f'L{k} {tuple(m.shape[1:])}' for k, m in maps.items())})")
    rows, ablation = [], []
    for k in layers:
        prefix = pf.build_prefix(ref, pf.PrefixPoint(key, k, *size))
        m = {"train": maps[k][parts["tr"]], "val": maps[k][parts["va"]]}
        y = {"train": truth[parts["tr"]], "val": truth[parts["va"]]}
        for head in heads:
            kind, _, label = head.partition("/")  # "linear/soft": trained on the reference's score, not its answer
            target = d["soft"] if label == "soft" else truth
            model, info = ph.train_head(kind, prefix, m, {"train": target[parts["tr"]], "val": target[parts["va"]]},
                                        seed=seed)
            scores = model.predict_maps(maps[k])
            ckey = (k, size, kind)
            if ckey not in costs:
                costs[ckey] = dict(total=ph.measure_cost(model), head=ph.measure_cost(model, head_only=True), model=model)
            for j, o in enumerate(objects):
                r = dict(object=o, layers=k, size=f"{size[0]}x{size[1]}", width=width, head=head,
                         train_s=info["seconds"], steps=info["steps"], cost_s=costs[ckey]["total"],
                         head_cost_s=costs[ckey]["head"], **judge(scores[:, j], truth[:, j], parts, targets))
                r["scores"] = scores[:, j]  # every frame's, for later analysis (--out's .npz)
                rows.append(r)
            say(f"    L{k} {head:12s} AUC {' '.join(_f(r['auc']) for r in rows[-len(objects):])}  "
                f"train {info['seconds']:.1f} s  cost {costs[ckey]['total'] * 1e3:.1f} ms/frame")
        for pooling in poolings:
            model, info = ph.train_head("linear", prefix, m, y, pooling=pooling, seed=seed)
            scores = model.predict_maps(maps[k])
            for j, o in enumerate(objects):
                ablation.append(dict(object=o, layers=k, size=f"{size[0]}x{size[1]}", width=width, pooling=pooling,
                                     auc=_num(roc_auc(scores[d["parts"]["te"], j], truth[parts["te"], j]))))
    del maps
    return rows, ablation


def scratch_cnn(d: dict, objects: list[str], arch: str, targets: list[float], seed: int, say) -> list[dict]:
    """The from-scratch specialized CNN (train.* defaults: 12 epochs, patience 3, augment 4) on the same split."""
    a = sp.Arch.parse(arch)
    x, parts, truth = d["arrays"]["s50"], d["parts"], d["truth"]
    mean = sp.mean_frame(x[parts["tr"]])
    truth = truth if truth.shape[1] > 1 else truth[:, 0]  # one object: the (N,) labels of a one-output model
    t0 = time.perf_counter()
    with ph.one_thread():
        model, info = sp.train_candidate(a, x[parts["tr"]], truth[parts["tr"]], x[parts["va"]], truth[parts["va"]],
                                         mean, epochs=12, patience=3, augment=4, seed=seed, device="cpu")
    seconds = time.perf_counter() - t0
    scores = sp.predict_scores(model, x, mean, device="cpu").reshape(len(x), -1)
    truth = truth.reshape(len(x), -1)
    cost = sp.measure_cost(model, a.size, device="cpu")
    rows = [dict(object=o, layers=None, size="50x50", width=None, head=f"scratch {arch}", train_s=seconds,
                 steps=info["epochs"], cost_s=cost, head_cost_s=cost, scores=scores[:, j],
                 **judge(scores[:, j], truth[:, j], parts, targets)) for j, o in enumerate(objects)]
    say(f"  scratch {arch}: AUC {' '.join(_f(r['auc']) for r in rows)}  train {seconds:.0f} s  cost {cost * 1e3:.2f} ms/frame")
    return rows


def _settled(r: dict, t: float) -> str:
    s = r[f"T{t:g}"]
    if s["settled"] is None:
        return "n/a"
    return f"{s['settled']:.2f} ({_f(s['fpr'], 3)}/{_f(s['fnr'], 3)})"


def cost_pass(costs: dict, ref, passes: int = 3) -> list[dict]:
    """Each (layers, size, head) timed again `passes` times, each time right after the reference
    (8 frames), so the share of the reference's cost is taken under the same load."""
    out = []
    for (k, size, kind), c in sorted(costs.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        model, totals, heads, refs = c["model"], [], [], []
        for _ in range(passes):
            refs.append(measure_reference_cost(ref))
            totals.append(ph.measure_cost(model))
            heads.append(ph.measure_cost(model, head_only=True))
        out.append(dict(layers=k, size=f"{size[0]}x{size[1]}", head=kind, cost_s=statistics.median(totals),
                        head_cost_s=statistics.median(heads), reference_s=statistics.median(refs),
                        share=statistics.median(t / r for t, r in zip(totals, refs))))
    return out


def cost_table(cost_rows: list[dict]) -> str:
    lines = ["| layers | size | head | ms/frame | head alone ms | reference ms (same passes) | share of reference |",
             "|---|---|---|---|---|---|---|"]
    for c in cost_rows:
        lines.append(f"| {c['layers']} | {c['size']} | {c['head']} | {c['cost_s'] * 1e3:.2f} | {c['head_cost_s'] * 1e3:.2f} | "
                     f"{c['reference_s'] * 1e3:.0f} | {c['share']:.3f} |")
    return "\n".join(lines)


def table(rows: list[dict], targets: list[float]) -> str:
    head = ("| clip | object | val pos/neg | test pos/neg | head | layers | size | AUC | val AUC | "
            + " | ".join(f"settled T={t:g} (FPR/FNR)" for t in targets) + " | ms/frame | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['clip']} | {r['object']} | {r['val_pos']}/{r['val_neg']} | {r['test_pos']}/{r['test_neg']} | {r['head']} | "
                     f"{r['layers'] or '-'} | {r['size']} | {_f(r['auc'])} | {_f(r['val_auc'])} | "
                     + " | ".join(_settled(r, t) for t in targets)
                     + f" | {r['cost_s'] * 1e3:.2f} | {r['train_s']:.1f} |")
    return "\n".join(lines)


def summary(rows: list[dict], targets: list[float]) -> str:
    """Per (head, layers, width): AUC over the pairs where it is defined, settled shares, cost."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["head"], r["layers"] or 0, r["width"] or 0)].append(r)
    head = ("| head | layers | width | median AUC | min AUC | pairs AUC>=0.9 | "
            + " | ".join(f"mean settled T={t:g} | max FNR T={t:g} | max FPR T={t:g}" for t in targets)
            + " | " + " | ".join(f"mean settled T={t:g}, fit 0-60% | max FNR | max FPR" for t in targets) + " | ms/frame (median) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (kind, k, w), rs in sorted(groups.items()):
        aucs = [r["auc"] for r in rs if r["auc"] is not None]
        cells = []
        for name in [f"T{t:g}" for t in targets] + [f"T{t:g}_0to60" for t in targets]:
            st = [r[name]["settled"] for r in rs if r[name]["settled"] is not None]
            fnr = [r[name]["fnr"] for r in rs if r[name]["fnr"] is not None]
            fpr = [r[name]["fpr"] for r in rs if r[name]["fpr"] is not None]
            cells += [_f(statistics.mean(st), 2) if st else "n/a", _f(max(fnr), 3) if fnr else "n/a",
                      _f(max(fpr), 3) if fpr else "n/a"]
        lines.append(f"| {kind} | {k or '-'} | {w or 50} | {_f(statistics.median(aucs)) if aucs else 'n/a'} | "
                     f"{_f(min(aucs)) if aucs else 'n/a'} | {sum(a >= 0.9 for a in aucs)}/{len(aucs)} | "
                     + " | ".join(cells) + f" | {statistics.median(r['cost_s'] for r in rs) * 1e3:.2f} |")
    return "\n".join(lines)


def ablation_table(ablation: list[dict]) -> str:
    groups = defaultdict(list)
    for r in ablation:
        if r["auc"] is not None:
            groups[(r["pooling"], r["layers"], r["width"])].append(r["auc"])
    lines = ["| pooling | layers | width | median AUC | mean AUC | min AUC |", "|---|---|---|---|---|---|"]
    for (p, k, w), a in sorted(groups.items()):
        lines.append(f"| {p} | {k} | {w} | {statistics.median(a):.3f} | {statistics.mean(a):.3f} | {min(a):.3f} |")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", help="comma-separated clip-prefix:object (default: the forward table)")
    ap.add_argument("--layers", default="4,6,8,10")
    ap.add_argument("--widths", default="160,320")
    ap.add_argument("--heads", default="linear,spatial", help="head kinds; KIND/soft trains on the reference's score")
    ap.add_argument("--poolings", default="mean,mean+max,mean+max+grid2x3,mean+max+grid3x4",
                    help="linear-head pooling ablation ('' for none)")
    ap.add_argument("--scratch", default="", help="from-scratch CNN to compare, e.g. c2f32d64s50 (slow on CPU)")
    ap.add_argument("--targets", default="0.05,0.01")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost-passes", type=int, default=3, help="timings again, beside the reference's (0: none)")
    ap.add_argument("--costs-only", metavar="WxH", help="only time the grid's points for a video of this size "
                    "(untrained heads: the weights do not change the cost)")
    ap.add_argument("--out", help="write the rows as JSON here (and the tables beside it as .md)")
    return ap.parse_args(argv)


def selected_cases(spec: str | None) -> dict[str, list[str]]:
    """--cases (comma-separated clip-prefix:object; any object) -> {clip: [objects]}; one line on error."""
    try:
        cases = harness.parse_cases(spec.split(",") if spec else None, harness.FORWARD, any_object=True)
    except ValueError as e:
        raise SystemExit(f"feature_heads: {e}") from None
    by_clip: dict[str, list[str]] = {}
    for clip, obj in cases:
        by_clip.setdefault(clip, []).append(obj)
    return by_clip


def main(argv=None) -> int:
    args = parse_args(argv)
    by_clip = {} if args.costs_only else selected_cases(args.cases)  # a wrong --cases says so before any work
    layers = [int(v) for v in args.layers.split(",") if v]
    widths = [int(v) for v in args.widths.split(",") if v]
    heads = [h for h in args.heads.split(",") if h]
    poolings = [p for p in args.poolings.split(",") if p]
    targets = [float(t) for t in args.targets.split(",")]
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    ref = load_reference("yolov3-tiny", device="cpu")
    key = reference_key(ref)
    ref_cost = measure_reference_cost(ref)
    say(f"reference {key}: {ref_cost * 1e3:.0f} ms/frame; torch threads {torch.get_num_threads()}")
    rows, ablation, costs, decoding = [], [], {}, {}
    if args.costs_only:
        vw, vh = (int(v) for v in args.costs_only.lower().split("x"))
        for w in widths:
            size = pf.prefix_size(vw, vh, w)
            for k in layers:
                prefix = pf.build_prefix(ref, pf.PrefixPoint(key, k, *size))
                for kind in heads:
                    head = ph.make_head(kind, pf.extract_channels(prefix), 1)
                    costs[(k, size, kind)] = dict(model=ph.PrefixModel(prefix, head, kind).eval())
    for clip, objects in by_clip.items():
        d = clip_data(clip, objects, ref, key, widths, bool(args.scratch), say)
        decoding[clip] = decode_costs(d["video"], d["sizes"])
        te = d["parts"]["te"]
        extra = {o: dict(clip=clip, test_pos=int(d["truth"][te, j].sum()), test_neg=int((~d["truth"][te, j]).sum()),
                         val_pos=int(d["truth"][d["parts"]["va"], j].sum()),
                         val_neg=int((~d["truth"][d["parts"]["va"], j]).sum())) for j, o in enumerate(objects)}
        clip_rows = []
        for w in widths if layers and (heads or poolings) else []:
            r, a = study_size(d, objects, ref, key, w, layers, heads, poolings, targets, costs, args.seed, say)
            clip_rows += r
            ablation += [dict(x, clip=clip) for x in a]
        if args.scratch:
            clip_rows += scratch_cnn(d, objects, args.scratch, targets, args.seed, say)
        rows += [dict(r, **extra[r["object"]]) for r in clip_rows]
        del d
    cost_rows = cost_pass(costs, ref, args.cost_passes) if costs and args.cost_passes else []
    order = {c: i for i, c in enumerate(harness.FORWARD)}
    rows.sort(key=lambda r: (order.get((r["clip"], r["object"]), 99), r["head"], r["layers"] or 0, r["width"] or 0))
    text = "\n\n".join([
        f"reference {key} {ref_cost * 1e3:.0f} ms/frame; {time.perf_counter() - t_start:.0f} s in all",
        "## Summary over pairs\n\n" + summary(rows, targets),
        f"## Cost, batch of 64 uint8 frames in memory (median of {args.cost_passes} passes)\n\n" + cost_table(cost_rows) if cost_rows else "",
        "## Pooling (linear head)\n\n" + ablation_table(ablation) if ablation else "",
        "## Every row\n\n" + table(rows, targets),
        "## Convert + resize per decoded frame (PyAV), ms\n\n" + "\n".join(
            f"- {c}: " + ", ".join(f"{s} {v * 1e3:.2f}" for s, v in dc.items()) for c, dc in decoding.items()),
    ])
    report = harness.Report(args.out)
    scores = {f"row{i}": r.pop("scores") for i, r in enumerate(rows)}  # every frame's, beside the JSON
    if args.out:
        np.savez_compressed(Path(args.out).with_suffix(".npz"), **scores)
    report.write(text, dict(reference=key, reference_cost_s=ref_cost, threads=torch.get_num_threads(), rows=rows,
                            costs=cost_rows, ablation=ablation, decode_convert_s=decoding,
                            seconds=time.perf_counter() - t_start, split=dict(train_end=TRAIN_END, val_end=VAL_END),
                            argv=sys.argv[1:], machine=report.machine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
