"""Several objects in one pass, through the command line on a real clip: train one bundle for bus
and car (100 labelled frames of the urban clip), query both from one decode, and check that the
executor does, object by object and frame by frame, what the optimizer simulated."""

import csv
import dataclasses
import json
import os
import shutil
from unittest import mock

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from noscope.cli import cli

from .conftest import TRAIN, URBAN, default_settings, luma_frames, share_detector_files

MULTI = [a if a != "bus" else "bus,car" for a in TRAIN]  # the session bundle's settings, two objects
STEM = URBAN.stem


@pytest.fixture(scope="module")
def multi(tmp_path_factory, trained):
    """One bus+car bundle on the session bundle's frames, with a copy of its label cache: the
    reference scores every class, so the second object's labels cost nothing."""
    root = tmp_path_factory.mktemp("multi")
    cache = root / "cache"
    shutil.copytree(trained["cache"] / "labels", cache / "labels")
    share_detector_files(cache)
    env = dict(NOSCOPE_CACHE=str(cache), NOSCOPE_MODELS=str(root / "models"))
    with mock.patch.dict(os.environ, env):
        r = CliRunner().invoke(cli, ["train", str(URBAN), *MULTI, "--name", str(root / "bus-car")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return dict(env=env, bundle=root / "bus-car", out=r.output)


def run(multi, *args):
    with mock.patch.dict(os.environ, multi["env"]):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_one_bundle_for_both_objects(multi):
    # A car is in 99 of the 100 sampled frames: too few negatives to learn it, so the car output
    # is trained along but never trusted (no AUC); the bus output is learnt.
    assert "best held-out AUC per object: bus 1.000; car unused" in multi["out"], multi["out"]
    meta = yaml.safe_load((multi["bundle"] / "bundle.yaml").read_text())
    assert meta["format"] == 2 and meta["objects"] == ["bus", "car"] and meta["object"] == "bus,car"
    assert len(meta["class_indices"]) == 2 and "class_index" not in meta
    pos = meta["video"]["positives"]
    assert pos["bus"] == 50 and pos["car"] >= 95, pos  # a car in (nearly) every sampled frame
    kinds = [c.get("kind", "cnn") for c in meta["candidates"]]
    assert kinds == ["cnn"] * 3 + ["prefix_head"]  # the small grid, and the default head on the reference's layers
    for c in meta["candidates"]:
        assert c["heldout_aucs"]["car"] is None and c["heldout_auc"] == c["heldout_aucs"]["bus"] > 0.9
    with np.load(multi["bundle"] / "heldout.npz") as z:
        n = meta["heldout"]["frames"]
        assert z["truth"].shape == (n, 2) and z["scores"].shape == (n, 2)
        assert all(z[k].shape == (n, 2) for k in z.files if k.startswith("model__"))
        assert all(z[k].shape == (n,) for k in z.files if k.startswith("diff__"))
        # The reference's two classes really differ on these frames (else the test proves little).
        assert z["truth"][:, 0].tolist() != z["truth"][:, 1].tolist()


def test_query_answers_every_object_from_one_pass(multi, tmp_path):
    out = tmp_path / "q"
    r = run(multi, "query", URBAN, "--model", multi["bundle"], "--start", "450f", "--end", "500f",
            "--target-fpr", "0.05", "--target-fnr", "0.05", "--out", out, "--json", "-q")
    assert r.exit_code == 0, r.output
    top = json.loads(r.output.strip().splitlines()[-1])
    assert top["objects"] == ["bus", "car"] and top["frames"] == 50
    assert json.loads((out / "summary.json").read_text())["objects"] == ["bus", "car"]
    assert abs(sum(top["fractions"].values()) - 1) < 1e-6
    frame_lists = []
    for obj in ("bus", "car"):
        sub = out / f"{STEM}-{obj}"
        assert top["results"][obj]["out"] == str(sub)
        s = json.loads((sub / "summary.json").read_text())
        assert s["object"] == obj and s["frames"] == 50 and s["answered_with"] == ["bus", "car"]
        # One pass: one set of reference calls, shared by every object's result.
        assert s["reference_calls"] == top["reference_calls"]
        assert s["cascade"]["skip"] == top["cascade"]["skip"] and s["cascade"]["model"] == top["cascade"]["model"]
        with open(sub / "frames.csv") as f:
            rows = list(csv.DictReader(f))
        frame_lists.append([int(x["frame"]) for x in rows])
        assert sum(int(x["label"]) for x in rows) == s["positives"] == top["results"][obj]["positives"]
        assert len(json.loads((sub / "intervals.json").read_text())) == s["intervals"]
        assert (sub / "timeline.png").stat().st_size > 1000
    assert frame_lists[0] == frame_lists[1] == list(range(450, 500))
    # the top folder is no single result: `report` names the folders it can draw
    r = run(multi, "report", out)
    assert r.exit_code == 1 and f"{STEM}-bus" in r.stderr and f"{STEM}-car" in r.stderr, r.output
    assert run(multi, "report", out / f"{STEM}-bus").exit_code == 0

    # One object of the bundle: only its folder. An object it was not trained for: one line, exit 1.
    r = run(multi, "query", URBAN, "--model", multi["bundle"], "--object", "car", "--start", "450f", "--end", "470f",
            "--out", tmp_path / "car", "--json", "-q", "--no-plot")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["objects"] == ["car"]
    assert sorted(p.name for p in (tmp_path / "car").iterdir()) == sorted([f"{STEM}-car", "summary.json"])
    r = run(multi, "query", URBAN, "--model", multi["bundle"], "--object", "bus,person", "-q")
    assert r.exit_code == 1 and "'bus,car'" in r.output and "'bus,person'" in r.output


def test_evaluate_measures_every_object_of_one_pass(multi):
    """A several-objects bundle is evaluated as a query answers it, one pass, one report per object."""
    r = run(multi, "evaluate", URBAN, "--model", multi["bundle"], "--start", "330f", "--end", "470f", "--target-fpr",
            "0.05", "--target-fnr", "0.05", "--set", "query.verify=10", "--json", "-q")
    assert r.exit_code == 0, r.output
    reports = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [x["object"] for x in reports] == ["bus", "car"]
    for x in reports:
        assert x["frames_compared"] == 140 and x["segment"] == [330, 470]
        assert x["positives"] > 0 and x["verified"]["met"] is not False
        assert x["frames"]["fnr"] is not None and x["frames"]["fnr"] <= 0.05 + 0.02
    # one pass: both reports count the same reference calls and the same plan shape
    assert reports[0]["reference_calls"] == reports[1]["reference_calls"]
    assert reports[0]["cascade"]["skip"] == reports[1]["cascade"]["skip"]
    assert reports[0]["positives"] != reports[1]["positives"]  # really two objects' answers
    r = run(multi, "evaluate", URBAN, "--model", multi["bundle"], "--start", "450f", "--end", "470f", "-q")
    assert r.exit_code == 0 and r.stdout.count("frames compared") == 2, r.output


def _between(values, q):
    """A threshold strictly between two distinct scores (no ties with any frame)."""
    u = np.unique(values[np.isfinite(values)])
    i = min(max(int(q * (len(u) - 1)), 0), len(u) - 2)
    return float((u[i] + u[i + 1]) / 2)


def test_executor_matches_the_simulation_for_every_object(multi):
    """Force a joint cascade using every stage, objects with different thresholds, and compare the
    run on video with `simulate` of each object's plan, frame by frame."""
    from noscope import difference
    from noscope.bundle import load_bundle
    from noscope.cascade import STAGES, PassOptions, run_cascade
    from noscope.labels import label_frames
    from noscope.plans import HeldOut, ObjectPlan, Plan, pass_decided, stage_fractions
    from noscope.reference import load_reference, reference_key
    from noscope.simulate import simulate_plan
    from noscope.video import open_video

    with mock.patch.dict(os.environ, multi["env"]):
        tb = load_bundle(multi["bundle"])
        v = open_video(URBAN)
        ref = load_reference("yolov3-tiny")
        key = reference_key(ref)
        start, end = 450, 500  # labelled by training: the reference answers from the cache
        frames = np.arange(start, end)
        x = np.concatenate([b.frames["s"] for b in v.batches({"s": (50, 50)}, start, end)])
        lx = luma_frames(v, start, end)  # what the difference detectors see
        name = tb.candidates[0].name
        p = tb.model(name, ref.device).score(x)
        assert p.shape == (len(frames), 2)
        blocks = np.zeros(len(frames), np.int64)
        ds = difference.diff_scores(tb.diff("prev-global"), lx, blocks, [2])
        lab = label_frames(v, ref, key, frames, quiet=True)
        t = _between(ds[2], 0.2)
        plans, held = {}, {}
        for k, (obj, q) in enumerate((("bus", (0.2, 0.5)), ("car", (0.5, 0.8)))):
            truth = lab.score_of(tb.class_index(obj)) >= tb.min_score
            plans[obj] = ObjectPlan(skip=2, diff="prev-global", diff_threshold=t, model=name,
                                    c_low=_between(p[:, k], q[0]), c_high=_between(p[:, k], q[1]), expected_cost=0.0,
                                    heldout_fpr=0.0, heldout_fnr=0.0)
            held[obj] = HeldOut(truth=truth, blocks=blocks, model_scores={name: p[:, k]},
                                diff_scores={"prev-global": {2: ds[2]}}, diff_kinds={"prev-global": "prev"})
        sims = simulate_plan(Plan(plans, 0.0, {}), held)
        res = run_cascade(v, tb, Plan(plans, 0.0, {}), ref, key, (start, end), PassOptions(default_settings().decode, quiet=True))
    assert set(res) == {"bus", "car"}
    for obj, (sim_labels, sim_codes) in sims.items():
        assert res[obj].frames.tolist() == frames.tolist()
        assert [STAGES[c] for c in sim_codes] == res[obj].decided_by.tolist(), obj
        assert np.array_equal(sim_labels, res[obj].labels), obj
    # Every stage is exercised, and the objects disagree on where the reference is needed: the
    # reference ran on the union of their undecided frames, once.
    assert {"skip", "diff", "model", "reference"} == set(res["bus"].decided_by) | set(res["car"].decided_by)
    assert res["bus"].decided_by.tolist() != res["car"].decided_by.tolist()
    union = stage_fractions(pass_decided([c for _, c in sims.values()]))["reference"]
    assert len(res["bus"].reference_scores) == round(union * len(frames)) == len(res["car"].reference_scores)


def test_single_object_bundles_run_as_before(trained):
    """The one executor on a single-object bundle: a plan of one object gives that object's result,
    equal frame for frame to `simulate`."""
    from noscope import difference
    from noscope.bundle import load_bundle
    from noscope.cascade import STAGES, PassOptions, run_cascade
    from noscope.labels import label_frames
    from noscope.plans import HeldOut, ObjectPlan, Plan
    from noscope.reference import load_reference, reference_key
    from noscope.simulate import simulate
    from noscope.video import open_video

    with mock.patch.dict(os.environ, NOSCOPE_CACHE=str(trained["cache"])):
        tb = load_bundle(trained["a"])
        v = open_video(URBAN)
        ref = load_reference("yolov3-tiny")
        key = reference_key(ref)
        frames = np.arange(450, 500)
        x = np.concatenate([b.frames["s"] for b in v.batches({"s": (50, 50)}, 450, 500)])
        lx = luma_frames(v, 450, 500)  # what the difference detectors see
        name = tb.candidates[0].name
        p = tb.model(name, ref.device).score(x)[:, 0]
        blocks = np.zeros(len(frames), np.int64)
        ds = difference.diff_scores(tb.diff("prev-global"), lx, blocks, [2])
        truth = label_frames(v, ref, key, frames, quiet=True).score_of(tb.class_index("bus")) >= 0.5
        plan = ObjectPlan(skip=2, diff="prev-global", diff_threshold=_between(ds[2], 0.2), model=name,
                          c_low=_between(p, 0.3), c_high=_between(p, 0.7), expected_cost=0.0, heldout_fpr=0.0,
                          heldout_fnr=0.0)
        held = HeldOut(truth, blocks, {name: p}, {"prev-global": {2: ds[2]}}, {"prev-global": "prev"})
        results = run_cascade(v, tb, Plan({"bus": plan}, 0.0, {}), ref, key, (450, 500),
                              PassOptions(default_settings().decode, quiet=True))
    assert list(results) == ["bus"]
    res = results["bus"]
    labels, codes = simulate(plan, held)
    assert [STAGES[c] for c in codes] == res.decided_by.tolist()
    assert np.array_equal(labels, res.labels)
    assert len(res.reference_scores) > 0


def test_a_repair_that_keeps_skip_and_detector_answers_again_without_decoding(trained, monkeypatch):
    """New thresholds on the same skip and difference detector: the re-run is answered from the first
    pass's scores (no decoding), exactly as a fresh pass would answer it."""
    import noscope.cascade as cascade
    from noscope import difference
    from noscope.bundle import load_bundle
    from noscope.plans import ObjectPlan, Plan
    from noscope.reference import load_reference, reference_key
    from noscope.video import open_video

    with mock.patch.dict(os.environ, NOSCOPE_CACHE=str(trained["cache"])):
        tb = load_bundle(trained["a"])
        v = open_video(URBAN)
        ref = load_reference("yolov3-tiny")
        key = reference_key(ref)
        x = np.concatenate([b.frames["s"] for b in v.batches({"s": (50, 50)}, 450, 500)])
        lx = luma_frames(v, 450, 500)  # what the difference detectors see
        name = tb.candidates[0].name
        p = tb.model(name, ref.device).score(x)[:, 0]
        ds = difference.diff_scores(tb.diff("prev-global"), lx, np.zeros(len(x), np.int64), [2])

        def plan(lo, hi):
            one = ObjectPlan(skip=2, diff="prev-global", diff_threshold=_between(ds[2], 0.2), model=name,
                             c_low=_between(p, lo), c_high=_between(p, hi), expected_cost=0.0, heldout_fpr=0.0,
                             heldout_fnr=0.0)
            return Plan({"bus": one}, 0.0, {})

        def run(pl, previous=None):
            return cascade.run_cascade(v, tb, pl, ref, key, (450, 500), cascade.PassOptions(default_settings().decode, quiet=True),
                                       previous)["bus"]

        first = run(plan(0.45, 0.55))
        fresh = run(plan(0.2, 0.8))
        monkeypatch.setattr(cascade, "cheap_pass", lambda *a, **k: pytest.fail("the re-run decoded the video"))
        again = run(plan(0.2, 0.8), previous=first.cheap)
        other = Plan({"bus": dataclasses.replace(plan(0.2, 0.8).shared, skip=1)}, 0.0, {})
        with pytest.raises(pytest.fail.Exception):
            run(other, previous=first.cheap)  # another skip: the frames reaching the model differ, so it decodes
    assert fresh.decided_by.tolist() != first.decided_by.tolist()  # the thresholds really changed the answers
    assert again.decided_by.tolist() == fresh.decided_by.tolist()
    assert np.array_equal(again.labels, fresh.labels)
    assert again.reference_scores == fresh.reference_scores
    assert np.array_equal(again.model_scores, fresh.model_scores, equal_nan=True)


def test_the_checks_frames_come_from_the_one_decoding_pass(trained, monkeypatch):
    """The check's first draw is taken from frames the query's one pass kept at the reference's size:
    none of them is decoded again for the check."""
    import noscope.answer as answer_mod
    from noscope.planning import choose_plan
    from noscope.plans import Targets
    from noscope.prepare import open_query

    asked = []
    real = answer_mod.label_frames

    def recording(video, reference, key, frames, **kw):
        kept = kw.get("pixels") or {}
        asked.append((len(frames), sum(1 for f in np.asarray(frames).tolist() if f in kept)))
        return real(video, reference, key, frames, **kw)

    monkeypatch.setattr(answer_mod, "label_frames", recording)
    settings = default_settings("query.verify=20", "query.verify_rounds=1", "decode.frame_cache=false")
    with mock.patch.dict(os.environ, NOSCOPE_CACHE=str(trained["cache"])):
        q = open_query(settings, URBAN, str(trained["a"]), None, "300f", "500f")
        plan = choose_plan(q.bundle, Targets(0.05, 0.05), q.objects, settings.optimizer)
        results, reports = answer_mod.answer(q, plan, Targets(0.05, 0.05), settings, quiet=True)
    assert reports["bus"]["checked"] > 0 and asked
    n, kept = asked[0]
    assert n > 0 and kept == n, asked  # every drawn frame came from the pass's reserve
