"""Decode once, query many: the small frames a run decoded, kept on disk for the next run.

    for batch in cached_batches(video, {"model": (50, 50)}, start, end, stride=2, batch_size=256):
        batch.frames["model"]          # the same arrays video.batches() would decode

The cheap stages work on tiny frames (50x50: 7.5 KB each, 27 MB per hour of 1 fps... 810 MB
per hour at 30 fps), so keeping them is cheap next to decoding the video again: a second query
of the same video (another object, other targets, another bundle) reads them back at page-cache
speed instead of decoding. Training fills the cache for the frames it samples, so a query right
after training decodes only what training did not.

Layout, per video content hash and decoder: ~/.cache/noscope/frames/<hash>-<decoder>/
  <W>x<H>.u8      raw uint8 RGB frames, frame i at byte i*W*H*3 (a sparse file)
  <W>x<H>.have    bitmap (npy) of the frames the .u8 file holds, replaced atomically after the
                  frame bytes are written, so a kill never marks a frame it did not write
  end.json        the frame (and second) where decoding stopped, once a pass reached the end of the file
  lost.json       [a, b) frame ranges a pass found lost to damage (never asked of the decoder again)
  times.npy       files numbered by counting (variable frame rate): each frame's time, NaN where
                  no pass has decoded it yet; a frame is served only with its time

Frames are read and written with plain file I/O, not a memory map, so a query's resident memory
stays flat however long the video is.
"""

from __future__ import annotations

import io
import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from filelock import FileLock

from . import decode_pool
from .atomic import atomic_write_bytes
from .paths import cache_dir
from .video import Batch, DecodePass, Keep, Size, Video, decoder_version, missing_ranges

log = logging.getLogger(__name__)

_SAVE_EVERY = 8  # batches between bitmap saves: a kill loses at most this much decoding
# Only small frames are kept: a head on the reference's layers reads 320x192 frames (184 KB each,
# 20 GB an hour at 30 fps), which would fill a disk in a few nights. A pass that needs a larger
# size decodes (all its sizes: the pass is one decode either way).
MAX_SIDE = 64


def keeps(sizes: dict[str, Size]) -> bool:
    """Whether the cache keeps frames of every one of these sizes: small RGB ones only (a luma plane
    or kept pictures are what a pass cheaper than reading the cache asks for: it decodes)."""
    return all(isinstance(z, tuple) and max(z) <= MAX_SIDE for z in sizes.values())
_LAYOUT = 2  # 2: one numbering on every path, upright frames, times and lost ranges kept


def cache_root(video: Video) -> Path:
    # frames from another decoder or build may differ by a grey level: never mix them; nor
    # an older layout's (numbered after seeks in variable-frame-rate files, not turned upright)
    return cache_dir() / "frames" / f"{video.hash}-{decoder_version(video.backend)}-v{_LAYOUT}"


class _Store:
    """One frame size of one video: the raw frame file and its bitmap."""

    def __init__(self, root: Path, size: Size, frame_count: int):
        self.w, self.h = size
        self.frame_bytes = self.w * self.h * 3
        self.path = root / f"{self.w}x{self.h}.u8"
        self.have_path = root / f"{self.w}x{self.h}.have"
        self.lock = FileLock(str(root / f"{self.w}x{self.h}.lock"))
        self.have = self._load_have(frame_count)

    def _load_have(self, n: int) -> np.ndarray:
        have = np.zeros(n, bool)
        try:
            old = np.load(self.have_path, allow_pickle=False)
            if old.dtype == bool and old.ndim == 1 and self.path.is_file():
                k = min(len(old), n, self.path.stat().st_size // self.frame_bytes)
                have[:k] = old[:k]
        except (OSError, ValueError):
            pass  # no or unreadable bitmap: nothing cached yet
        return have

    def holds(self, frames: np.ndarray) -> bool:
        return bool(len(frames) == 0 or (frames[-1] < len(self.have) and self.have[frames].all()))

    def read(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (len(frames), h, w, 3) for sorted frame numbers the store holds."""
        out = np.empty((len(frames), self.h, self.w, 3), np.uint8)
        with open(self.path, "rb") as f:
            a, b = int(frames[0]), int(frames[-1]) + 1
            step = (b - a) / len(frames)
            if step <= 4:  # dense enough: one sequential read of the range, then pick
                f.seek(a * self.frame_bytes)
                block = np.frombuffer(f.read((b - a) * self.frame_bytes), np.uint8).reshape(b - a, self.h, self.w, 3)
                out[:] = block[frames - a]
            else:
                for i, fr in enumerate(frames.tolist()):
                    f.seek(fr * self.frame_bytes)
                    out[i] = np.frombuffer(f.read(self.frame_bytes), np.uint8).reshape(self.h, self.w, 3)
        return out

    def write(self, f: io.BufferedRandom, frames: np.ndarray, data: np.ndarray) -> None:
        for fr, x in zip(frames.tolist(), data):
            if fr >= len(self.have):
                self.have = np.concatenate([self.have, np.zeros(fr + 1 - len(self.have), bool)])
            f.seek(fr * self.frame_bytes)
            f.write(np.ascontiguousarray(x).tobytes())
        self.have[frames] = True

    def save_have(self, f: io.BufferedRandom) -> None:
        f.flush()
        os.fsync(f.fileno())  # frame bytes first, then the bitmap that vouches for them
        with self.lock:  # merge with what another process saved meanwhile
            merged = self.have.copy()
            other = self._load_have(len(merged))
            merged[: len(other)] |= other
            buf = io.BytesIO()
            np.save(buf, merged, allow_pickle=False)
            atomic_write_bytes(self.have_path, buf.getvalue())


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_end(root: Path) -> tuple[int | None, float | None]:
    """Where decoding is known to end: (frame, seconds), from end.json."""
    end = _read_json(root / "end.json")
    try:
        return int(end["stopped_at"]), (None if end.get("stop_time") is None else float(end["stop_time"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, None


def _read_lost(root: Path) -> list[tuple[int, int]]:
    """The [a, b) frame ranges a decoding pass found lost to damage (lost.json)."""
    lost = _read_json(root / "lost.json")
    try:
        return [(int(a), int(b)) for a, b in lost]
    except (TypeError, ValueError):
        return []


def _readable(root: Path, wanted: np.ndarray) -> tuple[np.ndarray, int | None, float | None, list]:
    """The wanted frames that decode: before where decoding is known to end (end.json), outside
    the ranges known lost (lost.json); that end (frame, seconds), and the lost ranges."""
    stop, stop_time = _read_end(root)
    lost = _read_lost(root)
    keep = np.ones(len(wanted), bool) if stop is None else wanted < stop
    for a, b in lost:
        keep &= (wanted < a) | (wanted >= b)
    return wanted[keep], stop, stop_time, lost


def _load_times(root: Path, video: Video) -> None:
    """Counted files: the frame times earlier passes recorded, into `video`."""
    try:
        t = np.load(root / "times.npy", allow_pickle=False)
    except (OSError, ValueError):
        return
    if t.dtype == np.float64 and t.ndim == 1:
        known = np.flatnonzero(~np.isnan(t))
        video.note_times(known, t[known])


def _save_facts(root: Path, decoding: DecodePass) -> None:
    """What the pass learnt besides pixels, merged with what other processes saved: frame times
    (counted files) and ranges lost to damage. Saved before the bitmaps that vouch for frames."""
    video = decoding.video
    with FileLock(str(root / "facts.lock")):
        if video.counted:
            mine = video.recorded_times()
            try:
                old = np.load(root / "times.npy", allow_pickle=False)
            except (OSError, ValueError):
                old = np.zeros(0)
            merged = np.full(max(len(mine), len(old)), np.nan)
            merged[: len(old)] = old
            merged[: len(mine)] = np.where(np.isnan(mine), merged[: len(mine)], mine)
            buf = io.BytesIO()
            np.save(buf, merged, allow_pickle=False)
            atomic_write_bytes(root / "times.npy", buf.getvalue())
        if decoding.missing:
            lost = missing_ranges(_read_lost(root) + list(decoding.missing), 0, 1 << 62)
            atomic_write_bytes(root / "lost.json", json.dumps(lost).encode())


def _servable(video: Video, root: Path, stores, wanted: np.ndarray):
    """(frames, stop, stop_time, lost) when the cache holds every wanted frame that decodes
    (and, for a counted file, its time), else None."""
    readable, stop, stop_time, lost = _readable(root, wanted)
    if video.counted:
        _load_times(root, video)
        if np.isnan(video.recorded_times(readable)).any():
            return None
    if not all(s.holds(readable) for s in stores):
        return None
    return readable, stop, stop_time, lost


def holds_all(video: Video, sizes: dict[str, Size], start: int = 0, end: int | None = None, stride: int = 1) -> bool:
    """True when the cache can serve every frame `cached_batches` would be asked for (nothing to decode)."""
    root = cache_root(video)
    if not root.is_dir() or not keeps(sizes):
        return False
    try:
        stores = [_Store(root, z, video.frame_count) for z in set(sizes.values())]
        return _servable(video, root, stores, video.wanted(start, end, stride)) is not None
    except OSError:
        return False


def cached_batches(
    video: Video,
    sizes: dict[str, Size],
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    batch_size: int = 64,
    frames: np.ndarray | None = None,
    prefetch: int = 2,
    workers: int = 1,
    keep: Keep | None = None,
) -> DecodePass:
    """Like `video.batches`, a pass that reads from the frame cache when it holds every wanted
    frame (a pass that decodes nothing), else decodes (and fills the cache as it goes). It finds
    `stopped_at`, `stop_time` and `missing` the same way, and gives the same times. `keep` is
    filled only where the pass decodes (frames read from the cache were never decoded: the caller
    decodes what it still needs)."""
    wanted = video.wanted(start, end, stride, frames)
    until = end if end is not None or frames is not None else video.frame_count  # as video.batches decodes on to
    decode = partial(decode_pool.batches, video, sizes, end=until, frames=wanted, batch_size=batch_size,
                     prefetch=prefetch, workers=workers, keep=keep)
    return DecodePass(video, lambda p: _cached(p, sizes, wanted, batch_size, decode))


def _cached(p: DecodePass, sizes: dict[str, Size], wanted: np.ndarray, batch_size: int,
            decode: Callable[[], DecodePass]) -> Iterator[Batch]:
    """The batches of `cached_batches`: from the cache, or `decode()`d (a pass) through it."""
    if not keeps(sizes):
        yield from p.through(decode())
        return
    root = cache_root(p.video)
    uniq = sorted(set(sizes.values()))
    try:
        root.mkdir(parents=True, exist_ok=True)
        stores = {z: _Store(root, z, p.video.frame_count) for z in uniq}
    except OSError as e:  # a read-only or full cache only costs speed
        log.warning("frame cache unavailable (%s); decoding", e)
        yield from p.through(decode())
        return
    served = _servable(p.video, root, stores.values(), wanted) if len(wanted) else None
    if served is None:
        yield from _decode_and_fill(p, sizes, wanted, decode(), root, stores)
        return
    readable, stop, stop_time, lost = served
    ends = stop is not None and wanted[-1] >= stop
    p.stopped_at, p.stop_time = (stop, stop_time) if ends else (None, None)
    p.missing = [tuple(r) for r in missing_ranges(lost, int(wanted[0]), int(wanted[-1]) + 1)]
    for i in range(0, len(readable), batch_size):
        idx = readable[i : i + batch_size]
        arrays = {z: s.read(idx) for z, s in stores.items()}
        yield Batch(idx, p.video.times_of(idx), {name: arrays[z] for name, z in sizes.items()})


def _decode_and_fill(p: DecodePass, sizes, wanted, decoding: DecodePass, root: Path, stores: dict) -> Iterator[Batch]:
    """The batches of `decoding` (a pass over the wanted frames, run as part of the pass `p`),
    each distinct size written into the cache as it passes.

    The cache only ever costs speed: when it cannot be written (full disk, permissions) the
    run says so once and goes on decoding without it.
    """
    name_of = {z: name for name, z in reversed(list(sizes.items()))}  # one name per distinct size
    files: dict = {}
    finished = False

    def give_up(e: OSError) -> None:
        log.warning("frame cache not written (%s); the next run decodes again", e)
        for f in files.values():
            f.close()
        files.clear()

    try:
        for z, s in stores.items():
            # create if missing, never truncate: another process may be filling the same file
            files[z] = os.fdopen(os.open(s.path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
    except OSError as e:
        give_up(e)
    try:
        for k, b in enumerate(p.through(decoding)):
            if files:
                try:
                    for z, name in name_of.items():
                        stores[z].write(files[z], b.indices, b.frames[name])
                    if (k + 1) % _SAVE_EVERY == 0:
                        _save_facts(root, p)
                        for z, s in stores.items():
                            s.save_have(files[z])
                except OSError as e:
                    give_up(e)
            yield b
        finished = True
    finally:
        if files:
            try:
                _save_facts(root, p)
                for z, s in stores.items():
                    s.save_have(files[z])
                if finished and p.stopped_at is not None and wanted[-1] >= p.stopped_at:
                    end = dict(stopped_at=int(p.stopped_at), stop_time=p.stop_time)
                    atomic_write_bytes(root / "end.json", json.dumps(end).encode())
            except OSError as e:
                give_up(e)
            for f in files.values():
                f.close()
