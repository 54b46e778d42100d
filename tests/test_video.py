import numpy as np
import pytest

from noscope.errors import NoscopeError, UsageError
from noscope.video import content_hash, open_video, parse_position, stop_is_truncation

from .conftest import STOREFRONT, URBAN


def test_positions():
    assert parse_position("12.5", 10) == 125
    assert parse_position("12.5s", 10) == 125
    assert parse_position("1:02", 10) == 620
    assert parse_position("1:00:00", 1) == 3600
    assert parse_position("300f", 29.97) == 300
    assert parse_position(None, 10) is None
    with pytest.raises(UsageError):
        parse_position("soon", 10)


@pytest.mark.parametrize("spec", ["1:99", "1:60", "1:60:00", "0:00:75.5"])
def test_clock_fields_after_a_colon_stay_below_60(spec):
    with pytest.raises(UsageError, match="below 60"):
        parse_position(spec, 10)
    assert parse_position("1:59.9", 10) == 1199 and parse_position("90:00", 1) == 5400  # leading field: any size


def test_generated_video_indices_and_sizes(square_video):
    path, frames, _ = square_video
    v = open_video(path)
    assert (v.width, v.height, v.frame_count) == (96, 72, 120)
    got = list(v.batches({"a": (32, 24), "b": (16, 16)}, 10, 50, stride=3, batch_size=4))
    idx = np.concatenate([b.indices for b in got])
    assert idx.tolist() == list(range(10, 50, 3))
    assert got[0].frames["a"].shape == (4, 24, 32, 3) and got[0].frames["b"].dtype == np.uint8
    t = np.concatenate([b.times for b in got])
    assert np.allclose(t, idx / 25.0)
    # the content survives decoding (MJPG is lossy: compare coarsely), and colour order is RGB
    full = np.concatenate([b.frames["a"] for b in v.batches({"a": (96, 72)}, 20, 21)])
    assert np.abs(full[0].astype(int) - frames[20].astype(int)).mean() < 8
    assert full[0, 30, 8:22, 0].mean() > 200 and full[0, 30, 8:22, 2].mean() < 90  # yellow square in RGB


def test_sparse_frames_match_sequential_on_real_clip():
    v = open_video(STOREFRONT)
    wanted = np.array([3, 4, 700, 1500, 1501])
    sparse = np.concatenate([b.frames["s"] for b in v.batches({"s": (64, 64)}, frames=wanted)])
    seq = {}
    for b in v.batches({"s": (64, 64)}, 0, 1502):
        for i, f in zip(b.indices.tolist(), b.frames["s"]):
            if i in wanted:
                seq[i] = f
    assert np.array_equal(sparse, np.stack([seq[i] for i in wanted.tolist()]))


def test_segment_parsing_on_video(square_video):
    v = open_video(square_video[0])
    assert v.segment() == (0, 120)
    assert v.segment("50%", None) == (60, 120)
    assert v.segment("1s", "80f") == (25, 80)
    with pytest.raises(UsageError):
        v.segment("4s", "1s")


@pytest.mark.parametrize("make", ["missing", "dir", "empty", "text"])
def test_bad_inputs_raise_one_line(tmp_path, make):
    p = tmp_path / "x.mp4"
    if make == "dir":
        p.mkdir()
    elif make == "empty":
        p.write_bytes(b"")
    elif make == "text":
        p.write_text("this is not a video\n" * 100)
    with pytest.raises(NoscopeError) as e:
        open_video(p)
    assert "\n" not in str(e.value)


def test_truncated_file_yields_decoded_frames(tmp_path, square_video):
    path = square_video[0]
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    v = open_video(cut)
    decoding = v.batches({"s": (16, 16)})
    n = sum(len(b) for b in decoding)
    assert 20 < n < 120
    assert stop_is_truncation(decoding) or v.frame_count == n


def test_content_hash_changes_with_content(tmp_path, square_video):
    path = square_video[0]
    other = tmp_path / "other.avi"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    other.write_bytes(bytes(data))
    assert content_hash(path) == content_hash(path)
    assert content_hash(path) != content_hash(other)


def test_video_with_zero_frames(tmp_path):
    """A container written with no frames at all is refused with one line."""
    import cv2

    p = tmp_path / "none.avi"
    vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    vw.release()
    assert p.stat().st_size > 0
    with pytest.raises(NoscopeError) as e:
        open_video(p)
    assert "\n" not in str(e.value)


def test_pyav_and_opencv_number_frames_alike():
    """Both decoders give frame N as frame N (after seeks too); pixels differ by the resampling only."""
    wanted = np.array([0, 5, 640, 645, 1190 - 2])
    got = {}
    for backend in ("pyav", "opencv"):
        v = open_video(URBAN, backend)
        got[backend] = np.concatenate([b.frames["s"] for b in v.batches({"s": (64, 36)}, frames=wanted)]).astype(int)
    d = np.abs(got["pyav"][:, None] - got["opencv"][None]).mean(axis=(2, 3, 4))  # (pyav frame, opencv frame)
    assert (np.argmin(d, axis=1) == np.arange(len(wanted))).all(), d.round(2)
    assert (np.diag(d) < 3).all(), d.round(2)
