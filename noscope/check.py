"""The check of a query's answers on the queried video: its rounds of drawing, judging and repairing.

    results, reports = check_and_repair(run, results, plan, targets, settings)   # run: a Run (noscope.answer.QueryRun)

The statistics of one round (how many frames to draw, the bounds a draw gives) are in
noscope.check_stats; what a repair changes in a plan is in noscope.check_repair. The check keeps
each object's state across rounds in one record (`ObjectCheck`: the reference's answers so far, the
latest draw and its verdict, the rates repaired, the report) and asks the query it checks (`Run`)
for what it cannot work out itself: the reference's answers, the cascade's again after a repair, a
model refitted on this video.

Round k (1, 2, ...) spends alpha / 2^k of the error budget (alpha = 1 - confidence), so however
many rounds run, and whatever they decide from what they saw, the final statement holds with
probability at least 1 - alpha. Each round:

  1. every frame the reference has answered so far (the cascade's own calls and all earlier
     checks) takes the reference's answer;
  2. a fresh uniform sample of the other frames, per answer (yes / no) and per object, goes to
     the reference (noscope.check_stats: `settings.per_stratum` frames each, or with `guarantee` as
     many as certifying the targets takes);
  3. the draw bounds both error rates; if they meet the targets, or (default mode) the estimates
     do, the answers stand;
  4. otherwise the stages that made the wrong answers seen are repaired (noscope.check_repair):
     the model's thresholds and the difference detector's threshold are moved past every wrong
     answer the reference has shown on this video, the frame skip is lowered; the cascade runs
     again and the next round checks it on fresh frames.
After `settings.rounds` rounds, or when a check would take most of a stratum anyway, the reference
answers the whole failing stratum, which leaves no error there to bound. A stratum that was found
wrong and repaired must, at the end, be shown near its target: an upper bound on its rate at most
`shown_level` (twice the target, or the target plus 0.02, at most GROSS). Where a round finds a
repaired stratum right but cannot show that (its rate's kind is rare: a draw of 100 that finds no
miss among thousands of "no" answers says little), the next round draws as many as showing it
takes if nothing wrong turns up (all of the stratum, i.e. the reference, where that is most of
it), and may still repair what that larger draw finds wrong; after the last round one more such
draw on a further slice of the budget (alpha / 2^(k+1)) decides: it stands if that draw shows it,
else the reference answers it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .check_repair import SIDES, Evidence
from .check_stats import Check, DrawOrder, certification_sizes, draw, missed, rate_met, verdict
from .plans import ObjectPlan, Plan, Targets
from .settings import CheckSettings

GROSS = 0.5  # a repaired stratum's rate must be shown below this (and near its target), or the reference answers it
NEAR = 0.02  # near the target T means an upper bound at most max(2 T, T + NEAR)


def shown_level(target: float) -> float:
    """The upper bound a repaired stratum's rate must be shown below to stand: near the target
    (twice it, or it plus NEAR), never above GROSS."""
    return min(GROSS, max(2 * target, target + NEAR))


def apply_known(result, scores: dict[int, float], min_score: float):
    """The result with every frame the reference answered taking the reference's answer."""
    if not scores or not len(result.frames):
        return result
    frames = np.fromiter(scores, np.int64, len(scores))
    at = np.searchsorted(result.frames, frames)
    ok = (at < len(result.frames)) & (result.frames[np.minimum(at, len(result.frames) - 1)] == frames)
    labels, decided = result.labels.copy(), result.decided_by.astype(object)
    labels[at[ok]] = np.fromiter(scores.values(), float, len(scores))[ok] >= min_score
    decided[at[ok]] = "reference"
    return dataclasses.replace(result, labels=labels, decided_by=decided.astype(str),
                               reference_scores={**result.reference_scores, **scores})


@dataclass
class Round:
    """What one object's draw in one round was, and what it found."""

    draws: dict[bool, np.ndarray]  # cheap answer -> frames drawn
    population: dict[bool, int]
    stages: dict[bool, np.ndarray]  # the stage that answered each drawn frame


def plan_round(result, targets: Targets, settings: CheckSettings, alpha: float, order: DrawOrder,
               show: set[str] = frozenset()) -> Round:
    """Draw this round's frames for one object from its cheap answers; for the rates in `show`
    (repaired, not yet shown near their target) as many as showing that takes if nothing wrong
    turns up, most of a stratum meaning all of it (the reference answers it)."""
    cheap = result.decided_by != "reference"
    pools = {ans: result.frames[cheap & (result.labels == ans)] for ans in (True, False)}
    ref_pos = int(np.count_nonzero(~cheap & result.labels))
    ref_neg = int(np.count_nonzero(~cheap & ~result.labels))
    sizes = {ans: min(settings.per_stratum, len(pool)) for ans, pool in pools.items()}
    if settings.guarantee or show:  # enough to certify if nothing wrong turns up; most of a stratum -> all of it
        levels = {r: sizing_level(getattr(targets, r), settings.guarantee, r in show) for r in SIDES}
        sizes = certification_sizes(len(pools[True]), len(pools[False]), ref_pos, ref_neg, levels["fpr"], levels["fnr"],
                                    alpha, settings.per_stratum)
        sizes = {ans: len(pools[ans]) if n * 2 >= len(pools[ans]) else n for ans, n in sizes.items()}
    draws = {ans: draw(pools[ans], sizes[ans], order) for ans in pools}
    at = {ans: np.searchsorted(result.frames, d) for ans, d in draws.items()}
    return Round(draws, {ans: len(p) for ans, p in pools.items()}, {ans: result.decided_by[at[ans]] for ans in at})


def sizing_level(target: float, guarantee: bool, shown: bool) -> float:
    """The bound a round's draw is sized to reach on one rate if nothing wrong turns up: the target
    under --guarantee, near it for a repaired rate still to be shown (`shown_level`), else none (1.0)."""
    if guarantee:
        return target
    return shown_level(target) if shown else 1.0


def judge(result, rnd: Round, scores: dict[int, float], min_score: float, targets: Targets, alpha: float) -> dict:
    """One object's verdict from its draw, the reference's answers to it in `scores`; also which
    stages answered the wrong frames seen."""
    cheap = result.decided_by != "reference"
    ref_pos = int(np.count_nonzero(~cheap & result.labels))
    ref_neg = int(np.count_nonzero(~cheap & ~result.labels))
    checks, wrong_stages = {}, {}
    for ans, frames in rnd.draws.items():
        answered = np.array([f in scores for f in frames.tolist()], bool)
        truth = np.array([scores[f] >= min_score for f in frames[answered].tolist()], bool)
        wrong = truth != ans
        lost = int(np.count_nonzero(~answered))  # the reference could not decode them: assume the worst
        checks[ans] = Check(rnd.population[ans] - lost, int(answered.sum()), int(wrong.sum()), lost)
        wrong_stages[ans] = Counter(rnd.stages[ans][answered][wrong].tolist())
    v = verdict(checks[True], checks[False], ref_pos, ref_neg, targets.fpr, targets.fnr, alpha)
    v["checks"], v["wrong_stages"] = checks, wrong_stages
    return v


def failing(v: dict, targets: Targets, guarantee: bool) -> set[str]:
    """The rates to act on: the estimate misses the target, or (guarantee) the bound does."""
    out = {r for r in SIDES if missed(v[r], getattr(targets, r))}
    if guarantee and v["met"] is not True:
        out |= {r for r in SIDES if rate_met(v[r], getattr(targets, r)) is not True}
    return out


class Run(Protocol):
    """What the check asks of the query whose answers it checks (noscope.answer.QueryRun)."""

    order: DrawOrder  # the order draws take frames in, fixed before the first pass
    min_score: float  # the reference's score at which a frame counts as positive

    def ask_reference(self, frames: np.ndarray) -> dict[int, dict[str, float]]:
        """The reference on `frames`: frame -> {object: score}; a frame it cannot decode is left out."""

    def answer_again(self, plan: Plan) -> dict:
        """The cascade run again with repaired plans: object -> result."""

    def repair(self, plans: dict, evidence: dict[str, Evidence], targets: Targets, skips) -> tuple[dict, list[str]]:
        """Plans with the stages that made the wrong answers seen repaired, and what was done
        (check_repair.repair: per frame; a windowed run has its own)."""

    def timed(self, part: str) -> AbstractContextManager:
        """Counts the seconds of a `with` block as `part` of the check's time."""


@dataclass(frozen=True)
class ObjectCheck:
    """One object's state across the check's rounds."""

    result: object  # its answers (a CascadeResult), with the reference's answers applied at each round's start
    known: dict[int, float]  # frame -> the reference's score: every frame it has answered so far
    report: dict  # what summary.json says of the check: rounds, escalations, reference_answered, ...
    repaired: frozenset[str] = frozenset()  # the rates a repair acted on
    show: frozenset[str] = frozenset()  # repaired rates that look right, to be shown near their target next round
    round: Round | None = None  # the latest draw
    verdict: dict | None = None  # and what it said (`judge`)


def check_and_repair(run: Run, results: dict, plan: Plan, targets: Targets,
                     settings: CheckSettings) -> tuple[dict, dict[str, dict]]:
    """The rounds of the module docstring on `results` (object -> result), the answers of `plan`.
    The check asks `run` for the reference's answers, for the cascade again after a repair and for a
    model refitted on this video (Run). Returns the final results (every reference answer in them)
    and each object's report for summary.json."""
    checks = {o: ObjectCheck(r, dict(r.reference_scores), new_report(settings)) for o, r in results.items()}
    if settings.per_stratum <= 0 and not settings.guarantee:
        return results, {o: dict(c.report, met=None, fpr=None, fnr=None, sample=dict(yes=0, no=0), escalated=False,
                                 note="verification off (query.verify: 0)") for o, c in checks.items()}
    plans, alpha = plan.plans, 1.0 - settings.confidence
    for k in range(1, max(1, settings.rounds) + 1):
        a, last = alpha / 2**k, k == settings.rounds
        checks = drawn_and_judged(checks, run, targets, settings, a)
        checks = {o: dataclasses.replace(c, report=logged(c.report, k, a, c.verdict)) for o, c in checks.items()}
        broken = {o: b for o, c in checks.items() if (b := failing(c.verdict, targets, settings.guarantee))}
        if not broken:
            # a repaired stratum that now looks right but is not yet shown near its target: draw more next round
            checks = {o: dataclasses.replace(c, show=unconfirmed(c.verdict, c.repaired, [], targets))
                      for o, c in checks.items()}
            if last or not any(c.show for c in checks.values()):
                break
            continue
        checks = {o: dataclasses.replace(c, show=frozenset()) for o, c in checks.items()}
        fixable = {o: {r for r in broken.get(o, ()) if missed(c.verdict[r], getattr(targets, r))}
                   for o, c in checks.items()}
        with run.timed("check_repairs"):
            plans_new, actions = ({}, []) if last else run.repair(plans, evidence(checks, fixable), targets,
                                                                  steps(settings.skips, plan, plans))
        if last or (not actions and not settings.guarantee):
            checks = _reference_answers(checks, broken, run, targets, a)
            break
        if actions:
            plans = plans_new
            results = run.answer_again(plan.with_plans(plans))
            checks = {o: dataclasses.replace(c, result=results[o], repaired=c.repaired | fixable[o],
                                             report=dict(c.report, escalations=c.report["escalations"] + actions))
                      for o, c in checks.items()}
    # a stratum found wrong and repaired stands only where a draw shows it near its target
    doubt = {o: u for o, c in checks.items()
             if (u := unconfirmed(c.verdict, c.repaired, c.report["reference_answered"], targets))}
    if doubt:
        checks = settle_doubts(checks, doubt, run, targets, settings, a / 2)
    return ({o: apply_known(c.result, c.known, run.min_score) for o, c in checks.items()},
            {o: final_report(c.report, plans[o]) for o, c in checks.items()})


def new_report(settings: CheckSettings) -> dict:
    """An object's report before any round."""
    return dict(mode="guarantee" if settings.guarantee else "default", confidence=settings.confidence, rounds=[],
                escalations=[], reference_answered=[], checked=0)


def drawn_and_judged(checks: dict[str, ObjectCheck], run: Run, targets: Targets, settings: CheckSettings,
                     alpha: float) -> dict[str, ObjectCheck]:
    """One round's draw and verdicts: every frame the reference has answered so far (a re-run's own
    reference calls included) takes its answer, a fresh draw per object goes to the reference, and
    each object's draw is judged."""
    now = {}
    for o, c in checks.items():
        known = {**c.known, **c.result.reference_scores}
        result = apply_known(c.result, known, run.min_score)
        now[o] = dataclasses.replace(c, result=result, known=known,
                                     round=plan_round(result, targets, settings, alpha, run.order, c.show))
    now = _asked(now, run, np.unique(np.concatenate([d for c in now.values() for d in c.round.draws.values()])))
    return {o: dataclasses.replace(c, verdict=judge(c.result, c.round, c.known, run.min_score, targets, alpha))
            for o, c in now.items()}


def evidence(checks: dict[str, ObjectCheck], broken: dict[str, set[str]]) -> dict[str, Evidence]:
    """What a repair reads of each object's check: its answers beside every reference answer so far
    (this round's draw included), the rates to repair, the stages that answered the wrong frames
    drawn, and what each drawn frame stands for."""
    return {o: Evidence(dataclasses.replace(c.result, reference_scores={**c.result.reference_scores, **c.known}),
                        broken[o], c.verdict["wrong_stages"], _weights(c.round)) for o, c in checks.items()}


def unconfirmed(v: dict, repaired: set[str], answered: list[str], targets: Targets) -> set[str]:
    """The repaired rates whose last draw does not show them near their target (upper bound above
    `shown_level`, or no bound while frames could still be wrong): the draw that found the stratum
    wrong is evidence against it, and a later draw of 100 that happens to find nothing says little
    where the rate's kind is rare (a few missed cars in a night of empty road; a parked car's few
    hidden frames among thousands answered "yes")."""
    out = set()
    for r in repaired - {rate for rate in SIDES if answer_word(rate) in answered}:
        high = v[r]["high"]
        if (high is None and (v[r].get("count_high") or 0) > 0) or \
                (high is not None and high > shown_level(getattr(targets, r))):
            out.add(r)
    return out


def settle_doubts(checks: dict[str, ObjectCheck], doubt: dict[str, set[str]], run: Run, targets: Targets,
                  settings: CheckSettings, alpha: float) -> dict[str, ObjectCheck]:
    """The repaired strata no round showed near their target (`doubt`: object -> rates, see
    `unconfirmed`): one more draw at `alpha` (a slice of the budget no round spent), as large as
    showing that takes if nothing wrong turns up; a stratum it shows stands, the others the
    reference answers. Returns the checks after it (results with every reference answer before
    that draw applied)."""
    now = {o: dataclasses.replace(c, result=apply_known(c.result, c.known, run.min_score)) for o, c in checks.items()}
    extra = {o: rnd for o, rates in doubt.items()
             if (rnd := confirmation_round(now[o].result, rates, targets, settings, alpha, run.order)) is not None}
    if extra:
        now = _asked(now, run, np.unique(np.concatenate([d for r in extra.values() for d in r.draws.values()])))
    for o, rnd in extra.items():
        c = now[o]
        v = judge(c.result, rnd, c.known, run.min_score, targets, alpha)
        now[o] = dataclasses.replace(c, round=rnd, verdict=v,
                                     report=logged(c.report, c.report["rounds"][-1]["round"] + 1, alpha, v))
    left = {o: rates for o, rates in doubt.items()
            if o not in extra or failing(now[o].verdict, targets, settings.guarantee) & rates
            or unconfirmed(now[o].verdict, rates, [], targets)}
    return _reference_answers(now, left, run, targets, alpha) if left else now


def confirmation_round(result, rates: set[str], targets: Targets, settings: CheckSettings, alpha: float,
                       order: DrawOrder) -> Round | None:
    """A fresh draw that, finding nothing wrong, shows each doubted rate near its target (the other
    stratum gets the usual size): with rare positives that is a few hundred or thousand frames of a
    night, not all of them. None where it would take half a doubted stratum or more: the reference
    answers it."""
    rnd = plan_round(result, targets, settings, alpha, order, rates)
    if any(len(rnd.draws[SIDES[r]]) == rnd.population[SIDES[r]] for r in rates):
        return None
    return rnd


def steps(skips, first: Plan, now: dict[str, ObjectPlan]):
    """The skips a repair may step down to: all of them the first time; once a skip has stepped down
    and still copies answers past events, only 1 (the events here are briefer than any skip, and a
    check has few rounds to spend finding that out)."""
    return tuple(skips) if next(iter(now.values())).skip == next(iter(first.plans.values())).skip else (1,)


def answer_word(rate: str) -> str:
    """The cheap answer whose frames hold a rate's errors, as reports name it."""
    return "yes" if SIDES[rate] else "no"


def covering(results: dict, rng: np.random.Generator) -> DrawOrder:
    """A draw order over every frame the results answer, for a caller that made none before the pass."""
    frames = np.concatenate([r.frames for r in results.values()]) if results else np.zeros(0, np.int64)
    return DrawOrder(int(frames.min(initial=0)), int(frames.max(initial=-1)) + 1, rng)


def _weights(rnd: Round) -> dict[int, float]:
    """How many frames of its stratum each drawn frame stands for."""
    return {f: rnd.population[ans] / len(d) for ans, d in rnd.draws.items() for f in d.tolist()}


def _asked(checks: dict[str, ObjectCheck], run: Run, frames: np.ndarray) -> dict[str, ObjectCheck]:
    """The checks with the reference's answers on `frames` known (those it has not answered yet)."""
    answered = next(iter(checks.values())).known
    new = np.array([f for f in frames.tolist() if f not in answered], np.int64)
    if not len(new):
        return checks
    got = run.ask_reference(new)
    return {o: dataclasses.replace(c, known={**c.known, **{f: per[o] for f, per in got.items()}})
            for o, c in checks.items()}


def _reference_answers(checks: dict[str, ObjectCheck], broken: dict[str, set[str]], run: Run, targets: Targets,
                       alpha: float) -> dict[str, ObjectCheck]:
    """The reference answers every not-yet-answered frame of each failing stratum (`broken`: object
    -> rates); that stratum then has no error left, and the verdict says so exactly (the other
    stratum keeps its draw); the report names the answers the reference took over."""
    out = dict(checks)
    for o, rates in broken.items():
        res = out[o].result
        cheap = (res.decided_by != "reference") & ~np.isin(res.frames, np.fromiter(out[o].known, np.int64))
        for r in sorted(rates):  # a set: the same order on every run, so the same calls
            out = _asked(out, run, res.frames[cheap & (res.labels == SIDES[r])])
        c, rnd = out[o], out[o].round
        full = {ans: (ans in {SIDES[r] for r in rates}) for ans in (True, False)}
        draws = {ans: (res.frames[(res.decided_by != "reference") & (res.labels == ans)] if full[ans] else d)
                 for ans, d in rnd.draws.items()}
        stages = {ans: res.decided_by[np.searchsorted(res.frames, d)] for ans, d in draws.items()}
        v = judge(res, Round(draws, rnd.population, stages), c.known, run.min_score, targets, alpha)
        report = dict(c.report, reference_answered=sorted(set(c.report["reference_answered"])
                                                          | {answer_word(r) for r in rates}))
        out[o] = dataclasses.replace(c, verdict=v, report=logged(report, report["rounds"][-1]["round"], alpha, v,
                                                                 final=True))
    return out


def logged(report: dict, k: int, alpha: float, v: dict, final: bool = False) -> dict:
    """The report with round `k`'s verdict `v` added (`final`: in place of the last round's, whose
    failing strata the reference then answered), and its rates as the latest."""
    checks = v["checks"]
    entry = dict(round=k, alpha=alpha, population=dict(yes=checks[True].population, no=checks[False].population),
                 sample=dict(yes=checks[True].sample, no=checks[False].sample),
                 errors=dict(yes=checks[True].errors, no=checks[False].errors),
                 fpr=v["fpr"], fnr=v["fnr"], met=v["met"])
    if final:
        entry["reference_answered"] = True
    rounds = report["rounds"][:-1] + [entry] if final else report["rounds"] + [entry]
    return dict(report, rounds=rounds, fpr=v["fpr"], fnr=v["fnr"], met=v["met"])


def final_report(report: dict, plan: ObjectPlan) -> dict:
    """The report as summary.json keeps it: how many frames were checked, the last draw, whether
    anything was repaired or answered by the reference, and the plan the answers came from."""
    return dict(report, checked=int(sum(r["sample"]["yes"] + r["sample"]["no"] for r in report["rounds"])),
                sample=report["rounds"][-1]["sample"] if report["rounds"] else dict(yes=0, no=0),
                escalated=bool(report["escalations"] or report["reference_answered"]),
                final_cascade=plan.to_dict() if report["escalations"] else None)
