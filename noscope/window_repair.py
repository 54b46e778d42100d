"""Repairs of a windowed plan: what the check changes when it finds windows answered wrong on this video.

    plans, actions = repair_windows(plans, evidence, targets)     # evidence: check_repair.Evidence per object

Only the stage that answered the wrong windows drawn changes, by the least that removes them: a
window the reference's sampling answered wrong -> the reference samples more frames of every
window (the next sampling of window_optimizer.samplings, up to every frame until the window's
answer is certain); a window the cheap stages settled wrong -> the cheap stages no longer settle
windows with that answer (those go to the reference's sampling). Both move answers towards the
reference's own, so repairing can only lower the errors a window's answer can have; the check then
answers again and checks again on fresh windows (noscope.check).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from .check_repair import SIDES
from .window_optimizer import samplings


def repair_windows(plans: dict, evidence: dict, targets) -> tuple[dict, list[str]]:
    """(plans with the stages that made the wrong windows seen repaired, what was done)."""
    new, actions = {}, []
    for obj, op in plans.items():
        ev = evidence.get(obj)
        stages, wrong_cheap = Counter(), set()
        for r in (ev.broken if ev is not None else ()):
            seen = ev.wrong_stages[SIDES[r]]
            stages.update(seen)
            if seen["cheap"]:
                wrong_cheap.add(SIDES[r])
        plan = op.plan
        if stages["sampled"]:
            plan, said = more_sampling(plan, stages["sampled"])
            actions += [said] if said else []
        if wrong_cheap and not plan.unanimous:
            actions.append(f"the cheap stages settle a window only where every processed frame agrees ({stages['cheap']} "
                           "wrong windows)")
            plan = dataclasses.replace(plan, unanimous=True)
        elif wrong_cheap:
            settles = tuple(a for a in plan.settles if a not in wrong_cheap)
            gone = " and ".join("yes" if a else "no" for a in plan.settles if a not in settles)
            actions.append(f"the cheap stages no longer settle windows \"{gone}\" ({stages['cheap']} wrong windows)")
            plan = dataclasses.replace(plan, settles=settles)
        new[obj] = op.with_plan(plan)
    return new, actions


def more_sampling(plan, wrong: int):
    """The plan with the next more thorough sampling (None said when it already asks every frame)."""
    ladder = samplings(plan.size)
    now = plan.sampling
    later = [s for s in ladder if (s.most > now.most) or (s.lead == 0 and now.lead != 0)]
    if not later:
        return plan, None
    nxt = later[0]
    return dataclasses.replace(plan, sampling=nxt), (f"reference sampling {now.describe()} -> {nxt.describe()} "
                                                     f"({wrong} wrong windows)")
