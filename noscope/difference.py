"""Difference detectors: skip frames that look the same as one whose answer is known.

NoScope (section 5): with a fixed camera most frames barely change. A frame's mean squared
error (MSE) against
  * the frame `s` frames earlier ("prev" kind): small -> reuse that frame's answer, or
  * an image of the empty scene ("ref" kind): small -> nothing is there, answer "no",
costs microseconds, against milliseconds for even the specialized CNN. "global" mode takes
one MSE over the whole frame; "blocked" mode cuts the frame into grid x grid blocks and
combines the per-block MSEs with a fitted logistic regression, so a change in a block where
objects appear counts for more than flicker in the sky.

    from noscope import difference as df
    dets = df.fit_detectors(frames, labels, blocks, skips=(1, 5, 10), grid=5)
    ref = next(d for d in dets if d.name == "ref-blocked")
    per_skip = df.diff_scores(ref, frames, blocks, skips=(1, 5))   # {1: (N,), 5: (N,)}
    cost = df.measure_cost(ref, size=50)                           # seconds per frame
    df.save_npy("bundle/ref.npy", ref.reference_image)             # the YAML holds ref.to_dict()
    again = df.DiffDetector.from_dict(ref.to_dict(), df.load_npy("bundle/ref.npy"))

Inputs are uint8 frames (N, S, S, C), C = 3 (RGB) or 1 (or (N, S, S) grey), at the small
size the specialized models use. Scores: higher = more changed. The optimizer picks the
thresholds; nothing here decides.

All of this is numpy on the CPU: at 50x50 a detector costs a few microseconds per frame,
less than copying the frame to a GPU would.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import NoscopeError

KINDS = ("prev", "ref")
MODES = ("global", "blocked")

# Frames per chunk when computing MSEs: bounds the int32 temporaries (50x50x3 -> ~30 MB).
_CHUNK = 1024

# Blocked features are log(1 + block MSE): sensor noise gives MSEs of a few units and an
# object hundreds to thousands, and the log keeps the regression from being driven by the
# few largest values (and its logits bounded). Recorded in to_dict so a bundle says so.
FEATURES = "log1p-block-mse"

# The empty scene needs enough object-free frames that a median is really "the background".
_MIN_NEGATIVES = 10
# ...and more than this many frames add nothing to a per-pixel median but time and memory.
_MEDIAN_FRAMES = 2000

# Logistic regression: L2 strength (on standardized features, loss averaged over samples)
# and the most rows used; beyond that a seeded subsample (all minority rows kept) suffices.
_L2 = 1e-3
_MAX_ROWS = 200_000


# --------------------------------------------------------------------------- MSEs


def _as_frames(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise NoscopeError(f"{what} must be uint8 frames, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]  # (N, S, S) greyscale
    if x.ndim != 4:
        raise NoscopeError(f"{what} must be (N, S, S, C) frames, got shape {x.shape}")
    return x


def _block_edges(size: int, grid: int) -> np.ndarray:
    if not 1 <= grid <= size:
        raise NoscopeError(f"block grid must be in 1..{size} for {size}-pixel frames, got {grid}")
    # Blocks as equal as possible (50 px in 4 -> 12/13/12/13) rather than dropping a margin.
    return np.round(np.linspace(0, size, grid + 1)).astype(np.int64)


def _block_sums(a: np.ndarray, b: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block sums of squared differences (int64, exact) and the element count per block."""
    a = _as_frames(a, "frames")
    b = _as_frames(b, "comparison frames")
    if b.shape[0] != a.shape[0] and b.shape[0] != 1:
        raise NoscopeError(f"cannot compare {a.shape[0]} frames with {b.shape[0]}")
    if a.shape[1:] != b.shape[1:]:
        raise NoscopeError(f"cannot compare frames of shape {a.shape[1:]} with {b.shape[1:]}")
    n, h, w, c = a.shape
    if h != w:
        raise NoscopeError(f"frames must be square, got {h}x{w}")
    edges = _block_edges(h, grid)
    out = np.empty((n, grid, grid), dtype=np.int64)
    for s in range(0, n, _CHUNK):
        ca = a[s : s + _CHUNK].astype(np.int32)
        cb = b if b.shape[0] == 1 else b[s : s + _CHUNK]
        d = ca - cb  # int32: squares up to 255^2 and block sums fit comfortably
        sq = np.einsum("nhwc,nhwc->nhw", d, d) if c > 1 else (d * d)[..., 0]
        rows = np.add.reduceat(sq, edges[:-1], axis=1, dtype=np.int64)
        out[s : s + _CHUNK] = np.add.reduceat(rows, edges[:-1], axis=2, dtype=np.int64)
    sizes = np.diff(edges)
    counts = np.outer(sizes, sizes) * c
    return out.reshape(n, grid * grid), counts.reshape(grid * grid)


def block_mse(a: np.ndarray, b: np.ndarray, grid: int) -> np.ndarray:
    """MSE of each of grid x grid blocks: uint8 (N, S, S, C) x2 -> float32 (N, grid*grid).

    Blocks in row-major order (block row, then block column); averaged over pixels and
    channels. `b` may hold a single frame (1, S, S, C) or (S, S, C), compared with every frame of `a`.
    """
    b = _broadcast_one(a, b)
    sums, counts = _block_sums(a, b, grid)
    return (sums / counts).astype(np.float32)


def global_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE of whole frames: uint8 (N, S, S, C) x2 -> float32 (N,). `b` may be one frame."""
    b = _broadcast_one(a, b)
    sums, counts = _block_sums(a, b, 1)
    return (sums[:, 0] / counts[0]).astype(np.float32)


def _broadcast_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # A single reference image (S, S, C) / (S, S) is compared with every frame.
    a, b = np.asarray(a), np.asarray(b)
    if b.ndim == a.ndim - 1 and b.shape == a.shape[1:]:
        return b[None]
    return b


# --------------------------------------------------------------------------- empty scene


def empty_scene(frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The scene without objects: per-pixel median of frames the reference called negative.

    Fewer than 10 negatives: median of all frames instead (objects rarely sit still in the
    same pixels, so the median still mostly shows the background). At most 2000 evenly
    spaced frames are used. Returns uint8 with the frames' (S, S, C) shape.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0:
        raise NoscopeError(f"empty_scene needs uint8 (N, S, S, C) frames, got {frames.dtype} {frames.shape}")
    neg = ~_bool_labels(labels, len(frames))
    pool = frames[neg] if neg.sum() >= _MIN_NEGATIVES else frames
    if len(pool) > _MEDIAN_FRAMES:
        pool = pool[np.linspace(0, len(pool) - 1, _MEDIAN_FRAMES).round().astype(np.int64)]
    # median of an even count is a .5 average; round it back to a pixel value
    return np.clip(np.round(np.median(pool, axis=0)), 0, 255).astype(np.uint8)


def _bool_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise NoscopeError(f"labels must have shape ({n},), got {labels.shape}")
    # Soft reference scores count as present from 0.5 up, like everywhere else.
    return labels >= 0.5 if labels.dtype != np.bool_ else labels


# --------------------------------------------------------------------------- detectors


@dataclass
class DiffDetector:
    """One difference detector. See the module docstring for kinds and modes.

    weights/bias: the blocked mode's logistic regression over log1p(block MSE) features
    (None in global mode). reference_image: uint8 (S, S, C) empty scene for kind "ref".
    """

    name: str
    kind: str
    mode: str
    grid: int
    weights: np.ndarray | None = None
    bias: float | None = None
    reference_image: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.mode not in MODES:
            raise NoscopeError(f"difference detector {self.name!r}: kind must be prev|ref and mode global|blocked")
        if self.mode == "blocked":
            if self.weights is None or self.bias is None:
                raise NoscopeError(f"difference detector {self.name!r}: blocked mode needs fitted weights and bias")
            self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
            if self.weights.shape != (self.grid * self.grid,):
                raise NoscopeError(
                    f"difference detector {self.name!r}: {self.weights.size} weights for a {self.grid}x{self.grid} grid"
                )
            self.bias = float(self.bias)
        if self.reference_image is not None:
            self.reference_image = np.asarray(self.reference_image)

    def score(self, frames: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """How changed each frame is: float32 (N,), higher = more changed.

        kind "prev": `previous` holds, for each frame, the frame it is compared with (the
        caller picks them, e.g. s frames earlier). kind "ref": compared with reference_image.
        Global mode: the MSE. Blocked mode: the regression's logit that the frame changed.
        """
        if self.kind == "prev":
            if previous is None:
                raise NoscopeError(f"difference detector {self.name}: needs the previous frames to compare with")
            other = previous
            if np.shape(other)[0] != np.shape(frames)[0]:
                raise NoscopeError(f"difference detector {self.name}: {len(other)} previous frames for {len(frames)} frames")
        else:
            if self.reference_image is None:
                raise NoscopeError(f"difference detector {self.name}: reference image missing (load it with load_npy)")
            other = self.reference_image
        if self.mode == "global":
            return global_mse(frames, other)
        feats = np.log1p(block_mse(frames, other, self.grid))
        return (feats @ self.weights + np.float32(self.bias)).astype(np.float32)

    def to_dict(self) -> dict:
        """Plain numbers/lists/strings for a YAML bundle (the reference image is saved apart)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "mode": self.mode,
            "grid": int(self.grid),
            "features": FEATURES if self.mode == "blocked" else "mse",
            "weights": None if self.weights is None else [float(w) for w in self.weights],
            "bias": None if self.bias is None else float(self.bias),
        }

    @staticmethod
    def from_dict(d: dict, reference_image: np.ndarray | None = None) -> "DiffDetector":
        """Inverse of to_dict; a "ref" detector needs its reference image passed back in."""
        try:
            if d.get("mode") == "blocked" and d.get("features", FEATURES) != FEATURES:
                raise NoscopeError(f"difference detector {d.get('name')!r}: unknown features {d.get('features')!r}")
            det = DiffDetector(
                name=str(d["name"]),
                kind=str(d["kind"]),
                mode=str(d["mode"]),
                grid=int(d["grid"]),
                weights=None if d.get("weights") is None else np.asarray(d["weights"], dtype=np.float32),
                bias=None if d.get("bias") is None else float(d["bias"]),
                reference_image=reference_image,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise NoscopeError(f"damaged difference detector entry in the bundle: {type(e).__name__} {e}") from None
        if det.kind == "ref" and det.reference_image is None:
            raise NoscopeError(f"difference detector {det.name}: a ref detector needs its reference image")
        return det


# --------------------------------------------------------------------------- logistic regression


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = _L2) -> tuple[np.ndarray, float] | None:
    """Class-balanced, L2-regularised logistic regression by Newton's method.

    Returns (weights, bias) on the raw features, or None when y has a single class. Balanced
    weights because changes are rare (a few % of frame pairs): unweighted, the fit would
    spend itself on the unchanged majority. Newton on <= a few hundred features converges in
    ~10 steps and is deterministic, no optimiser settings to tune.
    """
    y = y.astype(np.float64)
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Standardise so one L2 strength suits any grid or scene; folded back into w, b at the end.
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-6] = 1.0
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    sw = np.where(y > 0.5, 0.5 / n_pos, 0.5 / n_neg)  # each class has total weight 1/2
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # the intercept is not shrunk
    theta = np.zeros(z.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ theta, -30, 30)))
        grad = z.T @ (sw * (p - y)) + reg * theta
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(reg)
        # A tiny ridge keeps the solve stable when the classes are perfectly separable.
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(theta)), grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    w = theta[:-1] / sd
    b = theta[-1] - float(w @ mu)
    return w.astype(np.float32), float(b)


def _subsample(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if len(y) <= _MAX_ROWS:
        return x, y
    rng = np.random.default_rng(seed)
    minority = y if y.sum() * 2 < len(y) else ~y
    keep_min = np.flatnonzero(minority)
    rest = np.flatnonzero(~minority)
    n_rest = max(0, _MAX_ROWS - len(keep_min))
    keep = np.sort(np.concatenate([keep_min, rng.choice(rest, size=min(n_rest, len(rest)), replace=False)]))
    return x[keep], y[keep]


def _blocked(name: str, kind: str, grid: int, x: np.ndarray, y: np.ndarray, ref: np.ndarray | None) -> DiffDetector:
    x, y = _subsample(x, y)
    fit = _fit_logistic(x, y)
    if fit is None:
        # One class only (no objects, or nothing ever changes): no regression can be fitted.
        # Equal weights make the score the mean log block MSE: still "higher = more changed".
        g2 = grid * grid
        fit = (np.full(g2, 1.0 / g2, dtype=np.float32), 0.0)
    return DiffDetector(name, kind, "blocked", grid, fit[0], fit[1], ref)


# --------------------------------------------------------------------------- fitting & scoring


def _runs(blocks: np.ndarray, n: int) -> np.ndarray:
    """Run number of each frame: consecutive frames with the same block id share one."""
    blocks = np.asarray(blocks)
    if blocks.shape != (n,):
        raise NoscopeError(f"block ids must have shape ({n},), got {blocks.shape}")
    # Runs, not ids, so an id that reappears later can never pair frames across the gap.
    return np.concatenate([[0], np.cumsum(blocks[1:] != blocks[:-1])]) if n else np.zeros(0, np.int64)


def _check_skips(skips: Iterable[int]) -> list[int]:
    out = sorted({int(s) for s in skips})
    if not out or out[0] < 1:
        raise NoscopeError(f"skips must be integers >= 1, got {list(skips)}")
    return out


def _pairs(runs: np.ndarray, s: int) -> np.ndarray:
    """Indices t (>= s) whose frame t - s is in the same run."""
    if s >= len(runs):
        return np.zeros(0, np.int64)
    return np.flatnonzero(runs[s:] == runs[:-s]) + s


def fit_detectors(
    frames: np.ndarray,
    labels: np.ndarray,
    blocks: np.ndarray,
    skips: Iterable[int] = (1,),
    grid: int = 5,
) -> list[DiffDetector]:
    """Build prev-global, prev-blocked, ref-global, ref-blocked from labelled frames.

    frames uint8 (N, S, S, C) in time order; labels: reference answers (bool, or scores
    thresholded at 0.5); blocks: int id per frame, frames of one block are consecutive (and
    evenly spaced in the video); pairs never cross blocks. The "ref" regression predicts
    "object present" from block MSEs against the empty scene; the "prev" regression predicts
    label[t] != label[t-s], pooled over all the skips given.
    """
    frames = _as_frames(frames, "frames")
    n = len(frames)
    if n == 0:
        raise NoscopeError("cannot fit difference detectors on zero frames")
    y = _bool_labels(labels, n)
    runs = _runs(blocks, n)
    skips = _check_skips(skips)

    ref = empty_scene(frames, y)
    ref_x = np.log1p(block_mse(frames, ref, grid))

    prev_x, prev_y = [], []
    for s in skips:
        t = _pairs(runs, s)
        if len(t):
            prev_x.append(np.log1p(block_mse(frames[t], frames[t - s], grid)))
            prev_y.append(y[t] != y[t - s])
    if prev_x:
        px, py = np.concatenate(prev_x), np.concatenate(prev_y)
    else:  # every block shorter than the smallest skip: nothing to learn from
        px, py = np.zeros((0, grid * grid), np.float32), np.zeros(0, bool)

    return [
        DiffDetector("prev-global", "prev", "global", 1),
        _blocked("prev-blocked", "prev", grid, px, py, None),
        DiffDetector("ref-global", "ref", "global", 1, reference_image=ref),
        _blocked("ref-blocked", "ref", grid, ref_x, y, ref),
    ]


def diff_scores(detector: DiffDetector, frames: np.ndarray, blocks: np.ndarray, skips: Iterable[int]) -> dict[int, np.ndarray]:
    """For each skip s: float32 (N,) score of frame t against frame t - s of the same block.

    NaN where there is no such frame (the first s frames of each block). A "ref" detector
    does not depend on s: every s maps to the same (read-only) array.
    """
    frames = _as_frames(frames, "frames")
    n = len(frames)
    runs = _runs(blocks, n)
    skips = _check_skips(skips)
    if detector.kind == "ref":
        shared = detector.score(frames) if n else np.zeros(0, np.float32)
        shared.flags.writeable = False
        return {s: shared for s in skips}
    out = {}
    for s in skips:
        scores = np.full(n, np.nan, dtype=np.float32)
        t = _pairs(runs, s)
        for c in range(0, len(t), _CHUNK * 4):  # bounded fancy-indexed copies
            tc = t[c : c + _CHUNK * 4]
            scores[tc] = detector.score(frames[tc], frames[tc - s])
        out[s] = scores
    return out


def measure_cost(detector: DiffDetector, size: int, channels: int = 3, batch_size: int = 1024, repeats: int = 5) -> float:
    """Seconds per frame of `detector.score` on random (batch_size, size, size, channels) frames.

    One warm-up call, then the median of `repeats` timed calls.
    """
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (batch_size, size, size, channels), dtype=np.uint8)
    previous = rng.integers(0, 256, (batch_size, size, size, channels), dtype=np.uint8)
    det = detector
    if det.kind == "ref" and (det.reference_image is None or det.reference_image.shape != frames.shape[1:]):
        # Cost does not depend on the image's content, only its size.
        det = DiffDetector(det.name, det.kind, det.mode, det.grid, det.weights, det.bias, previous[0])
    if det.mode == "blocked" and det.grid > size:
        raise NoscopeError(f"difference detector {det.name}: grid {det.grid} does not fit {size}-pixel frames")
    det.score(frames, previous)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        det.score(frames, previous)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / batch_size


# --------------------------------------------------------------------------- .npy files


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save to `path` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == object:
        raise NoscopeError(f"refusing to save an object array to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_npy(path: str | Path) -> np.ndarray:
    """np.load without pickles (bundles are untrusted): a one-line NoscopeError if unreadable."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NoscopeError(f"{path} not found; the model bundle is incomplete") from None
    except (ValueError, OSError, EOFError) as e:
        raise NoscopeError(f"cannot read {path} as a plain .npy array: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
