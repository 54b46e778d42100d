"""Cost-based cascade search: pick the cheapest cascade that still answers like the reference.

A cascade decides, frame by frame, "is there a car?" with cheap stages first and the expensive
reference detector last, only where the cheap stages cannot decide. `simulate` is THE definition
of what a cascade outputs on a sequence of frames; the real executor reproduces it on video, and
the optimizer only ever reasons about cascades through it (or through code it shares with it).

Semantics, over held-out frames that come in `blocks` (frames with one block id are consecutive
frames of the video, in order; block boundaries are where the id changes):

1. Frame skip s. Within each block only positions 0, s, 2s, ... are *processed*; every other
   frame copies the label of the last processed frame before it.
2. Difference detector d with threshold delta (optional). A processed frame whose score is
   < delta is "unchanged". For a "prev" detector (score of frame t against frame t - s) an
   unchanged frame copies the label of the previous processed frame; a block's first processed
   frame has nothing to compare with and is always "changed". For a "ref" detector (score against
   an image of the empty scene) an unchanged frame is labelled no. A NaN score means "changed".
3. Specialized model m with thresholds c_low <= c_high (optional), on the processed frames that
   the difference detector let through: score < c_low -> no, score > c_high -> yes, otherwise
   the reference decides (label = truth). Without a model every such frame goes to the reference.

Accuracy is measured as `Targets` says (noscope.metrics): per frame, or per window of frames,
windows restarting at every block.

Cost model (seconds per frame, `Costs`): every frame is decoded; processed frames pay colour
conversion + resize and the difference detector; frames that reach the model pay the model;
frames that reach the reference pay the reference. `expected_cost` averages this over the
held-out frames.

Search (`optimize`): a grid over skip x (no diff | each diff x thresholds) x (no model | each
model). For each grid point the model thresholds are set by the rule explained in
`model_thresholds` (NoScope's: pick c_low for the FNR target and c_high for the FPR target
separately). Of all grid points that meet both targets on the held-out frames the cheapest wins,
ties going to the one with fewer reference calls. Calling the reference on every frame meets any
target (its labels *are* the truth) and is the fallback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .errors import NoscopeError, UsageError
from .bounds import label_runs, rate_upper
from .metrics import METRICS, WINDOW_MIN_FRACTION, Windowing, evaluate, rates

# Which stage decided a frame's label; `simulate` returns these codes (int8), STAGES[code] names them.
SKIP, DIFF, MODEL, REFERENCE = 0, 1, 2, 3
STAGES = ("skip", "diff", "model", "reference")

DEFAULT_SKIPS = (1, 2, 5, 10, 15, 30)
# Difference-detector thresholds tried when none are given: these quantiles of the detector's
# scores on the frames it would see. Denser at the top, where "ref" detectors on mostly-empty
# video have their useful thresholds.
DEFAULT_DIFF_QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
DIFF_KINDS = ("prev", "ref")

# Two costs closer than this (relative) are a tie, broken by reference calls.
_COST_RTOL = 1e-9


# --------------------------------------------------------------------------------------------
# Inputs and outputs


@dataclass(frozen=True)
class Costs:
    """Seconds per frame, measured on this device."""

    decode: float  # every frame pays it (skipped frames are grabbed, not converted)
    convert: float  # per processed frame (colour conversion + resize)
    diff: dict[str, float]  # per processed frame, per difference detector name
    model: dict[str, float]  # per frame the model runs on, per specialized model name
    reference: float  # per frame the reference runs on


@dataclass
class HeldOut:
    """What the optimizer knows about the held-out frames (all arrays have one entry per frame)."""

    truth: np.ndarray  # bool (N,): the reference's answer (already thresholded/smoothed)
    blocks: np.ndarray  # int (N,)
    model_scores: dict[str, np.ndarray]  # model name -> float (N,)
    diff_scores: dict[str, dict[int, np.ndarray]]  # diff name -> skip s -> float (N,), frame t vs t-s
    diff_kinds: dict[str, str]  # diff name -> "prev" | "ref"
    frames: np.ndarray | None = None  # int (N,) frame numbers: where consecutive, one run of evidence


@dataclass(frozen=True)
class Targets:
    """Accuracy the cascade must keep, relative to the reference, on the held-out frames."""

    fpr: float
    fnr: float
    metric: str = "frames"  # "frames" | "windows" (see noscope.metrics)
    window: int = 30  # frames per window, for metric="windows"
    window_min_fraction: float = WINDOW_MIN_FRACTION  # share of positive frames for a positive window

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for name, value in (("FPR", self.fpr), ("FNR", self.fnr)):
            try:
                ok = 0.0 < float(value) < 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UsageError(f"target {name} must be between 0 and 1, got {value}")
        if self.metric not in METRICS:
            raise UsageError(f"unknown accuracy metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if isinstance(self.window, bool) or not isinstance(self.window, (int, np.integer)) or self.window < 1:
            raise UsageError(f"window must be a positive number of frames, got {self.window!r}")
        if not 0.0 < float(self.window_min_fraction) <= 1.0:
            raise UsageError(f"window min fraction must be in (0, 1], got {self.window_min_fraction!r}")


@dataclass(frozen=True)
class Cascade:
    """The knobs of a cascade; what `simulate` needs. None = stage absent."""

    skip: int = 1
    diff: str | None = None
    diff_threshold: float | None = None
    model: str | None = None
    c_low: float | None = None  # None with a model: -inf (the model never says no)
    c_high: float | None = None  # None with a model: +inf (the model never says yes)

    def __post_init__(self):
        if isinstance(self.skip, bool) or not isinstance(self.skip, (int, np.integer)) or self.skip < 1:
            raise UsageError(f"frame skip must be a positive integer, got {self.skip!r}")
        if self.diff is not None and self.diff_threshold is None:
            raise UsageError(f"difference detector {self.diff!r} needs a threshold")
        if self.model is not None and _lo(self.c_low) > _hi(self.c_high):
            raise UsageError(f"model thresholds must satisfy c_low <= c_high, got {self.c_low} > {self.c_high}")


def _lo(c):
    return -math.inf if c is None else float(c)


def _hi(c):
    return math.inf if c is None else float(c)


@dataclass
class Plan:
    """The chosen cascade plus what the optimizer expects of it. Serialisable with to_dict()."""

    skip: int
    diff: str | None
    diff_threshold: float | None
    model: str | None
    c_low: float | None
    c_high: float | None
    expected_cost: float  # seconds per frame
    heldout_fpr: float | None  # None: the held-out frames have no negative frame, so no FPR
    heldout_fnr: float | None  # None: no positive held-out frame, so no FNR (not 0)
    fractions: dict[str, float] = field(default_factory=dict)  # share of frames decided by each stage
    reference_only: bool = False
    # Upper confidence bounds on the held-out FPR / FNR (both hold together at `confidence`), and
    # whether they meet the targets: the plan is then certified by the held-out frames alone.
    bound_fpr: float = 1.0
    bound_fnr: float = 1.0
    confidence: float = 0.95
    certified: bool = False

    @property
    def cascade(self) -> Cascade:
        return Cascade(self.skip, self.diff, self.diff_threshold, self.model, self.c_low, self.c_high)

    def to_dict(self) -> dict:
        """Plain Python types only. Infinite thresholds stay floats (json writes them as Infinity)."""
        d = asdict(self)
        for key in ("diff_threshold", "c_low", "c_high", "expected_cost", "heldout_fpr", "heldout_fnr", "bound_fpr",
                    "bound_fnr", "confidence"):
            d[key] = None if d[key] is None else float(d[key])
        d["skip"] = int(d["skip"])
        d["reference_only"] = bool(d["reference_only"])
        d["certified"] = bool(d["certified"])
        d["fractions"] = {k: float(v) for k, v in d["fractions"].items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        """Inverse of to_dict. Unknown keys are ignored (plans written by a newer version); the
        bounds of plans written before they existed default to "no evidence"."""
        names = [f.name for f in fields(cls)]
        optional = {"fractions", "reference_only", "bound_fpr", "bound_fnr", "confidence", "certified"}
        missing = [n for n in names if n not in d and n not in optional]
        if missing:
            raise NoscopeError(f"cascade plan is missing {', '.join(missing)}; re-run the optimizer")
        kwargs = {n: d[n] for n in names if n in d}
        for key in ("diff_threshold", "c_low", "c_high"):
            kwargs[key] = None if kwargs[key] is None else float(kwargs[key])
        kwargs["skip"] = int(kwargs["skip"])
        kwargs["fractions"] = {str(k): float(v) for k, v in dict(kwargs.get("fractions", {})).items()}
        plan = cls(**kwargs)
        _ = plan.cascade  # validates the knobs
        return plan


# --------------------------------------------------------------------------------------------
# Simulation: the single definition of a cascade's output


class Prepared:
    """HeldOut checked once, plus each frame's position within its block."""

    def __init__(self, heldout: HeldOut):
        self.truth = np.asarray(heldout.truth).astype(bool, copy=False)
        n = self.n = len(self.truth)
        if self.truth.ndim != 1 or n == 0:
            raise NoscopeError("held-out set is empty: nothing to choose a cascade on")
        blocks = np.asarray(heldout.blocks)
        if blocks.shape != (n,):
            raise NoscopeError(f"held-out blocks must have one entry per frame ({n}), got shape {blocks.shape}")
        self.blocks = blocks
        self.idx = np.arange(n)
        starts = np.r_[True, blocks[1:] != blocks[:-1]]
        self.pos = self.idx - np.maximum.accumulate(np.where(starts, self.idx, 0))
        self.heldout = heldout
        frames = heldout.frames
        if frames is None or np.shape(frames) != (n,):
            frames = self.idx + 2 * np.cumsum(starts)  # without frame numbers, blocks are separate stretches
        self.runs = label_runs(self.truth, frames)  # (positive runs, negative runs, label changes)
        for name, kind in heldout.diff_kinds.items():
            if kind not in DIFF_KINDS:
                raise NoscopeError(f"difference detector {name!r} has unknown kind {kind!r}; valid: prev, ref")
        self._model_cache: dict[str, np.ndarray] = {}

    def model_scores(self, name: str) -> np.ndarray:
        if name not in self._model_cache:
            if name not in self.heldout.model_scores:
                raise NoscopeError(f"no held-out scores for specialized model {name!r}")
            p = np.asarray(self.heldout.model_scores[name], dtype=np.float64)
            if p.shape != (self.n,):
                raise NoscopeError(f"scores of model {name!r} must have one entry per frame ({self.n}), got {p.shape}")
            if not np.isfinite(p).all():
                raise NoscopeError(f"scores of model {name!r} contain NaN or infinite values")
            self._model_cache[name] = p
        return self._model_cache[name]

    def diff_scores(self, name: str, skip: int) -> np.ndarray | None:
        """Scores of detector `name` for frame skip `skip`, or None if they were not computed."""
        if name not in self.heldout.diff_scores or name not in self.heldout.diff_kinds:
            raise NoscopeError(f"no held-out scores for difference detector {name!r}")
        by_skip = self.heldout.diff_scores[name]
        scores = by_skip.get(skip)
        if scores is None and self.heldout.diff_kinds[name] == "ref" and by_skip:
            # A "ref" score compares a frame to the empty scene, so it does not depend on the skip.
            scores = next(iter(by_skip.values()))
        if scores is None:
            return None
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (self.n,):
            raise NoscopeError(
                f"scores of difference detector {name!r} must have one entry per frame ({self.n}), got {scores.shape}"
            )
        return scores


@dataclass
class _Layout:
    """Everything about a (skip, diff, threshold) choice that does not depend on the model.

    A *source* is a frame whose label is decided on the frame itself (by the model/reference, or
    "no" from a "ref" difference detector); every other frame copies the label of the last source
    before it in its block (`src`). Every block starts with a source, so a plain forward fill over
    the whole array never crosses a block boundary.
    """

    reach: np.ndarray  # indices of frames that reach the model (or the reference, without one)
    src: np.ndarray  # (N,) index of the source each frame takes its label from
    decided: np.ndarray  # (N,) int8 stage codes, with REFERENCE for every frame in `reach`


def _layout(prep: Prepared, skip: int, diff_scores: np.ndarray | None, kind: str | None,
            threshold: float | None) -> _Layout:
    processed = prep.pos % skip == 0
    if diff_scores is None:
        unchanged = np.zeros(prep.n, dtype=bool)
    else:
        with np.errstate(invalid="ignore"):
            unchanged = processed & (diff_scores < threshold)  # NaN < x is False: NaN means changed
        if kind == "prev":
            unchanged &= prep.pos != 0  # nothing earlier in the block to copy from
    reach = processed & ~unchanged
    source = (reach | unchanged) if kind == "ref" else reach
    # Forward fill: each frame points at the latest source at or before it.
    src = np.maximum.accumulate(np.where(source, prep.idx, 0))
    decided = np.full(prep.n, SKIP, dtype=np.int8)
    decided[unchanged] = DIFF
    decided[reach] = REFERENCE
    return _Layout(np.flatnonzero(reach), src, decided)


def _assemble(prep: Prepared, layout: _Layout, reach_labels: np.ndarray) -> np.ndarray:
    """Labels of all frames from the labels of the frames that reached the model/reference.

    Sources that did not reach (a "ref" detector's unchanged frames) are labelled no.
    """
    own = np.zeros(prep.n, dtype=bool)
    own[layout.reach] = reach_labels
    return own[layout.src]


def _as_cascade(c) -> Cascade:
    if isinstance(c, Cascade):
        return c
    if isinstance(c, Mapping):
        return Cascade(**{f.name: c.get(f.name) for f in fields(Cascade)} | {"skip": c.get("skip", 1)})
    if isinstance(c, (tuple, list)):
        return Cascade(*c)
    return Cascade(*(getattr(c, f.name) for f in fields(Cascade)))


def _simulate(prep: Prepared, cascade: Cascade) -> tuple[np.ndarray, np.ndarray]:
    scores, kind = None, None
    if cascade.diff is not None:
        scores = prep.diff_scores(cascade.diff, int(cascade.skip))
        if scores is None:
            raise NoscopeError(
                f"no held-out scores for difference detector {cascade.diff!r} at frame skip {cascade.skip}"
            )
        kind = prep.heldout.diff_kinds[cascade.diff]
    layout = _layout(prep, int(cascade.skip), scores, kind, cascade.diff_threshold)
    truth_r = prep.truth[layout.reach]
    decided = layout.decided.copy()
    if cascade.model is None:
        reach_labels = truth_r
    else:
        p = prep.model_scores(cascade.model)[layout.reach]
        no, yes = p < _lo(cascade.c_low), p > _hi(cascade.c_high)
        reach_labels = np.where(no, False, np.where(yes, True, truth_r))
        decided[layout.reach[no | yes]] = MODEL
    return _assemble(prep, layout, reach_labels), decided


def simulate(cascade, heldout: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """Run a cascade over the held-out frames: (labels bool (N,), decided_by int8 (N,)).

    `cascade` is a Cascade, a Plan, a mapping or a tuple (skip, diff, diff_threshold, model,
    c_low, c_high). decided_by holds stage codes; STAGES[code] is "skip", "diff", "model" or
    "reference". Semantics: module docstring.
    """
    return _simulate(Prepared(heldout), _as_cascade(cascade))


def stage_fractions(decided_by: np.ndarray) -> dict[str, float]:
    """Share of frames decided by each stage (sums to 1)."""
    counts = np.bincount(np.asarray(decided_by, dtype=np.int64), minlength=len(STAGES))
    total = max(int(counts.sum()), 1)
    return {name: float(counts[i] / total) for i, name in enumerate(STAGES)}


def expected_cost(cascade, costs: Costs, fractions: Mapping[str, float]) -> float:
    """Seconds per frame of `cascade` when its stages decide `fractions` of the frames.

    decode + processed * (convert + diff) + reaching model * model + reaching reference * reference.
    """
    c = _as_cascade(cascade)
    processed = 1.0 - fractions["skip"]
    cost = costs.decode + processed * costs.convert
    if c.diff is not None:
        cost += processed * cost_of(costs.diff, c.diff, "difference detector")
    if c.model is not None:
        cost += (fractions["model"] + fractions["reference"]) * cost_of(costs.model, c.model, "specialized model")
    return cost + fractions["reference"] * costs.reference


def cost_of(table: Mapping[str, float], name: str, what: str) -> float:
    if name not in table:
        raise NoscopeError(f"no measured cost for {what} {name!r}; profile it first")
    return float(table[name])


# --------------------------------------------------------------------------------------------
# Error counting inside the search (must agree with simulate + metrics.evaluate; tests check it)


class _FrameErrors:
    """Frame-metric (FPR, FNR) from the labels of the frames that reach model/reference.

    Every frame copies its source's label, so the errors are sums over sources of how many
    positive / negative frames each one labels: O(#sources) per evaluation instead of O(N).
    """

    def __init__(self, prep: Prepared, layout: _Layout):
        truth = prep.truth
        covered = np.bincount(layout.src, minlength=prep.n)
        pos = np.bincount(layout.src, weights=truth, minlength=prep.n)
        self.pos_r = pos[layout.reach]
        self.neg_r = covered[layout.reach] - self.pos_r
        # Positives copied from a "ref" detector's unchanged frames (labelled no): always missed.
        self.fn_fixed = float(truth.sum() - self.pos_r.sum())
        self.n_pos = float(truth.sum())
        self.n_neg = float(prep.n - self.n_pos)

    def _rates(self, fp, fn):
        return (fp / self.n_neg if self.n_neg else 0.0 * fp), (fn / self.n_pos if self.n_pos else 0.0 * fn)

    def __call__(self, reach_labels: np.ndarray) -> tuple[float, float]:
        fp = float(np.sum(self.neg_r[reach_labels]))
        fn = self.fn_fixed + float(np.sum(self.pos_r[~reach_labels]))
        return self._rates(fp, fn)

    def curves(self, rank: np.ndarray, k: int, truth_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both threshold searches of `model_thresholds` at once, for j = 0..k.

        fnr[j]: the frames with the j lowest distinct scores say no, the rest go to the reference.
        fpr[j]: the frames above the j lowest distinct scores say yes, the rest go to the reference.
        The counts are sums of whole numbers, so they are exact and match `metrics.rates`.
        """
        # All to the reference: positives copied from a truly-negative source are missed, ...
        fn_all_ref = self.fn_fixed + float(np.sum(self.pos_r[~truth_r]))
        # ... and negatives copied from a truly-positive source are false alarms.
        fp_all_ref = float(np.sum(self.neg_r[truth_r]))
        # Saying no at a truly-positive source adds the positives it labels to FN; saying yes at a
        # truly-negative one adds the negatives it labels to FP. Summed per distinct score.
        new_fn = np.bincount(rank, weights=np.where(truth_r, self.pos_r, 0.0), minlength=k)
        new_fp = np.bincount(rank, weights=np.where(truth_r, 0.0, self.neg_r), minlength=k)
        fn = fn_all_ref + np.r_[0.0, np.cumsum(new_fn)]
        fp = fp_all_ref + np.r_[np.cumsum(new_fp[::-1])[::-1], 0.0]
        return self._rates(fp, fn)


class _WindowErrors:
    """Window-metric (FPR, FNR): assemble the frame labels and window them (O(N))."""

    def __init__(self, prep: Prepared, layout: _Layout, windowing: Windowing, truth_windows: np.ndarray):
        self.prep, self.layout, self.windowing, self.truth_windows = prep, layout, windowing, truth_windows

    def __call__(self, reach_labels: np.ndarray) -> tuple[float, float]:
        labels = _assemble(self.prep, self.layout, reach_labels)
        return rates(self.windowing.labels(labels), self.truth_windows)


def model_thresholds(errors, truth_r: np.ndarray, p: np.ndarray, targets: Targets):
    """Choose (c_low, c_high, n_reference) for one model on one layout, or None if infeasible.

    Why two independent searches are enough: order each frame's possible labels no < truth < yes.
    Raising any frame's label can only remove false negatives and add false positives; copying
    labels forward preserves this (a frame's label is its source's), and so does windowing
    (window labels are monotone in frame labels, see noscope.metrics). Hence
      * FNR(c_low, c_high=+inf) grows with c_low (more frames pushed down to no): search for
        the largest c_low* meeting the FNR target;
      * FPR(c_low=-inf, c_high) shrinks as c_high grows (fewer frames pushed up to yes): search
        for the smallest c_high* meeting the FPR target.
    (Binary search on simulated errors; for the frame metric the errors are additive over
    frames, so `_FrameErrors.curves` gives every candidate at once.)
    If c_low* <= c_high*, using both at once only moves labels the helpful way for each target
    compared with its own search (lowering c_high from +inf moves frames up to yes: FN can only
    drop; raising c_low from -inf moves frames down to no: FP can only drop), so both targets
    still hold. If c_low* > c_high*, any single threshold c in between has FN(c, c) <= FN(c, inf)
    <= FN(c_low*, inf) and FP(c, c) <= FP(-inf, c) <= FP(-inf, c_high*): both hold, and no frame
    needs the reference. The search is sound (whatever it returns meets the targets) but not
    exhaustive: a pair meeting both targets only jointly is not looked for (NoScope's rule too).

    Candidate thresholds lie between consecutive distinct scores (t_0 = -inf, t_j = midpoint of
    scores j-1 and j, t_k = +inf), so "p < t_j" is exactly "p is one of the j lowest scores" and a
    held-out score never sits on a threshold. None when even t_0 (FNR) or t_k (FPR), i.e. the
    reference on every frame that reaches the model, misses its target.
    """
    uniq, rank = np.unique(p, return_inverse=True)
    k = len(uniq)
    cuts = np.r_[-np.inf, (uniq[:-1] + uniq[1:]) / 2, np.inf]

    def fnr_ok(j):  # frames among the j lowest scores -> no, the rest -> reference
        return errors(np.where(rank < j, False, truth_r))[1] <= targets.fnr

    def fpr_ok(j):  # frames above the j lowest scores -> yes, the rest -> reference
        return errors(np.where(rank >= j, True, truth_r))[0] <= targets.fpr

    if isinstance(errors, _FrameErrors):
        # Frame errors are sums over sources: get every j at once. Monotone curves, so the
        # feasible j form a prefix (FNR) and a suffix (FPR).
        fpr, fnr = errors.curves(rank, k, truth_r)
        j_low = int(np.count_nonzero(fnr <= targets.fnr)) - 1
        j_high = k + 1 - int(np.count_nonzero(fpr <= targets.fpr))
    else:
        if not (fnr_ok(0) and fpr_ok(k)):
            return None
        lo, hi = 0, k  # largest j with fnr_ok: fnr_ok(0) holds
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fnr_ok(mid) else (lo, mid - 1)
        j_low = lo
        lo, hi = 0, k  # smallest j with fpr_ok: fpr_ok(k) holds
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fpr_ok(mid) else (mid + 1, hi)
        j_high = lo
    if j_low < 0 or j_high > k:
        return None  # even sending every frame to the reference misses a target
    if j_low >= j_high:
        j = (j_low + j_high) // 2  # thresholds crossed: one cut in the middle of the feasible range
        return float(cuts[j]), float(cuts[j]), 0
    n_reference = int(np.count_nonzero((rank >= j_low) & (rank < j_high)))
    return float(cuts[j_low]), float(cuts[j_high]), n_reference


# --------------------------------------------------------------------------------------------
# Evidence: upper bounds on a plan's held-out error rates


class Evidence:
    """Upper confidence bounds on held-out FPR and FNR, counting evidence honestly (noscope.bounds).

    The effective sample size of FNR is the number of positive runs (stretches of consecutive
    positive frames), of FPR the number of negative runs; the observed rate is applied to it. FPR
    and FNR get alpha/2 each, so both bounds hold together at `confidence`. A plan whose every frame
    is the reference's own answer cannot err (bounds 0). A plan that copies answers (frame skip or a
    difference detector) on held-out frames whose labels never change has seen nothing it could
    get wrong: no evidence (bounds 1)."""

    def __init__(self, prep: Prepared, confidence: float):
        if not 0.0 < float(confidence) < 1.0:
            raise UsageError(f"optimizer.confidence must be between 0 and 1, got {confidence}")
        self.confidence = float(confidence)
        self.alpha = (1.0 - self.confidence) / 2
        self.pos_runs, self.neg_runs, self.changes = prep.runs

    def bounds(self, cascade: Cascade, decided: np.ndarray, fpr: float, fnr: float) -> tuple[float, float]:
        if np.all(decided == REFERENCE):
            return 0.0, 0.0
        if (cascade.skip > 1 or cascade.diff is not None) and self.changes == 0:
            return 1.0, 1.0
        return (rate_upper(fpr * self.neg_runs, self.neg_runs, self.alpha),
                rate_upper(fnr * self.pos_runs, self.pos_runs, self.alpha))

    def strict_targets(self, targets: Targets) -> Targets | None:
        """Point targets whose every feasible plan has bounds within `targets` (the bound grows with
        the observed rate, so this is a plain search at lower rates); None when no plan that can err
        could be certified by these held-out frames, not even one with no error at all."""
        fpr = largest_rate(targets.fpr, self.neg_runs, self.alpha)
        fnr = largest_rate(targets.fnr, self.pos_runs, self.alpha)
        if fpr is None or fnr is None:
            return None
        return Targets(fpr, fnr, targets.metric, targets.window, targets.window_min_fraction)

    def ratio(self, prep: Prepared, cascade: Cascade, targets: Targets) -> float:
        """How far the plan's bounds are from its targets (<= 1: certified); smaller is better backed."""
        labels, decided = _simulate(prep, cascade)
        fpr, fnr = evaluate(labels, prep.truth, targets.metric, targets.window, targets.window_min_fraction, prep.blocks)
        b_fpr, b_fnr = self.bounds(cascade, decided, fpr, fnr)
        return max(b_fpr / targets.fpr, b_fnr / targets.fnr)


def largest_rate(target: float, runs: int, alpha: float) -> float | None:
    if rate_upper(0.0, runs, alpha) > target:
        return None
    lo, hi = 0.0, float(target)
    for _ in range(40):  # bisection: rate_upper(r * runs, runs) grows with r
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate_upper(mid * runs, runs, alpha) <= target else (lo, mid)
    return max(lo, 1e-12)  # Targets wants a positive rate; this one admits no error at all


# --------------------------------------------------------------------------------------------
# The search


def _default_diff_thresholds(prep: Prepared, scores: np.ndarray, skip: int) -> np.ndarray:
    seen = scores[(prep.pos % skip == 0) & np.isfinite(scores)]  # scores the detector would see
    if seen.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(seen, DEFAULT_DIFF_QUANTILES))


def _thresholds_for(diff_thresholds, name: str) -> np.ndarray | None:
    if diff_thresholds is None:
        return None
    if isinstance(diff_thresholds, Mapping):
        if name not in diff_thresholds:
            return None
        return np.asarray(diff_thresholds[name], dtype=np.float64).ravel()
    return np.asarray(diff_thresholds, dtype=np.float64).ravel()


def optimize(heldout: HeldOut, costs: Costs, targets: Targets, skips: Sequence[int] = DEFAULT_SKIPS,
             diff_thresholds=None, models: Sequence[str] | None = None,
             diffs: Sequence[str] | None = None, min_saving: float = 0.0, confidence: float = 0.95,
             strict: bool = False, cost_slack: float = 0.0) -> Plan:
    """The cheapest cascade meeting `targets` on the held-out frames (reference-only if none does,
    or none costs at most 1 - `min_saving` of the reference alone).

    diff_thresholds: None (DEFAULT_DIFF_QUANTILES of each detector's scores at each skip), one
    sequence for all detectors, or a mapping detector name -> sequence. models / diffs: restrict
    the search to these names (default: all with held-out scores). A "prev" detector is only
    tried at the skips it has scores for.

    Every plan also gets upper bounds on its FPR and FNR at `confidence` (see Evidence). strict:
    only plans whose bounds meet the targets. Otherwise the point estimates must meet them, and
    among the plans costing at most (1 + cost_slack) times the cheapest, the one whose bounds are
    closest to the targets wins (the query verifies the choice on the queried video).
    """
    targets.validate()
    prep = Prepared(heldout)
    evidence = Evidence(prep, confidence)
    search = evidence.strict_targets(targets) if strict else targets
    if search is None:
        return make_plan(prep, Cascade(1), costs, targets, evidence)
    if strict and evidence.changes == 0:
        skips, diffs = (1,), []  # nothing shows what copying an answer forward would miss
    model_names = list(heldout.model_scores) if models is None else list(models)
    model_cost = {m: cost_of(costs.model, m, "specialized model") for m in model_names}
    for m in model_names:
        prep.model_scores(m)  # fail early on missing/bad scores
    configs = search_configs(prep, costs, skips, diff_thresholds, diffs)
    candidates = search_candidates(configs, costs, model_cost)

    # The fallback: the reference on every frame. Its labels are the truth, so it meets any target.
    best = Best(Cascade(1), costs.decode + costs.convert + costs.reference, 1.0, min_saving, cost_slack)
    layouts = Layouts(prep, configs, search)
    for lower_bound, i, m in candidates:
        if best.beyond(lower_bound):
            break  # sorted by lower bound: nothing after this can be cheaper
        (s, d, t), _, base = configs[i]
        layout, errors, feasible = layouts.get(i)
        if not feasible:
            continue
        n = prep.n
        if m is None:
            ref_share = len(layout.reach) / n
            cost = base + ref_share * costs.reference
            cascade = Cascade(s, d, t)
        else:
            p = prep.model_scores(m)[layout.reach]
            found = model_thresholds(errors, prep.truth[layout.reach], p, search)
            if found is None:
                continue
            c_low, c_high, n_ref = found
            ref_share = n_ref / n
            cost = base + len(layout.reach) / n * model_cost[m] + ref_share * costs.reference
            cascade = Cascade(s, d, t, m, c_low, c_high)
        best.offer(cascade, cost, ref_share)

    chosen = best.choose(lambda c: evidence.ratio(prep, c, targets))
    return make_plan(prep, chosen, costs, targets, evidence)


# Pieces of the search, shared with the several-objects search (noscope.joint).


def search_configs(prep: Prepared, costs: Costs, skips: Sequence[int], diff_thresholds, diffs: Sequence[str] | None) -> list:
    """Every (skip, diff, threshold) with a cheap lower bound on the cost of any cascade built on
    it: decode + processed * (convert + diff) + reaching * (model, or reference without one).

    Returns [((skip, diff, threshold), share of frames reaching model/reference, base cost)].
    """
    heldout = prep.heldout
    for s in skips:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise UsageError(f"frame skips must be positive integers, got {s!r}")
    skips = sorted({int(s) for s in skips} | {1})  # skip 1 always: the reference-only fallback lives there
    diff_names = list(heldout.diff_scores) if diffs is None else list(diffs)
    diff_cost = {d: cost_of(costs.diff, d, "difference detector") for d in diff_names}
    configs = []
    for s in skips:
        processed = float(np.mean(prep.pos % s == 0))
        configs.append(((s, None, None), processed, costs.decode + processed * costs.convert))
        for d in diff_names:
            scores = prep.diff_scores(d, s)
            if scores is None:
                continue
            given = _thresholds_for(diff_thresholds, d)
            candidates = _default_diff_thresholds(prep, scores, s) if given is None else given
            # Frames the detector could call unchanged (a "prev" detector never does at a block start).
            eligible = prep.pos % s == 0
            if heldout.diff_kinds[d] == "prev":
                eligible &= prep.pos != 0
            base = costs.decode + processed * (costs.convert + diff_cost[d])
            for t in candidates:
                with np.errstate(invalid="ignore"):
                    reach = processed - np.count_nonzero(eligible & (scores < t)) / prep.n
                configs.append(((s, d, float(t)), reach, base))
    return configs


def search_candidates(configs: list, costs: Costs, model_cost: Mapping[str, float]) -> list:
    """(lower bound on cost, config index, model or None), cheapest bound first."""
    candidates = []
    for i, (_, reach, base) in enumerate(configs):
        candidates.append((base + reach * costs.reference, i, None))  # exact cost without a model
        for m in model_cost:
            candidates.append((base + reach * model_cost[m], i, m))
    candidates.sort(key=lambda c: (c[0], c[1], c[2] or ""))
    return candidates


class Best:
    """The cascades offered so far, and the one to choose; the reference on every frame is the
    fallback. A cascade must cost at most (1 - min_saving) of the reference alone to replace it:
    a predicted saving of a few percent is within what the held-out estimate misses by on new
    footage, and then the cheap stages are pure overhead. Without `slack` the cheapest wins (equal
    costs: fewer reference calls); with it, the best-backed plan (`evidence`, smaller is better)
    among those costing at most (1 + slack) times the cheapest."""

    def __init__(self, cascade, cost: float, ref_share: float, min_saving: float = 0.0, slack: float = 0.0):
        if not 0.0 <= min_saving < 1.0:
            raise UsageError(f"optimizer.min_saving must be in [0, 1), not {min_saving}")
        if not 0.0 <= slack:
            raise UsageError(f"optimizer.cost_slack must be >= 0, not {slack}")
        self.fallback, self.slack = cascade, float(slack)
        self.limit = (1.0 - min_saving) * cost  # the most a cascade may cost
        self.offers: list[tuple[float, float, object]] = []  # (cost, reference share, cascade)
        self.cheapest = math.inf

    def _ceiling(self) -> float:
        return min(self.cheapest * (1 + self.slack), self.limit) if self.offers else self.limit

    def beyond(self, lower_bound: float) -> bool:
        bound = self._ceiling()
        return lower_bound > bound + _COST_RTOL * bound

    def offer(self, cascade, cost: float, ref_share: float) -> None:
        if cost > self.limit * (1 + _COST_RTOL):
            return
        self.offers.append((cost, ref_share, cascade))
        self.cheapest = min(self.cheapest, cost)

    def choose(self, evidence=None):
        if not self.offers:
            return self.fallback
        tol = _COST_RTOL * max(abs(self.cheapest), 1e-12)
        if self.slack == 0 or evidence is None:
            ties = [o for o in self.offers if o[0] <= self.cheapest + tol]
            return min(ties, key=lambda o: o[1])[2]
        pool = sorted((o for o in self.offers if o[0] <= self.cheapest * (1 + self.slack) + tol), key=lambda o: o[:2])
        return min(pool, key=lambda o: (evidence(o[2]), o[0], o[1]))[2]


class Layouts:
    """Per config index: (layout, error counter, does the model-free cascade meet the targets?).

    Computed on first use and kept. `layout` may be passed in when another object's Layouts
    already built it (the layout does not depend on the truth, only on blocks and diff scores).
    """

    def __init__(self, prep: Prepared, configs: list, targets: Targets):
        self.prep, self.configs, self.targets = prep, configs, targets
        self.windowing, self.truth_windows = None, None
        if targets.metric == "windows":
            self.windowing = Windowing(prep.n, targets.window, targets.window_min_fraction, prep.blocks)
            self.truth_windows = self.windowing.labels(prep.truth)
        self._cache: dict[int, tuple] = {}

    def get(self, i: int, layout: _Layout | None = None) -> tuple:
        if i not in self._cache:
            prep = self.prep
            if layout is None:
                (s, d, t), _, _ = self.configs[i]
                scores = None if d is None else prep.diff_scores(d, s)
                layout = _layout(prep, s, scores, None if d is None else prep.heldout.diff_kinds[d], t)
            if self.windowing is None:
                errors = _FrameErrors(prep, layout)
            else:
                errors = _WindowErrors(prep, layout, self.windowing, self.truth_windows)
            fpr, fnr = errors(prep.truth[layout.reach])
            # Without a model every reaching frame gets its true label: the fewest errors this
            # layout allows under our threshold rule (see model_thresholds), so if that misses
            # the targets, no model on this layout is tried.
            self._cache[i] = (layout, errors, fpr <= self.targets.fpr and fnr <= self.targets.fnr)
        return self._cache[i]


def make_plan(prep: Prepared, cascade: Cascade, costs: Costs, targets: Targets, evidence: Evidence | None = None) -> Plan:
    # Report what simulate (the one definition) says, not what the search computed.
    labels, decided = _simulate(prep, cascade)
    fpr, fnr = evaluate(labels, prep.truth, targets.metric, targets.window, targets.window_min_fraction, prep.blocks)
    fractions = stage_fractions(decided)
    evidence = evidence or Evidence(prep, 0.95)
    b_fpr, b_fnr = evidence.bounds(cascade, decided, fpr, fnr)
    return Plan(
        skip=int(cascade.skip), diff=cascade.diff, diff_threshold=cascade.diff_threshold,
        model=cascade.model, c_low=cascade.c_low, c_high=cascade.c_high,
        expected_cost=expected_cost(cascade, costs, fractions),
        heldout_fpr=fpr if (~prep.truth).any() else None, heldout_fnr=fnr if prep.truth.any() else None,
        fractions=fractions,
        reference_only=cascade.skip == 1 and cascade.diff is None and cascade.model is None,
        bound_fpr=b_fpr, bound_fnr=b_fnr, confidence=evidence.confidence,
        certified=b_fpr <= targets.fpr and b_fnr <= targets.fnr,
    )


def stages_line(plan: Plan, fractions: Mapping[str, float], model_text: str, reference_only: bool, why: str) -> str:
    """The stages of a plan in order, with the share of frames each settles (one object or a pass)."""
    if reference_only:
        return f"reference on every frame ({why})"
    parts = []
    if plan.skip > 1:
        parts.append(f"process 1 frame in {plan.skip}")
    if plan.diff is not None:
        parts.append(f"diff {plan.diff!r} < {plan.diff_threshold:.4g} settles {fractions.get('diff', 0):.1%}")
    if plan.model is not None:
        parts.append(f"{model_text} settles {fractions.get('model', 0):.1%}")
    parts.append(f"reference on {fractions.get('reference', 0):.1%}")
    return " -> ".join(parts)


def rate_text(rate: float | None) -> str:
    """A rate for a person: n/a where it is undefined (no frame of its kind), never 0."""
    return "n/a" if rate is None else f"{rate:.2%}"


def plan_summary(plan: Plan) -> str:
    """One line describing a plan, e.g. for the CLI."""
    model = f"model {plan.model!r} (no < {_lo(plan.c_low):.4g}, yes > {_hi(plan.c_high):.4g})"
    stages = stages_line(plan, plan.fractions, model, plan.reference_only,
                         "no cascade met the targets at a clear saving")
    return (f"{stages}; {plan.expected_cost * 1e3:.3g} ms/frame; "
            f"held-out FPR {rate_text(plan.heldout_fpr)}, FNR {rate_text(plan.heldout_fnr)} "
            f"({plan.confidence:.0%} bounds {plan.bound_fpr:.2%}, {plan.bound_fnr:.2%}"
            f"{': certified' if plan.certified else ''})")


__all__ = [
    "Cascade", "Costs", "DEFAULT_DIFF_QUANTILES", "DEFAULT_SKIPS", "HeldOut", "Plan", "STAGES", "Targets",
    "expected_cost", "optimize", "plan_summary", "rate_text", "simulate", "stage_fractions", "stages_line",
]
