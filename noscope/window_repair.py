"""Repairs of a windowed plan: what the check changes when it finds windows answered wrong on this video.

    plans, actions = repair_windows(plans, evidence, targets)     # evidence: check_repair.Evidence per object

Only the stage that answered the wrong windows drawn changes, by the least that removes them: a
window the reference's sampling answered wrong -> the reference samples more frames of every
window (the next sampling of window_optimizer.samplings, up to every frame until the window's
answer is certain); a window the cheap stages settled wrong -> the window threshold of that answer
moves past the score of every such window the reference has shown wrong on this video (a "yes"
needs a higher score, a "no" a lower one; those windows go to the sampling), and where no score is
left between, the cheap stages stop giving that answer. Both move answers towards the reference's
own, so a repair can only lower the errors; the check then answers again from what the pass kept
and checks again on fresh windows (noscope.check).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from .check_repair import SIDES
from .window_optimizer import samplings


def repair_windows(plans: dict, evidence: dict, targets) -> tuple[dict, list[str]]:
    """(plans with the stages that made the wrong windows seen repaired, what was done)."""
    new, actions = {}, []
    for obj, op in plans.items():
        ev = evidence.get(obj)
        plan, said = op.plan, []
        stages = Counter()
        for r in (ev.broken if ev is not None else ()):
            stages.update(ev.wrong_stages[SIDES[r]])
            if ev.wrong_stages[SIDES[r]]["cheap"]:
                plan, what = past_wrong(plan, ev.result, SIDES[r])
                said += [what] if what else []
        if stages["sampled"]:
            plan, what = more_sampling(plan, stages["sampled"])
            said += [what] if what else []
        new[obj] = op.with_plan(plan)
        actions += said
    return new, actions


def past_wrong(plan, result, answer: bool):
    """`plan` with its window threshold for `answer` moved past every window the cheap stages gave
    that answer and the reference has shown wrong (`result.reference_scores`); the answer given up
    where that leaves no threshold."""
    known = np.array([w in result.reference_scores for w in result.frames.tolist()], bool)
    truth = np.array([result.reference_scores.get(w, 0.0) >= 0.5 for w in result.frames.tolist()], bool)
    wrong = known & (result.decided_by == "cheap") & (result.labels == answer) & (truth != answer)
    scores = result.score[wrong & np.isfinite(result.score)]
    name = "w_high" if answer else "w_low"
    old = getattr(plan, name)
    if not len(scores) or old is None:
        return plan, None
    new = float(scores.max()) if answer else float(scores.min())
    new = max(old, new) if answer else min(old, new)
    word = "yes" if answer else "no"
    if (answer and new >= 1.0) or (not answer and new <= 0.0):
        return (dataclasses.replace(plan, settles=tuple(a for a in plan.settles if a != answer)),
                f"the cheap stages no longer answer windows \"{word}\" ({int(wrong.sum())} wrong windows)")
    return (dataclasses.replace(plan, **{name: new}),
            f"window threshold {name} {old:.4g} -> {new:.4g} ({int(wrong.sum())} wrong \"{word}\" windows)")


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
