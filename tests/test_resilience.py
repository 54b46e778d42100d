"""Resilience: `kill -9` mid-run, two processes on one cache, and a bounded fuzz pass.

The label runs use 32 frames of the urban clip with the reference detector in batches of 8 and
label-cache chunks of 8 frames (NOSCOPE_LABEL_CHUNK), so a run writes four chunk files and can
be killed after the first one. Every run is a real `python -m noscope.cli` process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from noscope import bundle as B
from noscope.bundle import load_bundle
from noscope.errors import NoscopeError
from noscope.cheap.cnn import load_model
from noscope.video import open_video

from .conftest import ROOT, URBAN, moving_square_frames, share_detector_files, write_video

N_FRAMES = 32
LABEL = ["label", str(URBAN), "--object", "car", "--end", f"{N_FRAMES}f", "--json", "-q",
         "--set", "reference.batch_size=8"]


def cache_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, NOSCOPE_CACHE=str(cache), NOSCOPE_LABEL_CHUNK="8")
    env.pop("NOSCOPE_MODELS", None)
    return env


def new_cache(root: Path) -> Path:
    """An empty cache that shares the real detector weights and exports (like conftest's isolated_cache)."""
    root.mkdir(parents=True)
    return share_detector_files(root)


def start_label(cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "noscope.cli", *LABEL], cwd=ROOT, env=cache_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert "unreadable" not in err and "Traceback" not in err, err
    return json.loads(out.strip().splitlines()[-1])


def chunk_dir(cache: Path) -> Path:
    dirs = [d for d in (cache / "labels").glob("*/*") if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_chunks(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames, scores) of every chunk file, checking that frames stored twice agree exactly."""
    d = chunk_dir(cache)
    assert not list(d.glob("*.corrupt")), "a chunk was set aside as corrupt"
    seen: dict[int, np.ndarray] = {}
    for path in sorted(d.glob("chunk-*.npz")):
        assert not path.name.startswith(".tmp-")
        with np.load(path, allow_pickle=False) as z:
            for f, s in zip(z["frames"].tolist(), z["scores"]):
                if f in seen:
                    assert np.array_equal(seen[f], s), f"frame {f} stored twice with different scores"
                seen[f] = s
    frames = np.array(sorted(seen), np.int64)
    return frames, np.stack([seen[f] for f in frames.tolist()])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Scores of one uninterrupted run into its own cache: the reference for the other tests."""
    cache = new_cache(tmp_path_factory.mktemp("resilience") / "ref-cache")
    summary = finish(start_label(cache))
    assert summary["frames"] == N_FRAMES and summary["from_cache"] == 0
    frames, scores = read_chunks(cache)
    assert np.array_equal(frames, np.arange(N_FRAMES))
    return scores


# ------------------------------------------------------------------ 1. kill -9 and resume


def test_label_resumes_after_kill9(uninterrupted, tmp_path):
    cache = new_cache(tmp_path / "cache")
    p = start_label(cache)
    deadline = time.monotonic() + 120
    chunks: list[Path] = []
    while time.monotonic() < deadline and p.poll() is None:
        d = [x for x in (cache / "labels").glob("*/*") if x.is_dir()] if (cache / "labels").is_dir() else []
        chunks = list(d[0].glob("chunk-*.npz")) if d else []
        if chunks:
            break
        time.sleep(0.02)
    assert chunks, "no chunk was written before the run ended or timed out"
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    d = chunk_dir(cache)
    done, _ = read_chunks(cache)
    assert 0 < len(done) < N_FRAMES
    # a temp file left by the kill, if any, is not a chunk to the loader's glob
    assert all(not t.match("chunk-*.npz") for t in d.glob(".tmp-*"))

    summary = finish(start_label(cache))
    assert summary["frames"] == N_FRAMES
    assert len(done) <= summary["from_cache"] < N_FRAMES
    frames, scores = read_chunks(cache)
    assert np.array_equal(frames, np.arange(N_FRAMES))
    assert np.array_equal(scores, uninterrupted)


# ------------------------------------------------------------------ 2. two processes, one cache


def test_two_label_processes_share_cache(uninterrupted, tmp_path):
    cache = new_cache(tmp_path / "cache")
    a, b = start_label(cache), start_label(cache)
    sa, sb = finish(a), finish(b)
    assert sa["frames"] == sb["frames"] == N_FRAMES
    frames, scores = read_chunks(cache)  # also checks that a frame written twice has equal scores
    assert np.array_equal(frames, np.arange(N_FRAMES))
    assert np.array_equal(scores, uninterrupted)
    assert not list(chunk_dir(cache).glob(".tmp-*"))
    # and the cache loads cleanly through noscope itself: a third run labels nothing
    assert finish(start_label(cache))["from_cache"] == N_FRAMES


# ------------------------------------------------------------------ 3. fuzz


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.choice(["flip", "insert", "delete", "truncate"])
        if not b:
            break
        i = rng.randrange(len(b))
        if op == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif op == "insert":
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == "delete":
            del b[i : i + rng.randint(1, 64)]
        else:
            del b[max(1, i):]
    return bytes(b)


def fuzz_video(path: Path) -> None:
    v = open_video(path)
    for _ in v.batches({"s": (32, 32)}, 0, min(v.frame_count, 6)):
        pass


def run_fuzz(cases, budget_s: float = 20.0, min_cases: int = 20) -> dict[str, int]:
    """Run each case (a zero-argument callable, with a label) until the time budget is spent.

    A case may succeed or raise NoscopeError; any other exception is the bug a fuzz pass looks
    for. Returns how many cases ended each way.
    """
    failures, outcomes, done = [], {"ok": 0, "error": 0}, 0
    t0 = time.monotonic()
    for label, case in cases:
        if time.monotonic() - t0 > budget_s:
            break
        try:
            case()
            outcomes["ok"] += 1
        except NoscopeError:
            outcomes["error"] += 1
        except Exception as e:  # noqa: BLE001 - any other type is the bug this test looks for
            failures.append(f"{label}: {type(e).__name__}: {e}")
        done += 1
    assert done >= min_cases, "too few mutants in the time budget"
    assert not failures, failures
    return outcomes


def test_fuzz_video(tmp_path):
    """40 mutants of a real mp4 prefix and a small MJPG .avi: each opens and decodes, or is a NoscopeError."""
    rng = random.Random(1234)
    seeds = [URBAN.read_bytes()[: 200_000], write_video(tmp_path / "seed.avi", moving_square_frames(12)[0]).read_bytes()]

    def case(i):
        p = tmp_path / f"m{i}{'.mp4' if i % 2 == 0 else '.avi'}"
        p.write_bytes(mutate(seeds[i % 2], rng))
        try:
            fuzz_video(p)
        finally:
            p.unlink()

    outcomes = run_fuzz((f"mutant {i}", lambda i=i: case(i)) for i in range(40))
    assert outcomes["error"] > 0 and outcomes["ok"] > 0, outcomes  # both paths exercised


def reseal(root: Path) -> None:
    """Recompute bundle.yaml's checksums, so a mutated file gets past them to the parsers."""
    y = root / "bundle.yaml"
    meta = yaml.safe_load(y.read_text())
    meta["files"] = {rel: B.sha256(root / rel) for rel in meta["files"]}
    y.write_text(yaml.safe_dump(meta, sort_keys=False))


def load_everything(root: Path) -> None:
    from noscope.cheap.heads import read_head_meta

    tb = load_bundle(root)
    for c in tb.candidates:
        if c.kind == "prefix_head":
            read_head_meta(B.inside(root, c.file))
        else:
            load_model(B.inside(root, c.file), device="cpu")


def test_fuzz_bundle(bundle_copy, tmp_path):
    """40 mutants of a trained bundle (bundle.yaml text; heldout.npz and models/*.pt bytes with their
    checksums updated): each loads, or is a NoscopeError."""
    load_everything(bundle_copy)
    rng = random.Random(99)
    targets = ["bundle.yaml", "heldout.npz", *sorted(p.relative_to(bundle_copy).as_posix() for p in (bundle_copy / "models").glob("*.pt"))]

    def case(i):
        root = tmp_path / f"b{i}"
        shutil.copytree(bundle_copy, root)
        rel = targets[0] if i % 3 == 0 else targets[1] if i % 3 == 1 else rng.choice(targets[2:])
        f = root / rel
        f.write_bytes(mutate(f.read_bytes(), rng))
        if rel != "bundle.yaml":
            reseal(root)
        try:
            load_everything(root)
        finally:
            shutil.rmtree(root)

    outcomes = run_fuzz((f"mutant {i}", lambda i=i: case(i)) for i in range(40))
    assert outcomes["error"] > 0, outcomes


# ------------------------------------------------------------------ 1b. kill -9 mid-`train`


def test_train_resumes_after_kill9(trained, tmp_path):
    """Killed once its first candidate is saved in work/, `train` resumes from it; the bundle's
    heldout.npz and models/*.pt are byte-identical to an uninterrupted run's with the same seed."""
    from .conftest import TRAIN

    cache = tmp_path / "cache"
    shutil.copytree(trained["cache"], cache, symlinks=True)  # labels come from the cache
    out = tmp_path / "bus"
    cmd = [sys.executable, "-m", "noscope.cli", "train", str(URBAN), *TRAIN, "--name", str(out)]
    env = dict(os.environ, NOSCOPE_CACHE=str(cache), NOSCOPE_MODELS=str(tmp_path / "models"))
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None and not list((out / "work").glob("*.pt")):
        time.sleep(0.02)
    assert list((out / "work").glob("*.pt")), "no candidate was saved before the run ended or timed out"
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert not (out / "bundle.yaml").exists()

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (out / "work").exists()
    meta = yaml.safe_load((out / "bundle.yaml").read_text())
    assert any(c["train"].get("resumed") for c in meta["candidates"])
    assert (out / "heldout.npz").read_bytes() == (trained["a"] / "heldout.npz").read_bytes()
    for c in meta["candidates"]:
        assert (out / c["file"]).read_bytes() == (trained["a"] / c["file"]).read_bytes(), c["file"]
    load_bundle(out)
