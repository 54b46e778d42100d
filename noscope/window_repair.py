"""Repairs of a windowed plan: what the check changes when it finds windows answered wrong on this video.

    plans, actions = repair_windows(plans, evidence, targets)     # evidence: check_repair.Evidence per object

Only the stage that answered the wrong windows drawn changes, by the least that removes them: a
window the cheap stages settled wrong -> the window threshold of that answer moves past the score
of every such window the reference has shown wrong on this video (a "yes" needs a higher score, a
"no" a lower one; those windows go to the sampling), and where no score is left between, the cheap
stages stop giving that answer (also where they would settle under a tenth of the windows past
them); a window the reference's sampling answered wrong, or windows newly sent to it -> the
sampling becomes the one with the fewest calls, of window_optimizer.samplings and finer leads
(`candidates`, up to every frame until the window's answer is certain), that answers the windows
whose exact answer this video has shown within half the targets, and asks more frames than the
one now where sampled windows were wrong (`Replay`: the check learnt those answers frame by frame
in the sampling's own order, so any sampling's answer on them is known without a call). Choosing from this video's evidence, not one step at a time, spares the rounds and the
passes a scene whose reference hovers would take to climb the ladder. Both move answers towards
the reference's own, so a repair can only lower the errors; the check then answers again from
what the pass kept and checks again on fresh windows (noscope.check).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .check_repair import SIDES
from .window_optimizer import samplings
from .windows import Sampling


HALF = 0.5  # a sampling is chosen to replay within this share of the targets: the check's next draw has room
FEW = 0.1  # a cheap answer left settling under this share of the windows saves less than a further round would cost


def repair_windows(plans: dict, evidence: dict, targets, replay: "Replay | None" = None) -> tuple[dict, list[str]]:
    """(plans with the stages that made the wrong windows seen repaired, what was done); `replay`
    (where given) scores a sampling on the windows whose exact answer is known."""
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
        if stages["sampled"] or (said and replay is not None):
            plan, what = more_sampling(plan, stages["sampled"], replay, targets)
            said += [what] if what else []
        new[obj] = op.with_plan(plan)
        actions += said
    return new, actions


def past_wrong(plan, result, answer: bool):
    """`plan` with its window threshold for `answer` moved past every window the cheap stages gave
    that answer and the reference has shown wrong (`result.reference_scores`); the answer given up
    where that leaves no threshold, or leaves it settling under FEW of the windows (a further wrong
    one would cost a round and a pass over the sampled windows for little saved)."""
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
    left = (result.decided_by == "cheap") & (result.labels == answer) & np.isfinite(result.score) & \
        ((result.score > new) if answer else (result.score < new))
    if (answer and new >= 1.0) or (not answer and new <= 0.0) or left.sum() < FEW * len(result.frames):
        return (dataclasses.replace(plan, settles=tuple(a for a in plan.settles if a != answer)),
                f"the cheap stages no longer answer windows \"{word}\" ({int(wrong.sum())} wrong windows; "
                f"past them it would settle {int(left.sum())} of {len(result.frames)})")
    return (dataclasses.replace(plan, **{name: new}),
            f"window threshold {name} {old:.4g} -> {new:.4g} ({int(wrong.sum())} wrong \"{word}\" windows)")


def more_sampling(plan, wrong: int, replay: "Replay | None" = None, targets=None):
    """The plan with the sampling `replay` finds cheapest among `candidates` within HALF the targets
    on the windows it knows: where sampled windows were seen wrong, of those asking more frames than
    the sampling now (every frame where none is); where none was (windows newly sent to it), of all
    of them and the one now. Without `replay` or known windows, the next step of the ladder. The plan
    unchanged (None said) where that is the sampling now."""
    now, size = plan.sampling, plan.size
    if replay is None or not replay(now).windows:
        later = [s for s in samplings(size) if (s.most > now.most) or (s.lead == 0 and now.lead != 0)]
        nxt, why = (later[0] if later else None), f"{wrong} wrong windows"
    else:
        # seen wrong: a more thorough one; else (windows newly sent to it) whichever is cheapest
        fit = [s for s in candidates(size) + [now] if replay(s).within(targets, HALF)
               and (not wrong or replay(s).calls > replay(now).calls)]
        nxt = min(fit, key=lambda s: (replay(s).calls, s.most)) if fit else Sampling(0, size)
        why = (f"{wrong} wrong windows" if wrong else "windows newly sent to the reference") + \
            f"; on the {replay(nxt).windows} windows whose answer is known: {replay(nxt).describe()}"
    if nxt is None or nxt == now:
        return plan, None
    return dataclasses.replace(plan, sampling=nxt), f"reference sampling {now.describe()} -> {nxt.describe()} ({why})"


def candidates(size: int) -> list[Sampling]:
    """The samplings a repair chooses among for windows of `size` frames: the optimizer's ladder and
    finer ones (a lead from 2 to 9, at most 3 ... every frame), the exact one last."""
    finer = [Sampling(lead, min(most, size)) for lead in range(2, 10) for most in (3, 5, 8, 13, 20, size)
             if lead <= min(most, size) < size or most == size]
    out = []
    for s in samplings(size)[:-1] + finer:
        if s not in out:
            out.append(s)
    return out + [Sampling(0, size)]


@dataclass(frozen=True)
class Replayed:
    """A sampling's answers on the windows whose exact answer is known: wrong "yes" among the "no"
    windows, wrong "no" among the "yes" windows, and the calls it took."""

    fp: int
    neg: int
    fn: int
    pos: int
    calls: int

    @property
    def windows(self) -> int:
        return self.neg + self.pos

    def within(self, targets, share: float) -> bool:
        return self.fp <= share * targets.fpr * self.neg and self.fn <= share * targets.fnr * self.pos

    def describe(self) -> str:
        return (f"{self.fp} of {self.neg} \"no\" and {self.fn} of {self.pos} \"yes\" windows answered wrong, "
                f"{self.calls / max(self.windows, 1):.1f} reference frames a window")


class Replay:
    """Any sampling's answers on the windows whose exact answer is known (`truth`: window -> bool),
    read from the reference's answers on their frames (`answers(window)`: the window's frames'
    answers in spread order as far as they are known)."""

    def __init__(self, truth: dict, answers, share: float):
        self.truth, self.share = truth, share
        self.seen = {w: answers(w) for w in truth}
        self.memo: dict = {}

    def __call__(self, sampling: Sampling) -> Replayed:
        if sampling not in self.memo:
            self.memo[sampling] = self.replayed(sampling)
        return self.memo[sampling]

    def replayed(self, sampling: Sampling) -> Replayed:
        fp = neg = fn = pos = calls = 0
        for w, truth in self.truth.items():
            got = replay_one(sampling, self.seen[w], self.share)
            if got is None:
                continue  # its frames were not all asked far enough: says nothing of this sampling
            answer, n = got
            calls += n
            neg, pos = neg + (not truth), pos + truth
            fp, fn = fp + (answer and not truth), fn + (truth and not answer)
        return Replayed(fp, neg, fn, pos, calls)


def replay_one(sampling: Sampling, answers: tuple, share: float) -> tuple[bool, int] | None:
    """(answer, calls) of `sampling` on one window whose known frame answers, in spread order, are
    `answers` (`answers[0]`: the window's size), or None where it would ask a frame not known."""
    got = sampling.run(answers[1:], share, answers[0])
    return None if got is None else got[:2]
