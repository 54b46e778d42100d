"""Cost-based search for a windowed cascade: the cheapest plan whose answers per window meet the
targets on the held-out windows.

    plan = optimize_windows({"car": heldout}, costs, Targets(0.05, 0.05), WindowQuestion(30, 0.5), settings.optimizer)
    plan.shared.plan.sampling, plan.shared.plan.frame.skip, plan.expected_cost       # window_plans.WindowedPlan

Candidates: the per-frame optimizer's cascades (noscope.optimizer) at the window targets and at
looser frame targets (a window forgives what a frame does not: a frame wrong here and there, an
answer a few frames late), plus no cheap stage at all; each with every reference sampling in
SAMPLINGS (and the exact one: every window's own answer, decided). Each candidate is simulated on
the held-out windows (noscope.window_simulate), cut at OFFSETS phases so that a few held-out minutes
give more windows to judge by; the window FPR and FNR averaged over the phases must meet the
targets. Cost per frame (seconds, `Costs`): every frame decoded; processed frames converted and
passed to the difference detector; the model on the frames it runs on; the reference, with its
conversion, on every frame it answers. Among the plans within `cost_slack` of the cheapest, the
best-backed wins (upper bounds on both window rates at `confidence`, one window per independent
piece of evidence); the exact plan is the fallback, and a cascade must save `min_saving` of its cost.
"""

from __future__ import annotations

import math

import numpy as np

from .bounds import rate_upper
from .optimizer import optimize
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
    """The per-frame optimizer's cascades at the window targets and looser ones, and no cheap stage."""
    found = [Cascade(1)]
    levels = sorted({min(0.45, targets.fpr * m) for m in FRAME_TARGETS} | set(LOOSE_TARGETS))
    for t in levels:
        plan = optimize({"o": heldout}, costs, Targets(t, t), skips=tuple(int(s) for s in search.skips),
                        models={"o": list(models)}, min_saving=0.0, confidence=float(search.confidence))
        c = plan.shared.cascade
        if c not in found:
            found.append(c)
    return found


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
    if f.diff is not None or f.model is not None:
        cheap_part = first.processed / arrays.n * (costs.convert + (cost_of(costs.diff, f.diff, "difference detector")
                                                                    if f.diff is not None else 0.0))
    if f.model is not None:
        cheap_part += first.reached / arrays.n * cost_of(costs.model, f.model, "specialized model")
    cost = costs.decode + cheap_part + calls / arrays.n * (costs.reference + costs.convert)
    return dict(fpr=_mean(fpr), fnr=_mean(fnr), cost=cost, calls=calls / max(len(first.labels), 1),
                cheap=float(np.mean(first.stage == CHEAP)) if len(first.labels) else 0.0, windows=len(first.labels),
                neg=int((~first.truth).sum()), pos=int(first.truth.sum()),
                wrong_yes=int((first.labels & ~first.truth).sum()), wrong_no=int((~first.labels & first.truth).sum()))


def _rate(wrong: np.ndarray, kind: np.ndarray) -> float | None:
    return float(wrong.sum() / kind.sum()) if kind.any() else None


def _mean(rates: list) -> float | None:
    seen = [r for r in rates if r is not None]
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
    size, share = question.size, question.share
    arrays = HeldOutArrays(heldout)
    models = list(heldout.model_scores) if models is None else list(models)
    exact = WindowPlan(Cascade(1), Sampling(0, size), size, share)
    offers = [(judged(exact, arrays, costs), exact)]
    limit = (1.0 - float(search.min_saving)) * offers[0][0]["cost"]
    for c in frame_cascades(heldout, costs, targets, models, search):
        for s in samplings(size):
            plan = WindowPlan(c, s, size, share)
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
