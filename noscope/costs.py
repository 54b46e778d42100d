"""Seconds per frame on this machine, for the optimizer's cost model: decoding and the reference.

    t_grab, t_convert = measure_decode_costs(video, start, end, (50, 50))
    t_reference = measure_reference_cost(reference)

The cheap stages time themselves (each kind of cheap model: noscope.cheap; difference.measure_cost).
"""

from __future__ import annotations

import time

import numpy as np

from .video import Video


def measure_decode_costs(video: Video, start: int, end: int, size: tuple[int, int], n: int = 200) -> tuple[float, float]:
    """Seconds per frame to demux+decode (grab) and to also convert+resize one frame."""
    import cv2

    n = max(1, min(n, end - start))
    cap = cv2.VideoCapture(str(video.path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    t0 = time.perf_counter()
    grabbed = sum(1 for _ in range(n) if cap.grab())
    t_grab = (time.perf_counter() - t0) / max(grabbed, 1)
    cap.release()
    begin = 0 if video.counted else start  # a counted file is decoded from its start: time its first frames
    t0 = time.perf_counter()
    got = sum(len(b) for b in video.batches({"x": size}, begin, begin + n))
    t_full = (time.perf_counter() - t0) / max(got, 1)
    return t_grab, max(t_full - t_grab, 1e-7)


def measure_reference_cost(reference, n: int = 8) -> float:
    """Seconds per frame of the reference on a batch of `n` random frames (after one warm-up)."""
    w, h = reference.input_size or (640, 360)
    frames = np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    reference.predict(frames[:1])  # warm-up
    t0 = time.perf_counter()
    reference.predict(frames)
    return (time.perf_counter() - t0) / n
