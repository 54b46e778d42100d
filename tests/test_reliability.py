"""Reliability through the command line: bad input, damaged files, full disks, untrusted bundles.

Every failure must be one line on stderr and a non-zero exit code, never a traceback:
1 bad input or a failed run, 2 usage errors, 3 internal errors (a bug; traceback only with -v).
One small bundle (bus, 100 frames sampled from frames 300-500 of the urban clip, small grid, 2
epochs) is trained twice per session with the same seed, to check that training is deterministic.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import noscope.atomic
from noscope.bundle import inside
from noscope.cli import cli
from noscope.errors import NoscopeError

from .conftest import FAST, ROOT, URBAN, moving_square_frames, write_video

QUERY_SEG = ["--start", "500f", "--end", "530f", "--target-fpr", "0.05", "--target-fnr", "0.05", "-q", "--no-plot"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line(r, code, *needles):
    """Exit `code`, exactly one non-empty stderr line containing every needle, no traceback."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def bad_videos(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    return {
        "missing": (tmp_path / "missing.mp4", "video not found"),
        "directory": (folder, "is a directory"),
        "text": (text, "cannot decode"),
        "empty": (empty, "empty (0 bytes)"),
    }


# ------------------------------------------------------------------ 1. bad input, one line


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "empty"])
def test_bad_video_label_train(bad_videos, kind):
    path, needle = bad_videos[kind]
    assert_one_line(run("label", path, "--object", "car", "-q"), 1, "noscope: error:", needle)
    assert_one_line(run("train", path, "--object", "car", "-q", *FAST), 1, "noscope: error:", needle)


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "empty"])
def test_bad_video_query(bad_videos, trained, kind):
    path, needle = bad_videos[kind]
    assert_one_line(run("query", path, "--model", trained["a"], "-q"), 1, "noscope: error:", needle)


def test_bad_video_subprocess(tmp_path):
    """The real entry point, in its own process: one line, exit 1."""
    p = subprocess.run([sys.executable, "-m", "noscope.cli", "label", str(tmp_path / "nope.mp4"), "--object", "car"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f"noscope: error: video not found: {tmp_path / 'nope.mp4'}"]


def test_truncated_video_label(tmp_path):
    """Exit 0: the frames that decode are labelled and a warning says where decoding stopped."""
    frames, _ = moving_square_frames(40)
    full = write_video(tmp_path / "full.avi", frames)
    data = full.read_bytes()
    half = tmp_path / "half.avi"
    half.write_bytes(data[: len(data) // 2])
    r = run("label", half, "--object", "car", "-q")
    line = assert_one_line(r, 0, "warning: the video stops decoding at frame")
    assert "labelled what decoded" in line and line.startswith("noscope: warning: ")  # issue 13: the logger's prefix
    n_done = int(line.split("at frame ")[1].split()[0])
    assert 5 < n_done < 40
    assert f"{n_done} frames labelled" in r.stdout


def test_truncated_video_query(trained, tmp_path):
    """query on a clip cut half-way (frame ~560 of 1190): answers the frames before the cut, exit 0."""
    data = URBAN.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    out = tmp_path / "q"
    r = run("query", half, "--model", trained["a"], "--start", "545f", "--end", "600f", "--target-fpr", "0.05",
            "--target-fnr", "0.05", "-q", "--no-plot", "--out", out)
    line = assert_one_line(r, 0, "warning: the video stops decoding at frame", "answered the frames before it")
    stop = int(line.split("at frame ")[1].split(";")[0])
    assert 545 < stop < 600
    rows = (out / "frames.csv").read_text().splitlines()
    assert len(rows) == 1 + stop - 545


def test_damaged_middle_query(trained, tmp_path):
    """query on the urban clip with random bytes over 2% of it from 45% on (frames 512-639 cannot
    be decoded; decoding used to stop at 512): exit 0, the frames on both sides are answered, and
    summary.json and one warning line name the ones without an answer (those, and the skipped
    frames after 640 whose processed frame was lost)."""
    import json

    data = bytearray(URBAN.read_bytes())
    a, b = int(len(data) * 0.45), int(len(data) * 0.47)
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    out = tmp_path / "q"
    r = run("query", bad, "--model", trained["a"], "--start", "500f", "--end", "660f", "--target-fpr", "0.05",
            "--target-fnr", "0.05", "-q", "--no-plot", "--out", out)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    summary = json.loads((out / "summary.json").read_text())
    [[first, after]] = summary["missing_frames"]
    assert first == 512 and 640 <= after < 640 + summary["cascade"]["skip"]
    lines = [line for line in r.stderr.splitlines() if "cannot be decoded" in line]
    assert len(lines) == 1 and lines[0].startswith("noscope: warning: ") and f"frames 512-{after - 1})" in lines[0], r.stderr
    rows = [int(row.split(",")[0]) for row in (out / "frames.csv").read_text().splitlines()[1:]]
    assert rows == list(range(500, 512)) + list(range(after, 660))


def test_unknown_object(bad_videos, tmp_path):
    frames, _ = moving_square_frames(10)
    v = write_video(tmp_path / "v.avi", frames)
    for cmd in ("label", "train"):
        line = assert_one_line(run(cmd, v, "--object", "unicorn", "-q"), 1, "unknown object class 'unicorn'")
        assert "valid:" in line and "person" in line and "bus" in line
    line = assert_one_line(run("query", v, "--object", "unicorn", "-q", *FAST), 1, "unknown object class 'unicorn'")


@pytest.mark.parametrize("flag,value", [("--target-fpr", "0"), ("--target-fpr", "1.5"), ("--target-fnr", "-0.1"), ("--target-fnr", "1")])
def test_targets_outside_0_1(trained, flag, value):
    assert_one_line(run("query", URBAN, "--model", trained["a"], flag, value, "-q"), 2, "must be between 0 and 1")


def test_start_after_end(trained):
    for cmd in (["label", URBAN, "--object", "car"], ["train", URBAN, "--object", "car", *FAST],
                ["query", URBAN, "--model", trained["a"]]):
        assert_one_line(run(*cmd, "--start", "40f", "--end", "10f", "-q"), 2, "--start (40f) must come before --end (10f)")


def test_bundle_for_another_object(trained):
    assert_one_line(run("query", URBAN, "--object", "person", "--model", trained["a"], "-q"), 1,
                    "was trained for 'bus', not 'person'")


def test_bundle_format_version(bundle_copy):
    y = bundle_copy / "bundle.yaml"
    meta = yaml.safe_load(y.read_text())
    meta["format"] = 99
    y.write_text(yaml.safe_dump(meta, sort_keys=False))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1, "has format 99", "retrain it")


def test_corrupt_bundle_file(bundle_copy):
    p = bundle_copy / "heldout.npz"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1, "is corrupt: heldout.npz does not match its checksum")


def test_corrupt_label_chunk_is_relabelled(tmp_path, isolated_cache):
    frames, _ = moving_square_frames(12)
    v = write_video(tmp_path / "v.avi", frames)
    r = run("label", v, "--object", "car", "-q", "--json")
    assert r.exit_code == 0, r.output
    (chunk,) = (isolated_cache / "labels").rglob("chunk-*.npz")
    with np.load(chunk) as z:
        before = {k: z[k] for k in z.files}
    chunk.write_bytes(chunk.read_bytes()[:100] + b"garbage" * 10)
    r = run("label", v, "--object", "car", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "relabelling" in warnings[0], r.stderr
    assert '"from_cache": 0' in r.stdout
    assert chunk.with_suffix(".corrupt").is_file()
    (again,) = (isolated_cache / "labels").rglob("chunk-*.npz")
    with np.load(again) as z:
        after = {k: z[k] for k in z.files}
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def test_no_space_left(tmp_path, monkeypatch):
    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(noscope.atomic, "atomic_write", full)
    frames, _ = moving_square_frames(6)
    v = write_video(tmp_path / "v.avi", frames)
    line = assert_one_line(run("label", v, "--object", "car", "-q"), 1, "no space left on device")
    assert "chunk-" in line


def test_no_space_left_writing_query_output(trained, shared_cache, tmp_path, monkeypatch):
    r = run("query", URBAN, "--model", trained["a"], *QUERY_SEG, "--out", tmp_path / "warm")
    assert r.exit_code == 0, r.output  # labels now cached: only the output writes remain

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(noscope.atomic, "atomic_write", full)
    assert_one_line(run("query", URBAN, "--model", trained["a"], *QUERY_SEG, "--out", tmp_path / "q"), 1,
                    "no space left on device")
    assert not (tmp_path / "q" / "summary.json").exists()


def test_unwritable_output_is_bad_input(trained, shared_cache, tmp_path):
    """--out under a regular file: an OSError naming a file is the environment's fault, exit 1."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert_one_line(run("query", URBAN, "--model", trained["a"], *QUERY_SEG, "--out", blocker / "q"), 1,
                    "noscope: error:", str(blocker))


def test_missing_bundle(tmp_path):
    assert_one_line(run("query", URBAN, "--model", tmp_path / "nothing", "-q"), 1, "no model bundle at")
    assert_one_line(run("query", "-q"), 2, "give --model NAME")
    assert_one_line(run("query", "--object", "car", "-q"), 2, "--object without --model trains a bundle on VIDEO")


def test_internal_error_is_one_line(tmp_path, monkeypatch):
    import noscope.video

    def broken(path, *args, **kwargs):
        raise ValueError("something\nunexpected")

    monkeypatch.setattr(noscope.video, "open_video", broken)
    line = assert_one_line(run("label", tmp_path / "x.mp4", "--object", "car", "-q"), 3,
                           "noscope: internal error: ValueError: something unexpected; run with -v for the traceback")
    r = run("label", tmp_path / "x.mp4", "--object", "car", "-v")
    assert r.exit_code == 3 and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1] == line


# ------------------------------------------------------------------ 2. untrusted files


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_pickled_code_in_model_is_refused(bundle_copy, tmp_path):
    from noscope.bundle import load_bundle
    from noscope.cheap.cnn import load_model

    meta = yaml.safe_load((bundle_copy / "bundle.yaml").read_text())
    assert meta["candidates"], "the fixture bundle should hold specialized models"
    rel = meta["candidates"][0]["file"]
    marker = tmp_path / "pwned"
    _RunsCode.marker = marker
    import torch

    with open(bundle_copy / rel, "wb") as f:
        torch.save({"format": 1, "arch": meta["candidates"][0]["name"], "evil": _RunsCode()}, f)
    meta["files"][rel] = sha(bundle_copy / rel)  # the checksum passes: only weights_only stops it
    (bundle_copy / "bundle.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    with pytest.raises(NoscopeError, match="refusing to load"):
        load_bundle(bundle_copy)  # issue 13: every model file is read (weights only) when the bundle loads
    with pytest.raises(NoscopeError, match="refusing to load"):
        load_model(bundle_copy / rel, "cpu")
    assert not marker.exists()
    # the payload is real: unrestricted unpickling runs it (a harmless `touch` in tmp_path)
    torch.load(bundle_copy / rel, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "models/../../x.pt"])
def test_bundle_paths_stay_inside(tmp_path, rel):
    with pytest.raises(NoscopeError, match="refusing to load"):
        inside(tmp_path, rel)
    assert inside(tmp_path, "models/a.pt") == (tmp_path / "models" / "a.pt").resolve()


def test_bundle_yaml_naming_outside_file_is_refused(bundle_copy):
    y = bundle_copy / "bundle.yaml"
    meta = yaml.safe_load(y.read_text())
    meta["files"]["../../etc/passwd"] = "0" * 64
    y.write_text(yaml.safe_dump(meta, sort_keys=False))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1, "outside itself", "refusing to load")


# ------------------------------------------------------------------ 3. determinism


def test_same_seed_same_bundle(trained):
    a, b = trained["a"], trained["b"]
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() and p.name != "bundle.yaml")
    assert "heldout.npz" in files and any(f.startswith("models/") for f in files)
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != "bundle.yaml")
    for f in files:
        assert sha(a / f) == sha(b / f), f
    ma, mb = (yaml.safe_load((x / "bundle.yaml").read_text()) for x in (a, b))
    assert ma["files"] == mb["files"]
    # Measured timings (cost_s, train_seconds, train.seconds, costs) and `created` may differ;
    # everything else in bundle.yaml is the same.
    for m in (ma, mb):
        for k in ("created", "costs"):
            m.pop(k)
        m["train"].pop("seconds")
        for c in m["candidates"]:
            c.pop("cost_s"), c["train"].pop("train_seconds", None), c["train"].pop("seconds", None)
        for d in m["diffs"]:
            d.pop("cost_s")
    assert ma == mb


def test_same_query_same_output(trained, shared_cache, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"q{i}"
        r = run("query", URBAN, "--model", trained["a"], *QUERY_SEG, "--out", out)
        assert r.exit_code == 0, r.output
        outs.append(out)
    for name in ("frames.csv", "intervals.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_diff_fit_when_every_block_has_one_class():
    """Found by the internal-error guard: CV with every block single-class scored no fold."""
    from noscope.difference import _fit_logistic

    rng = np.random.default_rng(0)
    x = rng.random((40, 5))
    y = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    groups = np.r_[np.zeros(20, int), np.ones(20, int)]
    w, b = _fit_logistic(x, y, groups)
    assert np.all(np.isfinite(w)) and np.isfinite(b)


def test_bundle_from_another_reference(bundle_copy):
    """A bundle whose labels came from another detector cannot be queried with this one."""
    _as_if_trained(bundle_copy, lambda m: m["reference"].update(key="yolov4-608x608-0123abcd"))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1,
                    "trained with reference yolov4-608x608-0123abcd")
    # bundle.yaml alone edited: it no longer agrees with its own heldout.npz
    _rewrite(bundle_copy, lambda m: m["reference"].update(key="yolov4-416x416-0123abcd"))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1,
                    "bundle.yaml's reference.key is 'yolov4-416x416-0123abcd' but heldout.npz was made for "
                    "'yolov4-608x608-0123abcd'")


# ------------------------------------------------------------------ 4. every answer belongs to the right frame (issue 13)

CACHED = ["--start", "450f", "--end", "470f", "--set", "optimizer.min_auc=2", "--set", "optimizer.skips=[1]",
          "--target-fpr", "0.05", "--target-fnr", "0.05", "--no-plot"]  # labels in the session's cache: fast


def _rewrite(bundle: Path, change) -> dict:
    y = bundle / "bundle.yaml"
    meta = yaml.safe_load(y.read_text())
    change(meta)
    y.write_text(yaml.safe_dump(meta, sort_keys=False))
    return meta


def _as_if_trained(bundle: Path, change, arrays_change=None) -> dict:
    """A bundle as if training had made it so: bundle.yaml changed, heldout.npz (its arrays changed
    too, and its record of what it was made for) rewritten to agree, checksums redone. Issue 20:
    editing bundle.yaml alone makes a bundle that is refused."""
    from noscope.bundle import MADE_FOR
    from noscope.bundle_manifest import made_for

    meta = _rewrite(bundle, change)
    with np.load(bundle / "heldout.npz") as z:
        arrays = {k: z[k] for k in z.files}
    if arrays_change:
        arrays_change(arrays, meta)
    arrays[MADE_FOR] = np.array(json.dumps(made_for(meta)))
    np.savez(bundle / "heldout.npz", **arrays)
    return _rewrite(bundle, lambda m: m["files"].update({"heldout.npz": sha(bundle / "heldout.npz")}))


def test_on_demand_bundle_is_this_videos_not_a_namesakes(trained, shared_cache, isolated_cache, tmp_path):
    """b.mp4 once named another camera's clip: its bundle b-bus must not answer today's b.mp4."""
    import shutil

    from noscope.video import content_hash

    video = tmp_path / "b.mp4"
    video.symlink_to(URBAN)
    models = isolated_cache / "models"
    other, own = models / "b-bus", models / f"b-bus-{content_hash(URBAN)}"
    for d in (other, own):
        shutil.copytree(trained["a"], d)
    _as_if_trained(other, lambda m: m["video"].update(path="/cams/street/b.mp4", hash="0" * 16))  # trained on another video
    r = run("query", video, "--object", "bus", *CACHED, "-q", "--out", tmp_path / "q")
    assert r.exit_code == 0, r.output
    summary = yaml.safe_load((tmp_path / "q" / "summary.json").read_text())
    assert summary["model"] == str(own) and summary["trained_on"]["this_video"] is True
    assert f"bundle {own.name} (trained on this video)" in r.stdout
    # named with --model, a bundle of another video (the same camera, say) is the user's choice: used, and said
    r = run("query", video, "--model", "b-bus", *CACHED, "-q", "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert "bundle b-bus (trained on /cams/street/b.mp4)" in r.stdout
    # `noscope train b.mp4 --object bus` (no --name) writes where the query looks: never over the namesake
    from noscope.prepare import bundle_destination

    assert bundle_destination(video, ["bus"]) == own
    shutil.rmtree(own)
    assert bundle_destination(video, ["bus"]) == own
    shutil.rmtree(other)
    assert bundle_destination(video, ["bus"]) == other


def test_evaluate_on_a_cut_video_reports_what_it_compared(trained, tmp_path):
    data = URBAN.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])  # decoding stops near frame 560
    r = run("evaluate", half, "--model", trained["a"], "--start", "545f", "--end", "600f", "--target-fpr", "0.05",
            "--target-fnr", "0.05", "--set", "optimizer.min_auc=2", "-q")
    line = assert_one_line(r, 0, "noscope: warning: only ", "of the 55 frames asked for ([545, 600))",
                           "the video stops decoding at frame")
    n = int(line.split("only ")[1].split()[0])
    assert 0 < n < 55
    assert f"[545, {545 + n}) bus" in r.stdout and f"{n} frames compared" in r.stdout and "[545, 600)" not in r.stdout
    # a range past where decoding stops: nothing to compare is an error (issue 20: it was exit 0), one line
    r = run("evaluate", half, "--model", trained["a"], "--start", "700f", "--end", "760f", "--target-fpr", "0.05",
            "--target-fnr", "0.05", "--set", "optimizer.min_auc=2", "-q", "--json")
    assert_one_line(r, 1, f"noscope: error: nothing to compare in {half}: no frame of [700, 760) could be decoded")
    assert r.stdout == ""


@pytest.mark.parametrize("cmd", ["query", "label"])
@pytest.mark.parametrize("item", ["query.batch_size=0", "reference.batch_size=0", "labels.min_score=1.5"])
def test_config_values_out_of_range_are_usage_errors(trained, cmd, item):
    args = ["--model", trained["a"]] if cmd == "query" else ["--object", "bus"]
    assert_one_line(run(cmd, URBAN, *args, "--end", "5f", "--set", item, "-q"), 2,
                    f"noscope: error: config key {item.split('=')[0]} must be ")


def test_query_says_which_min_score_applies(trained, shared_cache, tmp_path):
    r = run("query", URBAN, "--model", trained["a"], *CACHED, "-q", "--set", "labels.min_score=0.3", "--out", tmp_path / "q")
    line = assert_one_line(r, 0, "noscope: warning: labels.min_score is 0.3 in the configuration",
                           "trained with 0.5: the answers use 0.5")
    summary = yaml.safe_load((tmp_path / "q" / "summary.json").read_text())
    assert summary["min_score"] == 0.5
    rows = [row.split(",") for row in (tmp_path / "q" / "frames.csv").read_text().splitlines()[1:]]
    scored = [(row[2] == "1", float(row[4])) for row in rows if row[4]]
    assert scored and all(label == (score >= 0.5) for label, score in scored), line


def test_bundle_without_files_section_is_refused(bundle_copy):
    _rewrite(bundle_copy, lambda m: m.pop("files"))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1, "is corrupt: bundle.yaml lists no files")


@pytest.mark.parametrize("which", ["heldout", "model"])
def test_bundle_file_missing_from_the_list_is_refused(bundle_copy, which):
    meta = yaml.safe_load((bundle_copy / "bundle.yaml").read_text())
    rel = "heldout.npz" if which == "heldout" else meta["candidates"][0]["file"]
    _rewrite(bundle_copy, lambda m: m["files"].pop(rel))
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1, f"is corrupt: {rel} is not listed with a checksum")


def test_model_file_of_another_architecture_is_refused(bundle_copy):
    meta = yaml.safe_load((bundle_copy / "bundle.yaml").read_text())
    cnns = [c for c in meta["candidates"] if c.get("kind") != "prefix_head"]
    a, b = cnns[0], cnns[-1]
    assert a["name"] != b["name"]
    (bundle_copy / a["file"]).write_bytes((bundle_copy / b["file"]).read_bytes())
    _rewrite(bundle_copy, lambda m: m["files"].update({a["file"]: sha(bundle_copy / a["file"])}))  # checksum passes
    assert_one_line(run("query", URBAN, "--model", bundle_copy, "-q"), 1,
                    f"{a['file']} holds a {b['name']} model", f"not the {a['name']}")


def test_start_errors_name_the_start_of_the_video(trained):
    for cmd in (["label", URBAN, "--object", "car"], ["query", URBAN, "--model", trained["a"]]):
        line = assert_one_line(run(*cmd, "--end", "0f", "-q"), 2, "--start (start of video) must come before --end (0f)")
        assert "None" not in line
    assert_one_line(run("label", URBAN, "--object", "car", "--end", "1:99", "-q"), 2, "must be below 60")


def test_no_heldout_positive_shows_fnr_as_na(bundle_copy, shared_cache, tmp_path):
    """A held-out set with no positive frame has no FNR: the cascade line says n/a, summary.json null."""
    def no_positive(arrays, meta):
        arrays["truth"] = np.zeros_like(arrays["truth"])

    _as_if_trained(bundle_copy, lambda m: m["heldout"].update(positives=0), no_positive)
    r = run("query", URBAN, "--model", bundle_copy, *CACHED, "--out", tmp_path / "q")
    assert r.exit_code == 0, r.output
    (cascade,) = [line for line in r.stderr.splitlines() if line.startswith("cascade:")]
    assert "FNR n/a" in cascade and "FNR 0.00%" not in cascade
    summary = yaml.safe_load((tmp_path / "q" / "summary.json").read_text())
    assert summary["cascade"]["heldout_fnr"] is None and summary["cascade"]["heldout_fpr"] is not None
