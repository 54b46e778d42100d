"""Several objects in one pass: one cascade shape, one decode, one CNN pass, K answers.

    plan = optimize_joint({"car": heldout_car, "bus": heldout_bus}, costs, Targets(0.01, 0.01))
    plan.plans["car"].c_low, plan.plans["bus"].c_high, plan.expected_cost

To answer every object from one pass, the objects share the frame skip, the difference detector
(and its threshold) and the specialized model, whose K outputs give one score per object. Each
object keeps its own c_low/c_high. A frame goes to the reference when any object is undecided
there; one reference call scores every class, so it serves all of them.

Semantics per object are exactly those of `optimizer.simulate` with that object's Plan: an object
decided by the model keeps the model's answer even on a frame the reference saw for another
object. Using the reference's answer there instead would look free, but it can raise that
object's false-positive rate (its label is copied to skipped frames of the other class) or, under
the window metric, either rate, so the per-object guarantee would be lost.

Search: for every shared (skip, diff, threshold, model) option, each object gets the thresholds
the single-object search would choose on that option (`optimizer.model_thresholds`); the
option's cost counts the union of the objects' undecided frames as reference calls. The cheapest
option where every object meets its targets wins (ties: fewer reference calls); the reference on
every frame meets any target and is the fallback. Like the single-object rule this is sound (the
plan meets every object's targets on the held-out frames) but not exhaustive: per-object
thresholds are not traded against each other to shrink the union.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import NoscopeError
from .optimizer import (DEFAULT_SKIPS, Cascade, Costs, HeldOut, Plan, Targets, Best, search_candidates,
                        search_configs, cost_of, Evidence, Layouts, model_thresholds, make_plan, Prepared, expected_cost,
                        rate_text, simulate, stage_fractions, stages_line)


@dataclass
class JointPlan:
    """One pass for several objects. Every per-object Plan has the same skip, diff, diff_threshold
    and model; its fractions say which stage decided *that object's* labels, its expected_cost is
    the shared pass's. `fractions` and `expected_cost` here are the pass's: a frame counts as
    "reference" when any object sent it there."""

    plans: dict[str, Plan]
    expected_cost: float
    fractions: dict[str, float]

    @property
    def objects(self) -> list[str]:
        return list(self.plans)

    @property
    def shared(self) -> Plan:
        return next(iter(self.plans.values()))

    @property
    def reference_only(self) -> bool:
        return all(p.reference_only for p in self.plans.values())

    def to_dict(self) -> dict:
        s = self.shared
        return dict(skip=int(s.skip), diff=s.diff, diff_threshold=s.diff_threshold, model=s.model,
                    expected_cost=float(self.expected_cost), fractions={k: float(v) for k, v in self.fractions.items()},
                    reference_only=bool(self.reference_only), objects={k: p.to_dict() for k, p in self.plans.items()})

    @classmethod
    def from_dict(cls, d: Mapping) -> "JointPlan":
        try:
            plans = {str(k): Plan.from_dict(v) for k, v in dict(d["objects"]).items()}
            jp = cls(plans, float(d["expected_cost"]), {str(k): float(v) for k, v in dict(d["fractions"]).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise NoscopeError(f"joint cascade plan is malformed ({type(e).__name__}: {e}); re-run the optimizer") from None
        _check_shared(jp.plans)
        return jp


def _check_shared(plans: Mapping[str, Plan]) -> None:
    if not plans:
        raise NoscopeError("a joint plan needs at least one object")
    shapes = {(p.skip, p.diff, p.diff_threshold, p.model) for p in plans.values()}
    if len(shapes) > 1:
        raise NoscopeError("the objects of a joint plan must share frame skip, difference detector and model")


def simulate_joint(plan: JointPlan, heldouts: Mapping[str, HeldOut]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """object -> (labels, decided_by codes) on the held-out frames: `simulate` per object."""
    return {k: simulate(p, heldouts[k]) for k, p in plan.plans.items()}


def joint_decided(decided: Sequence[np.ndarray]) -> np.ndarray:
    """The pass's stage per frame from every object's: skip/diff are shared, and a frame reaches
    the reference if any object sent it there (codes are ordered skip < diff < model < reference)."""
    return np.maximum.reduce([np.asarray(d, np.int8) for d in decided])


def optimize_joint(heldouts: Mapping[str, HeldOut], costs: Costs, targets: Targets | Mapping[str, Targets],
                   skips: Sequence[int] = DEFAULT_SKIPS, diff_thresholds=None,
                   models: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
                   diffs: Sequence[str] | None = None, min_saving: float = 0.0, confidence: float = 0.95,
                   strict: bool = False, cost_slack: float = 0.0) -> JointPlan:
    """The cheapest one-pass cascade meeting every object's targets on the held-out frames.

    heldouts: object -> HeldOut; all share the same frames (blocks) and difference-detector
    scores (those of the first are used), each has its own truth and model scores (the model's
    output for that object). targets: one for all, or one per object. models: the names offered
    (default: all), or per object the names whose output for that object may be trusted (e.g.
    passing the held-out AUC guard); a model not trusted for an object may still be chosen for
    the others, and that object then sends every frame reaching the model to the reference.
    confidence, strict, cost_slack: as in `optimizer.optimize`, per object (strict: every object's
    bounds meet its targets; the slack ranks options by the worst-backed object).
    """
    names, tg, preps = _prepared(heldouts, targets)
    first = preps[names[0]]
    allowed, offered = _offered(heldouts, models)
    model_cost = {m: cost_of(costs.model, m, "specialized model") for m in offered}
    for k in names:
        for m in allowed[k]:
            preps[k].model_scores(m)  # fail early on missing/bad scores

    evidence = {k: Evidence(preps[k], confidence) for k in names}
    search = {k: evidence[k].strict_targets(tg[k]) if strict else tg[k] for k in names}
    fallback = {k: Cascade(1) for k in names}
    best = Best(fallback, costs.decode + costs.convert + costs.reference, 1.0, min_saving, cost_slack)
    if any(t is None for t in search.values()):
        return _joint_plan(preps, heldouts, fallback, costs, tg, evidence)
    if strict and any(e.changes == 0 for e in evidence.values()):
        skips, diffs = (1,), []  # nothing shows what copying an answer forward would miss
    configs = search_configs(first, costs, skips, diff_thresholds, diffs)
    candidates = search_candidates(configs, costs, model_cost)
    layouts = {k: Layouts(preps[k], configs, search[k]) for k in names}
    n = first.n

    for lower_bound, i, m in candidates:
        if best.beyond(lower_bound):
            break  # sorted by lower bound: nothing after this can be cheaper
        (s, d, t), _, base = configs[i]
        layout = layouts[names[0]].get(i)[0]
        per = {k: layouts[k].get(i, layout) for k in names}
        if not all(feasible for _, _, feasible in per.values()):
            continue
        reach = layout.reach
        if m is None:
            ref_share = len(reach) / n
            cost = base + ref_share * costs.reference
            cascades = {k: Cascade(s, d, t) for k in names}
        else:
            found = _with_model(preps, per, search, allowed, reach, (s, d, t), m)
            if found is None:
                continue
            cascades, ref_share = found
            ref_share /= n
            cost = base + len(reach) / n * model_cost[m] + ref_share * costs.reference
        best.offer(cascades, cost, ref_share)

    chosen = best.choose(lambda cs: max(evidence[k].ratio(preps[k], cs[k], tg[k]) for k in names))
    return _joint_plan(preps, heldouts, chosen, costs, tg, evidence)


def _joint_plan(preps, heldouts, cascades, costs, tg, evidence) -> JointPlan:
    """Each object's Plan from its cascade; the pass's fractions and cost, shared by all."""
    names = list(cascades)
    plans = {k: make_plan(preps[k], cascades[k], costs, tg[k], evidence[k]) for k in names}
    decided = joint_decided([simulate(cascades[k], heldouts[k])[1] for k in names])
    fractions = stage_fractions(decided)
    cost = expected_cost(cascades[names[0]], costs, fractions)
    for p in plans.values():
        p.expected_cost = cost  # the pass is paid once, whichever object is looked at
    return JointPlan(plans, cost, fractions)


def _prepared(heldouts: Mapping[str, HeldOut], targets) -> tuple[list[str], dict[str, Targets], dict[str, Prepared]]:
    """(objects, each object's targets, each object's checked held-out set): one pass needs the same frames."""
    if not heldouts:
        raise NoscopeError("optimize_joint needs at least one object")
    names = list(heldouts)
    tg = {k: (targets[k] if isinstance(targets, Mapping) else targets) for k in names}
    for t in tg.values():
        t.validate()
    preps = {k: Prepared(h) for k, h in heldouts.items()}
    for k in names[1:]:
        if preps[k].n != preps[names[0]].n or not np.array_equal(preps[k].blocks, preps[names[0]].blocks):
            raise NoscopeError(f"held-out frames of {k!r} and {names[0]!r} differ: one pass needs the same frames")
    return names, tg, preps


def _offered(heldouts: Mapping[str, HeldOut], models) -> tuple[dict[str, set[str]], list[str]]:
    """(object -> models whose output may be trusted for it, every model offered in search order)."""
    names = list(heldouts)
    if models is None or not isinstance(models, Mapping):
        offered = list(heldouts[names[0]].model_scores) if models is None else list(models)
        return {k: set(offered) for k in names}, offered
    allowed = {k: set(models.get(k, ())) for k in names}
    offered = [m for m in heldouts[names[0]].model_scores if any(m in a for a in allowed.values())]
    offered += sorted({m for a in allowed.values() for m in a} - set(offered))
    return allowed, offered


def _with_model(preps, per, tg, allowed, reach, layout_key, m):
    """Each object's thresholds for model `m` on one layout -> (cascades, frames sent to the
    reference by any object), or None when some object cannot meet its targets."""
    s, d, t = layout_key
    undecided = np.zeros(len(reach), bool)
    cascades = {}
    for k, prep in preps.items():
        if m not in allowed[k]:
            undecided[:] = True  # this object asks the reference wherever the model runs
            cascades[k] = Cascade(s, d, t, m, None, None)
            continue
        p = prep.model_scores(m)[reach]
        found = model_thresholds(per[k][1], prep.truth[reach], p, tg[k])
        if found is None:
            return None
        c_low, c_high = found[:2]
        undecided |= (p >= c_low) & (p <= c_high)
        cascades[k] = Cascade(s, d, t, m, c_low, c_high)
    return cascades, int(np.count_nonzero(undecided))


def joint_summary(plan: JointPlan) -> str:
    """One line describing a joint plan, e.g. for the CLI."""
    s = plan.shared
    stages = stages_line(s, plan.fractions, f"model {s.model!r}", plan.reference_only,
                         "no cascade met every object's targets at a clear saving")
    per = ", ".join(f"{k} FPR {rate_text(p.heldout_fpr)} FNR {rate_text(p.heldout_fnr)}" for k, p in plan.plans.items())
    return f"{stages}; {plan.expected_cost * 1e3:.3g} ms/frame; held-out {per}"


__all__ = ["JointPlan", "joint_decided", "joint_summary", "optimize_joint", "simulate_joint"]
