"""Every answer belongs to the right frame, on every video a camera writes (issue 13):
variable frame rate (numbers and times), rotated video, a damaged middle, and cache keys.

Generated videos encode their frame index in the picture (a 3x3 grid of bright/dark blocks),
so a test can read which picture a frame number gave. Nothing large is written to git: the
files are made here with PyAV.
"""

from __future__ import annotations

import csv
import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from noscope import decode_pool
from noscope import video as video_mod
from noscope.bundle import TrainedBundle
from noscope.bundle_manifest import DiffRecord, LabelRule, Manifest
from noscope.cascade import PassOptions, run_cascade
from noscope.framecache import cached_batches
from noscope.labels import label_frames, store_dir
from noscope.plans import ObjectPlan, Plan
from noscope.results import warn_if_missing
from noscope.reference import reference_key, reference_runtime
from noscope.reference.base import Detections, Reference
from noscope.report import intervals, write_result
from noscope.video import Video, open_video, stop_is_truncation

from .conftest import SHARED, STOREFRONT, default_settings

W, H = 64, 48
STEPS = [1, 1, 3, 2, 1, 4, 1]  # frame durations in 1/30 s: a variable frame rate
OVERHEAD = SHARED / "overhead-residential-street_cars.mp4"  # variable frame rate: 754 packets, 734 frames


def picture(i: int) -> np.ndarray:
    """Frame i: its index in binary as a 3x3 grid of 16 px blocks, and a grey bar."""
    img = np.full((H, W, 3), 60, np.uint8)
    for k in range(9):
        if i >> k & 1:
            r, c = divmod(k, 3)
            img[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = 230
    img[:, 48:] = (i * 7) % 200 + 20
    return img


def index_of(img: np.ndarray) -> int:
    """The frame index a decoded picture (W x H) shows."""
    bits = [img[r * 16 + 4 : (r + 1) * 16 - 4, c * 16 + 4 : (c + 1) * 16 - 4].mean() > 145 for r in range(3) for c in range(3)]
    return sum(int(b) << k for k, b in enumerate(bits))


def write_generated(path: Path, n: int = 300, steps=STEPS, rotation: int | None = None, gop: int = 12) -> np.ndarray:
    """An H.264 file of `picture(0..n-1)` with frame durations `steps` (1/30 s units); returns
    each frame's presentation time in seconds."""
    pts = np.r_[0, np.cumsum(np.resize(steps, n))[:-1]]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.time_base = Fraction(1, 30)
        s.codec_context.gop_size = gop
        s.options = {"bf": "2"}  # B-frames: decode order differs from display order
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            f.pts, f.time_base = int(pts[i]), Fraction(1, 30)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return pts / 30


def damaged_copy(src: Path, dst: Path, at: float = 0.45, share: float = 0.1, seed: int = 1) -> Path:
    """`src` with random bytes over `share` of it from `at` on: a damaged middle."""
    data = bytearray(src.read_bytes())
    a = int(len(data) * at)
    b = a + int(len(data) * share)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


class FrameReader(Reference):
    """A test reference that answers from the pixels: the frame index a generated picture shows
    (score = index / 1000), or the mean brightness for real footage."""

    def __init__(self, size=(W, H), reads_index=True, device="cpu", precision="fp32"):
        self.name, self.class_names, self.input_size = "frame-reader", ["car"], size
        self.device, self.batch_size, self.reads_index, self._precision = torch.device(device), 16, reads_index, precision

    @property
    def precision(self) -> str:
        return self._precision

    def predict(self, frames):
        if self.reads_index:
            s = np.array([index_of(f) / 1000 for f in frames], np.float32)
        else:
            s = frames.reshape(len(frames), -1).mean(axis=1).astype(np.float32) / 255
        return s[:, None], [Detections.empty() for _ in frames]


def decode_all(video: Video, sizes, **kw):
    return decode_pass(video, sizes, **kw)[:3]


def decode_pass(video: Video, sizes, **kw):
    """decode_all's (frame numbers, times, name -> frames), and the pass with what it found."""
    decoding = decode_pool.batches(video, sizes, batch_size=1000, **kw)
    got = list(decoding)
    idx = np.concatenate([b.indices for b in got])
    frames = {k: np.concatenate([b.frames[k] for b in got]) for k in sizes}
    return idx, np.concatenate([b.times for b in got]), frames, decoding


def refuse_decoding(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("decoded although the cache holds every frame")

    monkeypatch.setattr(Video, "batches", refuse)


def one_object_bundle(root: Path, min_score: float = 0.5) -> TrainedBundle:
    """A bundle whose plan needs only a "prev" difference detector (that never says unchanged) and
    the reference: the cascade then decodes every processed frame and asks the reference about it."""
    meta = Manifest("car", class_index=0, labels=LabelRule(min_score, 1),
                    diffs=(DiffRecord.from_dict(dict(name="d", kind="prev", mode="global", grid=1, size=16)),))
    return TrainedBundle(root, meta, None, {})


def plan(skip: int) -> Plan:
    car = ObjectPlan(skip=skip, diff="d", diff_threshold=-1.0, model=None, c_low=None, c_high=None, expected_cost=0.0,
                     heldout_fpr=0.0, heldout_fnr=0.0)
    return Plan({"car": car}, 0.0, {})


def run_car(v, tb, p, ref, start, end):
    return run_cascade(v, tb, p, ref, reference_key(ref), (start, end), PassOptions(default_settings().decode, quiet=True))["car"]


# ------------------------------------------------------------------------- 1: frame numbers


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_vfr_frame_number_means_one_picture_on_every_path(tmp_path, monkeypatch, backend):
    """Generated variable-frame-rate file: frame N shows picture N sequentially, after what would
    be a seek, from a mid-file start, in worker segments, from the frame cache and the label cache."""
    path = tmp_path / "vfr.mp4"
    write_generated(path)
    monkeypatch.setattr(video_mod, "_SEEK_GAP", 20)  # these requests would seek in a constant-rate file
    monkeypatch.setattr(decode_pool, "MIN_PARALLEL_FRAMES", 0)
    v = open_video(path, backend)
    assert v.counted
    idx, _, seq = decode_all(v, {"s": (W, H)})
    assert idx.tolist() == list(range(300)) and [index_of(f) for f in seq["s"]] == idx.tolist()
    sparse = np.array([5, 100, 101, 250, 299])
    for kw in (dict(frames=sparse), dict(start=150), dict(workers=2, frames=sparse)):
        got_idx, _, got = decode_all(v, {"s": (W, H)}, **kw)
        assert np.array_equal(got["s"], seq["s"][got_idx]), kw
    list(cached_batches(v, {"s": (W, H)}, frames=sparse))  # fills the frame cache
    refuse_decoding(monkeypatch)
    (b,) = list(cached_batches(open_video(path, backend), {"s": (W, H)}, frames=sparse, batch_size=10))
    assert np.array_equal(b.indices, sparse) and np.array_equal(b.frames["s"], seq["s"][sparse])
    monkeypatch.undo()
    ref = FrameReader()
    first = label_frames(v, ref, reference_key(ref), sparse, quiet=True)
    again = label_frames(v, ref, reference_key(ref), sparse, quiet=True)
    assert again.from_cache == len(sparse)
    for lab in (first, again):
        assert np.round(lab.scores[:, 0] * 1000).astype(int).tolist() == sparse.tolist()  # the label of picture N


def test_overhead_clip_numbers_frames_alike_on_every_path(monkeypatch):
    """The shared variable-frame-rate clip: 734 frames decode of 754 packets. The frame called 400
    from a mid-file start was sequential frame 397 before; now every path gives the same picture,
    and a pass from 300f ends at the last real frame (733)."""
    monkeypatch.setattr(decode_pool, "MIN_PARALLEL_FRAMES", 0)
    v = open_video(OVERHEAD, "pyav")
    assert v.counted
    idx, times, seq, decoding = decode_pass(v, {"s": (32, 18)})
    assert len(idx) == 734 and decoding.stopped_at == 734 and not stop_is_truncation(decoding)
    sparse = np.array([3, 397, 400, 700, 733])
    for kw in (dict(frames=sparse), dict(workers=2, frames=sparse)):
        got_idx, _, got = decode_all(v, {"s": (32, 18)}, **kw)
        assert np.array_equal(got_idx, sparse) and np.array_equal(got["s"], seq["s"][sparse]), kw
    from300 = decode_all(v, {"s": (32, 18)}, start=300)
    assert from300[0].tolist() == list(range(300, 734)) and np.array_equal(from300[2]["s"], seq["s"][300:])
    ref = FrameReader(size=(32, 18), reads_index=False)
    lab300 = label_frames(v, ref, reference_key(ref), np.arange(300, v.frame_count), quiet=True)  # `label --start 300f`
    assert lab300.frames.tolist() == list(range(300, 734))
    assert np.array_equal(lab300.scores[:, 0], ref.predict(seq["s"][300:])[0][:, 0])
    list(cached_batches(v, {"s": (32, 18)}, frames=sparse))
    lab = label_frames(v, ref, reference_key(ref), sparse, quiet=True)
    refuse_decoding(monkeypatch)
    (b,) = list(cached_batches(open_video(OVERHEAD, "pyav"), {"s": (32, 18)}, frames=sparse))
    assert np.array_equal(b.frames["s"], seq["s"][sparse]) and np.allclose(b.times, times[sparse])
    again = label_frames(v, ref, reference_key(ref), sparse, quiet=True)  # from the cache
    want = ref.predict(seq["s"][sparse])[0][:, 0]
    assert again.from_cache == len(sparse)
    assert np.array_equal(lab.scores[:, 0], want) and np.array_equal(again.scores[:, 0], want)


def test_overhead_clip_opencv_never_seeks():
    """OpenCV numbers the same clip the same way: a sparse request equals its sequential pass."""
    v = open_video(OVERHEAD, "opencv")
    idx, _, seq = decode_all(v, {"s": (32, 18)})
    sparse = np.array([397, 400, 733])
    got_idx, _, got, decoding = decode_pass(v, {"s": (32, 18)}, frames=sparse)
    assert len(idx) == 734 and np.array_equal(got_idx, sparse) and np.array_equal(got["s"], seq["s"][sparse])
    assert (decoding.decoded, decoding.converted) == (734, 3)  # every frame up to the last one asked for, 3 converted


# ---------------------------------------------------------------------------------- 2: times


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_vfr_times_are_presentation_times(tmp_path, monkeypatch, ext):
    """time_s and intervals.json carry each frame's presentation time, on every decode path, for
    skipped frames too; the mkv (whose container claims ~2x the frames) gets no "stops decoding"."""
    path = tmp_path / f"vfr.{ext}"
    truth = write_generated(path)
    for backend in ("pyav", "opencv"):
        v = open_video(path, backend)
        idx, times, _, decoding = decode_pass(v, {"s": (16, 16)})
        assert len(idx) == 300 and np.abs(times - truth).max() < 1e-3, backend
        assert not stop_is_truncation(decoding)
    if ext == "mkv":
        assert v.frame_count > 400 and decoding.stopped_at == 300  # the container's guess, and the real end
    v = open_video(path, "pyav")
    ref = FrameReader()
    tb = one_object_bundle(tmp_path, min_score=0.1)  # the reader says index / 1000: yes from frame 100 on
    result = run_car(v, tb, plan(3), ref, 0, v.frame_count)
    assert result.frames.tolist() == list(range(300)) and np.abs(result.times - truth).max() < 1e-3
    assert np.array_equal(result.labels, np.arange(300) // 3 * 3 >= 100)  # skipped frames copy their processed frame
    write_result(tmp_path / "out", result, v, {}, 0.1, plot=False)
    rows = list(csv.DictReader((tmp_path / "out" / "frames.csv").open()))
    assert np.abs(np.array([float(r["time_s"]) for r in rows]) - truth).max() < 1e-3
    (iv,) = json.loads((tmp_path / "out" / "intervals.json").read_text())
    assert (iv["start_frame"], iv["end_frame"]) == (102, 300)
    assert abs(iv["start_s"] - truth[102]) < 1e-3 and abs(iv["end_s"] - (truth[299] + 1 / v.fps)) < 1e-3
    again = run_car(open_video(path, "pyav"), tb, plan(3), ref, 0, v.frame_count)  # a query decodes (once) again
    assert np.array_equal(again.frames, result.frames) and np.array_equal(again.times, result.times)
    list(cached_batches(open_video(path, "pyav"), {"s": (16, 16)}))  # small RGB frames, as a label pass keeps them
    v = open_video(path, "pyav")  # a fresh one: those frames and their times come from the frame cache
    refuse_decoding(monkeypatch)
    got = list(cached_batches(v, {"s": (16, 16)}))
    assert np.abs(np.concatenate([b.times for b in got]) - truth).max() < 1e-3 and sum(len(b.indices) for b in got) == 300


def test_intervals_use_recorded_times():
    frames = np.arange(10, 20)
    times = np.array([0, 0.1, 0.4, 0.5, 0.6, 1.0, 1.1, 1.2, 1.9, 2.0])
    labels = np.array([0, 1, 1, 0, 0, 1, 1, 1, 1, 1], bool)
    assert intervals(frames, labels, 10.0, times) == [
        dict(start_frame=11, end_frame=13, start_s=0.1, end_s=0.5),
        dict(start_frame=15, end_frame=20, start_s=1.0, end_s=2.1),  # the last frame: one average frame more
    ]
    holed = np.r_[np.arange(10, 15), np.arange(18, 23)]  # frames 15-17 lost: a run does not cross them
    runs = intervals(holed, np.ones(10, bool), 10.0, holed / 10)
    assert [(i["start_frame"], i["end_frame"]) for i in runs] == [(10, 15), (18, 23)]


# ------------------------------------------------------------------------------- 3: rotation


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_video_is_upright_in_both_decoders(tmp_path, monkeypatch, rotation):
    """A display-matrix rotation (a phone held sideways): PyAV and OpenCV give the same upright
    picture, through the frame cache too, so a bundle sees what it trained on whichever decodes."""
    path = tmp_path / "rotated.mp4"
    write_generated(path, n=24, steps=[1], rotation=rotation)
    turns = rotation // 90 % 4  # counter-clockwise quarter turns
    upright = [np.rot90(picture(i), turns) for i in range(24)]
    got = {}
    for backend in ("pyav", "opencv"):
        v = open_video(path, backend)
        size = (v.width, v.height)
        assert size == ((H, W) if turns % 2 else (W, H))  # OpenCV reports the upright size
        list(cached_batches(v, {"s": size}))
        got[backend] = decode_all(v, {"s": size})[2]["s"]
        with monkeypatch.context() as m:
            refuse_decoding(m)
            (b,) = list(cached_batches(open_video(path, backend), {"s": size}, batch_size=100))
        assert np.array_equal(b.frames["s"], got[backend])
        for i in (0, 5, 23):  # the picture itself, turned upright (H.264 is lossy: compare coarsely)
            assert np.abs(got[backend][i].astype(int) - upright[i]).mean() < 6, (backend, i)
    assert np.abs(got["pyav"].astype(int) - got["opencv"]).mean() < 2


# ------------------------------------------------------------------------------- 4: damage


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """The storefront clip with random bytes over 10% of it from 45% on: frames 1280-1599 are
    lost (one packet after keyframe 1280 to keyframe 1600); decoding used to stop at 1280."""
    return damaged_copy(STOREFRONT, tmp_path_factory.mktemp("damaged") / "damaged.mp4")


def test_damaged_middle_is_skipped_alike_on_every_path(damaged, monkeypatch):
    """The frames after the damage are decoded; the lost ones are named in the pass's `missing`; a
    seeked pass, worker segments and the frame cache give the same pictures under the same numbers."""
    monkeypatch.setattr(decode_pool, "MIN_PARALLEL_FRAMES", 0)
    v = open_video(damaged, "pyav")
    assert not v.counted  # timestamps number its frames: a lost frame leaves a gap
    idx, _, seq, decoding = decode_pass(v, {"s": (32, 18)}, start=1100, end=1800)
    lost = np.arange(1280, 1600)
    assert decoding.missing == [(1280, 1600)] and decoding.stopped_at is None
    assert np.array_equal(idx, np.setdiff1d(np.arange(1100, 1800), lost))
    sparse = np.array([1270, 1279, 1285, 1600, 1601, 1790])  # 1285 is lost
    for kw in (dict(frames=sparse), dict(workers=2, start=1100, end=1800)):
        got_idx, _, got, decoding = decode_pass(v, {"s": (32, 18)}, **kw)
        assert np.array_equal(got["s"], seq["s"][np.searchsorted(idx, got_idx)]), kw
        assert np.isin(got_idx, lost).sum() == 0 and (1280, 1600) in decoding.missing, kw
        assert decoding.decoded >= decoding.converted == len(got_idx) > 0, kw  # workers' counts add up
    list(cached_batches(v, {"s": (32, 18)}, frames=sparse))
    refuse_decoding(monkeypatch)
    served = cached_batches(open_video(damaged, "pyav"), {"s": (32, 18)}, frames=sparse)
    (b,) = list(served)
    assert b.indices.tolist() == [1270, 1279, 1600, 1601, 1790] and served.missing == [(1280, 1600)]
    assert served.decoded == served.converted == 0  # the cache served it: nothing decoded
    assert np.array_equal(b.frames["s"], seq["s"][np.searchsorted(idx, b.indices)])


def test_damaged_middle_answers_the_rest_and_says_what_is_missing(damaged, tmp_path, caplog):
    """The cascade answers the frames on both sides of the damage, reports [1280, 1600) as
    missing in summary.json's missing_frames and in one warning line."""
    v = open_video(damaged, "pyav")
    ref = FrameReader(size=(32, 18), reads_index=False)
    result = run_car(v, one_object_bundle(tmp_path), plan(5), ref, 1250, 1650)
    assert result.missing == [[1280, 1600]]
    assert np.array_equal(result.frames, np.r_[np.arange(1250, 1280), np.arange(1600, 1650)])
    assert set(result.reference_scores) == set(range(1250, 1280, 5)) | set(range(1600, 1650, 5))
    summary: dict = {}
    with caplog.at_level(logging.WARNING, logger="noscope"):
        warn_if_missing(result, summary)
    assert summary["missing_frames"] == [[1280, 1600]]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "320 frames have no answer (frames 1280-1599)" in line


def test_damaged_counted_file_marks_where_pictures_were_lost(tmp_path):
    """A variable-frame-rate file numbers frames by counting: a lost stretch has no numbers to
    give, so it is marked as an empty range where it happened, the same on every pass."""
    path = tmp_path / "vfr.mp4"
    write_generated(path, n=300, gop=30)
    bad = damaged_copy(path, tmp_path / "bad.mp4", at=0.5, share=0.04)
    runs = []
    for _ in range(2):
        v = open_video(bad, "pyav")
        idx, _, got, decoding = decode_pass(v, {"s": (W, H)})
        runs.append((idx, got["s"], list(decoding.missing)))
    (idx, frames, missing), (idx2, frames2, missing2) = runs
    assert np.array_equal(idx, idx2) and np.array_equal(frames, frames2) and missing == missing2
    assert len(idx) < 300 and missing and all(a == b for a, b in missing)
    shown = [index_of(f) for f in frames]
    a = missing[0][0]
    assert shown[:a] == list(range(a)) and shown[a] > a  # pictures after the loss keep their order, numbered on


# ------------------------------------------------------------------------------ 10: cache keys


def test_label_cache_keys_decoder_device_and_precision(tmp_path):
    """Labels made from OpenCV's frames are not reused under PyAV, nor fp16 CUDA labels for an fp32
    CPU run; the reference's identity (what a bundle is checked against) stays the same."""
    path = tmp_path / "vfr.mp4"
    write_generated(path, n=12, steps=[1])
    cpu, gpu = FrameReader(), FrameReader(precision="fp16")
    gpu.device = torch.device("cuda")  # not run: only its key is looked at
    assert reference_key(cpu) == reference_key(gpu)
    assert (reference_runtime(cpu), reference_runtime(gpu)) == ("cpu-fp32", "cuda-fp16")
    pyav, opencv = open_video(path, "pyav"), open_video(path, "opencv")
    dirs = {store_dir(pyav, reference_key(cpu), cpu), store_dir(opencv, reference_key(cpu), cpu),
            store_dir(pyav, reference_key(cpu), gpu)}
    assert len(dirs) == 3 and len({d.parent for d in dirs}) == 1
    frames = np.arange(12)
    assert label_frames(pyav, cpu, reference_key(cpu), frames, quiet=True).from_cache == 0
    assert label_frames(pyav, cpu, reference_key(cpu), frames, quiet=True).from_cache == 12
    assert label_frames(opencv, cpu, reference_key(cpu), frames, quiet=True).from_cache == 0
    half = FrameReader(precision="fp16")  # another arithmetic on the same device: labelled again
    assert label_frames(pyav, half, reference_key(half), frames, quiet=True).from_cache == 0
