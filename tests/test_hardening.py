"""Issue 20, through the command line (and scripts/nightly.sh): a bundle's own words are checked
before they are used, nightly never reports success for work it did not do, shares mean frames
that exist, and no input reaches "internal error".

The bundles are the session's small bus bundles (tests/conftest.py: `trained`); queries and
evaluations run on a few frames whose labels are in that session's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT, STOREFRONT, URBAN
from .test_reliability import assert_one_line, run


# ------------------------------------------------------------------ 2. nothing reaches "internal error"


@pytest.mark.parametrize("args", [
    ["query", URBAN, "--model", "", "--out", "x"],
    ["query", URBAN, STOREFRONT, "--model", "", "--out", "x"],
    ["query", "", "--model", "m"],
    ["query", URBAN, "--model", "m", "--out", ""],
    ["query", URBAN, "--model", "m", "--object", " "],
    ["query", URBAN, "--model", "m", "--start", ""],
    ["evaluate", "", "--model", "m"],
    ["evaluate", URBAN, "--model", ""],
    ["train", URBAN, "--object", "bus", "--name", ""],
    ["label", URBAN, "--object", "bus", "--reference", ""],
    ["label", URBAN, "--object", "bus", "--reference-weights", ""],
    ["label", URBAN, "--object", "bus", "--config", ""],
    ["report", ""],
])
def test_empty_strings_are_usage_errors(args, tmp_path):
    """`--model ""` (an unset shell variable) was `internal error: TypeError`; an empty video was
    the current folder, an empty --name the models folder itself, an empty --reference the default."""
    line = assert_one_line(run(*args, "-q") if args[0] != "report" else run(*args), 2, "noscope: error: ",
                           "is an empty string")
    assert "internal error" not in line


# ------------------------------------------------------------------ 3, 4. nightly never reports work it did not do


def nightly(videos, bundle, out, args="--no-plot", **env):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NIGHTLY_NOSCOPE=f"{sys.executable} -m noscope.cli", NIGHTLY_ARGS=args,
               **env)
    return subprocess.run([str(ROOT / "scripts" / "nightly.sh"), str(videos), str(bundle), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_nightly_held_lock_is_its_own_exit_code(tmp_path):
    """A second run while the first still holds the folder's lock did nothing: exit 75, not 0
    (0 means every video answered and verified)."""
    import fcntl

    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    out.mkdir()
    with open(out / ".nightly.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = nightly(videos, "some-bundle", out)
    assert p.returncode == 75, (p.stdout, p.stderr)
    assert "not started: another run is still working on" in (out / "nightly.log").read_text()
    assert not (out / "runs.jsonl").exists()


def damaged_urban_avi(path):
    """40 frames of the urban clip (buses and cars) in an MJPG .avi with random bytes over its
    middle: 15 frames decode, then decoding stops."""
    import numpy as np

    from noscope.video import open_video

    from .conftest import write_video
    from .test_frame_identity import damaged_copy

    frames = np.concatenate([b.frames["x"] for b in open_video(URBAN).batches({"x": (320, 180)}, 450, 490)])
    clean = write_video(path.with_name("clean.avi"), frames)
    damaged_copy(clean, path, at=0.2, share=0.6)
    clean.unlink()
    return path


def test_nightly_does_not_call_a_video_answered_in_part_verified(trained, tmp_path):
    """A video of which only the first frames decode: runs.jsonl says `complete: false` (done, skipped
    alike) and nightly exits 6, not 0 "targets verified met"."""
    from noscope.batch import read_records

    videos = tmp_path / "videos"
    videos.mkdir()
    damaged_urban_avi(videos / "damaged.avi")
    out = tmp_path / "out"
    for attempt, status in enumerate(("done", "skipped")):
        p = nightly(videos, trained["a"], out, "--no-plot --set optimizer.min_auc=2")
        assert p.returncode == 6, (attempt, p.stdout, p.stderr, (out / "nightly.log").read_text())
        rec = read_records(out / "runs.jsonl")[-1]
        assert rec["status"] == status and rec["complete"] is False and 5 < rec["stopped_at"] < 40, rec
        assert "answered in part: all 1 videos answered, 1 only in part" in (out / "nightly.log").read_text()
    # the batch's own lines say so too
    r = run("query", videos, "--model", trained["a"], "--out", tmp_path / "b", "-q", "--no-plot", "--set",
            "optimizer.min_auc=2")
    assert r.exit_code == 0, r.output
    assert "(answered in part: some frames cannot be decoded)" in r.stdout and " 1 answered in part;" in r.stdout
