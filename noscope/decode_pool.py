"""Decode one video in several processes at once, each taking keyframe-aligned segments.

    decoding = batches(video, {"model": (50, 50)}, stride=2, batch_size=256, workers=4)
    for batch in decoding:
        ...   # the same batches, in the same order, as video.batches (one process)
    decoding.stopped_at, decoding.missing, decoding.decoded   # what the workers found, added up

One PyAV process converts frames on one core: FFmpeg's own threads decode, but the scaling
and the copy out to numpy run in the calling thread, and for 360p video they are most of the
work. So the wanted frames are cut into segments that start on keyframes (found by reading
packets, no decoding), each segment is decoded by a worker process from an exact seek to its
keyframe (nothing before it is decoded), and the results are put back in order and re-cut
into the batches one process would have made.

Memory stays bounded: at most `workers + 1` segments are in flight, and a segment holds at
most SEGMENT_BYTES of frames. Workers are spawned (not forked: the parent has torch's and the
decode thread's threads) and live for one `batches` call.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from .video import Batch, DecodePass, Keep, Size, Video, decoder_name, keeps_pictures, keyframes, prefetched, spec_bytes

__all__ = ["keyframes", "parallel_batches", "plan_segments"]  # keyframes: the scan lives in noscope.video

log = logging.getLogger(__name__)

SEGMENT_BYTES = 32 << 20  # most frame bytes one segment carries back to the parent
SEGMENTS_PER_WORKER = 4  # aim: this many segments per worker, so none sits idle at the end
# Fewer wanted frames than this decode in one process: starting workers (~0.5 s) would cost
# more than they save.
MIN_PARALLEL_FRAMES = 2000


def plan_segments(wanted: np.ndarray, key_nums: np.ndarray, key_pts: np.ndarray, min_frames: int,
                  max_frames: int) -> list[tuple[np.ndarray, int | None]]:
    """Cut the sorted `wanted` frame numbers into (frames, seek timestamp) segments.

    Every segment but the first begins at a keyframe (its timestamp is the seek target; the
    first one is decoded as a single process would, from the start or a seek of its own) and
    holds at least `min_frames` wanted frames where the keyframes allow, at most `max_frames`
    where they allow (a segment cannot end between two keyframes).
    """
    segments: list[tuple[np.ndarray, int | None]] = []
    usable = key_nums > wanted[0]
    # where each keyframe would cut `wanted` (index of the first wanted frame at or after it);
    # of several keyframes between two wanted frames, the last one (least to decode)
    cut_at, pts = np.searchsorted(wanted, key_nums[usable]), key_pts[usable]
    keep = np.r_[cut_at[1:] != cut_at[:-1], True] if len(cut_at) else np.zeros(0, bool)
    cut_at, pts = cut_at[keep].tolist(), pts[keep].tolist()
    begin, seek = 0, None  # index into wanted where the current segment starts; its seek
    for j, (at, ts) in enumerate(zip(cut_at, pts)):
        if at >= len(wanted):
            break
        next_at = cut_at[j + 1] if j + 1 < len(cut_at) else len(wanted)
        if at - begin >= min_frames or (at > begin and next_at - begin > max_frames):
            segments.append((wanted[begin:at], seek))
            begin, seek = at, ts
    segments.append((wanted[begin:], seek))
    return segments


def batches(video: Video, sizes: dict[str, Size], start: int = 0, end: int | None = None, stride: int = 1,
            batch_size: int = 64, frames: np.ndarray | None = None, prefetch: int = 2, workers: int = 1,
            keep: Keep | None = None) -> DecodePass:
    """`video.batches`, decoded by `workers` processes where that can work (PyAV, a file whose
    frames can be numbered by timestamp); otherwise by one, exactly as video.batches. The pass
    adds up what each process found. Frames to `keep` are kept by one process only (several leave
    `keep.sink` empty: the caller decodes them later, as it would have)."""

    def run(p: DecodePass) -> Iterator[Batch]:
        # counted: one process from its start; kept pictures cannot cross processes
        if workers <= 1 or decoder_name(video.backend) != "pyav" or video.counted or keeps_pictures(sizes):
            yield from p.through(video.batches(sizes, start, end, stride, batch_size, frames, prefetch, keep))
            return
        wanted = video.wanted(start, end, stride, frames)
        if len(wanted):
            decode = parallel_batches(p, wanted, sizes, batch_size, workers)
            yield from (prefetched(decode, prefetch) if prefetch > 0 else decode)

    return DecodePass(video, run)


def parallel_batches(p: DecodePass, wanted: np.ndarray, sizes: dict[str, Size], batch_size: int,
                     workers: int) -> Iterator[Batch]:
    """`video.batches` for the sorted `wanted` frames of `p.video`, decoded by `workers`
    processes; what each segment's worker found is added to the pass `p`."""
    video = p.video
    frame_bytes = sum(spec_bytes(spec) for spec in sizes.values()) or 1
    max_frames = max(batch_size, SEGMENT_BYTES // frame_bytes)
    min_frames = int(np.clip(len(wanted) // (workers * SEGMENTS_PER_WORKER), batch_size, max_frames))
    keys = video.seek_points() if len(wanted) >= MIN_PARALLEL_FRAMES else None
    segments = plan_segments(wanted, *keys, min_frames, max_frames) if keys is not None else []
    # one process: a counted file, a short request, keyframes far apart, or no processes to be had
    pool = _start_pool(video, min(workers, len(segments)), keys) if len(segments) >= 2 else None
    if pool is None:
        yield from p.decode_pyav(wanted, sizes, batch_size)
        return
    try:
        todo = iter(segments)
        pending: deque = deque()
        for frames, seek in todo:  # prime: every worker busy, one more segment waiting
            pending.append(pool.apply_async(_decode_segment, (frames, sizes, seek)))
            if len(pending) > workers:
                break
        rebatch = _Rebatcher(batch_size)
        while pending:
            indices, times, arrays, found = pending.popleft().get()
            nxt = next(todo, None)
            if nxt is not None and found.stopped_at is None:
                pending.append(pool.apply_async(_decode_segment, (nxt[0], sizes, nxt[1])))
            p.add(found)
            yield from rebatch.add(indices, times, arrays)
            if found.stopped_at is not None:  # the file ended inside this segment: as one process would
                break
        yield from rebatch.rest()
    finally:
        pool.terminate()
        pool.join()


def _start_pool(video: Video, n: int, keys):
    """A pool of `n` spawned workers with the video open, or None where processes can't be had
    (inside a daemonic worker of another pool, or the system refuses): then one process decodes."""
    if multiprocessing.current_process().daemon:
        return None
    try:
        return multiprocessing.get_context("spawn").Pool(
            n, initializer=_start_worker,
            initargs=(str(video.path), video.fps, video.width, video.height, video.frame_count, video.time_origin, keys))
    except OSError as e:
        log.warning("decoding in one process: cannot start decode workers (%s)", e)
        return None


class _Rebatcher:
    """Re-cuts segments into batches of exactly `batch_size` (the last one may be shorter), so
    what follows sees the same batches as from one process."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.indices, self.times = np.zeros(0, np.int64), np.zeros(0)
        self.arrays: dict[str, np.ndarray] | None = None

    def add(self, indices: np.ndarray, times: np.ndarray, arrays: dict[str, np.ndarray]) -> Iterator[Batch]:
        if not len(indices):
            return
        if self.arrays is None or not len(self.indices):
            self.indices, self.times, self.arrays = indices, times, arrays
        else:
            self.indices = np.concatenate([self.indices, indices])
            self.times = np.concatenate([self.times, times])
            self.arrays = {k: np.concatenate([self.arrays[k], arrays[k]]) for k in arrays}
        n = len(self.indices) // self.batch_size * self.batch_size
        for s in range(0, n, self.batch_size):
            yield self._batch(slice(s, s + self.batch_size))
        self.indices, self.times = self.indices[n:], self.times[n:]
        self.arrays = {k: a[n:] for k, a in self.arrays.items()}

    def rest(self) -> Iterator[Batch]:
        if len(self.indices):
            yield self._batch(slice(0, len(self.indices)))

    def _batch(self, s: slice) -> Batch:
        return Batch(self.indices[s], self.times[s], {k: np.ascontiguousarray(a[s]) for k, a in self.arrays.items()})


# --------------------------------------------------------------------------- in the worker

_video: Video | None = None


def _start_worker(path: str, fps: float, width: int, height: int, frame_count: int, t0: float | None, keys) -> None:
    global _video
    _video = Video(Path(path), fps, width, height, frame_count)
    _video.backend = "pyav"
    _video.time_origin, _video.keyframe_scan = t0, keys  # the parent's scan: number frames exactly as it does


def _decode_segment(frames: np.ndarray, sizes: dict[str, Size], seek_pts: int | None):
    """One segment, as one batch: (frame numbers, times, name -> frames, what its decoding found)."""
    segment = DecodePass(_video)
    got = list(segment.decode_pyav(frames, sizes, len(frames), seek_pts))
    if not got:
        return (np.zeros(0, np.int64), np.zeros(0), {k: np.zeros((0, h, w, 3), np.uint8) for k, (w, h) in sizes.items()},
                segment.findings())
    return got[0].indices, got[0].times, got[0].frames, segment.findings()
