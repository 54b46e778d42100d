"""A third kind of cheap model is one new file and one registry line: here a toy kind, defined in this
file and added to the registry (noscope.cheap.KINDS), is trained by `train`, offered to the optimizer,
chosen where it is the cheapest model that settles frames, and answers a query.

The toy: logistic regression on a colour histogram of a 16x16 frame (the share of its pixels in each
of 4 bins of saturation, max - min of a pixel's channels). The scene is the drift scene of
test_drift: a saturated square (yellow, later blue) is the object, a grey one is not, and the
reference answers "a saturated square is there"; colour alone decides it.
"""

import io
import json
import time

import numpy as np
import pytest

import noscope.reference
from noscope import cheap
from noscope.atomic import atomic_write_bytes
from noscope.bundle_manifest import Candidate
from noscope.cheap.base import CheapModel, KindGrid, Mismatch
from noscope.cheap.common import heldout_aucs, lacking_objects, median_seconds
from noscope.plans import Targets

from .conftest import default_settings, write_video
from .test_drift import HALF, SaturatedSquares, scene

SIDE, BINS = 16, 4


def histogram(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, 16, 16, 3) -> float (N, BINS): the share of pixels in each bin of saturation."""
    f = frames.reshape(len(frames), -1, 3).astype(np.int16)
    sat = (f.max(axis=2) - f.min(axis=2)) * BINS // 256
    return np.stack([(sat == b).mean(axis=1) for b in range(BINS)], axis=1)


class ColourHist(CheapModel):
    """The toy kind: logistic regression on `histogram`, one output per object."""

    kind = "colour_hist"

    def __init__(self, w: np.ndarray, b: np.ndarray, name: str):
        self.w, self.b, self.name, self.base = w, b, name, name

    @property
    def size(self):
        return SIDE, SIDE

    def score(self, frames):
        return (1 / (1 + np.exp(-(histogram(frames) @ self.w + self.b)))).astype(np.float32)

    def measure_cost(self):
        batch = np.random.default_rng(0).integers(0, 256, (64, SIDE, SIDE, 3), dtype=np.uint8)
        return median_seconds(lambda: self.score(batch), 5) / 64

    def save(self, path):
        buf = io.BytesIO()
        np.savez(buf, w=self.w, b=self.b)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def sizes(cls, settings):
        return [SIDE]

    @classmethod
    def train_grid(cls, data):
        x = histogram(data.small[SIDE])
        y = data.truth.reshape(len(data.truth), -1).astype(np.float64)
        tr, ho = data.parts.train, data.parts.heldout
        w, b = np.zeros((x.shape[1], y.shape[1])), np.zeros(y.shape[1])
        for _ in range(2000):  # full-batch gradient descent on the logistic loss
            p = 1 / (1 + np.exp(-(x[tr] @ w + b)))
            w -= 20.0 * x[tr].T @ (p - y[tr]) / tr.sum()
            b -= 20.0 * (p - y[tr]).mean(axis=0)
        name = "colour-hist-16"
        model = cls(w, b, name)
        model.save(data.work / f"{name}-{data.key}.pt")
        scores = model.score(data.small[SIDE][ho])
        lacking = lacking_objects(y[tr].astype(bool), data.objects)
        auc, aucs = heldout_aucs(scores, y[ho].astype(bool), data.objects, lacking)
        cost = model.measure_cost()
        data.say(f"{name}: held-out AUC {auc:.3f}, {cost * 1e6:.1f} us/frame")
        multi = len(data.objects) > 1
        cand = Candidate(name, f"models/{name}.pt", kind=cls.kind, spec=dict(size=SIDE, bins=BINS), cost_s=cost,
                         heldout_auc=auc, train=dict(steps=2000), heldout_aucs=aucs if multi else None)
        return KindGrid([cand], {name: scores if multi else scores[:, 0]}, {name: cost})

    @classmethod
    def check(cls, path, candidate, outputs):
        with np.load(path) as z:
            if z["w"].shape != (BINS, outputs):
                raise Mismatch(f"holds weights of shape {z['w'].shape}, not the {candidate.name} with {outputs} outputs")

    @classmethod
    def load(cls, path, candidate, ctx):
        cls.check(path, candidate, ctx.outputs)
        with np.load(path) as z:
            return cls(z["w"], z["b"], candidate.name)


class SlowSquares(SaturatedSquares):
    """The drift scene's reference, as costly per frame as a small detector (3 ms): the cheap stages
    then have something to save."""

    def predict(self, frames):
        time.sleep(0.003 * len(frames))
        return super().predict(frames)


@pytest.fixture
def toy_kind(tmp_path, monkeypatch):
    frames, present = scene()
    path = write_video(tmp_path / "drift.avi", frames)
    monkeypatch.setattr(noscope.reference, "load_reference", lambda *a, **k: SlowSquares())
    monkeypatch.setitem(cheap.KINDS, ColourHist.kind, ColourHist)  # the registry line a new kind adds
    return path, present


def test_a_new_kind_is_trained_offered_chosen_and_answers(toy_kind, tmp_path, monkeypatch):
    from noscope.bundle import load_bundle
    from noscope.errors import NoscopeError
    from noscope.planning import choose_plan, usable_models
    from noscope.query import query_video
    from noscope.train import train

    path, present = toy_kind
    # one CNN beside it, no heads (this reference has no layers): the toy is the cheap model to beat it
    settings = default_settings("train.grid=[c2f16d32s50]", "train.heads=[]", "train.epochs=1", "train.augment=0",
                                "train.block=40", "decode.frame_cache=false")
    manifest = train(path, "square", tmp_path / "bundle", settings, end=f"{HALF}f", quiet=True, say=lambda *a: None)
    assert [(c.name, c.kind) for c in manifest.candidates] == [("c2f16d32s50", "cnn"), ("colour-hist-16", "colour_hist")]
    written = (tmp_path / "bundle" / "bundle.yaml").read_text()
    assert "kind: colour_hist" in written and "bins: 4" in written

    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.heldout_auc(bundle.manifest.candidate("colour-hist-16"), "square") > 0.99
    assert bundle.costs.model["colour-hist-16"] < bundle.costs.model["c2f16d32s50"]
    assert "colour-hist-16" in usable_models(bundle, 0.0, "square")
    plan = choose_plan(bundle, Targets(0.05, 0.05), ["square"], settings.optimizer)
    assert plan.plans["square"].model == "colour-hist-16", plan.describe()

    summary = query_video(path, default_settings("decode.frame_cache=false"), Targets(0.05, 0.05),
                          model=str(tmp_path / "bundle"), out=tmp_path / "out", plot=False, quiet=True)
    # it settles every frame it sees (how many that is depends on the difference detector the measured
    # costs choose before it); the check then asks the reference about a few hundred of them
    first = summary["first_pass_fractions"]
    assert summary["cascade"]["model"] == "colour-hist-16" and first["model"] > 0 and first["reference"] <= 0.05, first
    assert summary["fractions"]["model"] > 0
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["cascade"]["model"] == "colour-hist-16"
    labels = _labels(tmp_path / "out")
    assert np.mean(labels != present) <= 0.05  # the blue squares too: colour decides it

    # the same bundle read by a noscope without the toy kind: one line naming the kind
    monkeypatch.delitem(cheap.KINDS, ColourHist.kind)
    with pytest.raises(NoscopeError, match="of kind 'colour_hist', which this noscope .* does not know"):
        load_bundle(tmp_path / "bundle")


def _labels(out) -> np.ndarray:
    import csv

    with open(out / "frames.csv") as f:
        return np.array([row["label"] in ("1", "True", "true") for row in csv.DictReader(f)])
