"""Edges of updates, versions, windows and messages, each through the command line (or nightly.sh).

Most tests use the drift scene and its colour-blind test reference (conftest's `camera`: a bundle
trained on the first third, a query is seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_update import FAST, A, B, N, night, run, tree, update

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def updated(camera, tmp_path, monkeypatch):
    """The camera's bundle after one update from a query of [A, B) that validated as good."""
    import noscope.update

    video, bundle, present = camera
    monkeypatch.setattr(noscope.update, "judge", lambda new, cur, targets: "")
    night(video, bundle, A, B, tmp_path / "n1")
    r = update(bundle, video, A, B)
    assert r.exit_code == 0 and "version 2 from" in r.output, r.output
    return video, bundle, present


def test_an_update_inside_a_kept_version_is_refused(updated):
    """`--update BUNDLE/versions/1` is the path form of BUNDLE@1: refused as that is, nothing written
    (no version nested inside a version, the as-trained bundle kept)."""
    video, bundle, _ = updated
    kept = tree(bundle / "versions" / "1")
    r = run("train", "--update", bundle / "versions" / "1", video, "--start", f"{A}f", "--end", f"{B}f", *FAST)
    assert r.exit_code == 2 and "names a version" in r.output and "--model NAME@N" in r.output, r.output
    assert not (bundle / "versions" / "1" / "versions").exists() and tree(bundle / "versions" / "1") == kept


def test_rerunning_an_update_writes_nothing_new(camera, tmp_path, monkeypatch):
    """An update kept aside, run again on the same answers: it says which version its inputs made and
    writes nothing (no identical version 3); after a good update, a rerun has nothing new to learn.
    Both exit 0: nothing is wrong."""
    import noscope.update

    video, bundle, _ = camera
    night(video, bundle, A, B, tmp_path / "n1")
    monkeypatch.setattr(noscope.update, "judge", lambda new, cur, targets: "it validates worse (pinned)")
    assert update(bundle, video, A, B).exit_code == 0
    before = sorted(p.name for p in (bundle / "versions").iterdir())
    r = update(bundle, video, A, B)
    assert r.exit_code == 0, r.output
    assert "not updated" in r.output and "version 2 was made from (aside: it validates worse (pinned))" in r.output
    assert sorted(p.name for p in (bundle / "versions").iterdir()) == before == ["1", "2"]
    monkeypatch.setattr(noscope.update, "judge", lambda new, cur, targets: "")
    r = run("train", "--update", bundle, video, "--start", f"{A}f", "--end", f"{B}f", *FAST, "--set", "seed=1")
    assert r.exit_code == 0 and "version 3 from" in r.output, r.output  # other settings: other inputs
    r = run("train", "--update", bundle, video, "--start", f"{A}f", "--end", f"{B}f", *FAST, "--set", "seed=1")
    assert r.exit_code == 0 and "nothing new to learn" in r.output and "run noscope query" not in r.output.lower()
    assert sorted(p.name for p in (bundle / "versions").iterdir()) == ["1", "2", "3"]


def fake_noscope(tmp_path: Path) -> Path:
    """A stand-in for noscope in nightly.sh (the test reference does not reach another process): a
    query appends a done line to runs.jsonl; `train --update` prints $UPDATE_LINE and its arguments,
    or exits with $UPDATE_RC and an error line."""
    fake = tmp_path / "fake_noscope.py"
    fake.write_text(
        "import json, sys, os\n"
        "args = sys.argv[1:]\n"
        "if args[0] == 'query':\n"
        "    out = args[args.index('--out') + 1]\n"
        "    with open(os.path.join(out, 'runs.jsonl'), 'a') as f:\n"
        "        f.write(json.dumps({'status': 'done', 'verified': {'met': True}, 'complete': True}) + '\\n')\n"
        "    sys.exit(0)\n"
        "rc = int(os.environ.get('UPDATE_RC', '0'))\n"
        "if rc:\n"
        "    print('noscope: error: ' + os.environ['UPDATE_LINE'], file=sys.stderr); sys.exit(rc)\n"
        "print(os.environ['UPDATE_LINE'], ' '.join(args[1:]))\n")
    return fake


def nightly(tmp_path: Path, folder: Path, out: Path, **env) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NIGHTLY_NOSCOPE=f"{sys.executable} {fake_noscope(tmp_path)}",
               NIGHTLY_UPDATE="1", **env)
    p = subprocess.run([str(ROOT / "scripts" / "nightly.sh"), str(folder), "X", str(out)], env=env, capture_output=True,
                       text=True, timeout=120)
    return p.returncode, (out / "nightly.log").read_text() if (out / "nightly.log").is_file() else ""


def test_nightly_update_step(tmp_path):
    """NIGHTLY_UPDATE=1: after the query, one `update:` line in the log, the update told the night's
    targets; a failing update is exit 7."""
    folder = tmp_path / "night"
    folder.mkdir()
    rc, log = nightly(tmp_path, folder, tmp_path / "out", NIGHTLY_ARGS="--target-fpr 0.05 --target-fnr=0.02",
                      NIGHTLY_WINDOW="1s", UPDATE_LINE="updated X: version 2 from 100 answered frames of 1 video(s) is now X")
    assert rc == 0 and "update: updated X: version 2" in log, log
    assert "--target-fnr=0.02 --window 1s" in log.split("start:")[1].splitlines()[0], log  # the night asked per second
    # judged at the targets the night answered at
    assert "--set query.target_fpr=0.05 --set query.target_fnr=0.02" in log.split("update: updated X")[1].splitlines()[0]
    rc, log = nightly(tmp_path, folder, tmp_path / "out2", UPDATE_RC="1", UPDATE_LINE="bundle X is corrupt")
    assert rc == 7 and "update failed" in log and "bundle X is corrupt" in log, log


def test_a_nightly_update_with_nothing_new_to_learn_is_not_a_failure(tmp_path):
    """NIGHTLY_UPDATE=1 on a night run again: the update has nothing new (exit 0, "not updated") or too
    few new answers (exit 8): logged, the night's own exit code stands."""
    folder = tmp_path / "night"
    folder.mkdir()
    rc, log = nightly(tmp_path, folder, tmp_path / "o1", UPDATE_LINE="not updated: X stays version 2: nothing new")
    assert rc == 0 and "update: not updated: X stays version 2: nothing new" in log, log
    rc, log = nightly(tmp_path, folder, tmp_path / "o2", UPDATE_RC="8", UPDATE_LINE="only 12 answered frames")
    assert rc == 0 and "update: not updated: too few new reference answers" in log and "only 12" in log, log


def test_a_missing_night_folder_is_logged_with_its_own_code(tmp_path):
    """A camera folder that is not there (nothing recorded, a share not mounted): exit 3 and a line in
    nightly.log, not a usage error that cron's log never sees."""
    rc, log = nightly(tmp_path, tmp_path / "2024-05-01", tmp_path / "out")
    assert rc == 3 and "the night's video folder is missing" in log and "2024-05-01" in log, log


def test_query_update_keeps_the_querys_exit_status_when_the_update_refuses(camera, tmp_path):
    """`query --update` on a stretch too short to learn from: the answers are written, the refusal is
    one warning line, exit 0 (the query succeeded); `train --update` itself says it with exit 8."""
    video, bundle, _ = camera
    r = run("query", video, "--model", bundle, "--start", f"{A}f", "--end", f"{A + 40}f", "--out", tmp_path / "q",
            "--no-plot", "--update", *FAST)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "q" / "summary.json").is_file()
    assert "noscope: warning: not updated: only" in r.output and not (bundle / "versions").exists()
    r = update(bundle, video, A, A + 40)
    assert r.exit_code == 8 and "the bundle is unchanged" in r.output, r.output


def test_the_check_notes_of_a_video_stay_bounded(camera, tmp_path, monkeypatch):
    """Each query notes its check beside the video's labels (checks.jsonl); a nightly job queries the
    same video for ever, so the file is trimmed to the newest notes past its size bound."""
    import noscope.labels

    monkeypatch.setattr(noscope.labels, "CHECKS_MAX_BYTES", 900)
    monkeypatch.setattr(noscope.labels, "CHECKS_KEEP", 2)
    video, bundle, _ = camera
    for k in range(4):
        night(video, bundle, A + 20 * k, A + 20 * k + 60, tmp_path / f"q{k}")
    (notes,) = Path(os.environ["NOSCOPE_CACHE"]).glob("labels/*/*/checks.jsonl")
    segments = [json.loads(line)["segment"] for line in notes.read_text().splitlines()]
    assert 1 <= len(segments) <= 3 and segments[-1] == [A + 60, A + 120], segments


def test_a_window_too_long_to_count_is_a_config_error():
    r = run("config", "--set", "optimizer.window=99999999999999999999999")
    assert r.exit_code == 2 and "optimizer.window must be an integer in [1, 1000000]" in r.output, r.output
    r = run("config", "--set", "query.verify=99999999999999999999999")
    assert r.exit_code == 2 and "query.verify" in r.output


def test_a_window_rate_without_a_window_of_its_kind_is_na(camera):
    """One window over the whole stretch, negative (the square shows in a third of its frames): the
    window FNR has no positive window to be measured on, so it is n/a (null), never 0; the frame
    rates are measured as usual."""
    video, bundle, _ = camera
    r = run("evaluate", video, "--model", bundle, "--start", f"{B}f", "--metric", "windows", "--set",
            f"optimizer.window={N - B}", "--json", "-q", *FAST)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["positives"] > 0 and rep["frames"]["fnr"] is not None
    assert rep["windows"]["fnr"] is None and rep["windows"]["fpr"] is not None


@pytest.mark.parametrize("suffix", ["x", "-1", "", "0"])
def test_a_version_that_is_not_a_number_says_so(camera, tmp_path, suffix):
    video, bundle, _ = camera
    r = run("query", video, "--model", f"{bundle}@{suffix}", "--out", tmp_path / "q", "-q", *FAST)
    assert r.exit_code == 2 and "a version is a whole number >= 1" in r.output, r.output
    assert "train one" not in r.output


def test_a_bundle_that_lost_its_manifest_mid_publish_is_restored(updated, tmp_path):
    """bundle.yaml gone from NAME/ (an update stopped while replacing it): the next query restores the
    newest good version, says so in one line, and answers with it."""
    video, bundle, _ = updated
    good = tree(bundle)
    (bundle / "bundle.yaml").unlink()
    r = run("query", video, "--model", bundle, "--start", f"{B}f", "--out", tmp_path / "q", "-q", "--no-plot", *FAST)
    assert r.exit_code == 0, r.output
    assert "restoring version 2" in r.output and tree(bundle) == good
    assert json.loads((tmp_path / "q" / "summary.json").read_text())["model_version"] == 2


def test_the_loser_of_two_racing_updates_is_told_what_to_do(camera, tmp_path):
    """Another process holds the bundle (an update running): this one is told its pid and to run again
    later, not to "give another --out" (train --update has no --out)."""
    video, bundle, _ = camera
    night(video, bundle, A, B, tmp_path / "n1")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from noscope.atomic import hold_folder\n"
                               f"with hold_folder({str(bundle)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = update(bundle, video, A, B)
    finally:
        holder.kill()
        holder.wait()
    assert r.exit_code == 1 and f"(pid {holder.pid})" in r.output and "--out" not in r.output, r.output
    assert "run it again when that one is done" in r.output and not (bundle / "versions").exists()


def test_update_help_says_where_versions_go():
    r = run("train", "--help")
    text = " ".join(r.output.split())
    assert "not a kept version BUNDLE@N, which query and evaluate read with --model" in text
