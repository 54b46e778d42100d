"""Short mp4 clips of the intervals where a query found the object, to check the answer by eye.

    ranges = clip_ranges(intervals, fps=25.0, frame_count=9000, pad_s=1.0, max_clips=50, max_s=60.0)
    write_clip(video, ranges[0], Path("clips/clip-001-12.40s-18.00s.mp4"), table)

Each interval is padded on both sides (so the clip shows the object arrive and leave), padded
intervals that overlap are merged into one clip, and the number and length of clips are
capped so a result with thousands of intervals does not fill a disk. Every frame carries a
caption with its time and the cascade's answer (green when yes), which is what a person checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import NoscopeError

MAX_WIDTH = 1280  # larger sources are scaled down: the clip is for a person, not a detector


@dataclass
class ClipRange:
    start_frame: int  # [start, end) of the clip, padding included
    end_frame: int
    intervals: list[tuple[int, int]] = field(default_factory=list)  # the answer's intervals inside it
    truncated: bool = False  # cut at the length cap

    def name(self, index: int, start_s: float, end_s: float) -> str:
        return f"clip-{index:03d}-{start_s:.2f}s-{end_s:.2f}s.mp4"


def clip_ranges(intervals, fps: float, frame_count: int, pad_s: float = 1.0, max_clips: int = 50,
                max_s: float = 60.0) -> tuple[list[ClipRange], int]:
    """Padded, merged, capped frame ranges for [start, end) frame `intervals` (sorted or not).

    Returns the ranges (at most `max_clips`, in time order, each at most `max_s` seconds) and
    how many merged ranges were left out by the cap.
    """
    pad = int(round(pad_s * fps))
    longest = max(1, int(round(max_s * fps)))
    merged: list[ClipRange] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals):
        lo, hi = max(0, a - pad), min(frame_count, b + pad)
        if hi <= lo:
            continue
        if merged and lo <= merged[-1].end_frame:  # overlapping or touching: one clip
            merged[-1].end_frame = max(merged[-1].end_frame, hi)
            merged[-1].intervals.append((a, b))
        else:
            merged.append(ClipRange(lo, hi, [(a, b)]))
    kept = merged[:max_clips]
    for c in kept:
        if c.end_frame - c.start_frame > longest:
            c.end_frame, c.truncated = c.start_frame + longest, True
    return kept, len(merged) - len(kept)


def _caption(bgr: np.ndarray, text: str, yes: bool) -> None:
    h, w = bgr.shape[:2]
    scale = max(0.4, h / 720)
    thick = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    colour = (50, 160, 40) if yes else (60, 60, 60)  # BGR
    cv2.rectangle(bgr, (0, 0), (tw + 12, th + base + 12), colour, -1)
    cv2.putText(bgr, text, (6, th + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    if yes:
        cv2.rectangle(bgr, (0, 0), (w - 1, h - 1), colour, max(2, thick * 2))


def write_clip(video, clip: ClipRange, path: Path, table=None, object_name: str = "object") -> int:
    """Decode the clip's frames from `video` into an mp4 at `path` (temp name, then renamed).

    `table` (a FrameTable) supplies each frame's time, answer and deciding stage for the caption.
    Returns the number of frames written.
    """
    path = Path(path)
    scale = min(1.0, MAX_WIDTH / video.width)
    size = (int(round(video.width * scale)) // 2 * 2, int(round(video.height * scale)) // 2 * 2)
    answer: dict[int, tuple[bool, str]] = {}
    frames = np.arange(clip.start_frame, clip.end_frame)
    when = video.times_of(frames) if table is None else table.seconds(frames, video.fps)  # as frames.csv recorded them
    if table is not None:
        m = (table.frame >= clip.start_frame) & (table.frame < clip.end_frame)
        answer = dict(zip(table.frame[m].tolist(), zip(table.label[m].tolist(), table.decided_by[m].tolist())))
    seconds = dict(zip(frames.tolist(), when.tolist()))
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the .mp4 suffix OpenCV picks the container by
    vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), video.fps, size)
    n = 0
    try:
        if not vw.isOpened():
            raise NoscopeError(f"cannot write {path}: this OpenCV build has no mp4v encoder")
        for batch in video.batches({"clip": size}, frames=frames, batch_size=16):
            for f, rgb in zip(batch.indices.tolist(), batch.frames["clip"]):
                bgr = np.ascontiguousarray(rgb[..., ::-1])
                yes, stage = answer.get(f, (False, None))
                said = f"{object_name}: {'yes' if yes else 'no'} ({stage})" if stage else "not answered"
                _caption(bgr, f"{seconds[f]:.2f} s  frame {f}  {said}", yes)
                vw.write(bgr)
                n += 1
        vw.release()
        if n == 0:
            raise NoscopeError(f"no frame of {video.path} decodes in [{clip.start_frame}, {clip.end_frame}); no clip written")
        # OpenCV's writer fails silently (full disk, missing codec): read the header back
        check = cv2.VideoCapture(str(tmp))
        got = int(check.get(cv2.CAP_PROP_FRAME_COUNT)) if check.isOpened() else 0
        check.release()
        if got != n:
            raise NoscopeError(f"writing {path} failed: the file holds {got} of {n} frames (disk full?)")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        vw.release()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return n
