"""`noscope query` over many videos: one folder and one runs.jsonl line per video, resuming, exit codes;
and `--executor ray`, which must give the local run's answers frame for frame.

The real runs use the session's small bus bundle on the first 60 frames of two shared clips,
with `optimizer.min_auc` above 1 so no CNN is offered and the cascade calls the reference (2
calls per clip) and the check on the video draws every other frame (fewer than query.verify):
the answers then depend on the config reaching every worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import noscope.batch
import noscope.query
from noscope.batch import Job, append_record, expand_videos, plan_jobs, read_records, record
from noscope.cli import cli
from noscope.errors import NoscopeError

from .conftest import STOREFRONT, URBAN, default_settings, share_detector_files

SEG = ["--end", "60f", "--set", "optimizer.min_auc=1.01", "--no-plot"]
GOOD = {"storefront-cctv_people", "urban-road-cctv_cars-buses-motorbikes"}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def stderr_lines(r):
    return [line for line in r.stderr.splitlines() if line.strip()]


@pytest.fixture
def clips(tmp_path):
    """Two shared clips (linked, not copied) and a corrupt file, in one folder."""
    d = tmp_path / "clips"
    d.mkdir()
    for v in (URBAN, STOREFRONT):
        (d / v.name).symlink_to(v)
    (d / "bad.mp4").write_bytes(os.urandom(4096))
    (d / "notes.txt").write_text("not a video, and not named like one\n")
    return d


def test_folder_two_results_one_failure_then_resume(trained, clips, tmp_path, monkeypatch):
    out = tmp_path / "out"
    r = run("query", clips, "--model", trained["a"], "--out", out, "-q", *SEG)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith("noscope: error: bad.mp4: cannot decode"), r.stderr
    recs = read_records(out / "runs.jsonl")
    assert [(Path(x["path"]).name, x["status"]) for x in recs] == [
        ("bad.mp4", "failed"), (STOREFRONT.name, "done"), (URBAN.name, "done")]
    bad, *good = recs
    assert "cannot decode" in bad["error"] and bad["frames"] is None
    for x in good:
        assert x["frames"] == 60 and x["reference_calls"] == 60 and x["error"] is None and x["seconds"] > 0
        assert x["verified"]["met"] is True and x["verified"]["checked"] == 58  # every cheap frame checked: exact
        folder = Path(x["out"])
        assert folder.parent == out and folder.name in {f"{s}-bus" for s in GOOD}
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["frames"] == 60 and summary["positives"] == x["positives"]
        csv = (folder / "frames.csv").read_text().splitlines()
        assert len(csv) == 61 and any(row.split(",")[3] == "reference" for row in csv[1:])
    assert {x["positives"] > 0 for x in good} == {True, False}  # buses on the road, none at the shop door
    assert sorted(p.name for p in out.iterdir()) == sorted(["runs.jsonl", *(f"{s}-bus" for s in GOOD)])

    # rerun: the two finished videos are skipped (query_video is not even called for them), the bad one fails again
    calls = []
    real = noscope.query.query_video
    monkeypatch.setattr(noscope.query, "query_video", lambda video, *a, **k: calls.append(Path(video).name) or real(video, *a, **k))
    mtimes = {x["out"]: (Path(x["out"]) / "frames.csv").stat().st_mtime_ns for x in good}
    r = run("query", clips, "--model", trained["a"], "--out", out, "--json", "-q", *SEG)
    assert r.exit_code == 1, r.output
    assert calls == ["bad.mp4"]
    assert [json.loads(line)["status"] for line in r.stdout.splitlines()] == ["skipped", "skipped", "failed"]
    recs2 = read_records(out / "runs.jsonl")
    assert len(recs2) == 6 and recs2[:3] == recs
    assert {x["out"]: (Path(x["out"]) / "frames.csv").stat().st_mtime_ns for x in good} == mtimes

    # other options are another query: not "finished", so it runs again; --force redoes all
    calls.clear()
    r = run("query", clips, "--model", trained["a"], "--out", out, "-q", *SEG, "--end", "50f")
    assert r.exit_code == 1 and sorted(calls) == sorted(["bad.mp4", STOREFRONT.name, URBAN.name]), r.output
    assert "50 frames" in r.stdout


def test_all_done_exits_0_and_single_video_keeps_its_output(trained, tmp_path):
    """A folder of good videos exits 0; one plain file still writes straight into --out, as before."""
    d = tmp_path / "clips"
    d.mkdir()
    (d / "a.mp4").symlink_to(URBAN)
    out = tmp_path / "out"
    r = run("query", d, "--model", trained["a"], "--out", out, "-q", "--end", "20f", "--no-plot")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].startswith("1 videos: 1 done, 0 skipped, 0 failed")
    assert (out / "a-bus" / "summary.json").is_file()
    r = run("query", d / "a.mp4", "--model", trained["a"], "--out", tmp_path / "one", "--json", "-q", "--end", "20f", "--no-plot")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["out"] == str(tmp_path / "one") and (tmp_path / "one" / "summary.json").is_file()
    assert "query_key" not in summary and not (tmp_path / "one" / "runs.jsonl").exists()


def test_expand_videos(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.mp4", "a.AVI", "sub/deep.mp4", ".hidden.mp4", "notes.txt", "c.mkv"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "b.mp4", tmp_path / "z-link-to-b.mp4")
    got = expand_videos([str(tmp_path), str(tmp_path / "*.mkv"), str(tmp_path / "notes.txt")])
    # folder: videos by extension, not recursive, no dotfiles; a link to a video already listed is that video;
    # a glob the shell left alone is expanded; a file named explicitly is taken whatever its name
    assert [p.name for p in got] == ["a.AVI", "b.mp4", "c.mkv", "notes.txt"]
    assert all(p.is_absolute() for p in got)
    assert [p.name for p in expand_videos([str(tmp_path / "missing.mp4")])] == ["missing.mp4"]  # fails later, as its own line
    with pytest.raises(NoscopeError, match="no videos found"):
        expand_videos([str(tmp_path / "sub" / "*.avi")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoscopeError, match="is a directory with no videos in it"):
        expand_videos([str(tmp_path / "empty")])


def test_clashing_stems_get_distinct_stable_folders(tmp_path):
    videos = [tmp_path / "east" / "cam.mp4", tmp_path / "west" / "cam.mp4", tmp_path / "gate.mp4"]
    jobs = plan_jobs(videos, tmp_path / "out", "car", tmp_path / "bundle")
    names = [Path(j.out).name for j in jobs]
    assert len(set(names)) == 3 and names[2] == "gate-car"
    assert all(n.startswith("cam-car-") for n in names[:2])
    assert [Path(j.out).name for j in plan_jobs(videos[::-1], tmp_path / "out", "car", tmp_path / "bundle")] == names[::-1]
    # --object alone: each video trains its own bundle, so clashing stems must not share one
    own = plan_jobs(videos, tmp_path / "out", "car", None, "car")
    assert len({j.model for j in own}) == 3 and all(j.trains for j in own)
    assert [Path(j.model).name for j in own] == names


def test_resume_key_follows_a_retrained_bundle(trained, tmp_path):
    """--model with --object: the bundle is given, not trained, so retraining it must redo the videos."""
    import shutil

    from noscope.batch import RunOptions, query_key
    from noscope.plans import Targets

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["a"], bundle)
    job = plan_jobs([URBAN], tmp_path / "out", "bus", bundle, "bus")[0]
    opts = RunOptions(settings=default_settings(), targets=Targets(0.01, 0.01))
    before = query_key(job, opts)
    (bundle / "bundle.yaml").write_text((bundle / "bundle.yaml").read_text() + "\n# retrained\n")
    assert before is not None and query_key(job, opts) != before


def test_runs_jsonl_names_lost_frames():
    """A damaged file's lost frame ranges reach the nightly log, not only its summary.json."""
    job = Job(video="/v.mp4", out="/o", model="m", object="car")
    damaged = record(job, "done", dict(frames=100, missing_frames=[[40, 52]], stopped_at=None))
    assert damaged["missing_frames"] == [[40, 52]] and "stopped_at" not in damaged
    assert "missing_frames" not in record(job, "done", dict(frames=100, missing_frames=[]))


def test_a_rerun_clears_an_earlier_several_objects_result_first(tmp_path):
    """The folder a batch reuses held a several-objects result: its per-object folders go too, found
    through the earlier summary.json before anything is removed (a user's file stays), even when
    the new run then fails."""
    from noscope.batch import RunOptions, run_job
    from noscope.plans import Targets

    out = tmp_path / "cam-car"
    (out / "cam-car").mkdir(parents=True)
    (out / "cam-car" / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "summary.json").write_text(json.dumps(dict(objects=["car", "bus"], results={"car": {"out": str(out / "cam-car")}})))
    job = Job(video=str(tmp_path / "missing.mp4"), out=str(out), model=str(tmp_path / "none"), object="car")
    rec = run_job(job, RunOptions(default_settings(), Targets(0.05, 0.05)))
    assert rec["status"] == "failed"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_runs_jsonl_lines_stay_whole(tmp_path):
    p = tmp_path / "runs.jsonl"
    p.write_text('{"path": "a", "status": "done"}\n{"path": "b", "sta')  # a run killed mid-line
    append_record(p, {"path": "c", "status": "failed", "error": "x"})
    assert [r["path"] for r in read_records(p)] == ["a", "c"]
    assert p.read_text().endswith('"error": "x"}\n')


def test_unexpected_error_is_a_failed_line_and_ctrl_c_stops(trained, clips, tmp_path, monkeypatch):
    def broken(video, *a, **k):
        if Path(video).name == STOREFRONT.name:
            raise RuntimeError("boom")
        raise KeyboardInterrupt

    monkeypatch.setattr(noscope.query, "query_video", broken)
    r = run("query", clips / STOREFRONT.name, clips / URBAN.name, "--model", trained["a"], "--out", tmp_path / "o", "-q")
    assert r.exit_code == 130, r.output
    recs = read_records(tmp_path / "o" / "runs.jsonl")
    assert [(x["status"], x["error"]) for x in recs] == [("failed", "internal error: RuntimeError: boom")]
    assert stderr_lines(r)[0] == f"noscope: error: {STOREFRONT.name}: internal error: RuntimeError: boom"


def test_usage_errors_exit_2(trained, clips, tmp_path, monkeypatch):
    assert run("query", clips, "--out", tmp_path / "o", "-q").exit_code == 2  # neither --model nor --object
    assert run("query", clips, "--model", trained["a"], "--ray-address", "127.0.0.1:1", "-q").exit_code == 2
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if ray were not installed
    r = run("query", clips, "--model", trained["a"], "--executor", "ray", "--out", tmp_path / "o", "-q")
    assert r.exit_code == 2 and stderr_lines(r) == ["noscope: error: --executor ray needs the ray package: pip install 'noscope[ray]'"]
    assert not (tmp_path / "o").exists()


def test_no_videos_is_bad_input(trained, tmp_path):
    r = run("query", str(tmp_path / "none" / "*.mp4"), "--model", trained["a"], "-q")
    assert r.exit_code == 1 and stderr_lines(r) == [f"noscope: error: no videos found in {tmp_path}/none/*.mp4 "
                                                    f"(looked for {', '.join(sorted(noscope.batch.VIDEO_EXTENSIONS))})"]


def test_unreachable_ray_address_is_one_line(trained, clips, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # a port nobody listens on
    port = s.getsockname()[1]
    s.close()
    r = run("query", clips, "--model", trained["a"], "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
            "--out", tmp_path / "o", "-q")
    assert r.exit_code == 1 and stderr_lines(r)[-1].startswith(f"noscope: error: cannot reach the Ray cluster at 127.0.0.1:{port}")


def test_ray_matches_local_frame_for_frame(trained, clips, tmp_path, monkeypatch):
    import ray

    r = run("query", clips, "--model", trained["a"], "--out", tmp_path / "local", "-q", *SEG)
    assert r.exit_code == 1, r.output
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # the workers were started with the old environment: only an explicitly passed one reaches them
        cache = tmp_path / "driver-cache"
        cache.mkdir()
        share_detector_files(cache)
        monkeypatch.setenv("NOSCOPE_CACHE", str(cache))
        r = run("query", clips, "--model", trained["a"], "--out", tmp_path / "ray", "--executor", "ray", "-q", *SEG)
    finally:
        ray.shutdown()
    assert r.exit_code == 1, r.output
    assert [line for line in stderr_lines(r) if "error" in line] == [stderr_lines(r)[-1]]
    assert stderr_lines(r)[-1].startswith("noscope: error: bad.mp4: cannot decode")
    local = {Path(x["path"]).name: x for x in read_records(tmp_path / "local" / "runs.jsonl")}
    remote = {Path(x["path"]).name: x for x in read_records(tmp_path / "ray" / "runs.jsonl")}
    assert {k: v["status"] for k, v in remote.items()} == {k: v["status"] for k, v in local.items()}
    for stem in GOOD:
        a = (tmp_path / "local" / f"{stem}-bus" / "frames.csv").read_bytes()
        b = (tmp_path / "ray" / f"{stem}-bus" / "frames.csv").read_bytes()
        assert a == b and b"reference" in b, stem
        assert (tmp_path / "local" / f"{stem}-bus" / "intervals.json").read_bytes() == \
               (tmp_path / "ray" / f"{stem}-bus" / "intervals.json").read_bytes()
    assert list((cache / "labels").rglob("*")), "the workers did not use the driver's NOSCOPE_CACHE"


def test_nightly_script_reports_partial(trained, clips, tmp_path):
    """scripts/nightly.sh, as cron would run it: exit 1 'partial' for the corrupt file, all in its log."""
    import subprocess
    import sys

    from .conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT), NIGHTLY_NOSCOPE=f"{sys.executable} -m noscope.cli",
               NIGHTLY_ARGS="--end 20f --no-plot")
    out = tmp_path / "night"
    p = subprocess.run([str(ROOT / "scripts" / "nightly.sh"), str(clips), str(trained["a"]), str(out)], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, (p.stdout, p.stderr)
    log = (out / "nightly.log").read_text()
    assert "partial: 1 of 3 videos failed" in log and "noscope: error: bad.mp4" in log, log
    assert [x["status"] for x in read_records(out / "runs.jsonl")] == ["failed", "done", "done"]

    # the good videos alone: every frame checked, targets met (0); with the check off nothing shows the
    # targets met: "finished, targets not verified" (5)
    (clips / "bad.mp4").unlink()
    for args, code, said in (("--end 20f --no-plot", 0, "targets verified met"),
                             ("--end 20f --no-plot --set query.verify=0", 5, "without their targets shown met")):
        night = tmp_path / f"night{code}"
        p = subprocess.run([str(ROOT / "scripts" / "nightly.sh"), str(clips), str(trained["a"]), str(night)],
                           env=dict(env, NIGHTLY_ARGS=args), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == code and said in (night / "nightly.log").read_text(), (args, p.returncode)


def test_dangling_link_in_a_folder_is_a_failed_video(trained, tmp_path, monkeypatch):
    """A folder's .mp4 link whose target is gone fails as that video, as it does when named explicitly."""
    monkeypatch.setenv("NOSCOPE_CACHE", str(trained["cache"]))  # frames 450-469 are labelled there
    d = tmp_path / "clips"
    d.mkdir()
    (d / "good.mp4").symlink_to(URBAN)
    (d / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    (d / "sub.mp4").mkdir()  # a folder named like a video is still not one
    assert [p.name for p in expand_videos([str(d)])] == ["gone.mp4", "good.mp4"]
    assert [p.name for p in expand_videos([str(d / "*.mp4")])] == ["gone.mp4", "good.mp4"]
    out = tmp_path / "out"
    r = run("query", d, "--model", trained["a"], "--out", out, "-q", "--start", "450f", "--end", "470f", *SEG[2:])
    assert r.exit_code == 1, r.output
    assert stderr_lines(r) == [f"noscope: error: gone.mp4: video not found: {d / 'gone.mp4'} "
                               f"(a link to {tmp_path / 'deleted.mp4'}, which does not exist)"]
    assert r.stdout.splitlines()[-1].startswith("2 videos: 1 done, 0 skipped, 1 failed")
    assert [(Path(x["path"]).name, x["status"]) for x in read_records(out / "runs.jsonl")] == [
        ("gone.mp4", "failed"), ("good.mp4", "done")]


def test_object_batch_uses_each_videos_own_bundle(trained, tmp_path, monkeypatch, isolated_cache):
    """--object in a batch: a bundle that only shares a video's file name is not that video's."""
    import shutil

    import yaml

    from noscope.video import content_hash

    monkeypatch.setenv("NOSCOPE_CACHE", str(trained["cache"]))
    d = tmp_path / "clips"
    d.mkdir()
    (d / "b.mp4").symlink_to(URBAN)
    other, own = isolated_cache / "models" / "b-bus", isolated_cache / "models" / f"b-bus-{content_hash(URBAN)}"
    for b in (other, own):
        shutil.copytree(trained["a"], b)
    meta = yaml.safe_load((other / "bundle.yaml").read_text())
    meta["video"].update(path="/cams/street/b.mp4", hash="0" * 16)  # a namesake: another camera's b.mp4
    (other / "bundle.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    args = ["query", d, "--object", "bus", "--out", tmp_path / "out", "--start", "450f", "--end", "470f", *SEG[2:]]
    r = run(*args)
    assert r.exit_code == 0, r.output
    (rec,) = read_records(tmp_path / "out" / "runs.jsonl")
    assert rec["status"] == "done" and rec["model"] == str(own) and rec["trained_on"]["this_video"] is True
    assert f"bundle {own.name} (trained on this video)" in r.stdout
    r = run(*args)  # resuming knows the folder was answered by the video's own bundle
    assert r.exit_code == 0 and read_records(tmp_path / "out" / "runs.jsonl")[-1]["status"] == "skipped", r.output
