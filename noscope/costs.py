"""Seconds per frame on this machine, for the optimizer's cost model: decoding and the reference.

    t_decode, t_luma = measure_decode_costs(video, start, end, Luma(50, 50))
    t_reference = measure_reference_cost(reference)

The cheap stages time themselves (each kind of cheap model: noscope.cheap; difference.measure_cost).
"""

from __future__ import annotations

import time

import numpy as np

from .video import Video


def measure_decode_costs(video: Video, start: int, end: int, spec, n: int = 200) -> tuple[float, float]:
    """Seconds per frame to decode a frame as a query's pass decodes it (PyAV, nothing made of it),
    and to also make `spec` of it: a video.Luma plane (what every processed frame pays), or RGB at a
    (width, height) (what a frame pays to reach the model or the reference). The faster of two runs."""
    n = max(1, min(n, end - start))
    begin = 0 if video.counted else start  # a counted file is decoded from its start: time its first frames
    plain = min(_per_frame(video, {}, begin, n) for _ in range(2))
    made = min(_per_frame(video, {"x": spec}, begin, n) for _ in range(2))
    return plain, max(made - plain, 1e-7)


def _per_frame(video: Video, sizes: dict, begin: int, n: int) -> float:
    t0 = time.perf_counter()
    with video.batches(sizes, begin, begin + n, prefetch=0) as decoding:
        got = sum(len(b) for b in decoding)
    return (time.perf_counter() - t0) / max(got, 1)


def measure_reference_cost(reference, n: int = 8) -> float:
    """Seconds per frame of the reference on a batch of `n` random frames (after one warm-up)."""
    w, h = reference.input_size or (640, 360)
    frames = np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    reference.predict(frames[:1])  # warm-up
    t0 = time.perf_counter()
    reference.predict(frames)
    return (time.perf_counter() - t0) / n
