"""Pick the plan for a bundle, objects and targets: which models may be offered, and the optimizer's settings.

    bundle = load_bundle(bundle_path("street"))
    plan = choose_plan(bundle, Targets(0.01, 0.01), ["car", "bus"], settings.optimizer)
"""

from __future__ import annotations

from .bundle import TrainedBundle
from .optimizer import optimize
from .plans import Plan, Targets
from .settings import SearchSettings


def usable_models(bundle: TrainedBundle, min_auc: float, obj: str) -> list[str]:
    """Specialized models good enough to be offered to the optimizer for `obj`.

    A model that ranks the held-out frames worse than `min_auc` has not learnt the object, and
    with a few hundred held-out frames and two dozen candidates the thresholds the optimizer
    would fit to it are luck: on the urban-road clip such models (held-out AUC 0.6-0.88) scored
    AUC 0.51-0.61 on later footage and the cascade's false-positive rate went from 5% held-out
    to 87%. Rejecting them makes the cascade fall back on frame skip, difference detectors and
    the reference instead. Several objects: the guard is per object, on that object's output's
    held-out AUC (an output trained on too few examples has none and is never offered).
    """
    aucs = {c["name"]: bundle.heldout_auc(c, obj) for c in bundle.meta["candidates"]}
    return [name for name, auc in aucs.items() if auc is not None and auc >= min_auc]


def choose_plan(bundle: TrainedBundle, targets: Targets, objects: list[str], search: SearchSettings) -> Plan:
    """One pass for `objects` (some or all of the bundle's), each held to `targets`."""
    models = {o: usable_models(bundle, float(search.min_auc), o) for o in objects}
    return optimize({o: bundle.heldouts[o] for o in objects}, bundle.costs, targets, models=models, **search.options())
