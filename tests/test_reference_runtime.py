"""The exported runtimes (noscope.reference.runtime) give PyTorch's answers, on real frames.

Each installed runtime runs yolov3-tiny on frames of the storefront clip decoded at 416x416 as
label_frames decodes them; its class scores must be within 1e-3 of PyTorch's and the frames
positive at min score 0.5 the same. A runtime that is not installed is skipped, with the reason.
Also: generic darknet cfgs export too, the export is cached and repaired, and the errors and
auto's fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from noscope.errors import NoscopeError
from noscope.reference import load_reference, reference_key, reference_runtime
from noscope.reference import runtime as R
from noscope.reference.darknet import DarknetNet, DarknetReference, parse_cfg
from noscope.video import open_video

from .conftest import ROOT, SHARED, STOREFRONT
from .test_darknet import V4_CFG, _random_weights

EXPORTED = ("onnxruntime", "openvino")
HIGHWAY = SHARED / "highway-cctv_cars-trucks.avi"
SCORE_TOL = 1e-3  # observed: <= 3e-6 (the network's float rounding; decoding is shared)
MIN_SCORE = 0.5


def skip_unless_installed(name: str) -> None:
    why = R.problem(name, torch.device("cpu"))
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def frames():
    """40 frames from the first third of the storefront clip (people walk by there), 416x416 RGB."""
    video = open_video(STOREFRONT)
    wanted = np.linspace(0, video.frame_count // 3, 40).astype(np.int64)
    return np.concatenate([b.frames["det"] for b in video.batches({"det": (416, 416)}, frames=wanted, batch_size=16)])


@pytest.fixture(scope="module")
def torch_answers(frames):
    ref = load_reference("yolov3-tiny", device="cpu", runtime="torch")
    assert ref.runtime == "torch" and reference_runtime(ref) == "cpu-fp32"
    return ref.predict(frames)


@pytest.mark.parametrize("name", EXPORTED)
def test_runtime_gives_torchs_answers(name, frames, torch_answers):
    skip_unless_installed(name)
    ref = load_reference("yolov3-tiny", device="cpu", runtime=name)
    # labels cached apart, and apart per export (the start of its checksum)
    assert ref.runtime == name and reference_runtime(ref) == f"cpu-fp32-{name}-{ref.runner.export}"
    assert len(ref.runner.export) == R.DIGEST_CHARS
    scores, dets = ref.predict(frames)
    want, want_dets = torch_answers
    diff = np.abs(scores - want).max()
    print(f"\n{name}: max |class score - torch| {diff:.1e} over {len(frames)} frames")
    assert diff <= SCORE_TOL
    assert (want >= MIN_SCORE).sum() >= 5, "the frames should show people"
    np.testing.assert_array_equal(scores >= MIN_SCORE, want >= MIN_SCORE)
    for got, exp in zip(dets, want_dets):  # the confident boxes too, within a pixel
        a, b = got.scores >= MIN_SCORE, exp.scores >= MIN_SCORE
        assert a.sum() == b.sum()
        assert np.abs(got.boxes[a] - exp.boxes[b]).max(initial=0) < 1.0


@pytest.mark.parametrize("name", EXPORTED)
def test_generic_darknet_cfg_exports(name, tmp_path, frames):
    """A yolov4-tiny-style cfg (route groups, shortcut, mish/swish, SPP maxpools, scale_x_y) runs the same."""
    skip_unless_installed(name)
    files = _v4_files(tmp_path)
    small = np.stack([np.ascontiguousarray(f[::4, ::4][:96, :96]) for f in frames[:8]])
    want = load_reference("darknet", **files, device="cpu", runtime="torch").raw_predictions(small)
    ref = load_reference("darknet", **files, device="cpu", runtime=name)
    assert ref.runtime == name
    got = ref.raw_predictions(small)
    assert np.abs(got[..., :2] - want[..., :2]).max() < 1e-4  # centres (fractions of the frame)
    assert (np.abs(got[..., 2:4] - want[..., 2:4]) / want[..., 2:4]).max() < 1e-3  # random weights: huge boxes
    assert np.abs(got[..., 4:] - want[..., 4:]).max() < SCORE_TOL


def _v4_files(tmp_path):
    cfg, weights, names = tmp_path / "v4ish.cfg", tmp_path / "v4ish.weights", tmp_path / "two.names"
    cfg.write_text(V4_CFG)
    names.write_text("a\nb\n")
    _random_weights(DarknetNet(parse_cfg(cfg)), weights)
    return dict(cfg=cfg, weights=weights, names=names)


def test_export_is_cached_atomic_and_repaired(tmp_path, monkeypatch):
    skip_unless_installed("onnxruntime")
    monkeypatch.setenv("NOSCOPE_CACHE", str(tmp_path / "own-cache"))  # not the shared exports
    files = _v4_files(tmp_path)
    ref = load_reference("darknet", **files, device="cpu", runtime="onnxruntime")
    path = R.export_path(reference_key(ref), "fp32")
    assert path.is_file() and path.parent == tmp_path / "own-cache" / "exported"
    assert not list(path.parent.glob(".tmp-*")), "no half-written file is left behind"
    stamp = path.stat().st_mtime_ns
    load_reference("darknet", **files, device="cpu", runtime="onnxruntime")
    assert path.stat().st_mtime_ns == stamp, "the cached export is reused"
    path.write_bytes(b"not an onnx model")  # damaged: exported again, and it runs
    again = load_reference("darknet", **files, device="cpu", runtime="onnxruntime")
    assert again.runtime == "onnxruntime" and path.stat().st_size > 1000


def test_a_damaged_export_never_answers(tmp_path, monkeypatch):
    """4 KB overwritten in the middle of the exported file (it still loads, with wrong weights): the
    next `noscope label` exports it again with one warning line and answers as with the intact file;
    labels made by another export are kept apart (the label cache's key names the export)."""
    skip_unless_installed("onnxruntime")
    cache = tmp_path / "cache"
    cache.mkdir()
    real = Path(os.environ.get("NOSCOPE_CACHE", Path.home() / ".cache" / "noscope")).resolve()
    (cache / "weights").symlink_to(real / "weights", target_is_directory=True)
    if (real / "exported").is_dir():  # a copy of our own: this test damages it
        shutil.copytree(real / "exported", cache / "exported", ignore=shutil.ignore_patterns("*.lock", ".tmp-*"))
    env = dict(os.environ, NOSCOPE_CACHE=str(cache), PYTHONPATH=str(ROOT))

    def label():
        r = subprocess.run([sys.executable, "-m", "noscope.cli", "label", str(HIGHWAY), "--object", "car", "--end", "32f",
                            "--json", "--set", "reference.runtime=onnxruntime"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        shutil.rmtree(cache / "labels", ignore_errors=True)  # the next run asks the reference again
        return json.loads(r.stdout), [line for line in r.stderr.splitlines() if line.startswith("noscope:")]

    intact, said = label()
    assert intact["positives"] >= 20 and intact["runtime"].startswith("cpu-fp32-onnxruntime-"), intact
    path = cache / "exported" / R.export_path(intact["reference"], "fp32").name  # ours, not the shared one
    record = json.loads(R.record_path(path).read_text())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    damaged = hashlib.sha256(bytes(data)).hexdigest()
    again, said = label()
    # An export is not byte-for-byte reproducible across processes, so the export made again may
    # carry another checksum (and name its labels apart): the answers must be the intact ones.
    assert again["positives"] == intact["positives"] and again["runtime"].startswith("cpu-fp32-onnxruntime-")
    assert len(said) == 1 and "does not match the checksum" in said[0] and "exporting it again" in said[0], said
    remade = hashlib.sha256(path.read_bytes()).hexdigest()
    assert remade != damaged and remade == json.loads(R.record_path(path).read_text())["sha256"], "made again"
    assert record["sha256"] != damaged
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # a file with no record of its own is not trusted either
    R.record_path(path).unlink()
    assert label()[0]["positives"] == intact["positives"]


def test_missing_runtime_is_one_line_with_the_fix(monkeypatch):
    for name in EXPORTED:
        monkeypatch.setitem(R.NEEDS, name, ("noscope_no_such_module",))
    with pytest.raises(NoscopeError, match=r"needs noscope_no_such_module.*pip install 'noscope\[onnx\]'"):
        load_reference("yolov3-tiny", device="cpu", runtime="onnxruntime")
    with pytest.raises(NoscopeError, match=r"pip install 'noscope\[openvino\]'"):
        load_reference("yolov3-tiny", device="cpu", runtime="openvino")
    ref = load_reference("yolov3-tiny", device="cpu", runtime="auto")  # auto: PyTorch, silently
    assert ref.runtime == "torch" and reference_runtime(ref) == "cpu-fp32"


def test_export_failure(monkeypatch, tmp_path):
    skip_unless_installed("onnxruntime")
    monkeypatch.setitem(R.NEEDS, "openvino", ("noscope_no_such_module",))
    monkeypatch.setenv("NOSCOPE_CACHE", str(tmp_path / "own-cache"))

    def broken(module, input_size):
        raise NoscopeError("exporting the reference to ONNX failed (boom); set reference.runtime=torch")

    monkeypatch.setattr(R, "_export_bytes", broken)
    files = _v4_files(tmp_path)
    with pytest.raises(NoscopeError, match="reference.runtime=torch"):
        load_reference("darknet", **files, device="cpu", runtime="onnxruntime")
    assert load_reference("darknet", **files, device="cpu", runtime="auto").runtime == "torch"


def test_runtime_names_and_devices():
    with pytest.raises(NoscopeError, match="unknown reference runtime 'tensorrt'; valid: auto, torch"):
        load_reference("yolov3-tiny", device="cpu", runtime="tensorrt")
    with pytest.raises(NoscopeError, match="only available for darknet references"):
        load_reference("ssdlite320_mobilenet_v3_large", device="cpu", random_weights=True, runtime="onnxruntime")
    tv = load_reference("ssdlite320_mobilenet_v3_large", device="cpu", random_weights=True, runtime="auto")
    assert reference_runtime(tv) == "cpu-fp32"
    if R.problem("openvino", torch.device("cpu")) is None:
        assert "CPU only" in R.problem("openvino", torch.device("cuda"))
    assert R.AUTO_ORDER.get("cuda", ()) == ()  # CUDA: PyTorch fp16 unless a runtime is named


def test_direct_construction_runs_in_torch(tmp_path):
    files = _v4_files(tmp_path)
    ref = DarknetReference(files["cfg"], files["weights"], files["names"], device="cpu")
    assert ref.runtime == "torch" and ref.net.conv_layers()[0].conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp16_export_runs(tmp_path):
    """The fp16 graph CUDA's ONNX Runtime provider gets (no GPU here: ONNX Runtime's CPU provider runs it)."""
    skip_unless_installed("onnxruntime")
    files = _v4_files(tmp_path)
    small = np.random.default_rng(0).integers(0, 255, (4, 96, 96, 3), dtype=np.uint8)
    want = DarknetReference(files["cfg"], files["weights"], files["names"], device="cpu").raw_predictions(small)
    ref = DarknetReference(files["cfg"], files["weights"], files["names"], device="cpu", half=True)
    R.attach(ref, "onnxruntime", "v4ish-fp16-test")
    assert reference_runtime(ref) == f"cpu-fp16-onnxruntime-{ref.runner.export}"
    got = ref.raw_predictions(small)
    assert np.abs(got[..., 4:] - want[..., 4:]).max() < 2e-2  # fp16 rounding of the logits
