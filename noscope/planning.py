"""Pick the plan for a bundle and targets: which models may be offered, and the optimizer's settings.

    tb = load_bundle(bundle_path("store"))
    plan = choose_plan(tb, Targets(0.01, 0.01), cfg["optimizer"])
    joint = choose_joint_plan(multi, Targets(0.01, 0.01), cfg["optimizer"], ["car", "bus"])
"""

from __future__ import annotations

from .bundle import TrainedBundle
from .errors import NoscopeError
from .joint import JointPlan, optimize_joint
from .optimizer import Plan, Targets, optimize


def usable_models(tb: TrainedBundle, min_auc: float, obj: str | None = None) -> list[str]:
    """Specialized models good enough to be offered to the optimizer.

    A model that ranks the held-out frames worse than `min_auc` has not learnt the object, and
    with a few hundred held-out frames and two dozen candidates the thresholds the optimizer
    would fit to it are luck: on the urban-road clip such models (held-out AUC 0.6-0.88) scored
    AUC 0.51-0.61 on later footage and the cascade's false-positive rate went from 5% held-out
    to 87%. Rejecting them makes the cascade fall back on frame skip, difference detectors and
    the reference instead.

    Several objects: the guard is per object (`obj`), on that object's output's held-out AUC.
    """
    if obj is not None and tb.multi:
        return [c["name"] for c in tb.meta["candidates"]
                if c["heldout_aucs"][obj] is not None and c["heldout_aucs"][obj] >= min_auc]
    return [c["name"] for c in tb.meta["candidates"] if c["heldout_auc"] >= min_auc]


def search_options(ocfg: dict) -> dict:
    """The optimizer's keyword arguments from a config's optimizer section (older bundles lack some)."""
    return dict(skips=tuple(int(s) for s in ocfg.get("skips", (1, 2, 5, 10, 15, 30))),
                min_saving=float(ocfg.get("min_saving", 0.0)), confidence=float(ocfg.get("confidence", 0.95)),
                strict=bool(ocfg.get("strict", False)), cost_slack=float(ocfg.get("cost_slack", 0.0)))


def choose_plan(tb: TrainedBundle, targets: Targets, optimizer_cfg: dict | None = None) -> Plan:
    if tb.multi:
        raise NoscopeError(f"bundle {tb.root} answers several objects ({', '.join(tb.objects)}); it needs a joint plan")
    ocfg = dict(tb.meta.get("optimizer", {}), **(optimizer_cfg or {}))
    models = usable_models(tb, float(ocfg.get("min_auc", 0.0)))
    return optimize(tb.heldout, tb.costs, targets, models=models, **search_options(ocfg))


def choose_joint_plan(tb: TrainedBundle, targets: Targets, optimizer_cfg: dict | None = None,
                      objects: list[str] | None = None) -> JointPlan:
    """One pass for `objects` (default: all of the bundle's), each held to `targets`."""
    ocfg = dict(tb.meta.get("optimizer", {}), **(optimizer_cfg or {}))
    objects = objects or tb.objects
    models = {o: usable_models(tb, float(ocfg.get("min_auc", 0.0)), o) for o in objects}
    return optimize_joint({o: tb.heldouts[o] for o in objects}, tb.costs, targets, models=models, **search_options(ocfg))
