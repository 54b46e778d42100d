"""Do the specialized models' scores hold on later footage? Split and augmentation, measured.

    .venv/bin/python scripts/score_carry.py --out carry          # carry.md + carry.json

For each (clip, object) where the first 60% has enough positive frames to train a CNN, and each
training setting (the older interleaved split without augmentation, the forward split without
it, the forward split with the default augmentation), a bundle is trained on the first 60%
(small grid). Its plan at T = 0.05 and T = 0.01 then answers the last 40%, never seen in
training, without the query-time check (`query.verify=0`): the first pass's frame FPR/FNR there
against the reference on every frame shows whether the thresholds the optimizer fitted carry
over in time. Per setting also: the best held-out AUC, that model's AUC on the last 40%, and the
median score of its positive frames on the held-out frames and on the last 40% (a model whose
ranking holds but whose scores slide below c_low misses everything, and AUC alone hides it).
Reference answers come from the label cache (filled on first use), so this measures accuracy,
not speed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import harness
from noscope.answer import answer
from noscope.bundle import bundle_path
from noscope.config import load_config
from noscope.evaluate import measured
from noscope.labels import label_frames, object_truth
from noscope.planning import choose_plan
from noscope.plans import Targets
from noscope.prepare import open_query
from noscope.settings import Settings
from noscope.cheap.common import roc_auc
from noscope.train import train

SETTINGS = {"interleaved, no augmentation": ["train.split=interleaved", "train.augment=0"],
            "forward, no augmentation": ["train.split=forward", "train.augment=0"],
            "forward, augmentation (default)": ["train.split=forward", "train.augment=4"]}


def later_scores(bundle, video, frames: np.ndarray, name: str) -> np.ndarray:
    scorer = bundle.model(name, "cpu")
    x = np.concatenate([b.frames["s"] for b in video.batches({"s": scorer.size}, frames=frames)])
    return scorer.score(x)[:, 0]


# Long: one table row: train, score the later footage, then each target's first pass.
def one(clip: str, obj: str, label: str, sets: list[str], targets: list[float]) -> dict:
    settings = Settings.from_config(load_config(None, ["train.grid=small", "query.verify=0", *sets]))
    path = harness.VIDEOS / clip
    root = bundle_path(f"carry-{Path(clip).stem}-{obj}-{'-'.join(s.split('=')[1] for s in sets)}")
    train(path, obj, root, settings, None, harness.CUT, quiet=True, say=lambda *a: None)
    q = open_query(settings, path, str(root.absolute()), None, harness.CUT, None)
    tb, v, s, e = q.bundle, q.video, q.start, q.end
    labels = label_frames(v, q.reference, q.ref_key, np.arange(s, e), quiet=True)
    truth = object_truth(labels.score_of(tb.class_index(obj)), 0.5, 1)
    row = dict(clip=clip, object=obj, setting=label, positives_later=int(truth.sum()), frames_later=len(truth))
    if tb.candidates:
        best = max(tb.candidates, key=lambda c: np.nan_to_num(c.heldout_auc, nan=-1))
        p_later = later_scores(tb, v, labels.frames, best.name)
        held = tb.heldouts[obj]
        p_held = held.model_scores[best.name]
        row.update(model=best.name, heldout_auc=best.heldout_auc,
                   later_auc=roc_auc(p_later, truth) if truth.any() and (~truth).any() else None,
                   heldout_pos_median=float(np.median(p_held[held.truth])) if held.truth.any() else None,
                   later_pos_median=float(np.median(p_later[truth])) if truth.any() else None,
                   later_neg_median=float(np.median(p_later[~truth])) if (~truth).any() else None)
    for t in targets:
        plan = choose_plan(tb, Targets(t, t), [obj], settings.optimizer)
        results, _ = answer(q, plan, Targets(t, t), settings, quiet=True)
        m = measured(results[obj], labels.frames, truth, 30)["frames"]
        row[f"T={t}"] = dict(fpr=m["fpr"], fnr=m["fnr"], model=plan.shared.model, reference_share=plan.fractions["reference"])
    print(json.dumps(row), file=sys.stderr)
    return row


def _f(x) -> str:
    return harness.fmt(x, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.05, 0.01])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [one(c, o, label, sets, args.targets) for c, o in harness.CARRY for label, sets in SETTINGS.items()]
    head = ("| clip | object | setting | best CNN | held-out AUC | later AUC | positives' median score, held-out -> later "
            "| negatives' median later | " + " | ".join(f"first pass FPR / FNR at {t}" for t in args.targets) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        firsts = " | ".join(f"{_f(r[f'T={t}']['fpr'])} / {_f(r[f'T={t}']['fnr'])}"
                            + ("" if r[f"T={t}"]["model"] else " (no CNN)") for t in args.targets)
        lines.append(f"| {Path(r['clip']).stem} | {r['object']} | {r['setting']} | {r.get('model', 'none')} "
                     f"| {_f(r.get('heldout_auc'))} | {_f(r.get('later_auc'))} "
                     f"| {_f(r.get('heldout_pos_median'))} -> {_f(r.get('later_pos_median'))} "
                     f"| {_f(r.get('later_neg_median'))} | {firsts} |")
    harness.Report(args.out).write("\n".join(lines), rows)


if __name__ == "__main__":
    main()
