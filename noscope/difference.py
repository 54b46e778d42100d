"""Difference detectors: skip frames that look the same as one whose answer is known.

NoScope (section 5): with a fixed camera most frames barely change. A frame's mean squared
error (MSE) against
  * the frame `s` frames earlier ("prev" kind): small -> reuse that frame's answer, or
  * an image of the empty scene ("ref" kind): small -> nothing is there, answer "no",
costs microseconds, against milliseconds for even the specialized CNN. "global" mode takes
one MSE over the whole frame; "blocked" mode cuts the frame into grid x grid blocks and
combines the per-block MSEs (and the frame's) with a fitted logistic regression, so a change
in a block where objects appear counts for more than flicker in the sky.

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

All of this is numpy on the CPU: at 50x50 a detector costs ~10-30 microseconds per frame on
one busy core, ten to a hundred times less than the smallest CNN, so a GPU would not pay.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from . import atomic
from .errors import NoscopeError

KINDS = ("prev", "ref")
MODES = ("global", "blocked")
PLANES = ("luma", "rgb")

# Frames per chunk when computing MSEs: bounds the int32 temporaries (50x50x3 -> ~30 MB).
_CHUNK = 1024

# Blocked features: log(1 + MSE) of each block, then of the whole frame. Sensor noise gives
# MSEs of a few units and an object hundreds to thousands; the log keeps the regression from
# being driven by the few largest values. The whole-frame term is what the regression falls
# back on when the data cannot support per-block weights (see _fit_logistic). Recorded in
# to_dict so a bundle says which features its weights are for.
FEATURES = "log1p-block-mse+log1p-frame-mse"

# The empty scene needs enough object-free frames that a median is really "the background".
_MIN_NEGATIVES = 10
# ...and more than this many frames add nothing to a per-pixel median but time and memory.
_MEDIAN_FRAMES = 2000

# Logistic regression: candidate L2 strengths (on standardised features, each class's loss
# weighing 1/2), the one used when there are too few blocks to cross-validate, the folds,
# and the most rows used (beyond that a seeded subsample, all minority rows kept, suffices).
_L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e3)
_L2_DEFAULT = 0.1
_CV_FOLDS = 5
# Least weight of the whole-frame term, per standard deviation of it: keeps the score strictly
# increasing with change even when the data say nothing (logit +0.01 per sd).
_MIN_FRAME_WEIGHT = 0.01
_MAX_ROWS = 50_000


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


def block_features(a: np.ndarray, b: np.ndarray, grid: int) -> np.ndarray:
    """Blocked-mode features: float32 (N, grid*grid + 1), log1p of each block's MSE, then of the frame's."""
    b = _broadcast_one(a, b)
    sums, counts = _block_sums(a, b, grid)
    frame = sums.sum(axis=1, keepdims=True) / counts.sum()  # exactly the global MSE
    return np.log1p(np.hstack([sums / counts, frame])).astype(np.float32)


def global_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE of whole frames: uint8 (N, S, S, C) x2 -> float32 (N,). `b` may be one frame."""
    b = _broadcast_one(a, b)
    sums, counts = _block_sums(a, b, 1)
    return (sums[:, 0] / counts[0]).astype(np.float32)


def _broadcast_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # A single reference image (S, S, C) / (S, S) is compared with every frame; grey frames (N, S, S)
    # and a grey image kept as (S, S, 1) (or the reverse) are the same pictures.
    a, b = np.asarray(a), np.asarray(b)
    if b.ndim == a.ndim - 1 and b.shape == a.shape[1:]:
        return b[None]
    if a.ndim == 3 and b.shape == a.shape[1:] + (1,):  # grey frames, the image as (S, S, 1)
        return b[None, ..., 0]
    if a.ndim == 4 and a.shape[-1] == 1 and b.shape == a.shape[1:3]:  # (N, S, S, 1) frames, an (S, S) image
        return b[None, ..., None]
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

    weights/bias: the blocked mode's logistic regression over `block_features` (grid*grid + 1
    weights: one per block, the last for the whole frame; None in global mode). reference_image: uint8 (S, S, C) empty scene for kind "ref".
    """

    name: str
    kind: str
    mode: str
    grid: int
    weights: np.ndarray | None = None
    bias: float | None = None
    reference_image: np.ndarray | None = None
    plane: str = "rgb"  # what it compares: "luma" (the decoder's brightness plane) or "rgb" (bundles from before)

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise NoscopeError(f"difference detector {self.name!r}: plane must be {' or '.join(PLANES)}, not {self.plane!r}")
        if self.kind not in KINDS or self.mode not in MODES:
            raise NoscopeError(f"difference detector {self.name!r}: kind must be prev|ref and mode global|blocked")
        if self.mode == "blocked":
            if self.weights is None or self.bias is None:
                raise NoscopeError(f"difference detector {self.name!r}: blocked mode needs fitted weights and bias")
            self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
            if self.weights.shape != (self.grid * self.grid + 1,):
                raise NoscopeError(
                    f"difference detector {self.name!r}: {self.weights.size} weights for a {self.grid}x{self.grid} grid (+1 frame term)"
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
        feats = block_features(frames, other, self.grid)
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
            **({"plane": self.plane} if self.plane != "rgb" else {}),  # a bundle from before says nothing: rgb
        }

    @staticmethod
    def from_dict(d: dict, reference_image: np.ndarray | None = None) -> "DiffDetector":
        """Inverse of to_dict; a "ref" detector needs its reference image, here or set later."""
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
                plane=str(d.get("plane", "rgb")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise NoscopeError(f"damaged difference detector entry in the bundle: {type(e).__name__} {e}") from None
        # A "ref" detector may get its image afterwards (det.reference_image = load_npy(...));
        # score() says clearly if it never did.
        return det


# --------------------------------------------------------------------------- logistic regression


def _newton(z: np.ndarray, y: np.ndarray, sw: np.ndarray, reg: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """argmin sum(sw * logloss(z @ theta, y)) + sum(reg * theta**2) / 2 subject to theta >= lower.

    Projected Newton: coordinates held at their bound by the gradient are frozen, a Newton
    step is taken in the others, the result is clipped back to the bounds, and the step is
    halved until the objective does not go up. Strictly convex here (the only unpenalised
    column is the intercept, and both classes are present): ~10 steps.
    """

    def objective(theta: np.ndarray) -> float:
        m = z @ theta
        # log(1 + exp(-m)) for positives, log(1 + exp(m)) for negatives, overflow-free
        return float(sw @ np.logaddexp(0.0, np.where(y > 0.5, -m, m)) + 0.5 * reg @ (theta * theta))

    theta = np.maximum(lower, 0.0)
    f = objective(theta)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ theta, -30, 30)))
        grad = z.T @ (sw * (p - y)) + reg * theta
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(reg)
        free = ~((theta <= lower) & (grad > 0))  # at the bound and pushing past it: frozen
        step = np.zeros_like(theta)
        h = hess[np.ix_(free, free)]
        step[free] = np.linalg.solve(h + 1e-10 * np.eye(len(h)), grad[free])
        t = 1.0
        while True:
            cand = np.maximum(theta - t * step, lower)
            f_cand = objective(cand)
            if f_cand <= f or t < 1e-4:
                break
            t /= 2
        if f_cand > f:
            break  # no descent left: at the optimum up to rounding
        moved = np.max(np.abs(cand - theta))
        theta, f = cand, f_cand
        if moved < 1e-7:
            break
    return theta


# Long: the docstring explains each choice; the body is one fit and its cross-validated strength.
def _fit_logistic(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Class-balanced logistic regression of y on block features; L2 strength by grouped CV.

    Returns (weights, bias) on the raw features, or None when y has a single class.

    * Balanced: changes are rare (a few % of frame pairs), and unweighted the fit would spend
      itself on the unchanged majority.
    * Shrunk towards the global detector: the last feature (whole-frame log MSE) is barely
      penalised, the per-block ones are, so strong regularisation leaves the global detector
      rather than a constant, which is what one wants from little data. On a real storefront
      clip with few label changes to learn from, a plain L2 fit ranked changes far worse
      (AUC 0.68) than the global MSE alone (0.91); this fit matches the global MSE there.
    * Monotone (see `lower` below). That costs a little where some blocks really anti-correlate
      (storefront "ref": AUC 0.94 instead of 0.96 unconstrained) but makes the detectors safe:
      a frame identical to its reference is never the one sent on as "changed".
    * The strength is picked by cross-validation over whole blocks (a block's frames are
      near-duplicates, so frame-level folds would reward memorising them).
    """
    y = y.astype(np.float64)
    n_pos = y.sum()
    if n_pos == 0 or n_pos == len(y):
        return None
    x = x.astype(np.float64)
    k = x.shape[1] - 1  # per-block columns; the last one is the whole frame
    # Standardised so one grid of strengths suits any scene; folded back into w, b at the end.
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd < 1e-6] = 1.0
    z = np.hstack([(x - mu) / sd, np.ones((len(y), 1))])

    def weights_for(mask: np.ndarray) -> np.ndarray:
        pos = max(y[mask].sum(), 1.0)
        neg = max(mask.sum() - y[mask].sum(), 1.0)
        return np.where(y[mask] > 0.5, 0.5 / pos, 0.5 / neg)  # each class weighs 1/2

    def penalty(lam: float) -> np.ndarray:
        # per-block weights: lam; frame term: a token amount (keeps separable data finite); intercept: none
        return np.concatenate([np.full(k, lam), [1e-4], [0.0]])

    # More pixel change never makes "changed" less likely: block weights >= 0, and the frame
    # term > 0 so the score rises with any change and identical frames get the lowest score.
    # (Unconstrained, a scene where objects keep moving teaches "big change = no new label".)
    lower = np.concatenate([np.zeros(k), [_MIN_FRAME_WEIGHT], [-np.inf]])

    lam = _L2_DEFAULT
    folds = np.unique(groups, return_inverse=True)[1] % _CV_FOLDS
    if len(np.unique(folds)) >= 2:
        best = np.inf
        for cand in _L2_GRID:
            oof = np.full(len(y), np.nan)
            for f in np.unique(folds):
                tr = folds != f
                if y[tr].min() == y[tr].max():
                    continue  # this training fold has one class: no fit, these rows go unscored
                theta = _newton(z[tr], y[tr], weights_for(tr), penalty(cand), lower)
                oof[~tr] = z[~tr] @ theta
            ok = ~np.isnan(oof)
            if not ok.any() or y[ok].min() == y[ok].max():
                continue  # e.g. each block holds one class: no fold could be scored
            # out-of-fold balanced log loss
            loss = weights_for(ok) @ np.logaddexp(0.0, np.where(y[ok] > 0.5, -oof[ok], oof[ok]))
            if loss < best - 1e-9:
                best, lam = loss, cand
    theta = _newton(z, y, weights_for(np.ones(len(y), bool)), penalty(lam), lower)
    w = theta[:-1] / sd
    return w.astype(np.float32), float(theta[-1] - w @ mu)


def _subsample(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most _MAX_ROWS rows: all of the rarer class, a seeded sample of the other."""
    if len(y) <= _MAX_ROWS:
        return x, y, groups
    rng = np.random.default_rng(seed)
    minority = y if y.sum() * 2 < len(y) else ~y
    keep_min = np.flatnonzero(minority)
    rest = np.flatnonzero(~minority)
    n_rest = max(0, _MAX_ROWS - len(keep_min))
    keep = np.sort(np.concatenate([keep_min, rng.choice(rest, size=min(n_rest, len(rest)), replace=False)]))
    return x[keep], y[keep], groups[keep]


def _blocked(name: str, kind: str, grid: int, x: np.ndarray, y: np.ndarray, groups: np.ndarray, ref: np.ndarray | None) -> DiffDetector:
    fit = _fit_logistic(*_subsample(x, y, groups))
    if fit is None:
        # One class only (no objects, or nothing ever changes): no regression can be fitted.
        # Fall back to the frame term alone: log(1 + global MSE), still "higher = more changed".
        w = np.zeros(grid * grid + 1, dtype=np.float32)
        w[-1] = 1.0
        fit = (w, 0.0)
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
    thresholded at 0.5), (N,) for one object or (N, K) for several; blocks: int id per frame,
    frames of one block are consecutive (and evenly spaced in the video); pairs never cross
    blocks. The "ref" regression predicts "object present" from block MSEs against the empty
    scene; the "prev" regression predicts label[t] != label[t-s], pooled over all the skips given.

    Several objects: one detector serves them all (one pass), so "empty" means no object of any
    kind (a "ref" detector's "no" is said for every object at once) and "changed" means some
    object's label changed (a "prev" detector's copy copies every object's answer).
    """
    frames = _as_frames(frames, "frames")
    n = len(frames)
    if n == 0:
        raise NoscopeError("cannot fit difference detectors on zero frames")
    labels = np.asarray(labels)
    cols = labels.T if labels.ndim == 2 else [labels]
    each = np.stack([_bool_labels(col, n) for col in cols], axis=1)  # (N, objects)
    y = each.any(axis=1)
    runs = _runs(blocks, n)
    skips = _check_skips(skips)

    ref = empty_scene(frames, y)
    ref_x = block_features(frames, ref, grid)

    prev_x, prev_y, prev_g = [], [], []
    for s in skips:
        t = _pairs(runs, s)
        if len(t):
            prev_x.append(block_features(frames[t], frames[t - s], grid))
            prev_y.append((each[t] != each[t - s]).any(axis=1))
            prev_g.append(runs[t])
    if prev_x:
        px, py, pg = np.concatenate(prev_x), np.concatenate(prev_y), np.concatenate(prev_g)
    else:  # every block shorter than the smallest skip: nothing to learn from
        px, py, pg = np.zeros((0, grid * grid + 1), np.float32), np.zeros(0, bool), np.zeros(0, np.int64)

    return [
        DiffDetector("prev-global", "prev", "global", 1),
        _blocked("prev-blocked", "prev", grid, px, py, pg, None),
        DiffDetector("ref-global", "ref", "global", 1, reference_image=ref),
        _blocked("ref-blocked", "ref", grid, ref_x, y, runs, ref),
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


@dataclass
class Fitted:
    """Difference detectors fitted for a bundle, with what the optimizer needs of them."""

    detectors: list[DiffDetector]
    heldout_scores: dict[str, np.ndarray]  # "name@skip" -> scores on the held-out frames
    costs: dict[str, float]  # name -> seconds per frame
    meta: list[dict]  # bundle.yaml's diffs


def fit_and_score(frames: np.ndarray, truth: np.ndarray, blocks: np.ndarray, parts, skips: list[int], grid: int,
                  size: int) -> Fitted:
    """Fit every detector on the training frames (`parts.train`), score it on the held-out frames
    (`parts.heldout`) at every skip, time it. Grey frames (N, S, S) are the luma plane (the
    detectors' `plane`), colour ones (N, S, S, 3) RGB."""
    plane = "luma" if np.ndim(frames) == 3 else "rgb"
    detectors = [dataclasses.replace(d, plane=plane) for d in
                 fit_detectors(frames[parts.train], truth[parts.train], blocks[parts.train], skips=skips, grid=grid)]
    out = Fitted(detectors, {}, {}, [])
    for d in detectors:
        for k, v in diff_scores(d, frames[parts.heldout], blocks[parts.heldout], skips).items():
            out.heldout_scores[f"{d.name}@{k}"] = v
        out.costs[d.name] = float(measure_cost(d, size, channels=1 if plane == "luma" else 3))
        entry = d.to_dict()
        if d.reference_image is not None:
            entry["reference_image_file"] = f"diff/{d.name}.npy"
        out.meta.append(dict(entry, cost_s=out.costs[d.name], size=size))
    return out


# --------------------------------------------------------------------------- .npy files


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save to `path` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == object:
        raise NoscopeError(f"refusing to save an object array to {path}")
    atomic.atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def load_npy(path: str | Path) -> np.ndarray:
    """np.load without pickles (bundles are untrusted): a one-line NoscopeError if unreadable."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NoscopeError(f"{path} not found; the model bundle is incomplete") from None
    except (ValueError, OSError, EOFError) as e:
        raise NoscopeError(f"cannot read {path} as a plain .npy array: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
