"""Run the reference detector on frames of a video and cache what it says.

    from noscope.labels import label_frames
    labels = label_frames(video, reference, frames=np.arange(0, 1000))
    labels.scores[:, reference.class_index("car")]     # per-frame max confidence of "car"

The cache keeps, for every labelled frame, the max confidence of *every* class plus the boxes,
so one labelling pass serves queries for any object. It lives in
`<cache>/labels/<video content hash>/<reference key>_<decoder>_<device-precision>/` as chunk files of consecutive work
(`chunk-<first>-<last>.npz`), each written atomically as soon as it is finished: an
interrupted run loses at most one chunk, a second run only labels what is missing, and a
different segment or stride reuses every frame already labelled. A chunk that fails to load
(corrupt, half-copied) is set aside and its frames are labelled again. Beside the chunks,
`checks.jsonl` notes what each query's check found on the video (`note_check`), which an update
of the bundle reads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from filelock import FileLock

from . import atomic
from .metrics import smooth
from .paths import cache_dir
from .progress import progress_bar
from .reference import reference_runtime
from .reference.base import Detections, Reference
from .video import DecodePass, Video, decoder_version

log = logging.getLogger(__name__)

CHUNK_FRAMES = 256  # frames per cache file: small enough that an interruption loses little


def chunk_frames() -> int:
    """Frames per cache file: CHUNK_FRAMES, or the NOSCOPE_LABEL_CHUNK environment variable (tests)."""
    try:
        return max(1, int(os.environ.get("NOSCOPE_LABEL_CHUNK", CHUNK_FRAMES)))
    except ValueError:
        return CHUNK_FRAMES


@dataclass
class Labels:
    """The reference's answers for a set of frames (sorted by frame number)."""

    frames: np.ndarray  # int64 (N,)
    scores: np.ndarray  # float32 (N, num_classes)
    detections: list[Detections]
    from_cache: int = 0  # how many of the N came from the cache
    seconds: float = 0.0  # wall time spent labelling the rest
    decoding: DecodePass | None = None  # the pass that decoded the frames labelled fresh (None: none was needed)

    def score_of(self, class_index: int) -> np.ndarray:
        return self.scores[:, class_index]


def store_dir(video: Video, ref_key: str, reference: Reference) -> Path:
    """Where one video's labels by one reference live. Keyed by the decoder that made the frames
    and by how the reference runs here (device, precision) as well as by the reference: a label
    made on OpenCV's frames, or in fp16 on a GPU, can differ on a borderline frame from the one
    this run would compute, so it is never reused for it."""
    return cache_dir() / "labels" / video.hash / f"{ref_key}_{decoder_version(video.backend)}_{reference_runtime(reference)}"


CHECKS = "checks.jsonl"  # one line per query of the video: what its check found (noscope.update reads it)
CHECKS_MAX_BYTES = 256 << 10  # about a thousand queries' notes; past it the oldest half goes
CHECKS_KEEP = 500  # notes kept when the file is trimmed (an update reads the newest that fits it)


def note_check(directory: Path, record: dict) -> None:
    """Add one query's check record to the video's label store, keeping the file bounded (the newest
    CHECKS_KEEP notes when it grows past CHECKS_MAX_BYTES: a nightly job queries the same video
    for ever). A line that cannot be written costs a later update one comparison, never an answer:
    it is logged and passed over."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CHECKS
        with FileLock(str(directory) + ".lock"):
            with open(path, "a") as f:  # one short line, appended whole
                f.write(json.dumps(record) + "\n")
            if path.stat().st_size > CHECKS_MAX_BYTES:
                kept = path.read_text().splitlines()[-CHECKS_KEEP:]
                atomic.atomic_write_bytes(path, ("\n".join(kept) + "\n").encode())
    except OSError as e:
        log.warning("could not note the check of this query in %s: %s", directory, e)


def checks_noted(directory: Path) -> list[dict]:
    """The check records of the video's queries, oldest first (a line that does not read is skipped)."""
    try:
        lines = (directory / CHECKS).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def _write_npz_atomic(path: Path, **arrays) -> None:
    atomic.atomic_write(path, lambda f: np.savez(f, **arrays))


def _pack(frames: list[int], scores: list[np.ndarray], dets: list[Detections]) -> dict[str, np.ndarray]:
    owner = np.concatenate([np.full(len(d.scores), i, np.int32) for i, d in enumerate(dets)]) if dets else np.zeros(0, np.int32)
    return dict(
        frames=np.asarray(frames, np.int64),
        scores=np.stack(scores).astype(np.float32),
        det_frame=owner.astype(np.int32),
        det_boxes=np.concatenate([d.boxes for d in dets]).astype(np.float32).reshape(-1, 4),
        det_scores=np.concatenate([d.scores for d in dets]).astype(np.float32),
        det_classes=np.concatenate([d.classes for d in dets]).astype(np.int64),
    )


def _unpack(z) -> tuple[np.ndarray, np.ndarray, list[Detections]]:
    frames, scores = z["frames"], z["scores"]
    owner = z["det_frame"]
    # one stable sort and split, not a scan of every detection per frame (a chunk of a busy road
    # holds thousands of boxes)
    order = np.argsort(owner, kind="stable")
    cuts = np.searchsorted(owner[order], np.arange(1, len(frames)))
    boxes, det_scores, classes = (np.split(z[k][order], cuts) for k in ("det_boxes", "det_scores", "det_classes"))
    dets = [Detections(b, s, c) for b, s, c in zip(boxes, det_scores, classes)]
    return frames, scores, dets


def _chunk_span(path: Path) -> tuple[int, int] | None:
    """The first and last frame a chunk file's name says it holds (chunk-FIRST-LAST-N.npz)."""
    parts = path.stem.split("-")
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None


def load_cached(directory: Path, num_classes: int, frames: np.ndarray | None = None) -> dict[int, tuple[np.ndarray, Detections]]:
    """What is cached for one (video, reference): frame -> (class scores, detections); with
    `frames` (sorted), only the chunks whose span holds one of them are read (a long video's
    cache holds many chunks, and a query's check asks for a few hundred frames at a time)."""
    out: dict[int, tuple[np.ndarray, Detections]] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("chunk-*.npz")):
        span = _chunk_span(path) if frames is not None else None
        if span is not None and not _holds_any(frames, *span):
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                held, scores, dets = _unpack(z)
            if scores.ndim != 2 or scores.shape[1] != num_classes or len(held) != len(scores):
                raise ValueError("wrong shape")
        except Exception as e:  # corrupt or foreign file: relabel those frames rather than fail
            log.warning("label cache file %s is unreadable (%s); moving it aside and relabelling", path, e)
            try:
                os.replace(path, path.with_suffix(".corrupt"))
            except OSError:
                pass
            continue
        for f, s, d in zip(held.tolist(), scores, dets):
            out[f] = (s, d)
    return out


def _holds_any(frames: np.ndarray, first: int, last: int) -> bool:
    i = np.searchsorted(frames, first)
    return bool(i < len(frames) and frames[i] <= last)


def label_frames(
    video: Video,
    reference: Reference,
    ref_key: str,
    frames: np.ndarray,
    *,
    use_cache: bool = True,
    refresh: bool = False,
    quiet: bool = False,
    desc: str = "label",
    pixels: dict[int, np.ndarray] | None = None,
) -> Labels:
    """Reference answers for the given frame numbers, labelling only what the cache lacks.

    use_cache=False neither reads nor writes the cache; refresh=True labels every frame again
    (for honest timings) and writes the results. `pixels`: frame -> its picture at the reference's
    input size, already decoded (a query's pass kept them): those are not decoded again.
    """
    frames = np.unique(np.asarray(frames, np.int64))
    directory = store_dir(video, ref_key, reference)
    n_classes = len(reference.class_names)
    cached = load_cached(directory, n_classes, frames) if use_cache and not refresh else {}
    missing = np.array([f for f in frames.tolist() if f not in cached], np.int64)
    from_cache = len(frames) - len(missing)

    t0 = time.perf_counter()
    decoding = None
    if len(missing):
        size = reference.input_size or (video.width, video.height)
        writer = LabelWriter(directory, use_cache)
        pictures, decoding = _pictures(video, missing, size, reference.batch_size, pixels or {})
        with progress_bar(total=len(missing), desc=desc, unit="frame", quiet=quiet) as bar, closing(pictures):
            for indices, frames_det in pictures:
                scores, dets = reference.predict(frames_det)
                for f, s, d in zip(indices.tolist(), scores, dets):
                    cached[f] = (s, d)
                writer.add(indices, scores, dets)
                bar.update(len(indices))
        writer.flush()
    seconds = time.perf_counter() - t0

    have = np.array([f for f in frames.tolist() if f in cached], np.int64)
    scores = np.stack([cached[f][0] for f in have.tolist()]) if len(have) else np.zeros((0, n_classes), np.float32)
    dets = [cached[f][1] for f in have.tolist()]
    return Labels(have, scores.astype(np.float32), dets, from_cache=from_cache, seconds=seconds, decoding=decoding)


class LabelWriter:
    """New reference answers, written to the label cache in chunks of chunk_frames() as they come
    (each chunk atomically, under the video's lock: an interruption loses at most one); with
    `use_cache` off, nothing is written."""

    def __init__(self, directory: Path, use_cache: bool = True):
        self.directory, self.use_cache = directory, use_cache
        self.lock = FileLock(str(directory) + ".lock") if use_cache else None
        self.frames: list[int] = []
        self.scores: list[np.ndarray] = []
        self.dets: list[Detections] = []

    def add(self, frames, scores, dets) -> None:
        self.frames += [int(f) for f in frames]
        self.scores += list(scores)
        self.dets += list(dets)
        if len(self.frames) >= chunk_frames():
            self.flush()

    def flush(self) -> None:
        if self.use_cache and self.frames:
            order = np.argsort(self.frames, kind="stable")  # a chunk's name spans its first and last frame
            f = [self.frames[i] for i in order]
            with self.lock:
                _write_npz_atomic(self.directory / f"chunk-{f[0]:09d}-{f[-1]:09d}-{len(f)}.npz",
                                  **_pack(f, [self.scores[i] for i in order], [self.dets[i] for i in order]))
        self.frames, self.scores, self.dets = [], [], []


class ReferenceStream:
    """The reference answering frames while a decoding pass goes, their pictures in hand (no second
    pass over the video): what the label cache holds for the segment is read once, the other frames
    are asked for (in the reference's batches) and cached in chunks as they come. `close` writes the
    last chunk. `seconds` and `calls` say what the reference itself cost."""

    def __init__(self, video: Video, reference: Reference, ref_key: str, span: tuple[int, int], use_cache: bool = True):
        self.reference = reference
        directory = store_dir(video, ref_key, reference)
        n = len(reference.class_names)
        held = load_cached(directory, n, np.arange(*span)) if use_cache else {}
        self.cached = {f: s for f, (s, _) in held.items()}
        self.writer = LabelWriter(directory, use_cache)
        self.seconds, self.calls = 0.0, 0

    def answer(self, frames: np.ndarray, pictures: np.ndarray) -> np.ndarray:
        """The reference's class scores (N, classes) of `frames`, whose pictures (at its input size) are given."""
        t = time.perf_counter()
        out = []
        for i in range(0, len(frames), self.reference.batch_size):
            scores, dets = self.reference.predict(pictures[i : i + self.reference.batch_size])
            self.writer.add(frames[i : i + len(scores)], scores, dets)
            out.append(np.asarray(scores, np.float32))
        self.calls += len(frames)
        self.seconds += time.perf_counter() - t
        return np.concatenate(out) if out else np.zeros((0, len(self.reference.class_names)), np.float32)

    def close(self) -> None:
        self.writer.flush()


def _pictures(video: Video, frames: np.ndarray, size, batch_size: int,
              pixels: dict[int, np.ndarray]) -> tuple[Iterator, DecodePass | None]:
    """(frame numbers, pictures at `size`) in batches: those in `pixels` first, then the rest
    decoded; and the pass that decodes the rest (None when `pixels` holds them all)."""
    have = np.array([f for f in frames.tolist() if f in pixels], np.int64)
    rest = frames[~np.isin(frames, have)]
    decoding = video.batches({"det": size}, frames=rest, batch_size=batch_size) if len(rest) else None

    def pictures():
        for s in range(0, len(have), batch_size):
            chunk = have[s : s + batch_size]
            yield chunk, np.stack([pixels[f] for f in chunk.tolist()])
        if decoding is not None:
            with decoding:
                for batch in decoding:
                    yield batch.indices, batch.frames["det"]

    return pictures(), decoding


def object_truth(scores: np.ndarray, min_score: float, smooth_k: int, blocks: np.ndarray | None = None) -> np.ndarray:
    """The reference's answer: score >= min_score, optionally majority-smoothed over time
    (within runs of consecutive frames). The cascade is judged against this."""
    return smooth(scores >= min_score, smooth_k, blocks=blocks)


@dataclass
class Sample:
    """Frames labelled for training: the reference's scores and what counts as positive."""

    frames: np.ndarray  # int64 (N,), in video order
    run_ids: np.ndarray  # int (N,): the run of consecutive frames each belongs to
    scores: np.ndarray  # float (N,), or (N, objects)
    truth: np.ndarray  # bool, same shape
    reference_cost: float | None  # seconds per frame the reference took here (None: too few labelled fresh)


def labelled_sample(video: Video, reference: Reference, ref_key: str, frames: np.ndarray, run_ids: np.ndarray,
                    classes: list[int], min_score: float, smooth_k: int, quiet: bool = False) -> Sample:
    """Label `frames` (cached where possible); frames that could not be decoded are dropped.
    One class gives (N,) arrays, several classes (N, K) arrays."""
    labels = label_frames(video, reference, ref_key, frames, quiet=quiet, desc="label")
    if len(labels.frames) < len(frames):
        keep = np.isin(frames, labels.frames)
        frames, run_ids = frames[keep], run_ids[keep]
    multi = len(classes) > 1
    scores = labels.scores[:, classes] if multi else labels.score_of(classes[0])
    truth = (np.stack([object_truth(c, min_score, smooth_k, blocks=run_ids) for c in scores.T], axis=1)
             if multi else object_truth(scores, min_score, smooth_k, blocks=run_ids))
    fresh = len(frames) - labels.from_cache
    cost = labels.seconds / max(fresh, 1) if labels.seconds > 0 and fresh >= 32 else None
    return Sample(frames, run_ids, scores, truth, cost)
