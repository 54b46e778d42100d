"""Shared fixtures: real clips from ../shared/videos, generated videos, and an isolated cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "videos"
STOREFRONT = SHARED / "storefront-cctv_people.mp4"
URBAN = SHARED / "urban-road-cctv_cars-buses-motorbikes.mp4"


def default_settings(*sets: str):
    """The typed settings of the default configuration (plus `sets`, as --set would give them)."""
    from noscope.config import load_config
    from noscope.settings import Settings

    return Settings.from_config(load_config(None, list(sets)))


def share_detector_files(cache: Path) -> Path:
    """Link the real cache's detector weights and exported models (noscope.reference.runtime) into
    the test cache `cache`: fetched and exported once per machine, not once per test."""
    real = Path(os.environ.get("NOSCOPE_CACHE", Path.home() / ".cache" / "noscope")).resolve()
    if (real / "weights").is_dir():
        (cache / "weights").symlink_to(real / "weights", target_is_directory=True)
    try:
        (real / "exported").mkdir(parents=True, exist_ok=True)
        (cache / "exported").symlink_to(real / "exported", target_is_directory=True)
    except OSError:  # a read-only real cache: each test cache exports its own
        pass
    return cache


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own label cache and model folder; detector weights and exports stay shared."""
    root = share_detector_files(tmp_path_factory.mktemp("cache"))
    monkeypatch.setenv("NOSCOPE_CACHE", str(root))
    monkeypatch.setenv("NOSCOPE_MODELS", str(root / "models"))
    return root


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """Write RGB uint8 frames (N, H, W, 3) to an .avi (MJPG, decodes everywhere)."""
    h, w = frames.shape[1:3]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def moving_square_frames(n: int = 120, h: int = 72, w: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured static scene; a bright square crosses it in some frames. Returns (frames, present)."""
    rng = np.random.default_rng(seed)
    # smooth texture (coarse noise scaled up) so lossy codecs keep it
    bg = cv2.resize(rng.integers(40, 120, (h // 8, w // 8, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    frames = np.repeat(bg[None], n, axis=0).copy()
    present = np.zeros(n, bool)
    for i in range(n):
        if (i // 20) % 2 == 1:
            present[i] = True
            x = 5 + (i % 20) * 3
            frames[i, 20:40, x : x + 20] = (250, 240, 30)
    return frames, present


def luma_frames(video, start: int, end: int, size: int = 50) -> np.ndarray:
    """Frames [start, end) of an opened video as a query's difference detectors see them: the
    decoder's luma plane at size x size."""
    from noscope.video import Luma

    return np.concatenate([b.frames["l"] for b in video.batches({"l": Luma(size, size)}, start, end)])


@pytest.fixture
def square_video(tmp_path):
    frames, present = moving_square_frames()
    return write_video(tmp_path / "square.avi", frames), frames, present


# A small bus bundle trained twice with one seed (test_reliability, test_resilience).
FAST = ["--set", "train.grid=small", "--set", "train.epochs=2", "--set", "train.block=50"]
# Two runs of 50 frames (300-349: no bus, 450-499: a bus), blocks of 25: 100 frames to label. Split
# interleaved: a forward split would hold out the later run, the only one with a bus, and these
# bundles exist to test files, resuming and determinism, which need trained models.
TRAIN = ["--object", "bus", "--start", "300f", "--end", "500f", "--seed", "7", *FAST, "--set", "train.block=25",
         "--set", "train.max_frames=100", "--set", "train.run_length=50", "--set", "train.split=interleaved", "-q"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Two bundles (bus, 100 frames of the urban clip) trained with the same seed, sharing one label cache (labelled once)."""
    from click.testing import CliRunner

    from noscope.cli import cli

    root = tmp_path_factory.mktemp("reliability")
    cache = root / "cache"
    cache.mkdir()
    share_detector_files(cache)
    with mock.patch.dict(os.environ, NOSCOPE_CACHE=str(cache), NOSCOPE_MODELS=str(root / "models")):
        for name in ("bus-a", "bus-b"):
            r = CliRunner().invoke(cli, ["train", str(URBAN), *TRAIN, "--name", str(root / name)], catch_exceptions=False)
            assert r.exit_code == 0, r.output
    return dict(cache=cache, a=root / "bus-a", b=root / "bus-b")


@pytest.fixture
def bundle_copy(trained, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(trained["a"], dst)
    return dst


@pytest.fixture
def shared_cache(trained, monkeypatch):
    """Use the session's label cache, so queries on the urban clip reuse its labels."""
    monkeypatch.setenv("NOSCOPE_CACHE", str(trained["cache"]))
    return trained["cache"]


# The drift scene of test_drift as a camera (tests/test_update.py, tests/test_edges.py): its test
# reference is colour-blind and fast, so a query is seconds. Trained on the first third.
CAMERA_TRAIN = ["--set", "train.grid=small", "--set", "train.epochs=3", "--set", "train.block=40", "--set",
                "train.augment=0", "--set", "decode.frame_cache=false"]


@pytest.fixture(scope="session")
def trained_camera(tmp_path_factory):
    """The drift scene as a video and a bundle trained on its first third (once for the session)."""
    from click.testing import CliRunner

    import noscope.reference
    from noscope.cli import cli

    from .test_drift import N, SaturatedSquares, scene

    root = tmp_path_factory.mktemp("camera")
    frames, present = scene()  # its pictures repeat every 48 frames: a little noise makes each frame its own, as a camera's are
    noise = np.random.default_rng(1).integers(-4, 5, frames.shape)
    frames = np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    video = write_video(root / "cam.avi", frames)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(noscope.reference, "load_reference", lambda *a, **k: SaturatedSquares())
        mp.setenv("NOSCOPE_CACHE", str(share_detector_files(tmp_path_factory.mktemp("cache"))))
        mp.setenv("NOSCOPE_MODELS", str(root / "models"))
        args = ["train", str(video), "--object", "square", "--end", f"{N // 3}f", "--name", str(root / "cam"), "-q"]
        r = CliRunner().invoke(cli, args + CAMERA_TRAIN, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return video, root / "cam", present


@pytest.fixture
def camera(trained_camera, tmp_path, monkeypatch):
    """The scene, its test reference in place, and a copy of the trained bundle of this test's own."""
    import noscope.reference

    from .test_drift import SaturatedSquares

    video, trained, present = trained_camera
    monkeypatch.setattr(noscope.reference, "load_reference", lambda *a, **k: SaturatedSquares())
    bundle = tmp_path / "models" / "cam"
    shutil.copytree(trained, bundle)
    return video, bundle, present


@pytest.fixture
def drift_video(tmp_path, monkeypatch):
    """The drift scene of test_drift as a video, its colour-blind test reference in place: (path, present)."""
    import noscope.reference

    from .test_drift import SaturatedSquares, scene

    frames, present = scene()
    path = write_video(tmp_path / "drift.avi", frames)
    monkeypatch.setattr(noscope.reference, "load_reference", lambda *a, **k: SaturatedSquares())
    return path, present
