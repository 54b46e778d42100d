"""Cost-based search for a windowed cascade: the cheapest plan whose answers per window meet the
targets on the held-out windows.

    plan = optimize_windows({"car": heldout}, costs, Targets(0.05, 0.05), WindowQuestion(30, 0.5), settings.optimizer)
    plan.shared.plan.sampling, plan.shared.plan.w_high, plan.expected_cost       # window_plans.WindowedPlan

Candidates: the cheap stages of the per-frame optimizer's cascades (noscope.optimizer) at the window
targets and looser frame targets, each model at each frame skip, and no cheap stage at all; each
with every reference sampling of SAMPLINGS (and the exact one: every window's own answer, decided)
that answers the held-out windows within the targets on its own (the windows it gets on video are
whichever the cheap stages leave, and a repair can leave it many more). For each, the window
thresholds (w_low, w_high) on the windows' scores (noscope.window_simulate) are fitted as a model's
per-frame thresholds are (optimizer.model_thresholds: the lowest w_low and the highest w_high whose
errors meet the targets, the sampling answering the windows between them), on the held-out frames
cut into windows at OFFSETS phases, so that a few held-out minutes give more windows to judge by.
Cost per frame (seconds, `Costs`): every frame decoded; processed frames' luma plane and the
difference detector; the model (its own conversion included) on the frames it runs on; the
reference, with its conversion, on every frame it answers. Among the plans within `cost_slack` of
the cheapest, the best-backed wins (upper bounds on both window rates at `confidence`, a window for
a piece of evidence); the exact plan is the fallback, and a cascade must save `min_saving` of its cost.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .bounds import rate_upper
from .metrics import rates
from .optimizer import model_thresholds, optimize
from .plans import Cascade, Costs, HeldOut, Targets, cost_of
from .simulate import HeldOutArrays
from .window_plans import WindowedPlan, WindowObjectPlan, WindowPlan
from .window_simulate import CHEAP, simulate_windows
from .windows import Sampling, WindowQuestion

SAMPLINGS = ((1, 1), (2, 2), (2, 3), (3, 5), (3, 8), (4, 12), (5, 20))  # (lead, most): cheapest first
FRAME_TARGETS = (1.0, 2.0, 4.0)  # multiples of the window target the per-frame cascades are searched at ...
LOOSE_TARGETS = (0.1, 0.2, 0.3, 0.45)  # ... and these frame targets
OFFSETS = 3  # phases the held-out frames are cut into windows at


def samplings(size: int) -> list[Sampling]:
    """The reference samplings tried for windows of `size` frames, the exact one last."""
    out = []
    for lead, most in SAMPLINGS:
        s = Sampling(lead, min(most, size))
        if s not in out and s.most < size:
            out.append(s)
    return out + [Sampling(0, size)]


def frame_cascades(heldout: HeldOut, costs: Costs, targets: Targets, models, search) -> list[Cascade]:
    """The cheap stages (skip, difference detector, model) of the per-frame optimizer's cascades at
    the window targets and looser ones, every model at every skip, and none at all."""
    found = {Cascade(1)}
    levels = sorted({min(0.45, targets.fpr * m) for m in FRAME_TARGETS} | set(LOOSE_TARGETS))
    skips = tuple(int(s) for s in search.skips)
    for t in levels:
        c = optimize({"o": heldout}, costs, Targets(t, t), skips=skips, models={"o": list(models)}, min_saving=0.0,
                     confidence=float(search.confidence)).shared.cascade
        found.add(dataclasses.replace(c, c_low=None, c_high=None))
    found |= {Cascade(s, model=m) for s in skips for m in models}
    return sorted(found, key=lambda c: (c.skip, c.diff or "", c.diff_threshold or 0.0, c.model or ""))


class WindowFit:
    """Window FPR / FNR when the windows with a score answer `labels` and the others what the
    reference's sampling answers (`said`), against the reference's windows (`truth`): what
    optimizer.model_thresholds searches over."""

    def __init__(self, truth: np.ndarray, said: np.ndarray, scored: np.ndarray):
        self.truth, self.said, self.scored = truth, said, scored

    def __call__(self, labels: np.ndarray) -> tuple[float, float]:
        out = self.said.copy()
        out[self.scored] = labels
        return rates(out, self.truth)


def fitted(frame: Cascade, sampling: Sampling, arrays: HeldOutArrays, question: WindowQuestion,
           targets: Targets) -> WindowPlan | None:
    """The plan with window thresholds fitted to the held-out windows (module docstring), or None
    where even the sampling on every window misses the targets."""
    plan = WindowPlan(frame, sampling, question.size, question.share)
    phases = [simulate_windows(plan, arrays, k * question.size // OFFSETS) for k in range(OFFSETS)]
    score = np.concatenate([a.score for a in phases])
    said, truth = np.concatenate([a.labels for a in phases]), np.concatenate([a.truth for a in phases])
    scored = np.isfinite(score)
    if not scored.any():
        return plan if _meets(rates(said, truth), targets) else None
    found = model_thresholds(WindowFit(truth, said, scored), said[scored], score[scored], targets)
    if found is None:
        return None
    lo, hi, _ = found
    return dataclasses.replace(plan, w_low=None if lo == -math.inf else lo, w_high=None if hi == math.inf else hi)


def _meets(r: tuple[float, float], targets: Targets) -> bool:
    return r[0] <= targets.fpr and r[1] <= targets.fnr


def judged(plan: WindowPlan, arrays: HeldOutArrays, costs: Costs) -> dict:
    """What the held-out windows say of one plan: window FPR / FNR averaged over OFFSETS phases, the
    share of windows settled cheaply, calls per window, cost per frame, and the phase-0 counts."""
    phases = [simulate_windows(plan, arrays, k * plan.size // OFFSETS) for k in range(OFFSETS)]
    fpr = [_rate(a.labels & ~a.truth, ~a.truth) for a in phases]
    fnr = [_rate(~a.labels & a.truth, a.truth) for a in phases]
    first = phases[0]
    calls = float(np.mean([a.calls.sum() for a in phases]))
    f = plan.frame
    cheap_part = 0.0
    if not plan.reference_only:
        cheap_part = first.processed / arrays.n * (costs.convert + (cost_of(costs.diff, f.diff, "difference detector")
                                                                    if f.diff is not None else 0.0))
        if f.model is not None:
            cheap_part += first.reached / arrays.n * cost_of(costs.model, f.model, "specialized model")
    cost = costs.decode + cheap_part + calls / arrays.n * (costs.reference + costs.convert)
    return dict(fpr=_mean(fpr), fnr=_mean(fnr), cost=cost, calls=calls / max(len(first.labels), 1),
                cheap=float(np.mean(first.stage == CHEAP)) if len(first.labels) else 0.0, windows=len(first.labels),
                neg=int((~first.truth).sum()), pos=int(first.truth.sum()))


def _rate(wrong: np.ndarray, kind: np.ndarray) -> float | None:
    return float(wrong.sum() / kind.sum()) if kind.any() else None


def _mean(values: list) -> float | None:
    seen = [r for r in values if r is not None]
    return float(np.mean(seen)) if seen else None


def meets(fig: dict, targets: Targets) -> bool:
    return (fig["fpr"] or 0.0) <= targets.fpr and (fig["fnr"] or 0.0) <= targets.fnr


def bounds(fig: dict, confidence: float) -> tuple[float, float]:
    """Upper bounds on the window rates: the averaged rate over the phase-0 windows of its kind."""
    alpha = (1.0 - confidence) / 2
    return (rate_upper((fig["fpr"] or 0.0) * fig["neg"], fig["neg"], alpha),
            rate_upper((fig["fnr"] or 0.0) * fig["pos"], fig["pos"], alpha))


def optimize_windows(heldouts: dict[str, HeldOut], costs: Costs, targets: Targets, question: WindowQuestion, search,
                     models=None) -> WindowedPlan:
    """The cheapest windowed plan meeting `targets` on the held-out windows (module docstring), for
    the one object of `heldouts` (object -> its held-out frames); `search`: the optimizer settings
    (skips, min_saving, confidence, cost_slack); `models`: the names offered (default: all)."""
    ((obj, heldout),) = heldouts.items()
    size = question.size
    arrays = HeldOutArrays(heldout)
    models = list(heldout.model_scores) if models is None else list(models)
    exact = WindowPlan(Cascade(1), Sampling(0, size), size, question.share)
    offers = [(judged(exact, arrays, costs), exact)]
    limit = (1.0 - float(search.min_saving)) * offers[0][0]["cost"]
    able = [s for s in samplings(size)
            if meets(judged(WindowPlan(Cascade(1), s, size, question.share), arrays, costs), targets)]
    for c in frame_cascades(heldout, costs, targets, models, search):
        for s in able:
            plan = fitted(c, s, arrays, question, targets)
            if plan is None or plan.reference_only and c != Cascade(1):
                continue
            fig = judged(plan, arrays, costs)
            if meets(fig, targets) and fig["cost"] <= limit:
                offers.append((fig, plan))
    cheapest = min(fig["cost"] for fig, _ in offers)
    pool = [(fig, p) for fig, p in offers if fig["cost"] <= cheapest * (1 + float(search.cost_slack)) + 1e-12]

    def backing(item):
        b_fpr, b_fnr = bounds(item[0], float(search.confidence))
        return max(b_fpr / targets.fpr, b_fnr / targets.fnr), item[0]["cost"], item[0]["calls"]

    fig, plan = min(pool, key=backing)
    return WindowedPlan({obj: object_plan(plan, fig, float(search.confidence))}, fig["cost"],
                        dict(cheap=fig["cheap"], reference=1.0 - fig["cheap"]))


def object_plan(plan: WindowPlan, fig: dict, confidence: float) -> WindowObjectPlan:
    b_fpr, b_fnr = bounds(fig, confidence)
    return WindowObjectPlan(plan, fig["cost"], fig["fpr"], fig["fnr"], dict(cheap=fig["cheap"], reference=1 - fig["cheap"]),
                            fig["calls"], fig["windows"], b_fpr, b_fnr, confidence)


def exact_plan(question: WindowQuestion, obj: str) -> WindowedPlan:
    """The reference on every window until its answer is certain: no held-out figures needed."""
    plan = WindowPlan(Cascade(1), Sampling(0, question.size), question.size, question.share)
    op = WindowObjectPlan(plan, math.nan, 0.0, 0.0, dict(cheap=0.0, reference=1.0), float(question.size), 0, 0.0, 0.0)
    return WindowedPlan({obj: op}, math.nan, op.fractions)
