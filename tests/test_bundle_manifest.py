"""bundle.yaml, typed (noscope.bundle_manifest): read once, written back with the same keys in the same
order, whether the manifest was read from a file (an older noscope's included) or made by `train`."""

import copy
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from noscope.bundle_manifest import (Candidate, DiffRecord, HeldoutRecord, LabelRule, Manifest, ReferenceRecord,
                                     TrainedVideo)
from noscope.errors import NoscopeError
from noscope.plans import Costs

# bundle.yaml as `train` has always written it (one object), trimmed: every kind of field is here
WRITTEN = yaml.safe_load("""
object: person
class_index: 0
reference: {name: yolov3-tiny, key: yolov3-tiny-416x416-3bcd6b39, input_size: [416, 416], weights: null, cfg: null,
            names: null, runtime: cpu-fp32-onnxruntime-efab6b9e22}
labels: {min_score: 0.5, smooth: 1}
video: {path: /v/store.mp4, hash: 77666703798f7b6a, fps: 29.97, width: 640, height: 360, segment: [0, 1163],
        frames_labelled: 1163, positives: 198}
seed: 0
settings_key: 8a9a83b671a2
created: '2026-12-07T16:08:03+00:00'
train: {grid: small, heads: ['L6@320:linear'], epochs: 12, seconds: 624.7}
optimizer: {skips: [1, 2, 5], min_auc: 0.0}
costs:
  decode: 0.0005
  convert: 0.007
  diff: {prev-global: 0.00016, ref-global: 0.00017}
  model: {c2f16d32s50: 0.0025, ref-L6-320x192-linear: 0.08}
  reference: 0.1
candidates:
- {name: c2f16d32s50, file: models/c2f16d32s50.pt, size: 50, cost_s: 0.0025, heldout_auc: 0.741,
   train: {arch: c2f16d32s50, epochs: 5}}
- {name: ref-L6-320x192-linear, file: models/ref-L6-320x192-linear.pt, kind: prefix_head, head: linear,
   prefix: {reference: yolov3-tiny-416x416-3bcd6b39, layers: 6, size: [320, 192]}, cost_s: 0.08, heldout_auc: .nan,
   train: {kind: linear, steps: 40}, learnt_from: models/ref-L6-320x192-linear-learnt.npz}
diffs:
- {name: prev-global, kind: prev, mode: global, grid: 1, features: mse, weights: null, bias: null, cost_s: 0.00016,
   size: 50}
- {name: ref-global, kind: ref, mode: global, grid: 1, features: mse, weights: null, bias: null,
   reference_image_file: diff/ref-global.npy, cost_s: 0.00017, size: 50}
heldout: {file: heldout.npz, frames: 465, positives: 38}
format: 1
noscope_version: 0.1.0
files: {heldout.npz: '00', models/c2f16d32s50.pt: '11'}
""")


def dump(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=False)


def test_a_manifest_read_writes_back_what_it_read():
    m = Manifest.read(Path("b"), copy.deepcopy(WRITTEN))
    assert dump(m.to_dict()) == dump(WRITTEN)
    assert m.labels.min_score == 0.5 and m.video.segment == (0, 1163) and m.reference.key.startswith("yolov3")
    assert [(c.name, c.kind) for c in m.candidates] == [("c2f16d32s50", "cnn"), ("ref-L6-320x192-linear", "prefix_head")]
    assert m.candidates[0].spec == {"size": 50} and m.candidates[1].spec["prefix"]["layers"] == 6
    assert m.diff("ref-global").detector() == {k: v for k, v in WRITTEN["diffs"][1].items()
                                               if k not in ("cost_s", "size", "reference_image_file")}
    assert list(m.content()) == [k for k in WRITTEN if k not in ("format", "noscope_version", "files")]


def test_a_manifest_made_by_train_writes_the_keys_train_always_wrote():
    w = copy.deepcopy(WRITTEN)
    c0, c1 = w["candidates"]
    fresh = Manifest(
        "person", class_index=0, reference=ReferenceRecord(**w["reference"]), labels=LabelRule(0.5, 1),
        video=TrainedVideo(**dict(w["video"], segment=(0, 1163))), seed=0, settings_key=w["settings_key"],
        created=w["created"], train=w["train"], optimizer=w["optimizer"], costs=Costs(**w["costs"]),
        candidates=(Candidate(c0["name"], c0["file"], spec=dict(size=50), cost_s=c0["cost_s"], heldout_auc=0.741,
                              train=c0["train"]),
                    Candidate(c1["name"], c1["file"], kind="prefix_head", spec=dict(head="linear", prefix=c1["prefix"]),
                              cost_s=0.08, heldout_auc=c1["heldout_auc"], train=c1["train"], learnt_from=c1["learnt_from"])),
        diffs=tuple(DiffRecord.from_dict(d) for d in w["diffs"]), heldout=HeldoutRecord("heldout.npz", 465, 38))
    assert dump(fresh.content()) == dump({k: v for k, v in WRITTEN.items() if k not in ("format", "noscope_version", "files")})


def test_a_new_version_appends_its_keys_where_an_update_always_did():
    m = Manifest.read(Path("b"), copy.deepcopy(WRITTEN))
    c = replace(m.candidates[1], heldout_auc=0.9, refit=dict(version=2, frames=40))
    v2 = replace(m, candidates=(m.candidates[0], c), version=2, created="later", learnt="learnt.npz", lineage=[{"version": 1}])
    d = v2.content()
    assert list(d)[-4:] == ["heldout", "version", "learnt", "lineage"] and d["created"] == "later"
    assert list(d["candidates"][1])[-2:] == ["learnt_from", "refit"] and d["candidates"][1]["heldout_auc"] == 0.9
    again = Manifest.read(Path("b"), yaml.safe_load(dump(d)))
    assert again.number == 2 and again.candidates[1].refit == {"version": 2, "frames": 40}


def test_keys_this_noscope_does_not_model_are_kept():
    w = copy.deepcopy(WRITTEN)
    w["candidates"][0]["note"] = "from a later noscope"
    w["labels"]["kept"] = True
    w["extra"] = [1, 2]
    assert dump(Manifest.read(Path("b"), copy.deepcopy(w)).to_dict()) == dump(w)


@pytest.mark.parametrize("field, value, says", [
    ("labels", {"min_score": 1.5, "smooth": 1}, "labels.min_score is 1.5; what counts as a positive frame"),
    ("video", dict(WRITTEN["video"], segment=[5, 5]), "video.segment is [5, 5]; it is [start, end)"),
    ("class_index", -1, "class_index is -1; a class number"),
])
def test_a_field_out_of_range_is_one_line_naming_it(field, value, says):
    w = copy.deepcopy(WRITTEN)
    w[field] = value
    with pytest.raises(NoscopeError, match=re.escape(f"model bundle b is corrupt: bundle.yaml's {says}")):
        Manifest.read(Path("b"), w)
