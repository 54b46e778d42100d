"""Decode one video in several processes at once, each taking keyframe-aligned segments.

    for batch in video.batches({"model": (50, 50)}, stride=2, batch_size=256, workers=4):
        ...   # the same batches, in the same order, as with workers=1

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

from .video import Batch, Size, Video, _av

log = logging.getLogger(__name__)

SEGMENT_BYTES = 32 << 20  # most frame bytes one segment carries back to the parent
SEGMENTS_PER_WORKER = 4  # aim: this many segments per worker, so none sits idle at the end
# Fewer wanted frames than this decode in one process: starting workers (~0.5 s) would cost
# more than they save.
MIN_PARALLEL_FRAMES = 2000
_REORDER_DEPTH = 16  # most frames a decoder holds back for reordering (H.264's limit)
_PLACEHOLDER_BYTES = 8  # packets this small carry no picture (the smallest real ones on our clips: 18 bytes)


def keyframes(video: Video) -> tuple[np.ndarray, np.ndarray] | None:
    """Frame numbers and timestamps (stream time base) of the video's keyframes, sorted; None
    when the file's timestamps cannot be trusted to number frames.

    Reads packets only. Numbers follow `Video._decode_pyav` after a seek: seconds since frame
    0 times fps. One process numbers frames by counting them, so splitting is only safe when
    both ways agree: every packet has a timestamp, sorted they are exactly one frame apart
    (not variable frame rate), and no packet is a placeholder that decodes to no frame
    (AVI's packed B-frames: 1-7 bytes). Otherwise the caller decodes in one process.
    """
    t0 = video._first_time()
    nums, pts, every = [], [], []
    with _av.open(str(video.path)) as c:
        stream = c.streams.video[0]
        tb = float(stream.time_base)
        for packet in _packets(c, stream):
            if packet.size == 0:  # the demuxer's flush packet at the end
                continue
            if packet.pts is None or packet.size < _PLACEHOLDER_BYTES:
                return None
            every.append(packet.pts)
            if packet.is_keyframe:
                nums.append(int(round((packet.pts * tb - t0) * video.fps)))
                pts.append(int(packet.pts))
    # The last few may leave gaps where a cut file lost frames that come before them in display
    # order; those lie in the last segment, which then stops as one process would.
    steps = np.diff(np.sort(np.asarray(every, np.int64))[:-_REORDER_DEPTH]) * tb * video.fps
    if len(steps) and np.abs(steps - 1.0).max() > 0.01:
        return None
    order = np.argsort(nums, kind="stable")
    return np.asarray(nums, np.int64)[order], np.asarray(pts, np.int64)[order]


def _packets(container, stream):
    """The stream's packets up to the end, or up to damage (what follows is one segment, whose
    decoding stops where one process would stop)."""
    try:
        yield from container.demux(stream)
    except _av.error.FFmpegError:
        return


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


def parallel_batches(video: Video, wanted: np.ndarray, sizes: dict[str, Size], batch_size: int,
                     workers: int) -> Iterator[Batch]:
    """`video.batches` for the sorted `wanted` frames, decoded by `workers` processes."""
    frame_bytes = sum(w * h * 3 for w, h in sizes.values()) or 1
    max_frames = max(batch_size, SEGMENT_BYTES // frame_bytes)
    min_frames = int(np.clip(len(wanted) // (workers * SEGMENTS_PER_WORKER), batch_size, max_frames))
    keys = keyframes(video) if len(wanted) >= MIN_PARALLEL_FRAMES else None
    segments = plan_segments(wanted, *keys, min_frames, max_frames) if keys is not None else []
    # one process: untrusted timestamps, a short request, keyframes far apart, or no processes to be had
    pool = _start_pool(video, min(workers, len(segments))) if len(segments) >= 2 else None
    if pool is None:
        yield from video._decode_pyav(wanted, sizes, batch_size)
        return
    try:
        todo = iter(segments)
        pending: deque = deque()
        for frames, seek in todo:  # prime: every worker busy, one more segment waiting
            pending.append(pool.apply_async(_decode_segment, (frames, sizes, seek)))
            if len(pending) > workers:
                break
        rebatch = _Rebatcher(video.fps, batch_size)
        while pending:
            indices, arrays, stopped_at = pending.popleft().get()
            nxt = next(todo, None)
            if nxt is not None and stopped_at is None:
                pending.append(pool.apply_async(_decode_segment, (nxt[0], sizes, nxt[1])))
            yield from rebatch.add(indices, arrays)
            if stopped_at is not None:  # the file ended or broke inside this segment: as one process would
                video.stopped_at = stopped_at
                break
        yield from rebatch.rest()
    finally:
        pool.terminate()
        pool.join()


def _start_pool(video: Video, n: int):
    """A pool of `n` spawned workers with the video open, or None where processes can't be had
    (inside a daemonic worker of another pool, or the system refuses): then one process decodes."""
    if multiprocessing.current_process().daemon:
        return None
    try:
        return multiprocessing.get_context("spawn").Pool(
            n, initializer=_start_worker,
            initargs=(str(video.path), video.fps, video.width, video.height, video.frame_count, video._t0))
    except OSError as e:
        log.warning("decoding in one process: cannot start decode workers (%s)", e)
        return None


class _Rebatcher:
    """Re-cuts segments into batches of exactly `batch_size` (the last one may be shorter), so
    what follows sees the same batches as from one process."""

    def __init__(self, fps: float, batch_size: int):
        self.fps, self.batch_size = fps, batch_size
        self.indices = np.zeros(0, np.int64)
        self.arrays: dict[str, np.ndarray] | None = None

    def add(self, indices: np.ndarray, arrays: dict[str, np.ndarray]) -> Iterator[Batch]:
        if not len(indices):
            return
        if self.arrays is None or not len(self.indices):
            self.indices, self.arrays = indices, arrays
        else:
            self.indices = np.concatenate([self.indices, indices])
            self.arrays = {k: np.concatenate([self.arrays[k], arrays[k]]) for k in arrays}
        n = len(self.indices) // self.batch_size * self.batch_size
        for s in range(0, n, self.batch_size):
            yield self._batch(slice(s, s + self.batch_size))
        self.indices = self.indices[n:]
        self.arrays = {k: a[n:] for k, a in self.arrays.items()}

    def rest(self) -> Iterator[Batch]:
        if len(self.indices):
            yield self._batch(slice(0, len(self.indices)))

    def _batch(self, s: slice) -> Batch:
        idx = self.indices[s]
        return Batch(idx, idx.astype(np.float64) / self.fps, {k: np.ascontiguousarray(a[s]) for k, a in self.arrays.items()})


# --------------------------------------------------------------------------- in the worker

_video: Video | None = None


def _start_worker(path: str, fps: float, width: int, height: int, frame_count: int, t0: float | None) -> None:
    global _video
    _video = Video(Path(path), fps, width, height, frame_count)
    _video.backend = "pyav"
    _video._t0 = t0


def _decode_segment(frames: np.ndarray, sizes: dict[str, Size], seek_pts: int | None):
    """One segment, as one batch: (frame numbers, name -> frames, where the file stopped or None)."""
    _video.stopped_at = None
    got = list(_video._decode_pyav(frames, sizes, len(frames), seek_pts))
    if not got:
        return np.zeros(0, np.int64), {k: np.zeros((0, h, w, 3), np.uint8) for k, (w, h) in sizes.items()}, _video.stopped_at
    return got[0].indices, got[0].frames, _video.stopped_at
