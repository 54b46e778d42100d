"""The installed entry point: usage errors are one line with exit 2, success exits 0."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def noscope(*args):
    return subprocess.run([sys.executable, "-c", "from noscope.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_usage_errors_are_one_line():
    for args in (["label", "x.mp4", "--object", "car", "--every", "0"], ["nosuch"], ["label"]):
        r = noscope(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("noscope: error: "), r.stderr


def test_success_and_help_exit_zero():
    assert noscope("--help").returncode == 0
    r = noscope("config", "--set", "train.epochs=2")
    assert r.returncode == 0 and "epochs: 2" in r.stdout
