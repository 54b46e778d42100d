"""Decode once, query many: the frame cache returns exactly what decoding returns, and the
decoding thread keeps its order, its errors and its bounds."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from noscope import framecache
from noscope.video import Video, open_video, prefetched

from .conftest import STOREFRONT


def decoded(video, sizes, **kw):
    out = {k: [] for k in sizes}
    idx = []
    for b in video.batches(sizes, **kw):
        idx.append(b.indices)
        for k in sizes:
            out[k].append(b.frames[k])
    return np.concatenate(idx), {k: np.concatenate(v) for k, v in out.items()}


def cached(video, sizes, **kw):
    return cached_pass(video, sizes, **kw)[:2]


def cached_pass(video, sizes, **kw):
    """cached's (frame numbers, name -> frames), and the pass with what it found."""
    out = {k: [] for k in sizes}
    idx = []
    decoding = framecache.cached_batches(video, sizes, **kw)
    for b in decoding:
        idx.append(b.indices)
        for k in sizes:
            out[k].append(b.frames[k])
    return np.concatenate(idx), {k: np.concatenate(v) for k, v in out.items()}, decoding


def no_decoding(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("decoded although the cache holds every frame")

    monkeypatch.setattr(Video, "batches", refuse)


def test_second_pass_reads_the_cache_and_equals_decoding(square_video, monkeypatch):
    path, frames, _ = square_video
    v = open_video(path)
    sizes = {"model": (50, 50), "diff": (50, 50), "small": (24, 16)}
    want_idx, want = decoded(v, sizes, start=5, end=110, stride=3, batch_size=16)
    idx1, first = cached(v, sizes, start=5, end=110, stride=3, batch_size=16)  # decodes and fills
    assert np.array_equal(idx1, want_idx)
    no_decoding(monkeypatch)
    for kw in (dict(start=5, end=110, stride=3), dict(start=8, end=50, stride=6), dict(frames=[11, 14, 101])):
        ref_idx = np.arange(kw.get("start", 0), kw.get("end", 0), kw.get("stride", 1)) if "frames" not in kw else np.array(kw["frames"])
        idx2, second, served = cached_pass(v, sizes, batch_size=7, **kw)
        assert np.array_equal(idx2, ref_idx) and served.stopped_at is None and served.decoded == 0
        pos = np.searchsorted(want_idx, ref_idx)
        for k in sizes:
            assert np.array_equal(second[k], want[k][pos]), k


def test_holds_all_says_when_nothing_is_left_to_decode(square_video):
    """A query whose frames are all cached gives torch every thread: holds_all must be exact."""
    path, _, _ = square_video
    v = open_video(path)
    sizes = {"model": (50, 50), "diff": (50, 50)}
    assert not framecache.holds_all(v, sizes, 5, 110, 3)
    cached(v, sizes, start=5, end=110, stride=3, batch_size=16)
    assert framecache.holds_all(v, sizes, 5, 110, 3)
    assert framecache.holds_all(v, sizes, 8, 50, 6)  # a subset
    assert not framecache.holds_all(v, sizes, 5, 110, 1)  # frames in between were never decoded
    assert not framecache.holds_all(v, {"model": (64, 64)}, 5, 110, 3)  # another size


def test_frames_the_cache_lacks_are_decoded(square_video, monkeypatch):
    path, _, _ = square_video
    v = open_video(path)
    sizes = {"m": (50, 50)}
    cached(v, sizes, start=0, end=60, stride=2)
    calls = []
    real = Video.batches

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(Video, "batches", counting)
    idx, got = cached(v, sizes, start=0, end=60, stride=1)  # odd frames are missing
    assert calls and np.array_equal(idx, np.arange(60))
    assert np.array_equal(got["m"], decoded(v, sizes, start=0, end=60)[1]["m"])


def test_whole_file_pass_remembers_where_decoding_ends(square_video, monkeypatch):
    path, frames, _ = square_video
    v = open_video(path)
    v.frame_count += 4  # containers often claim a few frames more than decode
    idx, _, decoding = cached_pass(v, {"m": (50, 50)})
    assert len(idx) == len(frames) and decoding.stopped_at == len(frames)
    assert decoding.decoded == decoding.converted == len(frames)
    no_decoding(monkeypatch)
    idx, _, served = cached_pass(v, {"m": (50, 50)})
    assert len(idx) == len(frames) and served.stopped_at == len(frames)
    assert served.decoded == served.converted == 0


def test_stopping_early_keeps_only_whole_frames(square_video):
    path, _, _ = square_video
    v = open_video(path)
    it = framecache.cached_batches(v, {"m": (50, 50)}, 0, 100, batch_size=10)
    first = next(it)
    it.close()  # the consumer stops (Ctrl-C, error): the bitmap names what was written
    have = np.load(framecache.cache_root(v) / "50x50.have")
    assert have[:10].all() and not have[10:].any()
    s = framecache._Store(framecache.cache_root(v), (50, 50), v.frame_count)
    assert np.array_equal(s.read(np.arange(10)), first.frames["m"])


def test_unwritable_cache_still_answers(square_video, tmp_path, monkeypatch, caplog):
    path, _, _ = square_video
    v = open_video(path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("NOSCOPE_CACHE", str(blocker))
    idx, got = cached(v, {"m": (50, 50)}, start=0, end=30)
    assert np.array_equal(got["m"], decoded(v, {"m": (50, 50)}, start=0, end=30)[1]["m"])
    assert "frame cache" in caplog.text


def test_real_clip_through_the_cache(monkeypatch):
    v = open_video(STOREFRONT)
    sizes = {"m": (50, 50)}
    want_idx, want = decoded(v, sizes, start=100, end=400, stride=2, batch_size=64)
    cached(v, sizes, start=100, end=400, stride=2, batch_size=64)
    no_decoding(monkeypatch)
    idx, got = cached(v, sizes, start=100, end=400, stride=2, batch_size=64)
    assert np.array_equal(idx, want_idx) and np.array_equal(got["m"], want["m"])


def test_prefetch_keeps_order_and_bounds():
    made = []

    def source():
        for i in range(50):
            made.append(i)
            yield i

    it = prefetched(source(), 3)
    assert next(it) == 0
    threading.Event().wait(0.2)
    assert len(made) <= 5  # one taken, three queued, one waiting to be queued
    assert list(it) == list(range(1, 50))


def test_prefetch_raises_the_producers_error_and_closes_the_source():
    closed = threading.Event()

    def failing():
        yield 1
        raise ValueError("bad frame")

    assert next(prefetched(failing(), 2)) == 1
    with pytest.raises(ValueError, match="bad frame"):
        list(prefetched(failing(), 2))

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = prefetched(endless(), 2)
    assert next(it) == 0
    it.close()
    assert closed.wait(2)
