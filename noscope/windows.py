"""The question per window of time: what a window is, when it is "yes", and how few reference
answers can tell.

    w = parse_window("1s")                       # WindowSpec(seconds=1.0) ; "30f" -> frames=30
    grid = WindowGrid(start, end, w.frames_at(fps), share=0.5)
    grid.index_of(frames), grid.first, grid.last   # each frame's window, each window's frames
    grid.truth(frame_truth)                      # the reference's answer per window
    decided(pos, neg, size, share)               # True / False once a window's answer is certain

A window is `size` consecutive frames, counted from the segment's start; the last window of the
segment may be shorter and is judged on the frames it has. It is "yes" when the reference sees the
object in at least `share` of its frames (default 0.5: half or more; NoScope's 28 of 30 is
28/30). Its answer is therefore known for certain before every frame is seen: once `need` =
ceil(share * size) frames are positive, or `size - need + 1` negative (`decided`). The cascade
answers a window from a few of its frames (`Sampling`: the reference on frames spread over the
window, in a fixed order, until one answer leads by `lead` or `most` frames are seen), and the
check on the video learns a drawn window's truth with as few calls as certainty allows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import UsageError

DEFAULT_SHARE = 0.5  # half or more of the window's frames: a majority, ties counting as yes
MAX_WINDOW_FRAMES = 10**6  # the configuration's bound too (config.MAX_WINDOW)
_SPEC = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(s|f)?\s*")


@dataclass(frozen=True)
class WindowSpec:
    """A window's length as the user gave it: seconds of video, or frames."""

    seconds: float | None = None
    frames: int | None = None

    def frames_at(self, fps: float) -> int:
        """Frames per window at `fps`: round(seconds x fps), at least 1; or the frames given."""
        if self.frames is not None:
            return self.frames
        return max(1, min(MAX_WINDOW_FRAMES, int(round(self.seconds * float(fps)))))

    def __str__(self) -> str:
        return f"{self.frames}f" if self.frames is not None else f"{self.seconds:g}s"


def parse_window(spec) -> WindowSpec:
    """`1s`, `0.5s`, `30f` (a bare number is seconds); anything else, zero or less, is one usage line."""
    if isinstance(spec, WindowSpec):
        return spec
    text = str(spec)
    m = _SPEC.fullmatch(text)
    if m is None:
        raise UsageError(f"--window {text!r}: give seconds or frames, like 1s, 0.5s or 30f")
    value, unit = float(m.group(1)), m.group(2) or "s"
    if unit == "f":
        if value != int(value) or not 1 <= value <= MAX_WINDOW_FRAMES:
            raise UsageError(f"--window {text!r}: a window of frames is a whole number from 1 to {MAX_WINDOW_FRAMES}")
        return WindowSpec(frames=int(value))
    if not 0 < value <= 86400:
        raise UsageError(f"--window {text!r}: a window is more than 0 seconds long (and at most a day)")
    return WindowSpec(seconds=value)


def need(size, share: float):
    """Positive frames that make a window of `size` frames "yes" (at least 1)."""
    return np.maximum(1, np.ceil(np.asarray(size) * share - 1e-9).astype(np.int64))


def decided(pos, neg, size, share: float):
    """The window's answer once certain (True / False), else None: `pos` positive and `neg`
    negative frames seen of `size`. Arrays give int8 (1 yes, 0 no, -1 not yet)."""
    k = need(size, share)
    out = np.where(np.asarray(pos) >= k, 1, np.where(np.asarray(neg) > np.asarray(size) - k, 0, -1)).astype(np.int8)
    if out.ndim == 0:
        return None if out < 0 else bool(out)
    return out


@dataclass(frozen=True)
class WindowQuestion:
    """The question a windowed query asks: windows of `size` frames, "yes" at `share` positive frames."""

    size: int
    share: float = DEFAULT_SHARE


class WindowGrid:
    """The windows of [start, end): consecutive runs of `size` frames from `start`, the last one
    shorter where the segment ends inside it."""

    def __init__(self, start: int, end: int, size: int, share: float = DEFAULT_SHARE):
        if not 0 < share <= 1:
            raise UsageError(f"a window's share of positive frames must be in (0, 1], got {share!r}")
        self.start, self.end, self.size, self.share = int(start), int(end), int(size), float(share)
        n = max(self.end - self.start, 0)
        self.first = np.arange(self.start, self.end, self.size, dtype=np.int64)
        self.last = np.minimum(self.first + self.size, self.end) - 1
        self.lengths = self.last - self.first + 1
        self.count = len(self.first)
        self.frames = n

    def index_of(self, frames) -> np.ndarray:
        """The window of each frame."""
        return (np.asarray(frames, np.int64) - self.start) // self.size

    def truth(self, frame_truth: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        """Each window's answer from per-frame answers (all frames of the segment, or those of
        `frames`: a window is judged on the frames it has)."""
        frames = np.arange(self.start, self.end) if frames is None else np.asarray(frames, np.int64)
        w = self.index_of(frames)
        pos = np.bincount(w, weights=np.asarray(frame_truth, bool), minlength=self.count)
        have = np.bincount(w, minlength=self.count)
        return (have > 0) & (pos >= need(np.maximum(have, 1), self.share))

    def spread(self, w: int) -> np.ndarray:
        """Window `w`'s frames in the order the cascade's reference stage asks for them (`spread_order`)."""
        return self.first[w] + spread_order(int(self.lengths[w]))


def spread_order(n: int) -> np.ndarray:
    """Positions 0..n-1 in an order whose every prefix is spread over the window: the middle first,
    then the middles of the halves, of the quarters, ... (a van der Corput order), so k frames
    asked for sample the window evenly whatever k turns out to be."""
    if n <= 0:
        return np.zeros(0, np.int64)
    bits = max(1, math.ceil(math.log2(n)) + 1)
    corput = [int(format(i, f"0{bits}b")[::-1], 2) / 2 ** bits for i in range(1, 2 ** bits)]  # 1/2, 1/4, 3/4, 1/8...
    seen, out = set(), []
    for p in [int(k * n) for k in corput] + list(range(n)):
        if p not in seen:
            seen.add(p)
            out.append(p)
    return np.array(out, np.int64)


@dataclass(frozen=True)
class Sampling:
    """The reference stage of a window: ask for frames in `spread_order` until one answer leads by
    `lead` (positive minus negative frames seen, or the reverse), `most` frames are seen, or the
    window's answer is certain; answer by the share of positive frames seen. `lead=0` never stops
    early: `most` frames are asked (all of them: the window's own answer, exactly)."""

    lead: int
    most: int

    def __post_init__(self):
        if self.lead < 0 or self.most < 1:
            raise UsageError(f"a window's reference sampling needs lead >= 0 and most >= 1, got {self.lead}, {self.most}")

    def run(self, answers, share: float, size: int | None = None) -> tuple[bool, int, bool] | None:
        """(answer, frames asked, exact) for one window whose frames' reference answers, in
        spread order, are `answers` (only a prefix is read). `exact`: the answer is certain.
        With `size`, `answers` may be only the known start of a window of that many frames: None
        where the sampling would ask past it."""
        size = len(answers) if size is None else size
        pos = neg = 0
        for i in range(len(answers)):
            pos, neg = pos + bool(answers[i]), neg + (not answers[i])
            done = self.stop(pos, neg, size, share)
            if done is not None:
                return done[0], i + 1, done[1]
        if len(answers) < size:
            return None
        return bool(pos >= need(size, share)), size, True

    def stop(self, pos: int, neg: int, size: int, share: float) -> tuple[bool, bool] | None:
        """After `pos` positive and `neg` negative frames of a window of `size`: (answer, exact) when
        the sampling stops here, None to ask for the next frame."""
        sure = decided(pos, neg, size, share)
        if sure is not None:
            return sure, True
        seen = pos + neg
        if seen >= min(self.most, size) or (self.lead and abs(pos - neg) >= self.lead):
            return bool(pos >= need(seen, share)), False
        return None

    def describe(self) -> str:
        return f"reference on up to {self.most} frames a window" + (f", until one answer leads by {self.lead}"
                                                                     if self.lead else "")
