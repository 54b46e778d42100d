"""The words of a cascade, which every other module speaks: targets, costs, held-out frames, plans.

    targets = Targets(fpr=0.01, fnr=0.01)
    plan = choose_plan(bundle, targets, ["car", "bus"], search)    # noscope.planning
    plan.objects, plan.shared.skip, plan.plans["car"].c_low, plan.expected_cost

A cascade answers "is the object in this frame?" with cheap stages first and the reference
detector last: frame skip (copy the last processed frame's answer), a difference detector (copy
the previous answer, or say no, when the frame barely changed), a specialized model (answer when
sure), the reference (everything else). `noscope.simulate` defines exactly what a cascade outputs
on held-out frames, `noscope.cascade` runs it on video, `noscope.optimizer` searches for the
cheapest one that meets the targets.

One plan answers one or several objects from one pass: the objects share the frame skip, the
difference detector (and its threshold) and the specialized model, whose K outputs give one
score per object; each object keeps its own thresholds (`ObjectPlan`). A frame goes to the
reference when any object is undecided there; one reference call scores every class. One object
is simply K = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .errors import NoscopeError, UsageError
from .metrics import METRICS, WINDOW_MIN_FRACTION

# Which stage decided a frame's label: simulate returns these codes (int8), STAGES[code] names them.
# Ordered by cost, so the stage a pass paid for a frame is the largest code any object needed there.
SKIP, DIFF, MODEL, REFERENCE = 0, 1, 2, 3
STAGES = ("skip", "diff", "model", "reference")
# What settled a window (a windowed query, noscope.window_cascade): its processed frames' cheap answers,
# the reference on a few of its frames, or the reference until the window's answer was certain.
WINDOW_STAGES = ("cheap", "sampled", "reference")


def stages_of(decided_by) -> tuple[str, ...]:
    """The stage names a result's `decided_by` speaks: a windowed result's, or the per-frame ones."""
    names = set(np.asarray(decided_by).tolist())
    return WINDOW_STAGES if names & {"cheap", "sampled"} else STAGES

DEFAULT_SKIPS = (1, 2, 5, 10, 15, 30)
DIFF_KINDS = ("prev", "ref")


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
    blocks: np.ndarray  # int (N,): frames with one id are consecutive frames of the video, in order
    model_scores: dict[str, np.ndarray]  # model name -> float (N,)
    diff_scores: dict[str, dict[int, np.ndarray]]  # diff name -> skip s -> float (N,), frame t vs t-s
    diff_kinds: dict[str, str]  # diff name -> "prev" | "ref"
    frames: np.ndarray | None = None  # int (N,) frame numbers: where consecutive, one run of evidence


@dataclass(frozen=True)
class Targets:
    """Accuracy the cascade must keep, relative to the reference."""

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

    def to_dict(self) -> dict:
        """As summary.json records them."""
        return dict(fpr=self.fpr, fnr=self.fnr, metric=self.metric, window=self.window)


@dataclass(frozen=True)
class Cascade:
    """The knobs of one object's cascade; what `simulate` needs. None = stage absent."""

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
        if self.model is not None and low(self.c_low) > high(self.c_high):
            raise UsageError(f"model thresholds must satisfy c_low <= c_high, got {self.c_low} > {self.c_high}")


def low(c) -> float:
    """A c_low as a number: None (the model never says no) is -inf."""
    return -math.inf if c is None else float(c)


def high(c) -> float:
    """A c_high as a number: None (the model never says yes) is +inf."""
    return math.inf if c is None else float(c)


def as_cascade(c) -> Cascade:
    """A Cascade from a Cascade, an ObjectPlan, a mapping or a tuple (skip, diff, diff_threshold,
    model, c_low, c_high)."""
    if isinstance(c, Cascade):
        return c
    if isinstance(c, Mapping):
        return Cascade(**{f.name: c.get(f.name) for f in fields(Cascade)} | {"skip": c.get("skip", 1)})
    if isinstance(c, (tuple, list)):
        return Cascade(*c)
    return Cascade(*(getattr(c, f.name) for f in fields(Cascade)))


@dataclass
class ObjectPlan:
    """One object's cascade plus what the optimizer expects of it. Serialisable with to_dict()."""

    skip: int
    diff: str | None
    diff_threshold: float | None
    model: str | None
    c_low: float | None
    c_high: float | None
    expected_cost: float  # seconds per frame (of the whole pass, when several objects share it)
    heldout_fpr: float | None  # None: the held-out frames have no negative frame, so no FPR
    heldout_fnr: float | None  # None: no positive held-out frame, so no FNR (not 0)
    fractions: dict[str, float] = field(default_factory=dict)  # share of this object's frames decided by each stage
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
    def from_dict(cls, d: Mapping) -> "ObjectPlan":
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


@dataclass
class Plan:
    """One pass over the video for one or several objects. Every ObjectPlan has the same skip,
    diff, diff_threshold and model; its fractions say which stage decided *that object's* labels.
    `fractions` and `expected_cost` are the pass's: a frame counts as "reference" when any object
    sent it there."""

    plans: dict[str, ObjectPlan]
    expected_cost: float
    fractions: dict[str, float]

    def __post_init__(self):
        if not self.plans:
            raise NoscopeError("a plan needs at least one object")
        shapes = {(p.skip, p.diff, p.diff_threshold, p.model) for p in self.plans.values()}
        if len(shapes) > 1:
            raise NoscopeError("the objects of a plan must share frame skip, difference detector and model")

    @property
    def objects(self) -> list[str]:
        return list(self.plans)

    @property
    def shared(self) -> ObjectPlan:
        """The first object's plan, for what every object shares (skip, diff, model)."""
        return next(iter(self.plans.values()))

    @property
    def reference_only(self) -> bool:
        return all(p.reference_only for p in self.plans.values())

    def with_plans(self, plans: dict[str, ObjectPlan]) -> "Plan":
        """The same pass with repaired object plans (the held-out expectations stay as chosen)."""
        return Plan(plans, self.expected_cost, self.fractions)

    def to_dict(self) -> dict:
        s = self.shared
        return dict(skip=int(s.skip), diff=s.diff, diff_threshold=s.diff_threshold, model=s.model,
                    expected_cost=float(self.expected_cost), fractions={k: float(v) for k, v in self.fractions.items()},
                    reference_only=bool(self.reference_only), objects={k: p.to_dict() for k, p in self.plans.items()})

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        try:
            plans = {str(k): ObjectPlan.from_dict(v) for k, v in dict(d["objects"]).items()}
            return cls(plans, float(d["expected_cost"]), {str(k): float(v) for k, v in dict(d["fractions"]).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise NoscopeError(f"cascade plan is malformed ({type(e).__name__}: {e}); re-run the optimizer") from None

    def describe(self, why: str = "no cascade met the targets at a clear saving") -> str:
        """One line for a person: the stages in order with the share each settles, the expected cost,
        and the held-out errors (one object: also their bounds)."""
        if len(self.plans) == 1:
            return object_plan_line(self.shared, why)
        s = self.shared
        stages = stages_line(s, self.fractions, f"model {s.model!r}", self.reference_only,
                             "no cascade met every object's targets at a clear saving")
        per = ", ".join(f"{k} FPR {rate_text(p.heldout_fpr)} FNR {rate_text(p.heldout_fnr)}" for k, p in self.plans.items())
        return f"{stages}; {self.expected_cost * 1e3:.3g} ms/frame; held-out {per}"


def stage_fractions(decided_by: np.ndarray) -> dict[str, float]:
    """Share of frames decided by each stage (sums to 1)."""
    counts = np.bincount(np.asarray(decided_by, dtype=np.int64), minlength=len(STAGES))
    total = max(int(counts.sum()), 1)
    return {name: float(counts[i] / total) for i, name in enumerate(STAGES)}


def pass_decided(decided: list[np.ndarray]) -> np.ndarray:
    """The pass's stage per frame from every object's: skip/diff are shared, and a frame reaches
    the reference if any object sent it there (codes are ordered skip < diff < model < reference)."""
    return np.maximum.reduce([np.asarray(d, np.int8) for d in decided])


def cost_of(table: Mapping[str, float], name: str, what: str) -> float:
    if name not in table:
        raise NoscopeError(f"no measured cost for {what} {name!r}; profile it first")
    return float(table[name])


def expected_cost(cascade, costs: Costs, fractions: Mapping[str, float]) -> float:
    """Seconds per frame of `cascade` when its stages decide `fractions` of the frames (NoScope's
    cost model): decode + processed * (convert + diff) + reaching model * model + reaching reference
    * reference."""
    c = as_cascade(cascade)
    processed = 1.0 - fractions["skip"]
    cost = costs.decode + processed * costs.convert
    if c.diff is not None:
        cost += processed * cost_of(costs.diff, c.diff, "difference detector")
    if c.model is not None:
        cost += (fractions["model"] + fractions["reference"]) * cost_of(costs.model, c.model, "specialized model")
    return cost + fractions["reference"] * costs.reference


def stages_line(plan: ObjectPlan, fractions: Mapping[str, float], model_text: str, reference_only: bool, why: str) -> str:
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


def object_plan_line(plan: ObjectPlan, why: str = "no cascade met the targets at a clear saving") -> str:
    """One line describing one object's plan, e.g. for the CLI."""
    model = f"model {plan.model!r} (no < {low(plan.c_low):.4g}, yes > {high(plan.c_high):.4g})"
    stages = stages_line(plan, plan.fractions, model, plan.reference_only, why)
    return (f"{stages}; {plan.expected_cost * 1e3:.3g} ms/frame; "
            f"held-out FPR {rate_text(plan.heldout_fpr)}, FNR {rate_text(plan.heldout_fnr)} "
            f"({plan.confidence:.0%} bounds {plan.bound_fpr:.2%}, {plan.bound_fnr:.2%}"
            f"{': certified' if plan.certified else ''})")
