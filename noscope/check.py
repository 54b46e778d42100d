"""The check of a query's answers on the queried video: its rounds of drawing, judging and repairing.

    results, reports = check_and_repair(results, plan, ask, rerun, targets, settings, order, min_score, clock, learn)

The statistics of one round (how many frames to draw, the bounds a draw gives) are in
noscope.check_stats; what a repair changes in a plan is in noscope.check_repair.

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
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .check_repair import SIDES, repair
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


# Long: the rounds read top to bottom: draw, judge, then stop, answer with the reference, or repair.
def check_and_repair(results: dict, plan: Plan, ask: Callable, rerun: Callable, targets: Targets,
                     settings: CheckSettings, order: DrawOrder | np.random.Generator, min_score: float,
                     clock: dict | None = None, learn: Callable | None = None) -> tuple[dict, dict[str, dict]]:
    """The rounds of the module docstring. `ask(frames)` runs the reference: frame -> {object:
    score}; `rerun(plan)` runs the cascade again: object -> result; `learn(model, results)` refits a
    model on this video's reference answers (check_repair.repair). Returns the final results (every
    reference answer in them) and each object's report for summary.json. `clock`, when given, gets
    the seconds spent repairing under "check_repairs"."""
    clock = {} if clock is None else clock
    order = order if isinstance(order, DrawOrder) else covering(results, order)
    objects = list(results)
    plans = plan.plans
    alpha = 1.0 - settings.confidence
    known = {o: dict(results[o].reference_scores) for o in objects}
    repaired: dict[str, set[str]] = {o: set() for o in objects}
    show: dict[str, set[str]] = {}
    reports = {o: dict(mode="guarantee" if settings.guarantee else "default", confidence=settings.confidence,
                       rounds=[], escalations=[], reference_answered=[], checked=0) for o in objects}
    if settings.per_stratum <= 0 and not settings.guarantee:
        return results, {o: dict(r, met=None, fpr=None, fnr=None, sample=dict(yes=0, no=0), escalated=False,
                                 note="verification off (query.verify: 0)") for o, r in reports.items()}
    for k in range(1, max(1, settings.rounds) + 1):
        a = alpha / 2**k
        for o in objects:  # a re-run's own reference calls are answers in hand too
            known[o].update(results[o].reference_scores)
        results = {o: apply_known(results[o], known[o], min_score) for o in objects}
        rounds = {o: plan_round(results[o], targets, settings, a, order, show.get(o, set())) for o in objects}
        _ask_into(ask, known, np.unique(np.concatenate([d for r in rounds.values() for d in r.draws.values()])))
        verdicts = {o: judge(results[o], rounds[o], known[o], min_score, targets, a) for o in objects}
        broken = {o: b for o in objects if (b := failing(verdicts[o], targets, settings.guarantee))}
        for o in objects:
            _log_round(reports[o], k, a, verdicts[o])
        # a repaired stratum that now looks right but is not yet shown near its target: draw more next round
        last = k == settings.rounds
        if not broken:
            show = {o: u for o in objects if (u := unconfirmed(verdicts[o], repaired[o], [], targets))}
            if not show or last:
                break
            continue
        show = {}
        fixable = {o: {r for r in b if missed(verdicts[o][r], getattr(targets, r))} for o, b in broken.items()}
        # the cascade's answers beside every reference answer so far, this round's draw included
        seen = {o: dataclasses.replace(results[o], reference_scores={**results[o].reference_scores, **known[o]})
                for o in objects}
        t = time.perf_counter()
        plans_new, actions = ({}, []) if last else repair(plans, {o: b for o, b in fixable.items() if b}, verdicts, seen,
                                                          {o: _weights(rounds[o]) for o in objects}, targets,
                                                          steps(settings.skips, plan, plans), min_score, learn)
        clock["check_repairs"] = clock.get("check_repairs", 0.0) + time.perf_counter() - t
        if last or (not actions and not settings.guarantee):
            verdicts = _reference_answers(results, broken, verdicts, rounds, known, ask, min_score, targets, a)
            for o, b in broken.items():
                reports[o]["reference_answered"] = sorted(answer_word(r) for r in b)
                _log_round(reports[o], k, a, verdicts[o], final=True)
            break
        if actions:
            plans = plans_new
            for o, b in fixable.items():
                repaired[o] |= b
            for o in objects:
                reports[o]["escalations"] += actions
            results = rerun(plan.with_plans(plans))
    # a stratum found wrong and repaired stands only where a draw shows it near its target
    doubt = {o: u for o in objects
             if (u := unconfirmed(verdicts[o], repaired[o], reports[o]["reference_answered"], targets))}
    if doubt:
        results = settle_doubts(results, doubt, verdicts, rounds, known, ask, reports, targets, settings, a / 2, order,
                                min_score)
    results = {o: apply_known(results[o], known[o], min_score) for o in objects}
    return results, {o: _final(reports[o], plans[o]) for o in objects}


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


def settle_doubts(results, doubt, verdicts, rounds, known, ask, reports, targets: Targets, settings: CheckSettings,
                  alpha: float, order: DrawOrder, min_score: float) -> dict:
    """The repaired strata no round showed near their target (`unconfirmed`): one more draw at
    `alpha` (a slice of the budget no round spent), as large as showing that takes if nothing wrong
    turns up; a stratum it shows stands, the others the reference answers. Updates `verdicts`, `rounds`, `known` and
    the reports; returns the results with every reference answer applied."""
    doubt = dict(doubt)
    results = {o: apply_known(r, known[o], min_score) for o, r in results.items()}
    extra = {o: rnd for o, r in doubt.items()
             if (rnd := confirmation_round(results[o], r, targets, settings, alpha, order)) is not None}
    if extra:
        _ask_into(ask, known, np.unique(np.concatenate([d for r in extra.values() for d in r.draws.values()])))
    for o, rnd in extra.items():
        rounds[o], verdicts[o] = rnd, judge(results[o], rnd, known[o], min_score, targets, alpha)
        _log_round(reports[o], reports[o]["rounds"][-1]["round"] + 1, alpha, verdicts[o])
        if not (failing(verdicts[o], targets, settings.guarantee) & doubt[o]
                or unconfirmed(verdicts[o], doubt[o], [], targets)):
            del doubt[o]
    if doubt:
        verdicts.update(_reference_answers(results, doubt, verdicts, rounds, known, ask, min_score, targets, alpha))
        for o, b in doubt.items():
            reports[o]["reference_answered"] = sorted(set(reports[o]["reference_answered"]) | {answer_word(r) for r in b})
            _log_round(reports[o], reports[o]["rounds"][-1]["round"], alpha, verdicts[o], final=True)
    return results


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
    """A draw order over every frame the results answer (when the caller made none before the pass)."""
    frames = np.concatenate([r.frames for r in results.values()]) if results else np.zeros(0, np.int64)
    return DrawOrder(int(frames.min(initial=0)), int(frames.max(initial=-1)) + 1, rng)


def _weights(rnd: Round) -> dict[int, float]:
    """How many frames of its stratum each drawn frame stands for."""
    return {f: rnd.population[ans] / len(d) for ans, d in rnd.draws.items() for f in d.tolist()}


def _ask_into(ask: Callable, known: dict[str, dict], frames: np.ndarray) -> None:
    frames = np.array([f for f in frames.tolist() if f not in next(iter(known.values()))], np.int64)
    if len(frames):
        for f, per in ask(frames).items():
            for o, score in per.items():
                known[o][f] = score


def _reference_answers(results, broken, verdicts, rounds, known, ask, min_score, targets, alpha) -> dict:
    """The reference answers every not-yet-answered frame of each failing stratum; that stratum
    then has no error left, and the verdict says so exactly (the other stratum keeps its draw)."""
    out = dict(verdicts)
    for o, rates in broken.items():
        res = results[o]
        cheap = (res.decided_by != "reference") & ~np.isin(res.frames, np.fromiter(known[o], np.int64))
        for r in rates:
            _ask_into(ask, known, res.frames[cheap & (res.labels == SIDES[r])])
        rnd = rounds[o]
        full = {ans: (ans in {SIDES[r] for r in rates}) for ans in (True, False)}
        draws = {ans: (res.frames[(res.decided_by != "reference") & (res.labels == ans)] if full[ans] else d)
                 for ans, d in rnd.draws.items()}
        stages = {ans: res.decided_by[np.searchsorted(res.frames, d)] for ans, d in draws.items()}
        out[o] = judge(res, Round(draws, rnd.population, stages), known[o], min_score, targets, alpha)
    return out


def _log_round(report: dict, k: int, alpha: float, v: dict, final: bool = False) -> None:
    checks = v["checks"]
    entry = dict(round=k, alpha=alpha, population=dict(yes=checks[True].population, no=checks[False].population),
                 sample=dict(yes=checks[True].sample, no=checks[False].sample),
                 errors=dict(yes=checks[True].errors, no=checks[False].errors),
                 fpr=v["fpr"], fnr=v["fnr"], met=v["met"])
    if final:
        entry["reference_answered"] = True
        report["rounds"][-1:] = [entry]
    else:
        report["rounds"].append(entry)
    report.update(fpr=v["fpr"], fnr=v["fnr"], met=v["met"])


def _final(report: dict, plan: ObjectPlan) -> dict:
    report["checked"] = int(sum(r["sample"]["yes"] + r["sample"]["no"] for r in report["rounds"]))
    report["sample"] = report["rounds"][-1]["sample"] if report["rounds"] else dict(yes=0, no=0)
    report["escalated"] = bool(report["escalations"] or report["reference_answered"])
    report["final_cascade"] = plan.to_dict() if report["escalations"] else None
    return report
