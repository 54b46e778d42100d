"""Decode video into batches of small frames, with exact frame indices and timestamps.

    from noscope.video import open_video
    video = open_video("cam.mp4")                        # one-line NoscopeError if unreadable
    start, end = video.segment("10s", "60%")             # seconds, m:ss, "300f" frame, or "60%"
    for batch in video.batches({"s50": (50, 50), "det": (416, 416)}, start, end, stride=2):
        batch.indices, batch.times, batch.frames["s50"]  # (B,), (B,), uint8 (B, 50, 50, 3) RGB

Full-size frames are never kept or even made: with PyAV (the default decoder) each wanted
frame is scaled while it is converted, from the decoder's YUV straight to every requested size
(swscale, area filter); OpenCV, the fallback, converts the full frame to BGR first and then
resizes. Measured on 2 cores, one thread, CPU time per frame: 1.15 ms (PyAV) vs 1.47 ms
(OpenCV) at 640x360, and 2.5 ms vs 5.7 ms at 1280x720, to 50x50 RGB. Frames that are not
wanted (stride, sparse samples) are decoded but never converted, which is most of the cost
saved. A file that stops decoding early (truncated) yields the frames that decode and records
where it stopped in `video.stopped_at`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .errors import NoscopeError, UsageError

Size = tuple[int, int]  # (width, height)

# Beyond this many unwanted frames in a row, seeking beats grabbing through them.
_SEEK_GAP = 250
AUTO_WORKERS = 8  # decode.workers=0: one process per core, at most this many

try:  # PyAV is a dependency, but a broken or missing install must not stop decoding
    import av as _av
except Exception:  # pragma: no cover - depends on the installation
    _av = None


def decoder_name(backend: str = "auto") -> str:
    """The decoder `backend` resolves to here: "pyav" or "opencv" (frame caches key on it)."""
    if backend not in ("auto", "pyav", "opencv"):
        raise UsageError(f"unknown decode.backend {backend!r}: use auto, pyav or opencv")
    if backend == "pyav" and _av is None:
        raise NoscopeError("decode.backend=pyav but PyAV is not installed (pip install av)")
    return "opencv" if backend == "opencv" or _av is None else "pyav"


def decoder_version(backend: str = "auto") -> str:
    return f"pyav-{_av.__version__}" if decoder_name(backend) == "pyav" else f"cv2-{cv2.__version__}"


def decode_workers(setting: int = 0, cores: int | None = None) -> int:
    """Processes that decode side by side (decode.workers): the setting, or for 0 (auto) one
    per core up to AUTO_WORKERS, and 1 below 4 cores. Only PyAV splits a video (see
    noscope.decode_pool).

    Why not on 2 cores: there two workers decode 1.4x faster alone (storefront looped, 50x50),
    but a query ran no faster (700-790 frames/s either way): the cheap stages need the second core.
    """
    if setting < 0:
        raise UsageError(f"decode.workers must be 0 (auto) or a number of processes, not {setting}")
    cores = (os.cpu_count() or 1) if cores is None else cores
    return setting or (1 if cores < 4 else min(AUTO_WORKERS, cores))


def decode_options(cfg: dict) -> dict:
    """The decode.* settings as keyword arguments of run_cascade and the training decode."""
    d = cfg["decode"]
    return dict(frame_cache=d["frame_cache"], prefetch=d["prefetch"], workers=decode_workers(d["workers"]))


@dataclass
class Batch:
    indices: np.ndarray  # int64 (B,) frame numbers in the file
    times: np.ndarray  # float64 (B,) seconds from the start of the file
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # name -> uint8 (B, h, w, 3) RGB

    def __len__(self) -> int:
        return len(self.indices)


def parse_position(spec: str | int | float | None, fps: float) -> int | None:
    """'12.5' or '12.5s' -> seconds, '1:02.5' / '1:00:02' -> h:m:s, '300f' -> frame 300."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, (int, float)):
        return int(round(float(spec) * fps))
    s = str(spec).strip().lower()
    m = re.fullmatch(r"(\d+)\s*f", s)
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?)\s*s?", s)
    if not m:
        raise UsageError(f"cannot read position {spec!r}: use seconds (12.5 or 12.5s), m:ss (1:02), or a frame (300f)")
    parts = [p for p in m.groups() if p is not None]
    if any(float(p) >= 60 for p in parts[1:]):  # 1:99 is a typo, not 2:39
        raise UsageError(f"cannot read position {spec!r}: minutes and seconds after a colon must be below 60")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + float(p)
    return int(round(seconds * fps))


def content_hash(path: str | Path) -> str:
    """Identity of a video file's contents, cheap enough for hours of video.

    Hashes the size plus 32 evenly spaced 64 KiB slices (always including both ends): any
    re-encode, truncation or different recording changes it; reading the whole file would not
    be worth it for multi-GB files.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    piece = 1 << 16
    with open(path, "rb") as f:
        span = max(0, size - piece)  # files under 64 KiB: one slice from the start
        offsets = sorted({min(span, int(i * span / 31)) for i in range(32)})
        for off in offsets:
            f.seek(off)
            h.update(f.read(piece))
    return h.hexdigest()[:16]


class Video:
    """One opened video file. Use `open_video` to get one with a clear error on bad input."""

    def __init__(self, path: Path, fps: float, width: int, height: int, frame_count: int):
        self.path = path
        self.fps = fps
        self.width = width
        self.height = height
        self.frame_count = frame_count  # as the container reports it; may be a few off
        self.stopped_at: int | None = None  # first frame that failed to decode before `end`
        self.backend = "auto"  # decoder: auto (PyAV where installed) | pyav | opencv
        self._hash: str | None = None
        self._t0: float | None = None  # timestamp of frame 0 (PyAV), learnt on the first seek

    @property
    def hash(self) -> str:
        if self._hash is None:
            self._hash = content_hash(self.path)
        return self._hash

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.fps else 0.0

    def position(self, spec) -> int | None:
        """Like parse_position, plus '60%' for a share of the video's frames."""
        if isinstance(spec, str) and spec.strip().endswith("%"):
            try:
                share = float(spec.strip()[:-1]) / 100
            except ValueError:
                raise UsageError(f"cannot read position {spec!r}") from None
            return int(round(share * self.frame_count))
        return parse_position(spec, self.fps)

    def segment(self, start=None, end=None) -> tuple[int, int]:
        """Frame range [start, end) from user positions; the whole video by default."""
        s = self.position(start) or 0
        e = self.position(end)
        e = self.frame_count if e is None else min(e, self.frame_count)
        if s < 0 or (e is not None and s >= e):
            raise UsageError(
                f"--start ({start if start not in (None, '') else 'start of video'}) must come before --end "
                f"({end if end not in (None, '') else 'end of video'}) "
                f"and inside the video ({self.frame_count} frames, {self.duration:.1f} s)"
            )
        return s, e

    def wanted(self, start: int = 0, end: int | None = None, stride: int = 1, frames=None) -> np.ndarray:
        """The sorted frame numbers `batches` is asked for: every `stride`-th of [start, end), or `frames`."""
        if frames is not None:
            return np.unique(np.asarray(frames, dtype=np.int64))
        return np.arange(start, self.frame_count if end is None else end, max(1, stride), dtype=np.int64)

    def _capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise NoscopeError(f"cannot open video {self.path}")
        return cap

    def batches(
        self,
        sizes: dict[str, Size],
        start: int = 0,
        end: int | None = None,
        stride: int = 1,
        batch_size: int = 64,
        frames: np.ndarray | None = None,
        prefetch: int = 2,
        workers: int = 1,
    ) -> Iterator[Batch]:
        """Yield batches of resized RGB frames.

        Either every `stride`-th frame of [start, end), or exactly the sorted frame numbers in
        `frames`. Sets `self.stopped_at` if the file ends early. With `prefetch` > 0 a thread
        decodes up to that many batches ahead, so decoding overlaps with whatever the caller
        does with a batch (OpenCV, FFmpeg and torch all release the GIL while they work).
        With `workers` > 1 (PyAV only) that many processes decode keyframe-aligned segments
        side by side (noscope.decode_pool); the batches are the same either way.
        """
        wanted = self.wanted(start, end, stride, frames)
        self.stopped_at = None
        if len(wanted) == 0:
            return
        pyav = decoder_name(self.backend) == "pyav"
        if pyav and workers > 1:
            from .decode_pool import parallel_batches

            decode = partial(parallel_batches, self, wanted, sizes, batch_size, workers)
        elif pyav:
            decode = partial(self._decode_pyav, wanted, sizes, batch_size)
        else:
            cap = self._capture()

            def decode():
                try:
                    yield from self._decode(cap, wanted, sizes, batch_size)
                finally:
                    cap.release()

        yield from (prefetched(decode(), prefetch) if prefetch > 0 else decode())

    def _decode_pyav(self, wanted: np.ndarray, sizes: dict[str, Size], batch_size: int,
                     seek_pts: int | None = None) -> Iterator[Batch]:
        """PyAV: frame numbers count decoded frames from the first one, as OpenCV's grab does.
        After a seek the number comes from the frame's timestamp, relative to frame 0's.
        `seek_pts`: start with a seek to exactly this timestamp (a keyframe's, from
        `keyframes`), so a segment that begins on a keyframe decodes nothing before it."""
        try:
            container = _av.open(str(self.path))
        except Exception as e:
            raise NoscopeError(f"cannot open video {self.path}: {' '.join(str(e).split())}") from None
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: decoding uses the cores it is given
            buf = _Buffer(sizes, self.fps, batch_size)
            frames_iter, pos = container.decode(stream), -1  # pos: number of the last frame decoded
            t0 = None  # timestamp of frame 0, learnt before the first seek
            for target in wanted.tolist():
                if seek_pts is not None or target - pos > _SEEK_GAP:
                    if t0 is None:
                        t0 = self._first_time()
                    # to the keyframe at or before a point safely before the target
                    ts = int((t0 + max(0.0, target - 2) / self.fps) / stream.time_base) if seek_pts is None else seek_pts
                    seek_pts = None
                    container.seek(ts, stream=stream, backward=True, any_frame=False)
                    frames_iter, pos = container.decode(stream), None
                ended = False
                while pos is None or pos < target:
                    try:
                        frame = next(frames_iter)
                    except (StopIteration, _av.error.FFmpegError):
                        ended = True
                        break
                    if pos is not None:
                        pos += 1
                    elif frame.time is None:
                        raise NoscopeError(f"cannot seek in {self.path}: its frames carry no timestamps")
                    else:
                        pos = int(round((frame.time - t0) * self.fps))
                if ended:  # end of file, or damage: what decoded so far stands
                    self.stopped_at = target if pos is None else pos + 1
                    break
                if pos != target:  # a seek landed past it (no keyframe before it): it cannot be had
                    continue
                for name, (w, h) in sizes.items():
                    buf.frames[name].append(frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA"))
                buf.add(target)
                if buf.full():
                    yield buf.take()
            if len(buf):
                yield buf.take()
        finally:
            container.close()

    def _first_time(self) -> float:
        """Timestamp of frame 0 in seconds (cached: a segment worker asks for every segment)."""
        if self._t0 is None:
            self._t0 = 0.0
            with _av.open(str(self.path)) as c:
                for frame in c.decode(c.streams.video[0]):
                    self._t0 = float(frame.time or 0.0)
                    break
        return self._t0

    def _decode(self, cap, wanted: np.ndarray, sizes: dict[str, Size], batch_size: int) -> Iterator[Batch]:
        pos = 0  # index of the next frame `grab` will return
        if wanted[0] > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(wanted[0]))
            pos = int(wanted[0])
        buf = _Buffer(sizes, self.fps, batch_size)
        for target in wanted:
            target = int(target)
            if target - pos > _SEEK_GAP:
                cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                pos = target
            ok = True
            while pos <= target:
                ok = cap.grab()
                if not ok:
                    break
                pos += 1
            if not ok:
                self.stopped_at = pos
                break
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                self.stopped_at = target
                break
            for name, (w, h) in sizes.items():
                small = bgr if (bgr.shape[1], bgr.shape[0]) == (w, h) else cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
                buf.frames[name].append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
            buf.add(target)
            if buf.full():
                yield buf.take()
        if len(buf):
            yield buf.take()


class _Buffer:
    """Frames collected for the next batch."""

    def __init__(self, sizes: dict[str, Size], fps: float, batch_size: int):
        self.sizes, self.fps, self.batch_size = sizes, fps, batch_size
        self.idx: list[int] = []
        self.frames: dict[str, list[np.ndarray]] = {k: [] for k in sizes}

    def add(self, index: int) -> None:
        self.idx.append(index)

    def __len__(self) -> int:
        return len(self.idx)

    def full(self) -> bool:
        return len(self.idx) >= self.batch_size

    def take(self) -> Batch:
        b = Batch(np.asarray(self.idx, np.int64), np.asarray(self.idx, np.float64) / self.fps,
                  {k: np.stack(v) for k, v in self.frames.items()})
        self.idx, self.frames = [], {k: [] for k in self.sizes}
        return b


def prefetched(items: Iterator, depth: int) -> Iterator:
    """Run the iterator `items` in a thread, at most `depth` items ahead of the consumer.

    The producer's exceptions are raised in the consumer, at the point where the item would
    have come. When the consumer stops early (break, error, Ctrl-C), the producer is told to
    stop, the queue is drained so it is not left blocked, and it is joined, so the source
    (an open capture) is closed before this returns. Memory stays bounded: `depth` items.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as e:  # re-raised in the consumer
            q.put((done, e))
            return
        finally:
            if stop.is_set():
                close = getattr(items, "close", None)
                if close:
                    close()
        q.put((done, None))

    t = threading.Thread(target=produce, name="noscope-decode", daemon=True)
    t.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        t.join()


def open_video(path: str | Path, backend: str = "auto") -> Video:
    """Open a video, or raise one clear NoscopeError saying why it can't be read.

    `backend` picks the decoder for its frames (decode.backend): auto (PyAV where installed),
    pyav or opencv. The container's facts (fps, size, frame count) come from OpenCV either way,
    so both decoders number frames alike.
    """
    decoder_name(backend)  # an unknown or missing decoder fails here, before any work
    p = Path(path)
    if not p.exists():
        gone = f" (a link to {os.readlink(p)}, which does not exist)" if p.is_symlink() else ""
        raise NoscopeError(f"video not found: {p}{gone}")
    if p.is_dir():
        raise NoscopeError(f"{p} is a directory, not a video file")
    if not os.access(p, os.R_OK):
        raise NoscopeError(f"video not readable (permissions): {p}")
    if p.stat().st_size == 0:
        raise NoscopeError(f"video file is empty (0 bytes): {p}")
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise NoscopeError(f"cannot decode {p}: not a video format OpenCV/FFmpeg can read, or the file is corrupt")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok = cap.grab()
        if not ok or width <= 0 or height <= 0:
            raise NoscopeError(f"video has no decodable frames: {p}")
    finally:
        cap.release()
    if not (0 < fps < 1000):
        fps = 25.0  # some containers omit it; timestamps then assume 25 fps
    if count <= 0:
        count = _count_frames(p)
    v = Video(p, fps, width, height, count)
    v.backend = backend
    return v


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def stop_is_truncation(video: Video) -> bool:
    """True when decoding stopped well before the container's frame count.

    Containers often report more frames than decode (2.6% more on one of our sample clips), so
    a stop in the last 5% is the normal end of the file, not damage.
    """
    if video.stopped_at is None:
        return False
    return video.stopped_at < 0.95 * video.frame_count - 3
