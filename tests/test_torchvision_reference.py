"""torchvision references and the reference registry, with random weights (nothing downloads).

    .venv/bin/python -m pytest tests/test_torchvision_reference.py
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from noscope.errors import NoscopeError
from noscope.reference import REFERENCES, TORCHVISION_ARCHS, load_reference, reference_key
from noscope.reference.base import Detections
from noscope.reference.torchvision_ref import ARCHS, TorchvisionReference, default_weights_path, weights_enum

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"
VIDEO = VIDEOS / "storefront-cctv_people.mp4"
SIZE = (320, 180)  # (w, h)

# Full build + predict for these; the rest (same code paths, slower heads) are only built.
PREDICT_ARCHS = [
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
]
BUILD_ONLY_ARCHS = [a for a in ARCHS if a not in PREDICT_ARCHS]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """Fail loudly if anything tries to fetch weights, and keep torch's cache out of $HOME."""
    from torchvision.models._api import WeightsEnum

    def refuse(*a, **k):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a small shared CPU box two OpenMP threads run these (MobileNet-heavy) models several
    times slower than one; the tests only check behaviour, so use one and put it back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ssd() -> TorchvisionReference:
    """One random-weights SSDLite shared by the tests that only read it."""
    return TorchvisionReference("ssdlite320_mobilenet_v3_large", random_weights=True, device="cpu", conf_threshold=0.05)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Two real frames, 1 s apart, RGB at 320x180."""
    if not VIDEO.is_file():
        pytest.skip(f"test video {VIDEO} not present")
    cap = cv2.VideoCapture(str(VIDEO))
    out = []
    try:
        for i in range(31):
            ok, bgr = cap.read()
            assert ok, f"could not decode frame {i} of {VIDEO}"
            if i in (0, 30):
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                out.append(cv2.resize(rgb, SIZE, interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    return np.stack(out)


def _fast(ref: TorchvisionReference) -> TorchvisionReference:
    """Fewer RPN proposals for the R-CNNs: same code path, a tenth of the box-head work."""
    rpn = getattr(ref.model, "rpn", None)
    if rpn is not None:
        rpn._pre_nms_top_n["testing"] = 100
        rpn._post_nms_top_n["testing"] = 100
    return ref


def _check_output(ref, frames, scores, dets):
    n, c = len(frames), len(ref.class_names)
    assert scores.shape == (n, c) and scores.dtype == np.float32
    assert np.all(scores >= 0) and np.all(scores <= 1)
    assert isinstance(dets, list) and len(dets) == n
    for d in dets:
        assert isinstance(d, Detections)
        k = len(d.scores)
        assert d.boxes.shape == (k, 4) and d.boxes.dtype == np.float32
        assert d.scores.dtype == np.float32 and d.classes.dtype == np.int64 and d.classes.shape == (k,)
        assert np.all(d.scores >= ref.conf_threshold)


def _check_names(ref):
    assert len(ref.class_names) == 91
    assert ref.class_names[0] == "__background__"
    assert ref.class_index("person") == 1 and ref.class_names[1] == "person"
    assert ref.class_index("car") == 3 and ref.class_names[3] == "car"
    assert ref.class_index("motorbike") == ref.class_index("motorcycle")  # darknet spelling
    for bad in ("N/A", "__background__", "unicorn"):
        with pytest.raises(NoscopeError, match="valid: person"):
            ref.class_index(bad)


@pytest.mark.parametrize("arch", PREDICT_ARCHS)
def test_predict_random_weights(arch, frames):
    ref = _fast(TorchvisionReference(arch, random_weights=True, device="cpu", input_size=SIZE, batch_size=2))
    assert ref.name == arch and ref.input_size == SIZE and ref.device.type == "cpu"
    assert ref.weights_path is None and ref.random_weights
    _check_names(ref)
    scores, dets = ref.predict(frames)
    _check_output(ref, frames, scores, dets)
    # batching does not change the answer
    s1, _ = ref.predict(frames[:1])
    np.testing.assert_allclose(s1[0], scores[0], atol=1e-5)
    # no frames, no work
    s0, d0 = ref.predict(frames[:0])
    assert s0.shape == (0, 91) and d0 == []


@pytest.mark.parametrize("arch", BUILD_ONLY_ARCHS)
def test_build_random_weights(arch):
    ref = TorchvisionReference(arch, random_weights=True, device="cpu")
    _check_names(ref)
    assert not ref.model.training
    assert ref.input_size is None


def test_native_size_any_frame_size(frames, ssd):
    """input_size=None: frames of any size; boxes come back in the frame's own pixels."""
    assert ssd.input_size is None
    small = np.ascontiguousarray(frames[:, ::2, ::2])  # 160x90
    scores, dets = ssd.predict(small)
    _check_output(ssd, small, scores, dets)
    # a single frame (H, W, 3) is accepted too
    s, d = ssd.predict(frames[0])
    assert s.shape == (1, 91) and len(d) == 1


def test_input_size_sets_model_resolution():
    ref = TorchvisionReference("fasterrcnn_mobilenet_v3_large_fpn", random_weights=True, device="cpu", input_size=(640, 360))
    assert ref.model.transform.min_size == (360,) and ref.model.transform.max_size == 640
    native = TorchvisionReference("fasterrcnn_mobilenet_v3_large_fpn", random_weights=True, device="cpu")
    assert native.model.transform.min_size == (800,)


def test_score_map_and_filtering():
    """class_scores = max per class over detections down to the floor; Detections >= conf_threshold."""
    ref = TorchvisionReference("ssdlite320_mobilenet_v3_large", random_weights=True, device="cpu", conf_threshold=0.3)

    class Fake(torch.nn.Module):
        def forward(self, images):
            assert all(im.dtype == torch.float32 and im.shape == (3, 4, 6) and float(im.max()) <= 1 for im in images)
            return [
                {
                    "boxes": torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 5, 3], [1, 0, 2, 1]], dtype=torch.float32),
                    "scores": torch.tensor([0.9, 0.2, 0.6, 0.05]),
                    "labels": torch.tensor([3, 3, 1, 1]),
                },
                {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
            ]

    ref.model = Fake()
    scores, dets = ref.predict(np.full((2, 4, 6, 3), 255, np.uint8))
    assert scores.shape == (2, 91)
    assert scores[0, 3] == pytest.approx(0.9) and scores[0, 1] == pytest.approx(0.6)
    assert np.count_nonzero(scores[0]) == 2 and np.count_nonzero(scores[1]) == 0
    np.testing.assert_array_equal(dets[0].classes, [3, 1])
    np.testing.assert_allclose(dets[0].scores, [0.9, 0.6])
    np.testing.assert_allclose(dets[0].boxes, [[0, 0, 2, 2], [0, 0, 5, 3]])
    assert len(dets[1].scores) == 0 and dets[1].boxes.shape == (0, 4)


def test_random_weights_are_reproducible(ssd):
    again = TorchvisionReference("ssdlite320_mobilenet_v3_large", random_weights=True, device="cpu")
    a, b = ssd.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_weights_error(tmp_path):
    expect = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    for arch in ("fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"):
        path = default_weights_path(arch)
        assert path.parent == expect and path.name == Path(weights_enum(arch).url).name
        with pytest.raises(NoscopeError) as e:
            TorchvisionReference(arch)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and weights_enum(arch).url in msg and "--reference-weights" in msg
    with pytest.raises(NoscopeError, match="not found"):
        load_reference("retinanet_resnet50_fpn")
    with pytest.raises(NoscopeError, match=str(tmp_path / "nope.pth")):
        TorchvisionReference("fcos_resnet50_fpn", weights_path=tmp_path / "nope.pth")


def _perturbed_state(ref) -> dict:
    """The random model's weights with a classifier that actually fires, so outputs are non-trivial."""
    g = torch.Generator().manual_seed(1)
    sd = {k: v.clone() for k, v in ref.model.state_dict().items()}
    for k, v in sd.items():  # the last conv of each SSDLite classification block
        if re.fullmatch(r"head\.classification_head\.module_list\.\d+\.1\.(weight|bias)", k):
            sd[k] = torch.randn(v.shape, generator=g) * (3.0 if k.endswith("bias") else 0.05)
    assert any(not torch.equal(sd[k], v) for k, v in ref.model.state_dict().items())
    return sd


def test_weights_path_round_trip(tmp_path, frames, ssd):
    arch = ssd.name
    sd = _perturbed_state(ssd)
    src = copy.deepcopy(ssd)
    src.model.load_state_dict(sd)
    path = tmp_path / "ssd.pth"
    torch.save(sd, path)

    loaded = TorchvisionReference(arch, weights_path=path, device="cpu", conf_threshold=0.05)
    assert loaded.weights_path == path and not loaded.random_weights
    got = loaded.model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    s_src, d_src = src.predict(frames)
    s_new, d_new = loaded.predict(frames)
    assert s_src.max() > 0.05 and sum(len(d.scores) for d in d_src) > 0  # compares something
    assert not np.allclose(s_src, ssd.predict(frames)[0])  # ... that differs from the random init
    np.testing.assert_allclose(s_new, s_src, atol=1e-6)
    for a, b in zip(d_src, d_new):
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    # the same file, found where torchvision's own download would have put it
    cached = default_weights_path(arch)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    from_cache = TorchvisionReference(arch, device="cpu", conf_threshold=0.05)
    assert from_cache.weights_path == cached
    np.testing.assert_allclose(from_cache.predict(frames)[0], s_src, atol=1e-6)


def test_training_checkpoint_format(tmp_path):
    """torchvision's training scripts save {"model": state_dict, "optimizer": ..., "epoch": ...}."""
    from noscope.reference.torchvision_ref import _read_state_dict

    sd = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    torch.save({"model": sd, "epoch": torch.tensor(3)}, tmp_path / "ckpt.pth")
    got = _read_state_dict(tmp_path / "ckpt.pth", "x")
    assert got.keys() == sd.keys()


def test_frozen_backbone_loads_plain_checkpoints(tmp_path):
    """Archs whose trained backbone uses FrozenBatchNorm2d accept checkpoints saved from a plain
    BatchNorm2d model (extra num_batches_tracked entries), and get torchvision's eps."""
    import torchvision

    plain = torchvision.models.get_model("retinanet_resnet50_fpn", weights=None, weights_backbone=None)
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    ref = TorchvisionReference("retinanet_resnet50_fpn", weights_path=path, device="cpu")
    bn1 = ref.model.backbone.body.bn1
    assert type(bn1).__name__ == "FrozenBatchNorm2d" and bn1.eps == 0.0  # as torchvision's COCO_V1 load does
    assert torch.equal(bn1.running_var, plain.backbone.body.bn1.running_var)


def test_bad_weights_files(tmp_path, ssd):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(NoscopeError, match="cannot read torchvision weights"):
        TorchvisionReference("ssdlite320_mobilenet_v3_large", weights_path=junk)
    other = tmp_path / "ssd.pth"
    torch.save(ssd.model.state_dict(), other)
    with pytest.raises(NoscopeError, match="do not fit fasterrcnn_mobilenet_v3_large_fpn"):
        TorchvisionReference("fasterrcnn_mobilenet_v3_large_fpn", weights_path=other)


def test_unknown_arch():
    with pytest.raises(NoscopeError, match="fcos_resnet50_fpn"):
        TorchvisionReference("yolo9000", random_weights=True)


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_names():
    assert list(REFERENCES)[:2] == ["yolov3-tiny", "darknet"]
    assert set(TORCHVISION_ARCHS) == set(ARCHS) and set(ARCHS) <= set(REFERENCES)


def test_load_reference_unknown_lists_valid():
    with pytest.raises(NoscopeError) as e:
        load_reference("nope")
    msg = str(e.value)
    assert "'nope'" in msg and "\n" not in msg
    for name in REFERENCES:
        assert name in msg


def test_load_reference_torchvision():
    ref = load_reference("ssdlite320_mobilenet_v3_large", device="auto", random_weights=True, batch_size=3, input_size="320x320")
    assert isinstance(ref, TorchvisionReference)
    assert ref.batch_size == 3 and ref.input_size == (320, 320)
    assert reference_key(ref) == "ssdlite320_mobilenet_v3_large-320x320-random"
    ref = load_reference("ssdlite320_mobilenet_v3_large", device="cpu", random_weights=True)
    assert ref.batch_size == 4 and reference_key(ref) == "ssdlite320_mobilenet_v3_large-native-random"
    with pytest.raises(NoscopeError, match="only apply to darknet"):
        load_reference("ssdlite320_mobilenet_v3_large", cfg="x.cfg", random_weights=True)
    with pytest.raises(NoscopeError, match="WIDTHxHEIGHT"):
        load_reference("ssdlite320_mobilenet_v3_large", random_weights=True, input_size="big")


def test_load_reference_darknet_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("NOSCOPE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(NoscopeError, match="--reference-cfg"):
        load_reference("darknet")
    cfg, weights = tmp_path / "yolov4.cfg", tmp_path / "yolov4.weights"
    with pytest.raises(NoscopeError, match=str(cfg)):
        load_reference("darknet", cfg=cfg, weights=weights)
    cfg.write_text("[net]\n")
    with pytest.raises(NoscopeError, match=str(weights)):
        load_reference("darknet", cfg=cfg, weights=weights)
    weights.write_bytes(b"\0" * 20)
    with pytest.raises(NoscopeError, match="coco.names.*--reference-names"):
        load_reference("darknet", cfg=cfg, weights=weights)
    with pytest.raises(NoscopeError, match="noscope weights"):
        load_reference("yolov3-tiny")
    with pytest.raises(NoscopeError, match="yolov3-tiny.cfg"):
        load_reference("yolov3-tiny", weights=weights)
    with pytest.raises(NoscopeError, match="only available for torchvision"):
        load_reference("yolov3-tiny", random_weights=True)


def test_reference_key_tracks_weights_file(tmp_path, ssd):
    arch = ssd.name
    path = tmp_path / "w.pth"
    torch.save(ssd.model.state_dict(), path)
    ref = TorchvisionReference(arch, weights_path=path, device="cpu", input_size=(320, 320))
    k1 = reference_key(ref)
    assert k1.startswith(f"{arch}-320x320-") and len(k1.rsplit("-", 1)[1]) == 8 and k1 == reference_key(ref)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new file in the same place
    assert reference_key(ref) != k1
    # a darknet-style reference: the cfg is part of the identity
    cfg = tmp_path / "a.cfg"
    cfg.write_text("[net]\n")
    dk = SimpleNamespace(name="yolov4", input_size=(608, 608), source_files={"weights": path, "cfg": cfg})
    k2 = reference_key(dk)
    cfg.write_text("[net]\nwidth=416\n")
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert k2.startswith("yolov4-608x608-") and reference_key(dk) != k2


def test_reference_key_stock_yolov3_tiny():
    from noscope.reference import weights as W

    try:
        cfg, weights, names = W.yolov3_tiny_files()
    except NoscopeError:
        pytest.skip("yolov3-tiny not in the cache")
    if not W._marker_matches(W.weights_dir()):
        pytest.skip("cached yolov3-tiny weights not verified")
    stub = SimpleNamespace(name="yolov3-tiny", input_size=(416, 416), source_files={"weights": weights, "cfg": cfg, "names": names})
    assert reference_key(stub) == "yolov3-tiny-416x416-" + W.WEIGHTS_MD5[:8]
