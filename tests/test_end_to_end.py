"""The whole job on a real clip: label, train, query, evaluate, through the command line.

Trains on frames 0-500 of the storefront clip (people pass in several bursts) and answers
frames 500-700, which hold three separate passers-by, then checks the measured error against
the reference on every frame of that segment.
"""

import csv
import json

from click.testing import CliRunner

from noscope.cli import cli

from .conftest import STOREFRONT

TRAIN = ["--object", "person", "--start", "0f", "--end", "500f", "--name", "store",
         "--set", "train.grid=small", "--set", "train.epochs=8", "-q"]


def run(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return res


def test_train_query_evaluate(tmp_path):
    r = run("train", STOREFRONT, *TRAIN)
    assert r.exit_code == 0, r.output
    assert "trained" in r.output

    out = tmp_path / "q"
    r = run("query", STOREFRONT, "--model", "store", "--start", "500f", "--end", "700f",
            "--target-fpr", "0.05", "--target-fnr", "0.05", "--out", out, "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["frames"] == 200
    with open(out / "frames.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["frame"]) for x in rows] == list(range(500, 700))
    assert {x["decided_by"] for x in rows} <= {"skip", "diff", "model", "reference"}
    intervals = json.loads((out / "intervals.json").read_text())
    assert all(i["start_frame"] < i["end_frame"] for i in intervals)
    assert (out / "timeline.png").stat().st_size > 1000
    assert abs(sum(summary["fractions"].values()) - 1) < 1e-6

    r = run("evaluate", STOREFRONT, "--model", "store", "--start", "500f", "--end", "700f",
            "--target-fpr", "0.05", "--target-fnr", "0.05", "--json", "-q")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["frames_compared"] == 200 and rep["positives"] > 20
    # The bound: targets are 5%; held-out estimates from 200 training-side frames are noisy, so
    # allow up to 15% on this short unseen segment. A broken cascade (all no, all yes, wrong
    # frame alignment) lands far outside it.
    assert rep["frames"]["fpr"] <= 0.15 and rep["frames"]["fnr"] <= 0.15, rep
    assert rep["speedup"] > 0
