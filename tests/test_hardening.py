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

import numpy as np
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


# ------------------------------------------------------------------ 1. a bundle's own words are checked


def resave_heldout(bundle, change):
    """Rewrite the bundle's heldout.npz through `change(arrays)` and redo its checksum."""
    import numpy as np

    from .test_reliability import _rewrite, sha

    with np.load(bundle / "heldout.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(bundle / "heldout.npz", **arrays)
    _rewrite(bundle, lambda m: m["files"].update({"heldout.npz": sha(bundle / "heldout.npz")}))


@pytest.mark.parametrize("field,value,needle", [
    ("object", "person", "bundle.yaml's object is 'person' but heldout.npz was made for 'bus'"),
    ("class_index", -1, "bundle.yaml's class_index is -1; a class number is a whole number >= 0"),
    ("class_index", 999, "bundle.yaml's class_index is 999 but heldout.npz was made for 5"),
    ("class_index", "car", "bundle.yaml's class_index is 'car'; a class number is a whole number >= 0"),
    ("class_index", True, "bundle.yaml's class_index is True"),
    ("labels.min_score", 7, "bundle.yaml's labels.min_score is 7; what counts as a positive frame is a score in (0, 1]"),
    ("labels.min_score", 0.3, "bundle.yaml's labels.min_score is 0.3 but heldout.npz was made for 0.5"),
    ("video.segment", [300, 200], "bundle.yaml's video.segment is [300, 200]"),
])
def test_bundle_yaml_fields_that_decide_answers_are_checked(bundle_copy, field, value, needle):
    """Edited in bundle.yaml (its files' checksums still pass): one line naming the bundle and the
    field, exit 1, for query and evaluate alike; nothing answered."""
    from .test_reliability import _rewrite

    def change(m):
        *path, last = field.split(".")
        for k in path:
            m = m[k]
        m[last] = value

    _rewrite(bundle_copy, change)
    for cmd in ("query", "evaluate"):
        assert_one_line(run(cmd, URBAN, "--model", bundle_copy, "--end", "5f", "-q"), 1,
                        f"noscope: error: model bundle {bundle_copy} is ", needle)


def test_object_renamed_with_its_class_index_is_refused(bundle_copy):
    """`object: person` with `class_index: 0` agrees with the reference, not with what the models learnt."""
    from .test_reliability import _rewrite

    _rewrite(bundle_copy, lambda m: m.update(object="person", class_index=0))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "--end", "5f", "-q"), 1,
                    "bundle.yaml's object is 'person' but heldout.npz was made for 'bus'")


def test_bundle_without_a_record_is_checked_against_the_reference(bundle_copy, shared_cache, tmp_path):
    """A bundle written before heldout.npz recorded its bundle still answers; its object and class
    index are still checked against the reference's class names, and its held-out size against bundle.yaml."""
    from .test_reliability import CACHED, _rewrite

    resave_heldout(bundle_copy, lambda a: a.pop("made_for"))
    r = run("query", URBAN, "--model", bundle_copy, *CACHED, "-q", "--out", tmp_path / "q")
    assert r.exit_code == 0, r.output
    _rewrite(bundle_copy, lambda m: m.update(object="person"))  # class_index 5 stays: a bus
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "--end", "5f", "-q"), 1,
                    "bundle.yaml's object 'person' and class_index 5 disagree: class 5 of reference yolov3-tiny is 'bus'")
    _rewrite(bundle_copy, lambda m: m.update(object="bus", class_index=999))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "--end", "5f", "-q"), 1,
                    "bundle.yaml's class_index gives 'bus' class 999, but reference yolov3-tiny has 80 classes")
    _rewrite(bundle_copy, lambda m: (m.update(class_index=5), m["heldout"].update(frames=m["heldout"]["frames"] + 1)))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "--end", "5f", "-q"), 1,
                    "heldout.npz holds 50 held-out frames but bundle.yaml's heldout.frames says 51")


def test_heldout_copied_from_another_bundle_is_refused(trained, bundle_copy, shared_cache, tmp_path):
    """Another bundle's heldout.npz (of the same object, clip and segment, another seed), copied in
    with its checksum redone, is that bundle's: refused, naming the file."""
    import shutil

    from .conftest import TRAIN
    from .test_reliability import _rewrite, sha

    other = tmp_path / "other"
    args = [a if a != "7" else "8" for a in TRAIN] + ["--set", "train.grid=[c2f16d32s50]", "--set", "train.epochs=1"]
    r = run("train", URBAN, *args, "--name", other)
    assert r.exit_code == 0, r.output
    shutil.copyfile(other / "heldout.npz", bundle_copy / "heldout.npz")
    _rewrite(bundle_copy, lambda m: m["files"].update({"heldout.npz": sha(bundle_copy / "heldout.npz")}))
    for cmd in ("query", "evaluate"):
        assert_one_line(run(cmd, URBAN, "--model", bundle_copy, "--end", "5f", "-q"), 1,
                        f"model bundle {bundle_copy} is inconsistent: heldout.npz was made for another bundle")


def test_a_batch_refuses_an_inconsistent_bundle_before_any_video(bundle_copy, tmp_path):
    """One line, exit 1, no runs.jsonl: nightly's "the run did not start" (4), not a failure per video."""
    from .test_reliability import _rewrite

    _rewrite(bundle_copy, lambda m: m.update(class_index=2))
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").symlink_to(URBAN)
    assert_one_line(run("query", videos, "--model", bundle_copy, "--out", tmp_path / "out", "-q"), 1,
                    "bundle.yaml's class_index is 2 but heldout.npz was made for 5")
    assert not (tmp_path / "out" / "runs.jsonl").exists()


# ------------------------------------------------------------------ 5, 7. messages name what is wrong


def test_a_diff_picture_of_another_kind_names_the_bundle_and_file(bundle_copy):
    """diff/ref-global.npy replaced by a float32 array (checksum redone) used to be "comparison frames
    must be uint8 frames, got float32": no bundle, no file."""
    import numpy as np

    from .test_reliability import _rewrite, sha

    meta = _rewrite(bundle_copy, lambda m: None)
    (d,) = [d for d in meta["diffs"] if d["name"] == "ref-global"]
    rel = d["reference_image_file"]
    np.save(bundle_copy / rel, np.zeros((50, 50, 3), np.float32))
    _rewrite(bundle_copy, lambda m: m["files"].update({rel: sha(bundle_copy / rel)}))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "--end", "5f", "-q"), 1,
                    f"model bundle {bundle_copy} is corrupt: {rel} holds a float32 array of shape (50, 50, 3), not the "
                    "50x50 uint8 picture of the empty scene difference detector ref-global compares with")


def test_random_bytes_as_reference_weights_are_not_darknet_weights(tmp_path):
    junk = tmp_path / "junk.weights"
    junk.write_bytes(np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
    assert_one_line(run("label", URBAN, "--object", "bus", "--end", "2f", "--reference-weights", junk, "-q"), 1,
                    f"{junk} is not a darknet weights file: its header (version ", "is not one darknet writes")


def audio_only_mp4(path):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_an_audio_only_file_has_no_video_stream(trained, tmp_path):
    audio = audio_only_mp4(tmp_path / "talk.mp4")
    assert_one_line(run("label", audio, "--object", "car", "-q"), 1,
                    f"noscope: error: {audio} has no video stream (1 audio stream): nothing to answer")
    assert_one_line(run("query", audio, "--model", trained["a"], "-q"), 1, "has no video stream")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_a_picture_renamed_mp4_is_not_a_one_frame_video(trained, tmp_path, ext):
    import cv2

    picture = tmp_path / f"still{ext}"
    cv2.imwrite(str(picture), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    renamed = picture.rename(tmp_path / "still.mp4")
    kind = "PNG" if ext == ".png" else "JPEG"
    assert_one_line(run("query", renamed, "--model", trained["a"], "-q"), 1,
                    f"noscope: error: {renamed} is a still image ({kind}), not a video")
    assert_one_line(run("label", renamed, "--object", "car", "-q"), 1, "is a still image")


# ------------------------------------------------------------------ 6, 7. positions mean frames that exist


def dropped_frames_mkv(path, first=380, n=120, steps=(1, 1, 3), rate=50):
    """A webcam-style capture that dropped frames: `n` frames of the urban clip (from `first`) in an
    .mkv at a nominal `rate` fps whose timestamps jump over the dropped ones (`steps`, in 1/rate s).
    Its container claims duration x rate = 5/3 of the frames it holds."""
    from fractions import Fraction

    import av

    from noscope.video import open_video

    frames = np.concatenate([b.frames["x"] for b in open_video(URBAN).batches({"x": (320, 176)}, first, first + n)])
    pts = np.r_[0, np.cumsum(np.resize(steps, n))[:-1]]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = 320, 176, "yuv420p"
        s.time_base = Fraction(1, rate)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = int(pts[i]), Fraction(1, rate)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path, pts / rate


def test_shares_and_times_of_a_file_that_dropped_frames_mean_frames_that_exist(trained, tmp_path):
    """120 frames whose container claims 199: `--end 60%` is 72 of the 120 (it was 119), `--end 1.5`
    the frames shown before 1.5 s (45, not 1.5 x 50 = 75), and `evaluate --start 60%` compares the
    last 48 frames (it compared 0, exit 0); a position past the last frame is a usage error."""
    from noscope.video import open_video

    path, times = dropped_frames_mkv(tmp_path / "webcam.mkv")
    v = open_video(path)
    assert v.frame_count > 190 and v.length == 120  # the container's guess, and the frames that exist
    r = run("label", path, "--object", "bus", "--end", "60%", "--every", "8", "--json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["frames"] == len(range(0, 72, 8))
    r = run("label", path, "--object", "bus", "--end", "1.5", "--every", "9", "--json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["frames"] == len(range(0, int((times < 1.5).sum()), 9)) == 5
    r = run("evaluate", path, "--model", trained["a"], "--start", "60%", "--set", "optimizer.min_auc=2", "--json", "-q")
    assert r.exit_code == 0 and r.stderr.strip() == "", r.output
    report = json.loads(r.stdout)
    assert report["frames_compared"] == 48 and report["segment"] == report["requested_segment"] == [72, 120]
    assert_one_line(run("label", path, "--object", "bus", "--start", "150f", "-q"), 2,
                    "--start (150f) is past the end of the video (120 frames, ")


@pytest.mark.parametrize("args,needle", [
    (["--end", "150%"], "position '150%': a share of the video is between 0% and 100%"),
    (["--start", "-5%"], "a share of the video is between 0% and 100%"),
    (["--end", "2000f"], "--end (2000f) is past the end of the video (1190 frames, 47.6 s)"),
    (["--end", "1:00"], "--end (1:00) is past the end of the video (1190 frames, 47.6 s)"),
    (["--start", "100%"], "--start (100%) must come before --end (end of video)"),
])
def test_positions_past_the_end_are_usage_errors_at_either_end(args, needle):
    """One rule for --start and --end (it was: --end clamped silently, --start 100% an error)."""
    assert_one_line(run("label", URBAN, "--object", "bus", *args, "-q"), 2, needle)


def test_evaluate_that_compares_nothing_is_an_error(trained, tmp_path):
    """A segment none of whose frames decode measures nothing: exit 1, one line (it was exit 0, speed-up nan)."""
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(URBAN.read_bytes()[: len(URBAN.read_bytes()) // 2])  # decoding stops near frame 560
    r = run("evaluate", cut, "--model", trained["a"], "--start", "1000f", "--end", "1010f", "-q")
    assert_one_line(r, 1, f"noscope: error: nothing to compare in {cut}: no frame of [1000, 1010) could be decoded")


def test_two_queries_into_one_folder_at_once(trained, tmp_path):
    """The second query on the same --out, started while the first still runs, is told (exit 1, one
    line naming the folder and the first's pid) instead of overwriting it; the first finishes, and
    leaves no lock file behind."""
    import time

    out = tmp_path / "out"
    args = ["query", URBAN, "--model", trained["a"], "--start", "600f", "--end", "640f", "--set", "optimizer.min_auc=2",
            "--no-plot", "-q", "--out", out]
    first = subprocess.Popen([sys.executable, "-m", "noscope.cli", *map(str, args)], cwd=tmp_path,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        t0 = time.monotonic()
        while not (out / ".noscope-writing").exists():
            assert first.poll() is None and time.monotonic() - t0 < 300, first.communicate()
            time.sleep(0.05)
        assert_one_line(run(*args), 1, f"noscope: error: {out} is being written by another noscope run (pid {first.pid})")
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["frames.csv", "intervals.json", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["frames"] == 40


def test_train_says_na_for_an_auc_it_could_not_measure(tmp_path, monkeypatch):
    """Held-out frames of one kind only give every candidate a NaN AUC: "n/a", as every rate
    without frames of its kind is written (it printed "best held-out AUC nan")."""
    from types import SimpleNamespace

    import noscope.train
    from noscope.bundle_manifest import Candidate

    meta = SimpleNamespace(candidates=[Candidate("c2f16d32s50", "models/c2f16d32s50.pt", heldout_auc=float("nan"))],
                           diffs=[], video=SimpleNamespace(frames_labelled=100), train_seconds=1.0)
    monkeypatch.setattr(noscope.train, "train", lambda *a, **k: meta)
    r = run("train", URBAN, "--object", "bus", "--name", tmp_path / "b", "-q")
    assert r.exit_code == 0, r.output
    assert "(held-out AUC n/a)" in r.stdout and "nan" not in r.stdout
    meta.candidates += [Candidate("c4f16d64s50", "models/c4f16d64s50.pt", heldout_auc=0.91)]
    assert "(best held-out AUC 0.910, c4f16d64s50)" in run("train", URBAN, "--object", "bus", "--name", tmp_path / "b",
                                                           "-q").stdout


def test_a_file_name_with_a_newline_stays_one_line(trained, shared_cache, tmp_path):
    from .test_reliability import CACHED

    odd = tmp_path / "gate\ncam.mp4"
    odd.symlink_to(URBAN)
    r = run("query", odd, "--model", trained["a"], *CACHED, "-q", "--out", tmp_path / "q")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith("gate\\ncam.mp4: bus in "), r.stdout
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "gate\ncam.mp4").symlink_to(URBAN)
    r = run("query", videos, "--model", trained["a"], *CACHED, "-q", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 2 and r.stdout.startswith("gate\\ncam.mp4: bus in "), r.stdout
