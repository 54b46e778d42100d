"""Pick the plan for a bundle, objects and targets: which models may be offered, and the optimizer's settings.

    bundle = load_bundle(bundle_path("street"))
    plan = choose_plan(bundle, Targets(0.01, 0.01), ["car", "bus"], settings.optimizer)
"""

from __future__ import annotations

from .bundle import TrainedBundle
from .optimizer import optimize
from .plans import Plan, Targets
from .settings import SearchSettings
from .window_optimizer import optimize_windows
from .window_plans import WindowedPlan
from .windows import WindowQuestion


def usable_models(bundle: TrainedBundle, min_auc: float, obj: str) -> list[str]:
    """Models offered to the optimizer for `obj`: those whose held-out AUC for it is at least
    `min_auc` (optimizer.min_auc; 0 by default: every model with one).

    Models are used by evidence, not by a cut: the optimizer fits each model's thresholds on the
    held-out frames, so a model answers only where those frames show it keeps the targets (an AUC
    of 0.85 can still settle the frames it is sure of), ranks plans by their held-out bounds, and
    the check on the queried video finds a model the held-out frames overrated and repairs it (a
    head refitted on the video). An output trained on too few examples of one answer has no AUC and
    is never offered for that object. A cut at 0.9 was the default before the check existed: on the
    urban-road clip, models of held-out AUC 0.6-0.88 scored 0.51-0.61 later and a cascade's FPR went
    from 5% held-out to 87%; the check now catches that on the video itself.
    """
    aucs = {c.name: bundle.heldout_auc(c, obj) for c in bundle.candidates}
    return [name for name, auc in aucs.items() if auc is not None and auc >= min_auc]


def choose_plan(bundle: TrainedBundle, targets: Targets, objects: list[str], search: SearchSettings) -> Plan:
    """One pass for `objects` (some or all of the bundle's), each held to `targets`."""
    models = {o: usable_models(bundle, float(search.min_auc), o) for o in objects}
    return optimize({o: bundle.heldouts[o] for o in objects}, bundle.costs, targets, models=models, **search.options())


def choose_window_plan(bundle: TrainedBundle, targets: Targets, obj: str, search: SearchSettings,
                       question: WindowQuestion) -> WindowedPlan:
    """The windowed plan for one object of the bundle (noscope.window_optimizer), its models offered
    as for a per-frame plan."""
    return optimize_windows({obj: bundle.heldouts[obj]}, bundle.costs, targets, question, search,
                            usable_models(bundle, float(search.min_auc), obj))
