"""The whole job on a real clip: label, train, query, evaluate, through the command line.

Trains on frames 300-900 of the urban-road clip (buses come and go; the optimizer's held-out frames
are the last ones of that span) and answers frames 900-1100, later footage the bundle never saw,
then checks the measured error of the final answers against the reference on every frame there.
"""

import csv
import json

import numpy as np

from click.testing import CliRunner

from noscope.cli import cli

from .conftest import URBAN, default_settings, luma_frames

TRAIN = ["--object", "bus", "--start", "300f", "--end", "900f", "--name", "bus",
         "--set", "train.grid=small", "--set", "train.epochs=8", "--set", "train.block=50", "-q"]


def run(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return res


def test_train_query_evaluate(tmp_path):
    r = run("train", URBAN, *TRAIN)
    assert r.exit_code == 0, r.output
    assert "trained" in r.output

    out = tmp_path / "q"
    r = run("query", URBAN, "--model", "bus", "--start", "900f", "--end", "1100f",
            "--target-fpr", "0.05", "--target-fnr", "0.05", "--out", out, "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["frames"] == 200
    with open(out / "frames.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["frame"]) for x in rows] == list(range(900, 1100))
    assert {x["decided_by"] for x in rows} <= {"skip", "diff", "model", "reference"}
    intervals = json.loads((out / "intervals.json").read_text())
    assert all(i["start_frame"] < i["end_frame"] for i in intervals)
    assert (out / "timeline.png").stat().st_size > 1000
    assert abs(sum(summary["fractions"].values()) - 1) < 1e-6

    r = run("evaluate", URBAN, "--model", "bus", "--start", "900f", "--end", "1100f",
            "--target-fpr", "0.05", "--target-fnr", "0.05", "--json", "-q")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["frames_compared"] == 200 and rep["positives"] > 20
    # Targets are 5%; the answers are the query's final ones, checked (and repaired) on these very
    # frames, so they hold within a small margin; a check that missed a broken cascade (all no,
    # all yes, wrong frame alignment) lands far outside it. The verification's bounds must hold.
    print(json.dumps({k: rep[k] for k in ("frames", "windows", "speedup", "fractions", "first_pass")}))
    assert rep["frames"]["fpr"] <= 0.1 and rep["frames"]["fnr"] <= 0.1, rep
    v = rep["verified"]
    assert v["met"] is not False and v["checked"] > 0
    for k in ("fpr", "fnr"):
        assert v[k]["high"] is None or rep["frames"][k] <= v[k]["high"] + 1e-9, (k, rep["frames"], v)
    assert rep["speedup"] > 0 and rep["verify_seconds"] >= 0

    # The executor must do on video exactly what the optimizer simulated on held-out scores:
    # force a cascade that uses every stage and compare it frame by frame with `simulate`.
    check_executor_matches_simulation()


def _between(values, q):
    """A threshold strictly between two distinct scores (no ties with any frame)."""
    u = np.unique(values[np.isfinite(values)])
    i = min(max(int(q * (len(u) - 1)), 0), len(u) - 2)
    return float((u[i] + u[i + 1]) / 2)


def check_executor_matches_simulation():
    from noscope import difference
    from noscope.bundle import bundle_path
    from noscope.bundle import load_bundle
    from noscope.cascade import PassOptions, run_cascade
    from noscope.labels import label_frames
    from noscope.plans import STAGES, HeldOut, ObjectPlan, Plan
    from noscope.simulate import simulate
    from noscope.reference import load_reference, reference_key
    from noscope.video import open_video

    tb = load_bundle(bundle_path("bus"))
    v = open_video(URBAN)
    ref = load_reference("yolov3-tiny")
    key = reference_key(ref)
    frames = np.arange(600, 800)
    x = np.concatenate([b.frames["s"] for b in v.batches({"s": (50, 50)}, 600, 800)])
    lx = luma_frames(v, 600, 800)  # what the difference detectors see
    name = tb.candidates[0].name
    p = tb.model(name, ref.device).score(x)[:, 0]
    blocks = np.zeros(len(frames), np.int64)
    ds = difference.diff_scores(tb.diff("prev-global"), lx, blocks, [2])
    truth = label_frames(v, ref, key, frames, quiet=True).score_of(tb.class_index("bus")) >= tb.min_score
    plan = ObjectPlan(skip=2, diff="prev-global", diff_threshold=_between(ds[2], 0.3), model=name,
                      c_low=_between(p, 0.3), c_high=_between(p, 0.7), expected_cost=0.0, heldout_fpr=0.0, heldout_fnr=0.0)
    held = HeldOut(truth=truth, blocks=blocks, model_scores={name: p}, diff_scores={"prev-global": {2: ds[2]}},
                   diff_kinds={"prev-global": "prev"})
    sim_labels, sim_codes = simulate(plan, held)
    res = run_cascade(v, tb, Plan({"bus": plan}, 0.0, {}), ref, key, (600, 800),
                      PassOptions(default_settings().decode, quiet=True))["bus"]
    assert res.frames.tolist() == frames.tolist()
    assert [STAGES[c] for c in sim_codes] == res.decided_by.tolist()
    assert np.array_equal(sim_labels, res.labels)
    assert {"skip", "diff", "model", "reference"} == set(res.decided_by.tolist())
