"""Decode video into batches of small frames, with exact frame indices and timestamps.

    from noscope.video import open_video
    video = open_video("cam.mp4")                        # one-line NoscopeError if unreadable
    start, end = video.segment("10s", "60%")             # seconds, m:ss, "300f" frame, or "60%"
    decoding = video.batches({"s50": (50, 50), "det": (416, 416)}, start, end, stride=2)
    for batch in decoding:                               # a DecodePass: decodes as it is iterated, once
        batch.indices, batch.times, batch.frames["s50"]  # (B,), (B,), uint8 (B, 50, 50, 3) RGB
    decoding.stopped_at, decoding.missing, decoding.decoded  # what this pass found: None, [], frames decoded

Full-size frames are never kept or even made: with PyAV (the default decoder) each wanted
frame is scaled while it is converted, from the decoder's YUV straight to every requested size
(swscale, area filter); OpenCV, the fallback, converts the full frame to BGR first and then
resizes. Measured on 2 cores, one thread, CPU time per frame: 1.15 ms (PyAV) vs 1.47 ms
(OpenCV) at 640x360, and 2.5 ms vs 5.7 ms at 1280x720, to 50x50 RGB. Frames that are not
wanted (stride, sparse samples) are decoded but never converted, which is most of the cost
saved. A file that stops decoding early (truncated) yields the frames that decode, and the pass
records where it stopped (`stopped_at`). The Video holds what is true of the file (and what
decoding learns of it once: frame 0's time, keyframes, counted frames' times); each pass holds
what that pass found.

Frame numbers mean one picture on every path (sequential, seek, worker segments, caches):
- Where the packets' timestamps are exactly one frame apart (constant frame rate), a frame's
  number comes from its timestamp, so seeking is exact and a frame lost to damage leaves a gap.
- Otherwise (variable frame rate, AVI's packed B-frames, no timestamps) the only consistent
  numbering is counting frames from the start, so such files are never seeked: every pass
  decodes from the first frame (`video.counted`).
A packet that fails to decode is skipped, and so is every frame after it up to the next
keyframe that decodes (those show the damage, and a decoder started elsewhere would show them
differently); the pass's `missing` lists what was lost. Frames come upright: PyAV applies the
display-matrix rotation, as OpenCV does. Times are the frames' presentation times (seconds from
the stream start); for constant frame rate that is frame / fps.
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
from typing import Callable, Iterator

import cv2
import numpy as np

from .errors import NoscopeError, UsageError

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Luma:
    """A sizes entry asking for the decoder's luma (brightness) plane, area-averaged to width x height:
    uint8 (h, w), no colour conversion at all (PyAV hands a planar YUV frame's Y plane over as it is).
    What the difference detectors read (measured on the storefront clip, 2 cores: decoding with it
    costs a few percent over decoding alone, against about twice for RGB through the scaler)."""

    width: int
    height: int


@dataclass(frozen=True)
class Pictures:
    """A sizes entry asking the pass to keep each frame's decoded picture with its batch, converted
    only when asked for (`Batch.rgb`), at the size asked for: the model's and the reference's frames
    are the few a cascade sends on, so most frames are never converted to RGB at all."""


KEEP_PICTURES = Pictures()

# Beyond this many unwanted frames in a row, seeking beats grabbing through them.
_SEEK_GAP = 250
_REORDER_DEPTH = 16  # most frames a decoder holds back for reordering (H.264's limit)
_PLACEHOLDER_BYTES = 8  # packets this small carry no picture (the smallest real ones on our clips: 18 bytes)
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


@dataclass
class Keep:
    """Frames a decoding pass keeps on the side at one more size, whether it yields them or passes
    over them (a query's check frames, drawn before the pass: noscope.check_stats.DrawOrder):
    `sink` gets frame number -> uint8 (h, w, 3) RGB."""

    frames: set
    size: Size
    sink: dict = field(default_factory=dict)


@dataclass
class Batch:
    indices: np.ndarray  # int64 (B,) frame numbers in the file
    times: np.ndarray  # float64 (B,) seconds from the start of the file
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # name -> uint8 (B, h, w, 3) RGB, or (B, h, w) luma
    pictures: list | None = None  # each frame's decoded picture (a Pictures entry asked for them)
    found: Findings | None = None  # the pass that decoded them: `rgb` counts its conversions there

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, rows: np.ndarray) -> Batch:
        """The batch's frames at `rows` (in order), with their pictures."""
        rows = np.asarray(rows, np.int64)
        return Batch(self.indices[rows], self.times[rows], {k: v[rows] for k, v in self.frames.items()},
                     None if self.pictures is None else [self.pictures[i] for i in rows.tolist()], self.found)

    def rgb(self, rows: np.ndarray, size: Size) -> np.ndarray:
        """uint8 (len(rows), h, w, 3) RGB of the batch's frames at `rows`, converted now from the
        pictures the pass kept (upright, area filter): the frames a later stage needs, and no other."""
        return self.made(rows, tuple(size))

    def made(self, rows: np.ndarray, spec) -> np.ndarray:
        """The batch's frames at `rows` made now from the pictures the pass kept, at one sizes entry
        (RGB (w, h), or a Luma plane)."""
        out = [converted(self.pictures[i], spec) for i in np.asarray(rows, np.int64).tolist()]
        if self.found is not None and not isinstance(spec, Luma):
            self.found.converted += len(out)
        if out:
            return np.stack(out)
        w, h = (spec.width, spec.height) if isinstance(spec, Luma) else spec
        return np.zeros((0, h, w) if isinstance(spec, Luma) else (0, h, w, 3), np.uint8)


def parse_position(spec: str | int | float | None, fps: float) -> int | None:
    """'12.5' or '12.5s' -> seconds, '1:02.5' / '1:00:02' -> h:m:s, '300f' -> frame 300."""
    if spec is None or spec == "":
        return None
    m = re.fullmatch(r"(\d+)\s*f", str(spec).strip().lower())
    if m:
        return int(m.group(1))
    return int(round(parse_seconds(spec) * fps))


def parse_seconds(spec: str | int | float | None) -> float | None:
    """A position in seconds ('12.5', '12.5s', '1:02.5', '1:00:02'); None for none or a frame ('300f')."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, (int, float)):
        return float(spec)
    s = str(spec).strip().lower()
    if re.fullmatch(r"(\d+)\s*f", s):
        return None
    m = re.fullmatch(r"(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?)\s*s?", s)
    if not m:
        raise UsageError(f"cannot read position {spec!r}: use seconds (12.5 or 12.5s), m:ss (1:02), or a frame (300f)")
    parts = [p for p in m.groups() if p is not None]
    if any(float(p) >= 60 for p in parts[1:]):  # 1:99 is a typo, not 2:39
        raise UsageError(f"cannot read position {spec!r}: minutes and seconds after a colon must be below 60")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + float(p)
    return seconds


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
        self.backend = "auto"  # decoder: auto (PyAV where installed) | pyav | opencv
        self._hash: str | None = None
        # What decoding learns once per file, handed to decode workers so they number frames alike:
        self.time_origin: float | None = None  # timestamp of frame 0 (PyAV), learnt on the first seek
        self.keyframe_scan: tuple | None | bool = False  # keyframes(self), False until scanned
        self._times = np.zeros(0)  # counted files: each decoded frame's time, NaN where not yet seen
        # counted files: every packet's presentation time, sorted (from the keyframe scan; None: unknown)
        self.packet_times: np.ndarray | None = None

    def seek_points(self) -> tuple[np.ndarray, np.ndarray] | None:
        """keyframes(self), scanned once: keyframe numbers and timestamps, None for a counted file."""
        if self.keyframe_scan is False:
            try:
                self.keyframe_scan = keyframes(self) if _av is not None else None
            except Exception:  # PyAV cannot read what OpenCV decodes: count frames, never seek
                self.keyframe_scan = None
        return self.keyframe_scan

    @property
    def counted(self) -> bool:
        """True when frames can only be numbered by counting from the first one: then it is never seeked."""
        return self.seek_points() is None

    def note_times(self, frames, times) -> None:
        """Remember decoded frames' times (counted files: a frame's time is not its number / fps)."""
        frames = np.asarray(frames, np.int64)
        if not len(frames):
            return
        if frames.max() >= len(self._times):
            grown = np.full(max(int(frames.max()) + 1, 2 * len(self._times)), np.nan)
            grown[: len(self._times)] = self._times
            self._times = grown
        self._times[frames] = times

    def note_time(self, n: int, t: float) -> None:
        """One decoded frame's time: note_times without building arrays (called per decoded frame)."""
        if n >= len(self._times):
            self.note_times([n], [t])
        else:
            self._times[n] = t

    def times_of(self, frames) -> np.ndarray:
        """Seconds from the stream start of each frame: frame / fps at a constant frame rate, else
        the time its decoding recorded (decoding again for frames not seen yet)."""
        frames = np.asarray(frames, np.int64)
        if not self.counted or not len(frames):
            return frames / self.fps
        t = self.recorded_times(frames)
        if np.isnan(t).any():
            for _ in self.batches({}, frames=frames[np.isnan(t)], prefetch=0):
                pass
            t = self.recorded_times(frames)
        known = np.flatnonzero(~np.isnan(self._times))
        if np.isnan(t).any() and len(known):  # past the last frame that decodes: one average frame each
            last = known[-1]
            t = np.where(np.isnan(t), self._times[last] + (frames - last) / self.fps, t)
        return np.where(np.isnan(t), frames / self.fps, t)

    def recorded_times(self, frames=None) -> np.ndarray:
        """The times decoding recorded for `frames` (NaN: not seen yet); all of them for None."""
        if frames is None:
            return self._times.copy()
        frames = np.asarray(frames, np.int64)
        t = np.full(len(frames), np.nan)
        inside = frames < len(self._times)
        t[inside] = self._times[frames[inside]]
        return t

    @property
    def hash(self) -> str:
        if self._hash is None:
            self._hash = content_hash(self.path)
        return self._hash

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.fps else 0.0

    @property
    def timed_by_packets(self) -> bool:
        """Frames numbered by counting, with every packet's time known: positions go by those times."""
        return self.counted and self.packet_times is not None and len(self.packet_times) > 0

    @property
    def length(self) -> int:
        """How many frames the video has, as far as can be told without decoding it: for a file
        whose frames are numbered by counting (variable frame rate), its packets (the container's
        count is often its duration times a nominal rate: 1.7x the frames of a webcam capture that
        dropped frames); else the container's count."""
        return len(self.packet_times) if self.timed_by_packets else self.frame_count

    @property
    def length_seconds(self) -> float:
        return float(self.packet_times[-1]) + 1 / self.fps if self.timed_by_packets else self.duration

    def position(self, spec) -> int | None:
        """A position as a frame number: '60%' a share of the frames the video has (`length`), '300f'
        that frame, seconds the first frame shown at or after that time (by presentation time where
        frames are not evenly spaced, else time x fps). A share outside 0-100% is a usage error."""
        if isinstance(spec, str) and spec.strip().endswith("%"):
            try:
                share = float(spec.strip()[:-1]) / 100
            except ValueError:
                raise UsageError(f"cannot read position {spec!r}") from None
            if not 0 <= share <= 1:
                raise UsageError(f"position {spec!r}: a share of the video is between 0% and 100%")
            return int(round(share * self.length))
        seconds = parse_seconds(spec)
        if seconds is not None and self.timed_by_packets:
            return int(np.searchsorted(self.packet_times, seconds - 1e-6))
        return parse_position(spec, self.fps)

    def segment(self, start=None, end=None) -> tuple[int, int]:
        """Frame range [start, end) from user positions; the whole video by default. One rule for
        both ends: a position past the end of the video (its `length`) is a usage error, the end
        itself (100%, its last frame + 1, its duration) is fine; start must come before end."""
        n = self.length
        s = self.position(start) or 0
        e = self.position(end)
        e = n if e is None else e
        for flag, spec, at in (("--start", start, s), ("--end", end, e)):
            if at > n:
                raise UsageError(f"{flag} ({spec}) is past the end of the video ({n} frames, {self.length_seconds:.1f} s)")
        if s < 0 or s >= e:
            raise UsageError(
                f"--start ({start if start not in (None, '') else 'start of video'}) must come before --end "
                f"({end if end not in (None, '') else 'end of video'}) "
                f"and inside the video ({n} frames, {self.length_seconds:.1f} s)"
            )
        return s, e

    def wanted(self, start: int = 0, end: int | None = None, stride: int = 1, frames=None) -> np.ndarray:
        """The sorted frame numbers `batches` is asked for: every `stride`-th of [start, end), or `frames`."""
        if frames is not None:
            return np.unique(np.asarray(frames, dtype=np.int64))
        return np.arange(start, self.frame_count if end is None else end, max(1, stride), dtype=np.int64)

    def capture(self) -> cv2.VideoCapture:
        """The file opened by OpenCV."""
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
        keep: Keep | None = None,
    ) -> DecodePass:
        """A decoding pass: batches of resized RGB frames as it is iterated (and `keep.sink` filled
        with the kept frames the pass decodes on its way, at their size).

        Either every `stride`-th frame of [start, end), or exactly the sorted frame numbers in
        `frames`. The pass records `stopped_at` if the file ends early, `missing` for frames lost
        to damage (those are not yielded). With `prefetch` > 0 a thread
        decodes up to that many batches ahead, so decoding overlaps with whatever the caller
        does with a batch (OpenCV, FFmpeg and torch all release the GIL while they work).
        One process decodes; noscope.decode_pool.batches gives the same batches from several. A counted file
        is decoded on to `end` (not converted), so the times of the frames between the wanted
        ones are known too (`times_of`).
        """
        wanted = self.wanted(start, end, stride, frames)
        until = (self.frame_count if end is None else end) if frames is None or end is not None else None
        return DecodePass(self, lambda p: p.one_process(wanted, sizes, batch_size, until, prefetch, keep))

    def first_time(self) -> float:
        """Timestamp of frame 0 in seconds (learnt once: a segment worker asks for every segment)."""
        if self.time_origin is None:
            self.time_origin = 0.0
            with _av.open(str(self.path)) as c:
                stream = c.streams.video[0]
                for packet in packets(c, stream):
                    try:
                        out = packet.decode()
                    except _av.error.FFmpegError:
                        continue  # damage: frame 0 is the first picture that decodes
                    if out:
                        self.time_origin = float(out[0].time or 0.0)
                        break
        return self.time_origin

    def recorded_time(self, n: int) -> float:
        """Seconds from the stream start of frame `n`: n / fps where timestamps number frames, else
        the time decoding recorded (NaN: none recorded yet)."""
        if not self.counted:
            return n / self.fps
        return float(self._times[n]) if n < len(self._times) else np.nan


@dataclass(eq=False)
class Findings:
    """What one decoding pass found: where the file stopped decoding, what damage lost, and how
    much decoding the pass did."""

    stopped_at: int | None = None  # first frame that failed to decode before the pass's end
    stop_time: float | None = None  # seconds (from the stream start) where decoding stopped
    # [a, b) frame ranges found undecodable (damage); an empty range [n, n) marks pictures lost
    # before frame n in a file numbered by counting (no numbers to give)
    missing: list[tuple[int, int]] = field(default_factory=list)
    decoded: int = 0  # frames the decoder gave the pass (OpenCV: frames grabbed; its seeks decode unseen)
    converted: int = 0  # frames turned into pictures: yielded, or kept on the side (`Keep`; both: twice)

    def add(self, part: Findings) -> None:
        """Take on what a part of this pass found (a decode worker's segment): lost ranges and counts
        add up; where the part stopped is where this pass stopped."""
        self.missing += part.missing
        self.decoded += part.decoded
        self.converted += part.converted
        if part.stopped_at is not None:
            self.stopped_at, self.stop_time = part.stopped_at, part.stop_time


class DecodePass(Findings):
    """One decoding pass over a video: an iterator of Batch that decodes as it is iterated (once,
    like a generator; `close` stops it), and what the pass found (`Findings`), complete when it is
    used up. video.batches makes one; noscope.decode_pool and noscope.framecache give the same
    kind (a pass the frame cache serves decodes nothing; one of several processes adds up what
    each found)."""

    def __init__(self, video: Video, run: Callable[[DecodePass], Iterator[Batch]] | None = None):
        super().__init__()
        self.video = video
        self._run = run  # run(pass): the batches, recording what it finds on `pass`
        self._batches: Iterator[Batch] | None = None

    def __iter__(self) -> DecodePass:
        return self

    def __next__(self) -> Batch:
        if self._batches is None:
            self._batches = self.through(self)
        return next(self._batches)

    def close(self) -> None:
        """Stop decoding early: the decoding thread ends and the file is closed."""
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> DecodePass:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def through(self, other: DecodePass) -> Iterator[Batch]:
        """`other`'s batches, decoded as part of this pass: what it finds is recorded here as it is
        found (the frame cache decodes through the worker pool, which may decode in one process)."""
        return iter(()) if other._run is None else other._run(self)

    def findings(self) -> Findings:
        """What the pass found, apart from the pass (a decode worker sends it back)."""
        return Findings(self.stopped_at, self.stop_time, list(self.missing), self.decoded, self.converted)

    def stop(self, n: int) -> None:
        """Decoding stopped before frame `n`: where, in frames and in seconds (the end of frame n - 1)."""
        v = self.video
        last = v.recorded_time(n - 1) if n > 0 else np.nan
        self.stopped_at = n
        self.stop_time = n / v.fps if np.isnan(last) else last + 1 / v.fps

    def one_process(self, wanted: np.ndarray, sizes: dict[str, Size], batch_size: int, until: int | None,
                    prefetch: int, keep: Keep | None) -> Iterator[Batch]:
        """`video.batches`: the wanted frames decoded by this process, in a thread `prefetch` batches ahead."""
        if len(wanted) == 0:
            return
        if decoder_name(self.video.backend) == "pyav":
            decode = partial(self.decode_pyav, wanted, sizes, batch_size, until=until, keep=keep)
        else:
            cap = self.video.capture()

            def decode():
                try:
                    yield from self.decode_opencv(cap, wanted, sizes, batch_size, until, keep)
                finally:
                    cap.release()

        yield from (prefetched(decode(), prefetch) if prefetch > 0 else decode())

    def decode_pyav(self, wanted: np.ndarray, sizes: dict[str, Size], batch_size: int,
                    seek_pts: int | None = None, until: int | None = None, keep: Keep | None = None) -> Iterator[Batch]:
        """PyAV: the wanted frames, numbered as `_numbered` says. Seeks over large gaps unless the
        file is counted. `seek_pts`: start with a seek to exactly this timestamp (a keyframe's,
        from `keyframes`), so a segment that begins on a keyframe decodes nothing before it."""
        v = self.video
        try:
            container = _av.open(str(v.path))
        except Exception as e:
            raise NoscopeError(f"cannot open video {v.path}: {' '.join(str(e).split())}") from None
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: decoding uses the cores it is given
            buf = _Buffer(sizes, batch_size)
            track = _Tracker(self, keep)
            frames_iter = None
            for target in wanted.tolist():
                seek = seek_pts is not None or (not v.counted and target - track.pos > _SEEK_GAP)
                if seek:  # to the keyframe at or before a point safely before the target
                    t0 = v.first_time()
                    ts = int((t0 + max(0.0, target - 2) / v.fps) / stream.time_base) if seek_pts is None else seek_pts
                    container.seek(ts, stream=stream, backward=True, any_frame=False)
                if seek or frames_iter is None:
                    frames_iter, seek_pts = self._numbered(stream, container), None
                    track.restart(seek)
                frame = track.advance(frames_iter, target)
                if frame is None:
                    if track.ended:  # end of file, or a container that cannot be read on
                        break
                    continue  # lost to damage, or a seek landed past it: it cannot be had
                buf.put(frame, target, track.time)
                self.converted += converts(sizes)
                if buf.full():
                    yield buf.take(self)
            if v.counted and until is not None and frames_iter is not None and not track.ended:
                track.advance(frames_iter, until - 1)  # times of the frames after the last wanted one
            later = max((f for f in keep.frames if f > track.pos), default=None) if keep is not None else None
            if later is not None and frames_iter is not None and not track.ended:
                track.advance(frames_iter, later)  # frames to keep after the last wanted one
            if len(buf):
                yield buf.take(self)
        finally:
            container.close()

    def _numbered(self, stream, container) -> Iterator[tuple[int, float, object, bool]]:
        """(number, seconds from the stream start, frame, pictures lost just before) per decoded frame.

        Numbers count from the first frame (counted files; every pass starts there) or come from
        the timestamp relative to frame 0's. A packet that fails to decode is skipped, and every
        frame after it until a keyframe decodes (and frames before that keyframe in time): they
        may show the damage, differently for a decoder started elsewhere."""
        v = self.video
        time_base, origin = float(stream.time_base), stream.start_time or 0  # float: no Fraction per frame
        t0 = None if v.counted else v.first_time()
        n, clean, floor, lost = -1, True, None, False
        for packet in packets(container, stream):
            try:
                out = packet.decode()
            except _av.error.FFmpegError:
                clean, lost = False, True
                continue
            self.decoded += len(out)
            if not clean and packet.is_keyframe:
                clean, floor = True, packet.pts
            for frame in out:
                if not clean or (floor is not None and frame.pts is not None and frame.pts < floor):
                    lost = True
                    continue
                if t0 is None:
                    m = n + 1
                elif frame.time is None:
                    continue  # cannot be numbered (never seen in a file whose packets all had timestamps)
                else:
                    m = int(round((frame.time - t0) * v.fps))
                if m <= n:  # out of order after damage
                    continue
                n = m
                yield n, (np.nan if frame.pts is None else round((frame.pts - origin) * time_base, 6)), frame, lost
                lost = False

    def decode_opencv(self, cap, wanted: np.ndarray, sizes: dict[str, Size], batch_size: int,
                      until: int | None = None, keep: Keep | None = None) -> Iterator[Batch]:
        """OpenCV: frames counted by `grab`; seeks over large gaps unless the file is counted. OpenCV
        cannot decode past a damaged packet: there decoding stops."""
        v = self.video
        counted = v.counted
        pos = 0  # index of the next frame `grab` will return

        def grab() -> bool:
            nonlocal pos
            if not cap.grab():
                return False
            self.decoded += 1
            if counted:
                v.note_times([pos], [round(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000, 6)])
            if keep is not None and pos in keep.frames:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    small = cv2.resize(bgr, keep.size, interpolation=cv2.INTER_AREA) if bgr.shape[1::-1] != keep.size else bgr
                    keep.sink[pos] = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
                    self.converted += 1
            pos += 1
            return True

        buf = _Buffer(sizes, batch_size)
        for target in wanted.tolist():
            if not counted and (target - pos > _SEEK_GAP or (pos == 0 and target > 0)):
                cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                pos = target
            ok = True
            while ok and pos <= target:
                ok = grab()
            if not ok:
                self.stop(pos)
                break
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                self.stop(target)
                break
            buf.put(bgr, target, v.recorded_time(target))
            self.converted += converts(sizes)
            if buf.full():
                yield buf.take(self)
        while counted and until is not None and self.stopped_at is None and pos < until:
            if not grab():  # times of the frames after the last wanted one; the file may end there
                self.stop(pos)
        later = max((f for f in keep.frames if f >= pos), default=None) if keep is not None else None
        while later is not None and self.stopped_at is None and pos <= later:
            if not grab():  # frames to keep after the last wanted one
                break
        if len(buf):
            yield buf.take(self)


class _Tracker:
    """Where one PyAV pass is in the file; what it finds lost or where it stops goes to the pass."""

    def __init__(self, found: DecodePass, keep: Keep | None = None):
        self.found, self.keep = found, keep
        self.pos = -1  # number of the last frame taken from the decoder
        self.frame, self.time = None, 0.0  # that frame and its time
        self.ended = False
        self.fresh = False  # just seeked: what came before the first frame is unknown

    def restart(self, seeked: bool) -> None:
        self.fresh = seeked

    def advance(self, frames: Iterator, target: int):
        """Take frames up to `target`: that frame, or None when it cannot be had (`ended`: the file ended)."""
        p = self.found
        v = p.video
        while self.pos < target:
            item = next(frames, None)
            if item is None:
                self.ended = True
                p.stopped_at = target if self.fresh else self.pos + 1
                p.stop_time = p.stopped_at / v.fps if self.fresh or self.pos < 0 else self.time + 1 / v.fps
                return None
            n, t, frame, lost = item
            if v.counted:
                v.note_time(n, t)
                if lost:
                    p.missing.append((n, n))
            elif self.fresh and n > target or not self.fresh and n > self.pos + 1:
                p.missing.append((target if self.fresh else self.pos + 1, n))
            self.fresh, self.pos, self.frame = False, n, frame
            self.time = t if v.counted else n / v.fps
            if self.keep is not None and n in self.keep.frames:
                self.keep.sink[n] = upright_rgb(frame, *self.keep.size)
                p.converted += 1
        return self.frame if self.pos == target else None


def upright_rgb(frame, w: int, h: int) -> np.ndarray:
    """A PyAV frame as uint8 (h, w, 3) RGB, scaled while converted (area filter) and turned
    upright by its display matrix's rotation, as OpenCV turns it (a phone held sideways)."""
    turns = int(round(getattr(frame, "rotation", 0) / 90)) % 4  # counter-clockwise quarter turns
    cw, ch = (h, w) if turns % 2 else (w, h)
    rgb = frame.to_ndarray(width=cw, height=ch, format="rgb24", interpolation="AREA")
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def packets(container, stream) -> Iterator:
    """The stream's packets up to the end, or up to where the container cannot be read on."""
    try:
        yield from container.demux(stream)
    except _av.error.FFmpegError:
        return


def keyframes(video: Video) -> tuple[np.ndarray, np.ndarray] | None:
    """Frame numbers and timestamps (stream time base) of the video's keyframes, sorted; None
    when the file's timestamps cannot be trusted to number frames (then frames are counted).

    Reads packets only. Numbers are seconds since frame 0 times fps. Timestamps number frames
    when every packet has one, sorted they are exactly one frame apart (not variable frame
    rate), and no packet is a placeholder that decodes to no frame (AVI's packed B-frames: 1-7
    bytes).
    """
    t0 = video.first_time()
    nums, pts, every = [], [], []
    with _av.open(str(video.path)) as c:
        stream = c.streams.video[0]
        time_base, origin = float(stream.time_base), stream.start_time or 0
        for packet in packets(c, stream):
            if packet.size == 0:  # the demuxer's flush packet at the end
                continue
            if packet.pts is None or packet.size < _PLACEHOLDER_BYTES:
                return None
            every.append(packet.pts)
            if packet.is_keyframe:
                nums.append(int(round((packet.pts * time_base - t0) * video.fps)))
                pts.append(int(packet.pts))
    # The last few may leave gaps where a cut file lost frames that come before them in display
    # order; those lie in the last segment, which then stops as one process would.
    steps = np.diff(np.sort(np.asarray(every, np.int64))[:-_REORDER_DEPTH]) * time_base * video.fps
    if len(steps) and np.abs(steps - 1.0).max() > 0.01:  # counted: its packets are its frames, in time order
        video.packet_times = np.round((np.sort(np.asarray(every, np.int64)) - origin) * time_base, 6)
        return None
    order = np.argsort(nums, kind="stable")
    return np.asarray(nums, np.int64)[order], np.asarray(pts, np.int64)[order]


def missing_ranges(missing, start: int, end: int) -> list[list[int]]:
    """The [a, b) ranges of `missing` inside [start, end), merged and sorted; empty ranges
    (pictures lost where a counted file has no numbers to give) kept where they fall inside."""
    spans = sorted((max(a, start), min(b, end)) for a, b in missing if a < end and b > start)
    marks = sorted({(a, a) for a, b in missing if a == b and start <= a <= end})
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return sorted(merged + [[a, b] for a, b in marks if not any(x <= a < y for x, y in merged)])


class _Buffer:
    """Frames collected for the next batch."""

    def __init__(self, sizes: dict[str, Size], batch_size: int):
        self.sizes, self.batch_size = sizes, batch_size
        self.idx: list[int] = []
        self.times: list[float] = []
        self.frames: dict[str, list[np.ndarray]] = {k: [] for k in sizes}

    def add(self, index: int, time: float) -> None:
        self.idx.append(index)
        self.times.append(time)

    def __len__(self) -> int:
        return len(self.idx)

    def full(self) -> bool:
        return len(self.idx) >= self.batch_size

    def put(self, picture, index: int, time: float) -> None:
        """One decoded frame (a PyAV frame, or OpenCV's BGR array) at every size asked for."""
        for name, spec in self.sizes.items():
            self.frames[name].append(picture if isinstance(spec, Pictures) else converted(picture, spec))
        self.add(index, time)

    def take(self, found: Findings | None = None) -> Batch:
        kept = [k for k, spec in self.sizes.items() if isinstance(spec, Pictures)]
        b = Batch(np.asarray(self.idx, np.int64), np.asarray(self.times, np.float64),
                  {k: np.stack(v) for k, v in self.frames.items() if k not in kept},
                  self.frames[kept[0]] if kept else None, found)
        self.idx, self.times, self.frames = [], [], {k: [] for k in self.sizes}
        return b


def keeps_pictures(sizes: dict) -> bool:
    """Whether a pass is asked to keep its frames' pictures (a Pictures entry)."""
    return any(isinstance(spec, Pictures) for spec in sizes.values())


def spec_bytes(spec) -> int:
    """Bytes a frame takes at one sizes entry (kept pictures: counted as none, they are the decoder's)."""
    if isinstance(spec, Pictures):
        return 0
    return spec.width * spec.height if isinstance(spec, Luma) else spec[0] * spec[1] * 3


def converts(sizes: dict) -> int:
    """1 when a frame is converted for these sizes as it is decoded (its pictures kept alone: not yet)."""
    return int(any(not isinstance(spec, Pictures) for spec in sizes.values()))


def converted(picture, spec) -> np.ndarray:
    """A decoded picture (PyAV frame, or OpenCV's BGR array) at one size: RGB (w, h), or a Luma plane."""
    if isinstance(spec, Luma):
        return picture_luma(picture, spec.width, spec.height)
    return picture_rgb(picture, *spec)


def picture_rgb(picture, w: int, h: int) -> np.ndarray:
    """RGB (h, w, 3) of a PyAV frame (upright_rgb) or of OpenCV's BGR array."""
    if isinstance(picture, np.ndarray):
        small = picture if picture.shape[1::-1] == (w, h) else cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    return upright_rgb(picture, w, h)


# Pixel formats whose first plane is 8-bit luma, one byte a pixel: read as they are, no conversion.
_LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p", "yuv411p",
               "yuv410p", "nv12", "nv21", "gray"}


def picture_luma(picture, w: int, h: int) -> np.ndarray:
    """Luma (h, w) of a PyAV frame, upright (its Y plane area-averaged; other formats through the
    scaler), or of OpenCV's BGR array (converted to grey first)."""
    if isinstance(picture, np.ndarray):
        return cv2.resize(cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY), (w, h), interpolation=cv2.INTER_AREA)
    turns = int(round(getattr(picture, "rotation", 0) / 90)) % 4
    cw, ch = (h, w) if turns % 2 else (w, h)
    if picture.format.name in _LUMA_FIRST:
        plane = picture.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        small = cv2.resize(y, (cw, ch), interpolation=cv2.INTER_AREA)
    else:
        small = picture.to_ndarray(width=cw, height=ch, format="gray", interpolation="AREA")
    return np.ascontiguousarray(np.rot90(small, turns)) if turns else small


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
            _refuse_without_video_stream(p)
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
    if count <= 1:
        _refuse_still_image(p)
    v = Video(p, fps, width, height, count)
    v.backend = backend
    return v


def _container(path: Path) -> tuple[str, dict[str, int]] | None:
    """FFmpeg's name for the file's format and how many streams of each kind it holds (PyAV); None
    when PyAV is missing or cannot open it."""
    if _av is None:
        return None
    try:
        with _av.open(str(path)) as c:
            kinds: dict[str, int] = {}
            for st in c.streams:
                kinds[st.type] = kinds.get(st.type, 0) + 1
            return c.format.name, kinds
    except Exception:  # noqa: BLE001 - untrusted bytes: any failure just means "cannot tell"
        return None


def _refuse_without_video_stream(path: Path) -> None:
    """A file FFmpeg reads that holds no video stream (an audio-only .mp4): say that, not "corrupt"."""
    found = _container(path)
    if found is not None and not found[1].get("video"):
        held = ", ".join(f"{n} {kind} stream{'s' * (n > 1)}" for kind, n in sorted(found[1].items())) or "no streams at all"
        raise NoscopeError(f"{path} has no video stream ({held}): nothing to answer")


def _refuse_still_image(path: Path) -> None:
    """A single picture (a PNG renamed .mp4) is not a one-frame video: FFmpeg reads it with an image
    demuxer (png_pipe, jpeg_pipe, image2, ...). A stream of several JPEGs (.mjpeg) has more frames."""
    found = _container(path)
    if found is not None and (found[0] == "image2" or found[0].endswith("_pipe")):
        kind = found[0].removesuffix("_pipe").upper()
        raise NoscopeError(f"{path} is a still image ({kind}), not a video")


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def stopped_early(stopped_at: int | None, stop_time: float | None, fps: float, start: int, end: int) -> bool:
    """True when decoding stopped well before frame `end` of a pass over [start, end).

    Judged in time, not frames: a container's frame count is a guess (2.6% more than decode on
    one of our sample clips; far more for variable frame rate), its duration is not. A stop in
    the last 5% (and 3 frames) is the normal end of the file, not damage.
    """
    if stopped_at is None:
        return False
    stop = stopped_at / fps if stop_time is None else stop_time
    return end / fps - stop > 0.05 * (end - start) / fps + 3 / fps


def stop_is_truncation(decoding: DecodePass) -> bool:
    """True when the pass stopped decoding well before the end of the file (see stopped_early)."""
    v = decoding.video
    return stopped_early(decoding.stopped_at, decoding.stop_time, v.fps, 0, v.frame_count)
