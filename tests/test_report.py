"""`noscope report`: the timeline and cost chart from a result folder, and clips of the intervals.

Most tests build a result folder by hand for a generated video (a square crosses a static scene
in frames 20-39, 60-79 and 100-119), so every expected clip and frame is known; one runs the
real query path on the urban clip with the session's small bus bundle and labels.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from noscope.cli import cli
from noscope.clips import clip_ranges
from noscope.report import FrameTable, frames_csv, intervals, read_frames_csv
from noscope.video import open_video

from .conftest import URBAN, moving_square_frames, write_video

FPS = 25.0


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(r, *needles) -> str:
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("noscope: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def count_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def read_clip(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(bgr[..., ::-1])
    cap.release()
    return np.stack(out)


@pytest.fixture
def result(tmp_path):
    """A finished result folder for a generated 120-frame video, answered as the truth says."""
    frames, present = moving_square_frames(120, h=120, w=160)
    video = write_video(tmp_path / "square.avi", frames, fps=FPS)
    n = len(frames)
    idx = np.arange(n)
    decided = np.where(idx % 2 == 1, "skip", np.where(present, "reference", "diff"))
    ref = {int(f): (0.9 if present[f] else 0.1) for f in idx if decided[f] == "reference"}
    out = tmp_path / "out"
    out.mkdir()
    (out / "frames.csv").write_bytes(frames_csv(idx, idx / FPS, present, decided, ref))
    iv = intervals(idx, present, FPS)
    (out / "intervals.json").write_text(json.dumps(iv))
    counts = {s: int((decided == s).sum()) for s in ("skip", "diff", "model", "reference")}
    summary = dict(video=str(video), object="square", fps=FPS, frames=n, positives=int(present.sum()),
                   wall_seconds=2.0, frames_per_s=60.0, reference_calls=len(ref), min_score=0.5,
                   stage_seconds=dict(decode=0.5, diff=0.1, model=0.0, reference=1.2),
                   fractions={k: v / n for k, v in counts.items()}, decided_frames=counts, intervals=len(iv))
    (out / "summary.json").write_text(json.dumps(summary))
    return dict(out=out, video=video, frames=frames, present=present, intervals=iv)


def test_clip_ranges_pad_merge_cap():
    # pad 0.5 s at 10 fps = 5 frames: the first two padded intervals overlap and merge
    r, left = clip_ranges([(200, 210), (30, 40), (45, 50)], fps=10, frame_count=1000, pad_s=0.5)
    assert [(c.start_frame, c.end_frame, c.intervals) for c in r] == [(25, 55, [(30, 40), (45, 50)]), (195, 215, [(200, 210)])]
    assert left == 0 and not any(c.truncated for c in r)
    # padding stops at both ends of the video
    r, _ = clip_ranges([(0, 3), (995, 1000)], fps=10, frame_count=1000, pad_s=0.5)
    assert [(c.start_frame, c.end_frame) for c in r] == [(0, 8), (990, 1000)]
    # no padding: apart intervals stay apart
    r, _ = clip_ranges([(10, 20), (21, 30)], fps=10, frame_count=100, pad_s=0)
    assert [(c.start_frame, c.end_frame) for c in r] == [(10, 20), (21, 30)]
    # the number cap keeps the earliest and counts the rest; the length cap cuts and says so
    r, left = clip_ranges([(10, 20), (100, 400), (500, 510), (700, 710)], fps=10, frame_count=1000, pad_s=1,
                          max_clips=2, max_s=5)
    assert [(c.start_frame, c.end_frame, c.truncated) for c in r] == [(0, 30, False), (90, 140, True)]
    assert left == 2
    assert clip_ranges([], fps=10, frame_count=100) == ([], 0)
    assert r[0].name(1, 0.0, 3.0) == "clip-001-0.00s-3.00s.mp4"


def test_clip_and_timeline_seconds_are_the_recorded_times():
    """Variable frame rate: frames 0-3 one second apart, then 0.1 s apart. Clip names, captions
    and the timeline's bins take the times frames.csv recorded, not frame / average fps; padding
    outside the answered rows steps by 1 / fps."""
    times = np.array([0.0, 1.0, 2.0, 3.0, 3.1, 3.2])
    table = FrameTable(np.arange(10, 16), times, np.zeros(6, bool), np.full(6, "reference"), None)
    got = table.seconds([10, 13, 15, 14.5, 17, 8], fps=10.0)
    assert np.allclose(got, [0.0, 3.0, 3.2, 3.15, 3.4, -0.2])
    assert np.allclose(FrameTable(np.arange(0), np.zeros(0), np.zeros(0, bool), np.zeros(0, str), None).seconds([5], 10.0), [0.5])


def test_frames_csv_keeps_reference_scores(tmp_path):
    f = np.arange(5)
    scores = {0: 0.1234567, 3: float(np.float32(0.49999997))}
    p = tmp_path / "frames.csv"
    p.write_bytes(frames_csv(f, f / FPS, np.array([0, 0, 1, 0, 1], bool), np.array(["reference", "skip", "model", "reference", "diff"]), scores))
    assert p.read_text().splitlines()[:2] == ["frame,time_s,label,decided_by,reference_score", "0,0.000,0,reference,0.1234567"]
    t = read_frames_csv(p)
    assert t.reference_score[0] == np.float32(0.1234567) and t.reference_score[3] == np.float32(0.49999997)
    assert np.isnan(t.reference_score[[1, 2, 4]]).all()
    assert t.label.tolist() == [False, False, True, False, True] and t.decided_by.tolist()[2] == "model"
    # a folder written before the column existed reads, without scores
    p.write_text("frame,time_s,label,decided_by\n0,0.000,1,model\n1,0.040,0,skip\n")
    t = read_frames_csv(p)
    assert t.reference_score is None and t.frame.tolist() == [0, 1] and t.label.tolist() == [True, False]


def _assert_picture(path, min_h, min_w):
    img = cv2.imread(str(path))
    assert img is not None, path
    assert img.shape[0] >= min_h and img.shape[1] >= min_w, img.shape
    assert img.std() > 10  # not a blank canvas


def test_report_draws_and_cuts_clips(result, tmp_path):
    out, clips = result["out"], tmp_path / "clips"
    r = run("report", out, "--clips", clips, "--pad", "0.2", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["timeline"] == str(out / "timeline.png") and rep["costs"] == str(out / "costs.png")
    _assert_picture(out / "timeline.png", 400, 1000)
    _assert_picture(out / "costs.png", 250, 800)
    # square present in [20, 40), [60, 80), [100, 120); 0.2 s = 5 frames of padding each side
    assert [(c["start_frame"], c["end_frame"]) for c in rep["clips"]] == [(15, 45), (55, 85), (95, 120)]
    names = sorted(p.name for p in clips.iterdir())
    assert names == ["clip-001-0.60s-1.80s.mp4", "clip-002-2.20s-3.40s.mp4", "clip-003-3.80s-4.80s.mp4"]
    src = result["frames"].astype(np.int16)
    for c in rep["clips"]:
        got = read_clip(c["path"])
        assert len(got) == c["frames"] == c["end_frame"] - c["start_frame"]
        # each clip frame is the source frame it claims to be: match a band below the caption
        # against the source frames of the clip (the square moves 3 px a frame, so only one fits)
        a, b = c["start_frame"], c["end_frame"]
        for k in range(len(got)):
            if result["present"][a + k]:
                err = np.abs(src[a:b, 30:40, 8:152] - got[k, 30:40, 8:152].astype(np.int16)).mean(axis=(1, 2, 3))
                assert int(err.argmin()) == k, (c, k)
    assert not [p for p in clips.iterdir() if p.name.startswith(".tmp")]

    # padded intervals that overlap become one clip; --max-clips caps the number
    r = run("report", out, "--clips", tmp_path / "c2", "--pad", "1", "--max-clips", "1")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[:2] == [f"wrote {out / 'timeline.png'}", f"wrote {out / 'costs.png'}"]
    assert lines[2].startswith(f"wrote {tmp_path / 'c2' / 'clip-001-0.00s-4.80s.mp4'} (120 frames, 3 intervals")
    assert len(lines) == 3
    assert count_frames(tmp_path / "c2" / "clip-001-0.00s-4.80s.mp4") == 120


def test_report_reads_old_folders(result):
    """A result from before reference scores and fps were saved still draws."""
    out = result["out"]
    rows = (out / "frames.csv").read_text().splitlines()
    (out / "frames.csv").write_text("\n".join(x.rsplit(",", 1)[0] for x in rows) + "\n")
    s = json.loads((out / "summary.json").read_text())
    for k in ("fps", "decided_frames"):
        s.pop(k)
    (out / "summary.json").write_text(json.dumps(s))
    r = run("report", out)
    assert r.exit_code == 0, r.output
    _assert_picture(out / "timeline.png", 400, 1000)
    _assert_picture(out / "costs.png", 250, 800)


def test_report_bad_input(result, tmp_path):
    one_error_line(run("report", tmp_path / "nowhere"), "no result folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(run("report", empty), "no finished result (no summary.json)")
    out = result["out"]
    one_error_line(run("report", out / "summary.json"), "is not a folder")
    one_error_line(run("report", out, "--clips", out / "summary.json"), "is a file, not a folder")
    # a relative path from another working directory: found through the absolute one
    s = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps(dict(s, video="elsewhere/square.avi", video_abspath=str(result["video"]))))
    assert run("report", out, "--clips", tmp_path / "c0").exit_code == 0
    (out / "summary.json").write_text(json.dumps(s))
    result["video"].rename(tmp_path / "moved.avi")
    one_error_line(run("report", out, "--clips", tmp_path / "c"), "source video of this result is gone", "square.avi")
    assert not (tmp_path / "c").exists()
    r = run("report", out, "--clips", tmp_path / "c", "--video", tmp_path / "moved.avi")  # found again
    assert r.exit_code == 0, r.output
    write_video(tmp_path / "other.avi", moving_square_frames(30, seed=1)[0])
    s = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps(dict(s, video_hash="0" * 16)))
    one_error_line(run("report", out, "--clips", tmp_path / "c", "--video", tmp_path / "other.avi"), "not the video this result answered")
    (out / "frames.csv").write_text("frame,time_s,label,decided_by\n0,0.000,1,wizard\n")
    one_error_line(run("report", out), "frames.csv line 2 is malformed")
    (out / "summary.json").write_text("{not json")
    one_error_line(run("report", out), "summary.json is not valid JSON")
    assert run("report", out, "--pad", "-1").exit_code == 2


def test_query_then_report(trained, tmp_path, monkeypatch):
    """The real query path: scores saved where the reference ran, then a report and clips from the folder."""
    monkeypatch.setenv("NOSCOPE_CACHE", str(trained["cache"]))  # frames 450-499 are labelled there
    out = tmp_path / "q"
    # no CNN and no frame skip at tight targets: the reference decides frames, so scores are saved
    r = run("query", URBAN, "--model", trained["a"], "--start", "450f", "--end", "490f", "--target-fpr", "0.01",
            "--target-fnr", "0.01", "--set", "optimizer.min_auc=2", "--set", "optimizer.skips=[1]", "-q", "--out", out)
    assert r.exit_code == 0, r.output
    _assert_picture(out / "timeline.png", 400, 1000)  # query still draws the timeline itself
    summary = json.loads((out / "summary.json").read_text())
    t = read_frames_csv(out / "frames.csv")
    assert summary["fps"] == pytest.approx(25.0) and summary["decided_frames"] == t.decided_counts()
    has = ~np.isnan(t.reference_score)
    assert int(has.sum()) == summary["reference_calls"] > 0
    assert (t.decided_by[has] == "reference").all()
    assert ((t.reference_score[has] >= summary["min_score"]) == t.label[has]).all()

    r = run("report", out, "--clips", out / "clips", "--pad", "0.4", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    _assert_picture(rep["costs"], 250, 800)
    iv = json.loads((out / "intervals.json").read_text())
    expect, _ = clip_ranges([(i["start_frame"], i["end_frame"]) for i in iv], 25.0, open_video(URBAN).frame_count, pad_s=0.4)
    assert len(rep["clips"]) == len(expect) >= 1
    for c, e in zip(rep["clips"], expect):
        assert count_frames(c["path"]) == c["frames"] == e.end_frame - e.start_frame


def test_query_replaces_an_earlier_result_in_its_folder(result, trained, monkeypatch):
    """An --out folder reused for another video holds only the new result, plus what the user put there."""
    monkeypatch.setenv("NOSCOPE_CACHE", str(trained["cache"]))  # frames 450-469 are labelled there
    out = result["out"]
    r = run("report", out, "--clips", out / "clips", "--pad", "0")
    assert r.exit_code == 0, r.output
    assert (out / "costs.png").is_file() and (out / "timeline.png").is_file() and list((out / "clips").glob("clip-*.mp4"))
    (out / "notes.txt").write_text("mine")
    (out / "clips" / "my-cut.mp4").write_bytes(b"mine")
    (out / ".tmp-frames.csv.x1y2").write_bytes(b"half")  # left by a killed write
    r = run("query", URBAN, "--model", trained["a"], "--start", "450f", "--end", "470f", "--set", "optimizer.min_auc=2",
            "--set", "optimizer.skips=[1]", "--target-fpr", "0.05", "--target-fnr", "0.05", "--no-plot", "-q", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["clips", "frames.csv", "intervals.json", "notes.txt", "summary.json"]
    assert [p.name for p in (out / "clips").iterdir()] == ["my-cut.mp4"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["video"] == str(URBAN) and len(read_frames_csv(out / "frames.csv").frame) == 20


def test_clear_result_of_several_objects_keeps_what_is_not_ours(tmp_path):
    from noscope.report import clear_result

    out = tmp_path / "out"
    for sub in ("cam-car", "cam-bus", "mine"):
        (out / sub).mkdir(parents=True)
        for name in ("frames.csv", "intervals.json", "timeline.png", "summary.json"):
            (out / sub / name).write_text("x")
    (out / "cam-bus" / "notes.txt").write_text("mine")
    results = {o: dict(out=f"/elsewhere/out/cam-{o}") for o in ("car", "bus")}  # written from another cwd
    (out / "summary.json").write_text(json.dumps(dict(video="cam.mp4", objects=["car", "bus"], results=results)))
    clear_result(out)
    assert sorted(p.name for p in out.iterdir()) == ["cam-bus", "mine"]
    assert [p.name for p in (out / "cam-bus").iterdir()] == ["notes.txt"]
    assert len(list((out / "mine").iterdir())) == 4  # not named by the earlier result: the user's


def test_non_latin_video_name_draws_without_stderr_noise(result, tmp_path):
    """Matplotlib's font lacks CJK glyphs; its per-glyph warnings must not reach stderr."""
    import subprocess
    import sys

    from .conftest import ROOT

    video = result["video"].rename(tmp_path / "カメラ.avi")
    s = json.loads((result["out"] / "summary.json").read_text())
    (result["out"] / "summary.json").write_text(json.dumps(dict(s, video=str(video))))
    p = subprocess.run([sys.executable, "-m", "noscope.cli", "report", str(result["out"])], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "wrote" in p.stdout
