"""The windowed cascade's vocabulary: what a plan answering windows is, and what it promises.

    plan = WindowPlan(Cascade(5, "prev-blocked", 2.1, "c2f16d32s50", 0.2, 0.9), Sampling(3, 8), size=30, share=0.5)
    op = WindowObjectPlan(plan, expected_cost=0.004, heldout_fpr=0.0, heldout_fnr=0.02, ...)
    windowed = WindowedPlan({"car": op}, op.expected_cost, op.fractions)     # what a query runs and reports

A windowed query answers one object per window (noscope.windows, noscope.window_simulate): the
per-frame cheap stages (frame skip, difference detector, model thresholds) settle the windows their
processed frames decide, and the reference answers a few frames of each other window (`Sampling`).
`WindowedPlan` has the shape of plans.Plan (`plans`, `objects`, `shared`, `with_plans`, `to_dict`),
so the check on the video (noscope.check) handles both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .plans import Cascade, as_cascade, high, low, rate_text
from .windows import Sampling


@dataclass(frozen=True)
class WindowPlan:
    """A cascade answering windows: the per-frame cheap stages, then the reference on a few frames
    of the windows they leave open."""

    frame: Cascade  # skip, difference detector and model (the per-frame cascade's; its thresholds unused)
    sampling: Sampling
    size: int  # frames per window
    share: float  # share of positive frames that makes a window "yes"
    settles: tuple = (False, True)  # the answers the cheap stages may settle a window with (a repair narrows it)
    w_low: float | None = None  # a window scoring below this is "no" (None: never)
    w_high: float | None = None  # above this "yes" (None: never)

    @property
    def reference_only(self) -> bool:
        """No cheap answer: every window goes to the reference (its sampling says how many frames)."""
        return self.w_low is None and self.w_high is None


@dataclass
class WindowObjectPlan:
    """One object's windowed plan plus what the held-out windows say of it."""

    plan: WindowPlan
    expected_cost: float  # seconds per frame
    heldout_fpr: float | None  # over held-out windows; None: no negative window
    heldout_fnr: float | None  # None: no positive window
    fractions: dict[str, float] = field(default_factory=dict)  # share of windows settled cheaply / by the reference
    calls_per_window: float = 0.0  # reference calls a window took on the held-out windows
    windows: int = 0  # held-out windows it was judged on
    bound_fpr: float = 1.0
    bound_fnr: float = 1.0
    confidence: float = 0.95

    # what the check and the reports read, as they read an ObjectPlan
    @property
    def skip(self) -> int:
        return int(self.plan.frame.skip)

    @property
    def model(self) -> str | None:
        return self.plan.frame.model

    @property
    def reference_only(self) -> bool:
        return self.plan.reference_only

    def with_plan(self, plan: WindowPlan) -> "WindowObjectPlan":
        return dataclasses.replace(self, plan=plan)

    def to_dict(self) -> dict:
        f, s = self.plan.frame, self.plan.sampling
        return dict(unit="windows", window_frames=int(self.plan.size), share=float(self.plan.share), skip=int(f.skip),
                    diff=f.diff, diff_threshold=_num(f.diff_threshold), model=f.model, c_low=_num(f.c_low),
                    c_high=_num(f.c_high), sampling=dict(lead=int(s.lead), most=int(s.most)),
                    settles=["yes" if a else "no" for a in self.plan.settles], w_low=_num(self.plan.w_low),
                    w_high=_num(self.plan.w_high),
                    expected_cost=float(self.expected_cost), heldout_fpr=_num(self.heldout_fpr),
                    heldout_fnr=_num(self.heldout_fnr), fractions={k: float(v) for k, v in self.fractions.items()},
                    calls_per_window=float(self.calls_per_window), heldout_windows=int(self.windows),
                    bound_fpr=float(self.bound_fpr), bound_fnr=float(self.bound_fnr), confidence=float(self.confidence),
                    reference_only=bool(self.reference_only))

    @classmethod
    def from_dict(cls, d: dict) -> "WindowObjectPlan":
        plan = WindowPlan(as_cascade(d), Sampling(int(d["sampling"]["lead"]), int(d["sampling"]["most"])),
                          int(d["window_frames"]), float(d["share"]),
                          tuple(a == "yes" for a in d.get("settles", ["no", "yes"])), d.get("w_low"), d.get("w_high"))
        return cls(plan, float(d["expected_cost"]), d.get("heldout_fpr"), d.get("heldout_fnr"), dict(d.get("fractions", {})),
                   float(d.get("calls_per_window", 0.0)), int(d.get("heldout_windows", 0)), float(d.get("bound_fpr", 1.0)),
                   float(d.get("bound_fnr", 1.0)), float(d.get("confidence", 0.95)))

    def line(self) -> str:
        """One line for a person: the stages in order, the cost, the held-out window errors."""
        f, parts = self.plan.frame, []
        if f.skip > 1:
            parts.append(f"process 1 frame in {f.skip}")
        if f.diff is not None:
            parts.append(f"diff {f.diff!r} < {f.diff_threshold:.4g}")
        if f.model is not None:
            parts.append(f"model {f.model!r} (mean score)")
        cheap = " -> ".join(parts) or "no cheap stage"
        cheap += f" (window score < {low(self.plan.w_low):.3g}: no, > {high(self.plan.w_high):.3g}: yes)"
        return (f"windows of {self.plan.size} frames ({self.plan.share:.0%} positive = yes): {cheap} settles "
                f"{self.fractions.get('cheap', 0):.1%} of windows, {self.plan.sampling.describe()} on the rest "
                f"({self.calls_per_window:.2g} a window); {self.expected_cost * 1e3:.3g} ms/frame; held-out windows "
                f"({self.windows}) FPR {rate_text(self.heldout_fpr)}, FNR {rate_text(self.heldout_fnr)}")


def _num(x):
    return None if x is None else float(x)


@dataclass
class WindowedPlan:
    """A windowed pass (one object): the shape of plans.Plan."""

    plans: dict[str, WindowObjectPlan]
    expected_cost: float
    fractions: dict[str, float]

    @property
    def objects(self) -> list[str]:
        return list(self.plans)

    @property
    def shared(self) -> WindowObjectPlan:
        return next(iter(self.plans.values()))

    @property
    def reference_only(self) -> bool:
        return all(p.reference_only for p in self.plans.values())

    def with_plans(self, plans: dict[str, WindowObjectPlan]) -> "WindowedPlan":
        return WindowedPlan(plans, self.expected_cost, self.fractions)

    def to_dict(self) -> dict:
        return dict(unit="windows", expected_cost=float(self.expected_cost),
                    fractions={k: float(v) for k, v in self.fractions.items()},
                    objects={k: p.to_dict() for k, p in self.plans.items()})

    def describe(self, why: str = "") -> str:
        return self.shared.line()
