"""A video whose object changes look in its second half: the query must notice and repair.

The scene: a textured static background; in the first half a yellow square comes and goes
(the object) and a grey square comes and goes (not the object); in the second half the object is
a blue square. A colour-blind "reference" that answers "a saturated square is there" says yes to
both yellow and blue; models trained on the first half have never seen blue. The bundle is
trained on the first half, the query answers the second: the cascade's first answers miss the blue
squares, the check on the queried video must find the misses and repair them, and say so.
"""

import json

import numpy as np

from noscope.plans import Targets
from noscope.reference.base import Detections, Reference

from .conftest import default_settings

N, HALF = 480, 240


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    import cv2

    bg = cv2.resize(rng.integers(40, 110, (9, 12, 3)).astype(np.uint8), (96, 72), interpolation=cv2.INTER_LINEAR)
    frames = np.repeat(bg[None], N, axis=0).copy()
    present = np.zeros(N, bool)
    for i in range(N):
        phase, step = (i // 16) % 3, i % 16
        x = 4 + step * 4
        if phase == 1:  # the object
            present[i] = True
            frames[i, 24:44, x : x + 20] = (250, 230, 20) if i < HALF else (30, 60, 250)
        elif phase == 2:  # a distractor the reference ignores
            frames[i, 24:44, x : x + 20] = (200, 200, 200)
    return frames, present


class SaturatedSquares(Reference):
    """Test reference: score = share of strongly coloured pixels a 20x20 square would cover."""

    name = "saturated-squares"
    class_names = ["square"]
    input_size = None
    batch_size = 16

    def __init__(self):
        import torch

        self.device = torch.device("cpu")

    def predict(self, frames):
        f = frames.astype(np.int16)
        saturated = (f.max(axis=3) - f.min(axis=3)) > 120
        scores = np.minimum(saturated.sum(axis=(1, 2)) / 300.0, 1.0).astype(np.float32)[:, None]
        return scores, [Detections.empty() for _ in frames]


def test_query_finds_the_miss_and_repairs_it(drift_video, tmp_path):
    from noscope.query import query_video
    from noscope.train import train

    path, present = drift_video
    settings = default_settings("train.grid=small", "train.epochs=4", "train.block=40", "train.augment=1",
                                "decode.frame_cache=false")
    train(path, "square", tmp_path / "bundle", settings, end=f"{HALF}f", quiet=True, say=lambda *a: None)
    targets = Targets(0.05, 0.05)
    off = query_video(path, default_settings("query.verify=0"), targets, model=str(tmp_path / "bundle"),
                      out=tmp_path / "unchecked", start=f"{HALF}f", plot=False, quiet=True)
    summary = query_video(path, default_settings(), targets, model=str(tmp_path / "bundle"),
                          out=tmp_path / "checked", start=f"{HALF}f", plot=False, quiet=True)

    truth = present[HALF:]
    unchecked = _labels(tmp_path / "unchecked")
    checked = _labels(tmp_path / "checked")
    fnr_before = np.count_nonzero(~unchecked & truth) / truth.sum()
    fnr_after = np.count_nonzero(~checked & truth) / truth.sum()
    assert fnr_before > 0.3, "the scene must fool the cascade, or this test checks nothing"
    v = summary["verified"]
    assert v["rounds"][0]["errors"]["no"] > 0  # the first check found misses among the cheap "no" answers
    assert v["escalated"] and (v["escalations"] or v["reference_answered"])
    assert fnr_after <= 0.05 + 0.02 and fnr_after < fnr_before
    assert v["met"] is not False
    assert off["verified"]["met"] is None and "off" in off["verified"]["note"]
    saved = json.loads((tmp_path / "checked" / "summary.json").read_text())
    assert saved["verified"]["escalated"] and saved["reference_calls"] > off["reference_calls"]


def _labels(out) -> np.ndarray:
    import csv

    with open(out / "frames.csv") as f:
        return np.array([row["label"] in ("1", "True", "true") for row in csv.DictReader(f)])
