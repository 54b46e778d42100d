"""The benchmarks' harness (scripts/harness.py): case lists and --cases, the split, loops and their
frame mapping on a generated video, the command runner with another copy of the package, and the
report writer. Seconds, no reference."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load():
    spec = importlib.util.spec_from_file_location("harness", SCRIPTS / "harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["harness"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


harness = _load()
STOREFRONT = ("storefront-cctv_people.mp4", "person")
PETS_CAR = ("pets2009-s2l1_vtest_people.avi", "car")


# --- cases and the split -------------------------------------------------------------------------


def test_cases_name_pairs_of_the_list_in_its_order():
    assert harness.parse_cases(None, harness.FORWARD) == harness.FORWARD
    assert harness.parse_cases(["intel:car"], harness.FORWARD) == [("intel_parking-lot-overhead_cars.mp4", "car")]
    # a prefix names every clip it starts; the answer keeps the list's order, not the specs'
    assert harness.parse_cases(["highway:truck"], harness.FORWARD) == [("highway-cctv_cars-trucks.avi", "truck"),
                                                                        ("highway-curve_cars.mp4", "truck")]
    assert harness.parse_cases(["pets2009:car", "storefront:person"], harness.UPDATE) == [STOREFRONT, PETS_CAR]
    assert harness.parse_cases(["storefront:person", "storefront:person"], harness.FORWARD) == [STOREFRONT]


@pytest.mark.parametrize("spec, words", [("nosuchclip:car", "no clip starts with 'nosuchclip'"),
                                         ("storefront", "expected clip-prefix:object"),
                                         ("storefront:", "expected clip-prefix:object"),
                                         ("storefront:car", "no such case"),
                                         ("intel:car", "no clip starts with 'intel'")])  # not an update clip
def test_cases_that_name_nothing_are_one_error(spec, words):
    with pytest.raises(ValueError, match=words) as e:
        harness.parse_cases([spec], harness.UPDATE)
    assert "\n" not in str(e.value)


def test_read_args_reads_cases_or_says_what_is_wrong(monkeypatch, capsys):
    import argparse

    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("--cases", nargs="+")
    monkeypatch.setattr(sys, "argv", ["bench", "--cases", "pets2009:car"])
    assert harness.read_args(ap, harness.UPDATE).cases == [PETS_CAR]
    monkeypatch.setattr(sys, "argv", ["bench"])
    assert harness.read_args(ap, harness.UPDATE).cases == harness.UPDATE
    monkeypatch.setattr(sys, "argv", ["bench", "--cases", "nosuchclip:car"])
    with pytest.raises(SystemExit) as e:
        harness.read_args(ap, harness.UPDATE)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].startswith("bench: error: --cases 'nosuchclip:car'")


def test_cases_with_any_object_take_the_first_clip():
    assert harness.parse_cases(["storefront:car", "highway:bus"], harness.FORWARD, any_object=True) == [
        ("storefront-cctv_people.mp4", "car"), ("highway-cctv_cars-trucks.avi", "bus")]
    with pytest.raises(ValueError, match="no clip starts with"):
        harness.parse_cases(["nosuchclip-at-all:car"], harness.FORWARD, any_object=True)


def test_the_case_lists_are_the_forward_tables_pairs():
    assert len(harness.FORWARD) == len(set(harness.FORWARD)) == 10
    assert harness.BENCH == [STOREFRONT, ("urban-road-cctv_cars-buses-motorbikes.mp4", "bus")]
    assert harness.UPDATE[2] == PETS_CAR and len(harness.UPDATE) == 5  # in the order given, not the table's
    assert [o for _, o in harness.CARRY] == ["person", "bus", "car", "truck", "car", "truck"]
    assert set(harness.UPDATE + harness.CARRY + harness.BENCH) <= set(harness.FORWARD)


def test_the_split(clip):
    from noscope.video import open_video

    path, _ = clip
    assert harness.unseen(open_video(path)) == (18, 30)  # the last 40% of 30 frames
    assert harness.CUT == f"{harness.CUT_SHARE:.0%}"
    assert harness.thirds(30) == (10, 20) and harness.thirds(1938) == (646, 1292)


def test_loops_for():
    assert harness.loops_for(15) == 1
    assert harness.loops_for(15, min_frames=100) == 7
    assert harness.loops_for(15, 25.0, min_frames=100, min_seconds=10) == 17  # 250 frames
    assert harness.loops_for(15, min_frames=6000, max_loops=40) == 40
    assert harness.loops_for(15, min_frames=15) == 1


# --- loops ------------------------------------------------------------------------------------


def _picture(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i: its own grey level and its number in bars, so no two frames look alike."""
    f = np.full((h, w, 3), 20 + 6 * i, np.uint8)
    for bit in range(5):
        if i >> bit & 1:
            f[:, bit * 12 : bit * 12 + 8] = (250, 30, 30)
    return f


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """30 frames at 25 fps, H.264 lossless, a keyframe every 5 frames, no B-frames; and its decoded pictures."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.options = {"qp": "0", "preset": "ultrafast", "x264-params": "keyint=5:min-keyint=5:scenecut=0:bframes=0"}
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(_picture(i), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path, _decoded(path)


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_a_stream_loop_starts_at_the_keyframe_before_the_cut_and_maps_back(clip, tmp_path):
    src, original = clip
    assert len({p.tobytes() for p in original}) == 30
    loop = harness.stream_loop(src, tmp_path / "night.mp4", at=harness.CUT, min_frames=40)
    assert (loop.first, loop.length, loop.loops, loop.frames) == (15, 15, 3, 45)  # frame 18 is the cut; 15 the key
    looped = _decoded(loop.path)
    assert len(looped) == 45
    assert [int(o) for o in loop.original(np.arange(45))] == [15 + i % 15 for i in range(45)]
    assert all(np.array_equal(looped[i], original[loop.original(i)]) for i in range(45))
    assert harness.same_pictures(loop.path, src, loop.first) == {i: 15 + i % 15 for i in range(45)}
    assert int(loop.original(45)) == -1


def test_a_stream_loop_by_seconds_and_times(clip, tmp_path):
    src, original = clip
    loop = harness.stream_loop(src, tmp_path / "twice.mp4", at=0.5, loops=2)  # 0.5 s: frame 12, key 10
    assert (loop.first, loop.length, loop.loops) == (10, 20, 2)
    looped = _decoded(loop.path)
    assert len(looped) == 40 and all(np.array_equal(looped[i], original[10 + i % 20]) for i in range(40))
    assert harness.stream_loop(src, tmp_path / "long.mp4", min_seconds=2.5).loops == 3  # 62.5 frames of 30


def test_a_lossless_loop_of_parts_maps_back(clip, tmp_path):
    src, original = clip
    loop = harness.reencode_loop(src, tmp_path / "parts.mp4", [(0, 10, 25), (20, 30, 12)])
    assert loop.parts == ((0, 10, 3), (20, 30, 2)) and loop.loops == 3 and loop.frames == 50
    looped = _decoded(loop.path)
    assert len(looped) == 50
    want = [i % 10 for i in range(30)] + [20 + i % 10 for i in range(20)]
    assert loop.original(np.arange(50)).tolist() == want
    assert all(np.array_equal(looped[i], original[w]) for i, w in enumerate(want))


def test_decode_only_counts_the_frames(clip):
    from noscope.video import open_video

    n, seconds = harness.decode_only(open_video(clip[0]), 18)
    assert n == 12 and seconds > 0


def test_forget_removes_only_that_videos_caches(clip, isolated_cache):
    from noscope.video import open_video

    h = open_video(clip[0]).hash
    mine = [isolated_cache / "labels" / h / "ref", isolated_cache / "frames" / f"{h}-pyav-v3"]
    other = [isolated_cache / "labels" / "other" / "ref", isolated_cache / "frames" / "other-pyav-v3"]
    for d in mine + other:
        d.mkdir(parents=True)
    harness.forget(clip[0])
    assert [d.exists() for d in mine + other] == [False, False, True, True]


# --- answers ------------------------------------------------------------------------------------


def test_query_answers_and_error_rates(tmp_path):
    (tmp_path / "frames.csv").write_text("frame,time_s,label,decided_by\n3,0.12,1,model\n4,0.16,0,diff\n5,0.2,1,reference\n")
    frames, said = harness.query_answers(tmp_path)
    assert frames.tolist() == [3, 4, 5] and said.tolist() == [True, False, True]
    fpr, fnr, pos = harness.error_rates(said, np.array([True, True, False]))
    assert (fpr, fnr, pos) == (1.0, 0.5, 2)
    assert harness.error_rates(said, np.ones(3, bool)) == (None, 1 / 3, 3)


def test_numbers_and_flags():
    assert [harness.fmt(None), harness.fmt(float("nan")), harness.fmt(0.12345), harness.fmt(0.5, 2)] == [
        "n/a", "n/a", "0.123", "0.50"]
    assert harness.set_flags(["a=1", "b=2"]) == ["--set", "a=1", "--set", "b=2"]
    assert harness.settings_of(harness.set_flags(["train.grid=small"])).train.grid == "small"
    assert harness.last_json('progress\n{"x": 1}\n') == {"x": 1}


# --- running another copy of the package --------------------------------------------------------


@pytest.fixture
def fake_copy(tmp_path) -> Path:
    """A folder holding a stand-in `noscope` whose command line says which copy it is."""
    pkg = tmp_path / "base" / "noscope"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 'the copy'\nfrom . import sub\n")
    (pkg / "sub.py").write_text("WHO = __name__\n")
    (pkg / "cli.py").write_text(textwrap.dedent("""\
        import os, sys
        import noscope
        what = sys.argv[1]
        if what == "refuse":
            sys.exit("noscope: error: nothing to learn")
        if what == "crash":
            sys.exit(2)
        print(os.environ.get("X_BENCH", noscope.__file__))
    """))
    return tmp_path / "base"


def test_cli_runs_the_copy_in_src_even_from_the_repository(fake_copy):
    ran = harness.cli("who", src=fake_copy, cwd=harness.ROOT)  # ROOT holds the real noscope: not on the path
    assert ran.out.strip() == str(fake_copy.resolve() / "noscope" / "__init__.py")
    assert not ran.refused and ran.seconds > 0 and ran.peak_rss_mb > 1
    assert harness.cli("env", src=fake_copy, env=dict(os.environ, X_BENCH="7")).out.strip() == "7"


def test_cli_refusals_and_failures(fake_copy):
    ran = harness.cli("refuse", src=fake_copy, refusal_ok=True)
    assert ran.refused and ran.out.startswith("noscope: error: nothing to learn")
    with pytest.raises(SystemExit, match="failed: .*refuse"):
        harness.cli("refuse", src=fake_copy)
    with pytest.raises(SystemExit, match="failed: .*crash"):
        harness.cli("crash", src=fake_copy, refusal_ok=True)


def test_import_copy_beside_the_package(fake_copy):
    try:
        pkg = harness.import_copy(fake_copy, "noscope_copy_under_test")
        assert pkg.VALUE == "the copy"
        assert importlib.import_module("noscope_copy_under_test.sub").WHO == "noscope_copy_under_test.sub"
    finally:
        for name in [m for m in sys.modules if m.startswith("noscope_copy_under_test")]:
            del sys.modules[name]
    with pytest.raises(FileNotFoundError, match="holds no noscope"):
        harness.import_copy(fake_copy / "noscope")


def test_export_package_unpacks_a_commits_package(tmp_path):
    if subprocess.run(["git", "-C", str(harness.ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    dest = harness.export_package("HEAD", tmp_path / "base")
    assert (dest / "noscope" / "__init__.py").is_file() and (dest / "noscope" / "cli.py").is_file()
    assert not (dest / "scripts").exists()


# --- reports ------------------------------------------------------------------------------------


def test_the_report_writes_markdown_and_json_headed_by_the_machine(tmp_path, capsys):
    report = harness.Report(tmp_path / "out")
    report.save([{"row": 1}])  # a partial result, as after each case
    assert json.loads((tmp_path / "out.json").read_text()) == [{"row": 1}]
    text = report.write("| a |\n|---|\n| 1 |", {"rows": [1, 2], "machine": report.machine})
    assert (tmp_path / "out.md").read_text() == text + "\n"
    first = text.splitlines()[0]
    assert first.startswith("Machine: ") and f"{os.cpu_count()} cores" in first and report.machine["date"] in first
    assert f"{report.machine['torch_threads']} threads" in first and text.endswith("| 1 |")
    assert json.loads((tmp_path / "out.json").read_text())["rows"] == [1, 2]
    assert capsys.readouterr().out == text + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.md"]  # nothing half-written beside them


def test_a_report_without_out_only_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    harness.Report(None).write("hello", [1])
    assert capsys.readouterr().out.endswith("hello\n") and not list(tmp_path.iterdir())


def test_window_floor_samples_each_window_alone_against_its_own_answer():
    """scripts/window_floor.py: a window sampled at its middle frame alone errs where the window
    hovers and the middle frame disagrees with its majority; every frame never errs."""
    spec = importlib.util.spec_from_file_location("window_floor", SCRIPTS / "window_floor.py")
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    from noscope.windows import Sampling, WindowGrid

    grid = WindowGrid(100, 130, 10)
    truth = np.zeros(30, bool)
    truth[:10] = True  # window 0: all positive
    truth[10:13] = True  # window 1: 3 of 10, its middle frame (5th) negative: "no" either way
    truth[20:26] = True
    truth[25] = False  # window 2: 5 of 10 (a "yes" at half), its middle frame (25) negative
    answer, share = floor.window_answers(truth, grid)
    assert answer.tolist() == [True, False, True] and share.tolist() == [1.0, 0.3, 0.5]
    one = floor.sampled(Sampling(1, 1), truth, grid, answer)
    assert one == dict(calls=1.0, fpr=0.0, fnr=0.5)
    every = floor.sampled(Sampling(0, 10), truth, grid, answer)
    assert every["fpr"] == every["fnr"] == 0.0 and 1.0 < every["calls"] <= 10


def test_a_nights_window_holding_a_loop_seam_is_not_judged(tmp_path):
    """scripts/evaluate_shared.py: a window with a frame of no known original (a loop's seam) is
    the reference's answer on frames the truth lacks, so it is left out, not counted wrong."""
    spec = importlib.util.spec_from_file_location("evaluate_shared", SCRIPTS / "evaluate_shared.py")
    shared = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_shared"] = shared  # its dataclasses look their module up by name
    spec.loader.exec_module(shared)
    (tmp_path / "summary.json").write_text(json.dumps({"window": {"frames": 4, "share": 0.5}}))
    (tmp_path / "windows.csv").write_text("window,first_frame,last_frame,start_s,end_s,answer\n"
                                          "0,0,3,0,0,1\n1,4,7,0,0,1\n2,8,11,0,0,0\n")
    frames = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11])  # frame 7: a seam
    expect = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0], bool)  # window 1 on its known frames: 1 of 3, "no"
    assert shared.window_errors(tmp_path, frames, expect, np.arange(12)) == (0.0, 0.0, 1)
    frames2, expect2 = np.r_[frames[:7], 7, frames[7:]], np.r_[expect[:7], False, expect[7:]]
    expect2[6] = False  # every frame known: window 1 (0 of 4) a "no" the query answered "yes", counted
    expect2[8] = expect2[9] = True  # window 2: 2 of 4 positive, a "yes" the query answered "no"
    fpr, fnr, pos = shared.window_errors(tmp_path, frames2, expect2, np.arange(12))
    assert (fpr, fnr, pos) == (1.0, 0.5, 2)
