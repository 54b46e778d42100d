"""Segment-parallel decoding gives exactly the batches one process gives, or runs as one process."""

import numpy as np
import pytest

from noscope import decode_pool
from noscope.decode_pool import keyframes, plan_segments
from noscope.errors import UsageError
from noscope.video import decode_workers, open_video

from .conftest import SHARED, STOREFRONT, URBAN


def _decode(video, workers, **kw):
    decoding = decode_pool.batches(video, {"a": (50, 50), "b": (32, 24)}, batch_size=128, workers=workers, **kw)
    got = list(decoding)
    return got, decoding.stopped_at


def _same(one, many):
    (b1, stop1), (b2, stop2) = one, many
    assert [len(b) for b in b1] == [len(b) for b in b2]  # the same batch boundaries
    for x, y in zip(b1, b2):
        assert np.array_equal(x.indices, y.indices) and np.array_equal(x.times, y.times)
        for k in x.frames:
            assert np.array_equal(x.frames[k], y.frames[k]), k
    assert stop1 == stop2


@pytest.fixture
def parallel_always(monkeypatch):
    """Split even the short shared clips, and count how many segments went to workers."""
    monkeypatch.setattr(decode_pool, "MIN_PARALLEL_FRAMES", 0)
    seen = []
    real = decode_pool.plan_segments
    monkeypatch.setattr(decode_pool, "plan_segments", lambda *a: seen.append(real(*a)) or seen[-1])
    return seen


@pytest.mark.parametrize("stride", [1, 3])
def test_workers_give_the_same_batches(parallel_always, stride):
    v = open_video(STOREFRONT, "pyav")
    _same(_decode(v, 1, stride=stride), _decode(v, 2, stride=stride))
    assert len(parallel_always[-1]) >= 4  # it really was split, at keyframes after the first segment
    keys = set(keyframes(v)[0].tolist())
    assert all(frames[0] in keys or frames[0] - 1 in keys or frames[0] - 2 in keys for frames, _ in parallel_always[-1][1:])


def test_workers_on_a_cut_file_stop_where_one_process_stops(parallel_always, tmp_path):
    half = tmp_path / "half.mp4"
    half.write_bytes(URBAN.read_bytes()[: URBAN.stat().st_size // 2])
    v = open_video(half, "pyav")
    one, many = _decode(v, 1), _decode(v, 2)
    _same(one, many)
    assert 500 < one[1] < 700 and len(parallel_always[-1]) >= 2


def test_untrusted_timestamps_decode_in_one_process():
    """Packed B-frame placeholders (AVI) and variable frame rate: counting and timestamps disagree."""
    assert keyframes(open_video(SHARED / "highway-cctv_cars-trucks.avi", "pyav")) is None
    assert keyframes(open_video(SHARED / "overhead-residential-street_cars.mp4", "pyav")) is None
    nums, pts = keyframes(open_video(STOREFRONT, "pyav"))
    assert nums[:4].tolist() == [0, 160, 320, 480] and len(nums) == len(pts) == 12


def test_plan_segments_cover_wanted_in_order():
    wanted = np.arange(5, 1000, 2)
    keys = np.arange(0, 1000, 100)
    segs = plan_segments(wanted, keys, keys * 10, 120, 400)
    assert np.array_equal(np.concatenate([f for f, _ in segs]), wanted)
    assert segs[0][1] is None  # the first starts as one process would
    for frames, seek in segs[1:]:
        assert frames[0] - 1 in keys and seek == (frames[0] - 1) * 10  # starts on a keyframe (the last before it)
    assert all(len(f) >= 120 for f, _ in segs[:-1]) and all(len(f) <= 400 for f, _ in segs)
    # sparse: many keyframes between two wanted frames, the seek goes to the last of them
    segs = plan_segments(np.array([0, 1, 950]), keys, keys, 1, 10)
    assert [f.tolist() for f, _ in segs] == [[0, 1], [950]] and segs[1][1] == 900


def test_decode_workers_setting():
    assert decode_workers(3) == 3
    assert decode_workers(0, cores=2) == 1  # measured no gain on 2 cores
    assert decode_workers(0, cores=16) == 8
    with pytest.raises(UsageError):
        decode_workers(-1)
