"""Query-time verification and repair: exact limits, honest rates, bounds that hold.

The simulation at the end is the acceptance test of the statistics: many random label sequences
with long runs (like video), cascades with errors of every kind, repairs between rounds; the
reported 95% upper bounds on FPR and FNR must both hold in at least 95% of them.
"""

import contextlib

import numpy as np
import pytest

from noscope import bounds
from noscope.cascade import CascadeResult
from noscope.check import apply_known, check_and_repair, covering, plan_round
from noscope.check_repair import repair
from noscope.check_stats import Check, DrawOrder, certification_size, certification_sizes, rate_met, verdict
from noscope.plans import ObjectPlan, Plan, Targets
from noscope.settings import CheckSettings as Settings


def one(plan: ObjectPlan) -> Plan:
    """A pass for one object, "x"."""
    return Plan({"x": plan}, 0.0, {})


class FakeRun:
    """A query's run as the check sees it (noscope.check.Run) made of plain functions: `ask(frames)`
    -> frame -> {object: score} stands for the reference, `rerun(plan)` -> object -> result for the
    cascade answering a repaired plan, `learn(model, seen)` for a refit (None: no model can learn).
    Draws follow a random order (from `rng`) over the frames of the first answers; the parts it was
    asked to time are kept in `timed_parts`."""

    min_score = 0.5

    def __init__(self, first: dict, rng, ask, rerun, learn=None):
        self.order = covering(first, rng)
        self.ask, self.rerun, self.learn = ask, rerun, learn
        self.timed_parts = []

    def ask_reference(self, frames):
        return self.ask(frames)

    def answer_again(self, plan):
        return self.rerun(plan)

    def refit(self, model, seen):
        return None if self.learn is None else self.learn(model, seen)

    def repair(self, plans, evidence, targets, skips):
        return repair(plans, evidence, targets, self.min_score, skips, self.refit)

    def timed(self, part):
        self.timed_parts.append(part)
        return contextlib.nullcontext()


def oracle(truth):
    """The reference, answering from `truth` (object "x")."""
    return lambda frames: {int(f): {"x": float(truth[f])} for f in frames}


def test_hypergeometric_limits_are_exact_and_never_zero_width():
    # No error in 100 of 6000: the upper limit is far from 0 (a Wald interval would say 0).
    hi = bounds.count_upper(0, 6000, 100, 0.025)
    assert 200 < hi < 230
    # A whole population checked: the count is known exactly.
    assert bounds.count_upper(3, 50, 50, 0.01) == bounds.count_lower(3, 50, 50, 0.01) == 3
    # The limits bracket the truth as often as promised: P(X <= k | K_up + 1) <= alpha.
    from scipy import stats

    for k in (0, 1, 5):
        up = bounds.count_upper(k, 1000, 80, 0.05)
        assert stats.hypergeom.cdf(k, 1000, up, 80) > 0.05 >= stats.hypergeom.cdf(k, 1000, up + 1, 80)


def test_rate_upper_counts_runs_not_frames():
    # 300 positive frames in one run are one piece of evidence: no error seen still allows 95%.
    pos, neg, changes = bounds.label_runs(np.r_[np.zeros(100, bool), np.ones(300, bool)])
    assert (pos, neg, changes) == (1, 1, 1)
    assert bounds.rate_upper(0, pos, 0.05) == pytest.approx(0.95)
    assert bounds.rate_upper(0, 0, 0.05) == 1.0  # no runs: no evidence at all
    # a gap in frame numbers separates runs without being a change
    assert bounds.label_runs(np.ones(4, bool), np.array([1, 2, 10, 11])) == (2, 0, 0)


def test_no_positive_seen_is_a_count_not_a_rate():
    v = verdict(Check(0, 0, 0), Check(5000, 100, 0), 0, 300, 0.01, 0.01, 0.05)
    assert v["fnr"]["estimate"] is None and v["fnr"]["high"] is None
    assert v["fnr"]["count_high"] > 100  # up to that many frames could be missed
    assert v["met"] is None  # not "FNR 0, target met"
    assert rate_met(dict(high=None, low=None, estimate=None, count_high=0), 0.01) is True
    # no frame answered at all (nothing decoded in the range): nothing is vouched for
    assert verdict(Check(0, 0, 0), Check(0, 0, 0), 0, 0, 0.01, 0.01, 0.05)["met"] is None


def test_gross_failure_is_found_missed():
    # 40 misses in 100 drawn "no" frames: the lower bound alone is far above a 5% target.
    v = verdict(Check(400, 100, 2), Check(5000, 100, 40), 50, 100, 0.05, 0.05, 0.05)
    assert v["met"] is False and v["fnr"]["low"] > 0.05


def test_certification_size_matches_the_issue_arithmetic():
    # FNR <= 0.01 at 95% with 10% positives: about 3,300 frames whatever the length.
    for n in (100_000, 1_000_000):
        size = certification_size(int(0.9 * n), 0.1 * n, 0.01, 0.05)
        assert 2500 < size < 4500, size


@pytest.mark.parametrize("positives", [0.01, 0.10])
def test_guarantee_sizes_certify_a_perfect_cascade_without_taking_every_frame(positives):
    """100,000 frames, 3% answered by the reference, no wrong answer anywhere: the draw --guarantee
    sizes certifies 1% / 1% in one round. Sizing each answer alone (as if the other's frames were
    all of the rate's kind) leaves the "yes" draw so small that FNR's bound misses the target."""
    n, share = 100_000, 0.03
    yes, no = int(n * positives * (1 - share)), int(n * (1 - positives) * (1 - share))
    ref_pos, ref_neg = int(n * positives * share), int(n * (1 - positives) * share)
    sizes = certification_sizes(yes, no, ref_pos, ref_neg, 0.01, 0.01, 0.025, 100)
    assert verdict(Check(yes, sizes[True], 0), Check(no, sizes[False], 0), ref_pos, ref_neg, 0.01, 0.01, 0.025)["met"] is True
    assert sizes[False] < no / 2 and sizes[True] <= yes
    alone = {True: certification_size(yes, ref_neg + no, 0.01, 0.025), False: certification_size(no, ref_pos + yes, 0.01, 0.025)}
    assert verdict(Check(yes, alone[True], 0), Check(no, alone[False], 0), ref_pos, ref_neg, 0.01, 0.01, 0.025)["met"] is not True


def test_drawn_frames_the_reference_cannot_answer_count_as_wrong():
    """A drawn frame the reference could not decode keeps its cheap answer: the bound assumes it is
    wrong, and a stratum with no answered draw has no estimate (shown as n/a), only a bound."""
    from noscope.results import verified_line

    v = verdict(Check(500, 100, 0), Check(4997, 97, 0, lost=3), 100, 400, 0.05, 0.05, 0.05)
    clean = verdict(Check(500, 100, 0), Check(5000, 100, 0), 100, 400, 0.05, 0.05, 0.05)
    assert v["fnr"]["count_high"] >= clean["fnr"]["count_high"] + 3 and v["fnr"]["estimate"] > 0
    none = verdict(Check(500, 100, 0), Check(4990, 0, 0, lost=10), 100, 400, 0.05, 0.05, 0.05)
    assert none["fnr"]["estimate"] is None and none["fnr"]["high"] > 0.5
    line = verified_line(dict(none, confidence=0.95, checked=110), Targets(0.05, 0.05))
    assert "FNR n/a (bound" in line


def test_apply_known_and_plan_round_take_an_empty_result():
    empty = _result(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, str), {})
    assert apply_known(empty, {5: 0.9}, 0.5) is empty
    rnd = plan_round(empty, Targets(0.01, 0.01), Settings(guarantee=True), 0.025, DrawOrder(0, 0, np.random.default_rng(0)))
    assert rnd.population == {True: 0, False: 0}


def _result(frames, labels, decided, ref_scores, model=None):
    n = len(frames)
    return CascadeResult(frames, frames / 25.0, labels, np.asarray(decided).astype(str), ref_scores, 0.0, {}, None,
                         np.full(n, np.nan, np.float32) if model is None else model, np.full(n, np.nan, np.float32))


def _video_truth(rng, n):
    """Labels with long runs, like video: a two-state Markov chain with rare switches."""
    switch = rng.random(n) < rng.uniform(0.002, 0.03)
    return (np.cumsum(switch) + rng.integers(2)) % 2 == 1


def _cascade(rng, truth, error_rate):
    """A cascade's answers: the reference on a few frames, cheap stages elsewhere, wrong on
    contiguous stretches (errors in video come in runs too)."""
    n = len(truth)
    decided = rng.choice(["skip", "diff", "model", "reference"], size=n, p=[0.4, 0.3, 0.25, 0.05])
    wrong = np.zeros(n, bool)
    for start in rng.choice(n, size=max(1, int(error_rate * n / 20)), replace=False):
        wrong[start : start + rng.integers(1, 40)] = True
    labels = np.where(decided == "reference", truth, truth ^ wrong)
    frames = np.arange(n, dtype=np.int64)
    ref = {int(f): float(truth[f]) for f in frames[decided == "reference"]}
    model = np.where(decided == "model", np.where(labels, 0.9, 0.1), np.nan).astype(np.float32)
    return _result(frames, labels, decided, ref, model)


def test_upper_bounds_hold_jointly_over_many_video_like_sequences():
    rng = np.random.default_rng(1)
    targets = Targets(0.02, 0.02)
    plan = ObjectPlan(skip=5, diff="prev-global", diff_threshold=0.5, model="m", c_low=0.3, c_high=0.7,
                      expected_cost=0.0, heldout_fpr=0.0, heldout_fnr=0.0)
    held = tried = repaired = 0
    for trial in range(300):
        n = int(rng.integers(3000, 8000))
        truth = _video_truth(rng, n)
        first = _cascade(rng, truth, rng.choice([0.0, 0.01, 0.05, 0.3]))
        # a repair halves the errors (a better plan), as a real re-run would change them
        rerun = lambda plans, n=n, truth=truth: {"x": _cascade(rng, truth, 0.005)}

        def ask(frames, truth=truth):
            return {int(f): {"x": float(truth[f])} for f in frames}

        run = FakeRun({"x": first}, rng, ask, rerun)
        results, reports = check_and_repair(run, {"x": first}, one(plan), targets, Settings(per_stratum=100, rounds=3))
        final = results["x"].labels
        fp, fn = np.count_nonzero(final & ~truth), np.count_nonzero(~final & truth)
        rep = reports["x"]
        ok = True
        if truth.any() and rep["fnr"]["high"] is not None:
            ok &= fn / truth.sum() <= rep["fnr"]["high"] + 1e-12
        else:
            ok &= fn <= rep["fnr"]["count_high"]
        if (~truth).any() and rep["fpr"]["high"] is not None:
            ok &= fp / (~truth).sum() <= rep["fpr"]["high"] + 1e-12
        else:
            ok &= fp <= rep["fpr"]["count_high"]
        held += ok
        tried += 1
        repaired += bool(rep["escalations"] or rep["reference_answered"])
    print(held, tried, repaired)
    assert held / tried >= 0.95, (held, tried)
    assert repaired > 30  # the rounds of repair were exercised, not only first checks


def test_known_answers_replace_the_cascades():
    frames = np.arange(10, dtype=np.int64)
    r = _result(frames, np.zeros(10, bool), ["skip"] * 10, {})
    r2 = apply_known(r, {3: 0.9, 4: 0.1}, 0.5)
    assert r2.labels.tolist() == [False] * 3 + [True] + [False] * 6
    assert r2.decided_by[3] == r2.decided_by[4] == "reference" and r2.decided_by[5] == "skip"
    assert r.labels.sum() == 0  # the original is untouched


def test_a_miss_found_is_repaired_and_checked_again():
    """A cascade answering "no" on a long positive stretch: the first check finds misses, the
    repair (lower skip) runs the cascade again, a fresh draw checks it, and the final answers
    carry every reference answer gathered."""
    rng = np.random.default_rng(0)
    n = 4000
    truth = np.zeros(n, bool)
    truth[1000:1600] = True
    frames = np.arange(n, dtype=np.int64)
    bad = _result(frames, np.zeros(n, bool), ["skip"] * n, {})
    good = _result(frames, truth.copy(), ["model"] * n, {}, np.where(truth, 0.9, 0.1).astype(np.float32))
    plan = ObjectPlan(skip=30, diff=None, diff_threshold=None, model="m", c_low=0.3, c_high=0.7, expected_cost=0.0,
                      heldout_fpr=0.0, heldout_fnr=0.0)
    calls = []

    def rerun(p):
        calls.append(p.plans["x"].skip)
        return {"x": good}

    run = FakeRun({"x": bad}, rng, oracle(truth), rerun)
    results, reports = check_and_repair(run, {"x": bad}, one(plan), Targets(0.05, 0.05), Settings(per_stratum=100))
    rep = reports["x"]
    assert "check_repairs" in run.timed_parts
    assert calls == [15] and rep["escalations"] and rep["escalations"][0].startswith("frame skip 30 -> 15")
    assert rep["rounds"][0]["errors"]["no"] > 0
    # the repaired "no" answers look right in round 2; round 3 draws enough to show FNR near 0.05
    assert len(rep["rounds"]) == 3 and rep["rounds"][2]["sample"]["no"] > 100 and rep["fnr"]["high"] <= 0.1
    assert np.array_equal(results["x"].labels, truth)
    assert rep["final_cascade"]["skip"] == 15


def test_a_skip_that_stepped_down_and_still_copies_past_events_goes_to_one():
    """Brief events (a car seen for a few frames): skip 15 still copies past them, so the next repair
    goes to skip 1 rather than 10 and 5, and the check confirms it before its rounds run out."""
    n = 6000
    truth = np.zeros(n, bool)
    for s in range(100, n, 400):
        truth[s:s + 3] = True
    frames = np.arange(n, dtype=np.int64)
    bad = _result(frames, np.zeros(n, bool), ["skip"] * n, {})
    good = _result(frames, truth.copy(), ["diff"] * n, {})
    plan = ObjectPlan(skip=30, diff=None, diff_threshold=None, model=None, c_low=None, c_high=None, expected_cost=0.0,
                      heldout_fpr=0.0, heldout_fnr=0.0)
    calls = []

    def rerun(p):
        calls.append(p.plans["x"].skip)
        return {"x": good if p.plans["x"].skip == 1 else bad}

    results, reports = check_and_repair(FakeRun({"x": bad}, np.random.default_rng(1), oracle(truth), rerun), {"x": bad},
                                        one(plan), Targets(0.05, 0.05), Settings(per_stratum=400, rounds=4))
    rep = reports["x"]
    assert calls == [15, 1], rep["escalations"]
    assert rep["escalations"][1].startswith("frame skip 15 -> 1") and rep["reference_answered"] == []
    assert np.array_equal(results["x"].labels, truth) and rep["final_cascade"]["skip"] == 1


def test_a_repair_the_last_draw_cannot_confirm_is_answered_by_the_reference(monkeypatch):
    """Rare positives (a night's few cars): the first draw finds misses among the "no" answers, the
    repair fixes one stretch but not the other, and the next draw of 100 happens to find none. That
    is no evidence for the repair (FNR bound about 0.9): showing FNR near 0.05 would take most of
    the "no" stratum, so the next round draws all of it (the reference answers it), and the final
    answers are right. Without the rule the same seed ends met null with 30 misses."""
    import noscope.check as check

    n = 6000
    truth = np.zeros(n, bool)
    truth[2000:2030] = truth[4500:4530] = True
    frames = np.arange(n, dtype=np.int64)
    bad = _result(frames, np.zeros(n, bool), ["skip"] * n, {})
    partly = truth.copy()
    partly[4500:4530] = False
    half = _result(frames, partly, np.where(partly, "model", "skip"), {})
    plan = ObjectPlan(skip=30, diff=None, diff_threshold=None, model=None, c_low=None, c_high=None, expected_cost=0.0,
                      heldout_fpr=0.0, heldout_fnr=0.0)

    def run():
        return check_and_repair(FakeRun({"x": bad}, np.random.default_rng(0), oracle(truth), lambda p: {"x": half}),
                                {"x": bad}, one(plan), Targets(0.05, 0.05), Settings(per_stratum=100, rounds=3))

    results, reports = run()
    rep = reports["x"]
    last = rep["rounds"][-1]
    assert rep["escalations"] and last["sample"]["no"] == last["population"]["no"] > 5000
    assert np.array_equal(results["x"].labels, truth) and rep["fnr"]["high"] == 0.0
    monkeypatch.setattr(check, "shown_level", lambda target: 2.0)  # the rule off: the misses stand
    results, reports = run()
    assert [r["errors"]["no"] for r in reports["x"]["rounds"]] == [2, 0] and reports["x"]["met"] is None
    assert reports["x"]["fnr"]["high"] > 0.5 and (results["x"].labels != truth).sum() == 30


def test_a_repair_a_larger_draw_shows_near_its_target_stands_without_the_reference():
    """Positives in 10% of the frames, and the repair catches every one: the next draw of 100 finds
    no miss, which cannot show FNR near 0.05 (bound about 0.25), so the next round draws as many as
    showing it takes (a few hundred); it finds nothing either and the repaired answers stand. The
    reference answers well under half the night instead of all of it."""
    n = 6000
    truth = np.zeros(n, bool)
    for s in range(0, n, 500):
        truth[s + 100:s + 150] = True
    frames = np.arange(n, dtype=np.int64)
    bad = _result(frames, np.zeros(n, bool), ["skip"] * n, {})
    fixed = _result(frames, truth.copy(), np.where(truth, "model", "diff"), {})
    plan = ObjectPlan(skip=30, diff=None, diff_threshold=None, model=None, c_low=None, c_high=None, expected_cost=0.0,
                      heldout_fpr=0.0, heldout_fnr=0.0)
    results, reports = check_and_repair(FakeRun({"x": bad}, np.random.default_rng(0), oracle(truth), lambda p: {"x": fixed}),
                                        {"x": bad}, one(plan), Targets(0.05, 0.05), Settings(per_stratum=100, rounds=3))
    rep = reports["x"]
    assert rep["escalations"] and rep["reference_answered"] == []
    assert [r["round"] for r in rep["rounds"]] == [1, 2, 3] and rep["rounds"][1]["fnr"]["high"] > 0.1
    assert 100 < rep["rounds"][2]["sample"]["no"] < 1000 and rep["fnr"]["high"] <= 0.1
    assert 300 < rep["checked"] < n / 2 and np.array_equal(results["x"].labels, truth)


def test_a_repair_a_larger_draw_finds_still_wrong_is_repaired_again():
    """A parked car hidden now and then (negatives 10% of frames): skip 30 copies "yes" over them;
    skip 15 still copies over a few (FPR 0.10), which a draw of 100 among 5,000 "yes" answers
    misses; the larger draw meant to show FPR near 0.05 finds them, and skip goes to 1."""
    n = 6000
    truth = np.ones(n, bool)
    for s in range(0, n, 200):
        truth[s + 50:s + 70] = False
    frames = np.arange(n, dtype=np.int64)
    still = truth.copy()
    still[np.flatnonzero(~truth)[::10]] = True  # 60 of the 600 hidden frames still answered "yes"
    runs = {15: _result(frames, still, ["skip"] * n, {}), 1: _result(frames, truth.copy(), ["diff"] * n, {})}
    plan = ObjectPlan(skip=30, diff=None, diff_threshold=None, model=None, c_low=None, c_high=None, expected_cost=0.0,
                      heldout_fpr=0.0, heldout_fnr=0.0)
    calls = []

    def rerun(p):
        calls.append(p.plans["x"].skip)
        return {"x": runs[p.plans["x"].skip]}

    first = {"x": _result(frames, np.ones(n, bool), ["skip"] * n, {})}
    run = FakeRun(first, np.random.default_rng(1), oracle(truth), rerun)  # a seed whose round 2 sees none
    results, reports = check_and_repair(run, first, one(plan), Targets(0.05, 0.05), Settings(per_stratum=100, rounds=4))
    rep = reports["x"]
    assert calls == [15, 1], rep["rounds"]
    assert rep["rounds"][1]["errors"]["yes"] == 0 and rep["rounds"][2]["sample"]["yes"] > 100
    assert rep["rounds"][2]["errors"]["yes"] > 0 and np.array_equal(results["x"].labels, truth)


def _model_video(n=6000, seed=3):
    """A video where the first pass's model says "no" on a long positive stretch (a drifted scene):
    frames 0..n, positives in [2000, 3000), every frame processed by the model (skip 1)."""
    truth = np.zeros(n, bool)
    truth[2000:3000] = True
    frames = np.arange(n, dtype=np.int64)
    bad = np.where(truth & (frames % 4 != 0), 0.1, np.where(truth, 0.9, 0.1)).astype(np.float32)  # 3/4 of positives missed
    plan = ObjectPlan(skip=1, diff=None, diff_threshold=None, model="m", c_low=0.3, c_high=0.7, expected_cost=0.0,
                      heldout_fpr=0.0, heldout_fnr=0.0)
    return truth, frames, bad, plan


def _answers_of(frames, scores, plan_x, truth):
    labels = np.where(scores < plan_x.c_low, False, np.where(scores > plan_x.c_high, True, truth))
    decided = np.where((scores < plan_x.c_low) | (scores > plan_x.c_high), "model", "reference")
    ref = {int(f): float(truth[f]) for f in frames[decided == "reference"]}
    return _result(frames, labels, decided, ref, scores)


def test_a_repair_that_refits_never_certifies_on_frames_it_learnt_from(monkeypatch):
    """The model learns from this video's reference answers (a perfect refit here); the rounds after
    it draw only frames it was not fitted on, and the final answers are right."""
    import noscope.check as check

    truth, frames, bad, plan = _model_video()
    good = np.where(truth, 0.95, 0.05).astype(np.float32)
    learnt_from: set[int] = set()
    drawn_after: set[int] = set()
    real_round = check.plan_round

    def recording_round(result, *a, **k):
        rnd = real_round(result, *a, **k)
        if learnt_from:
            drawn_after.update(int(f) for d in rnd.draws.values() for f in d)
        return rnd

    def learn(model, seen):
        learnt_from.update(seen["x"].reference_scores)  # every frame the reference has answered so far
        return "m~1", {"x": good}, len(learnt_from)

    def rerun(p):
        assert p.shared.model == "m~1"
        return {"x": _answers_of(frames, good, p.plans["x"], truth)}

    monkeypatch.setattr(check, "plan_round", recording_round)
    first = {"x": _answers_of(frames, bad, plan, truth)}
    run = FakeRun(first, np.random.default_rng(0), oracle(truth), rerun, learn)
    results, reports = check_and_repair(run, first, one(plan), Targets(0.05, 0.05), Settings(per_stratum=100, rounds=3))
    rep = reports["x"]
    assert learnt_from and drawn_after, "the refit and a later round both happened"
    assert not learnt_from & drawn_after
    assert rep["escalations"][0].startswith("model m re-fitted on") and rep["final_cascade"]["model"] == "m~1"
    assert not rep["reference_answered"]  # the refit was enough: no stratum went to the reference
    assert np.array_equal(results["x"].labels, truth)


def test_a_refit_that_cannot_help_falls_back_to_the_reference():
    """A refit that learns nothing (its scores stay wrong) is checked like any repair: its thresholds,
    fitted on this video's answers, leave every frame it cannot tell apart to the reference, which
    then answers them, as without learning."""
    truth, frames, bad, plan = _model_video(seed=4)
    calls = []

    def learn(model, seen):
        calls.append(model)
        return f"{model}~", {"x": bad}, 100

    first = {"x": _answers_of(frames, bad, plan, truth)}
    run = FakeRun(first, np.random.default_rng(1), oracle(truth),
                  lambda p: {"x": _answers_of(frames, bad, p.plans["x"], truth)}, learn)
    results, reports = check_and_repair(run, first, one(plan), Targets(0.05, 0.05), Settings(per_stratum=100, rounds=3))
    assert calls == ["m"] and reports["x"]["final_cascade"]["model"] == "m~"
    low = bad < 0.3  # where the model said "no" and missed three positives in four
    assert (results["x"].decided_by[low] == "reference").all()
    assert np.array_equal(results["x"].labels, truth)


def test_a_draw_by_a_prior_order_is_uniform_within_each_stratum():
    """The check draws, from a stratum, the frames that come first in an order fixed before the
    pass: over many orders every frame of the stratum is drawn equally often (n / |S|), whatever
    the stratum looks like, and a second draw (fresh frames) is uniform over what is left."""
    rng = np.random.default_rng(5)
    stratum = np.sort(rng.choice(np.arange(1000, 3000), 300, replace=False))  # any subset of the segment
    first, second = np.zeros(len(stratum)), np.zeros(len(stratum))
    trials, n = 4000, 30
    for _ in range(trials):
        order = DrawOrder(1000, 3000, rng)
        a = order.first(stratum, n)
        first[np.searchsorted(stratum, a)] += 1
        rest = stratum[~np.isin(stratum, a)]
        second[np.searchsorted(stratum, order.first(rest, n))] += 1
    expect = trials * n / len(stratum)  # 400 per frame
    for counts in (first, second):
        assert abs(counts.mean() - expect) < 1e-9
        chi2 = float(((counts - expect) ** 2 / expect).sum())
        assert chi2 < 400, chi2  # 299 degrees of freedom: mean 299, sd 24
    reserve = DrawOrder(0, 500, np.random.default_rng(1)).reserve(40)
    assert len(reserve) == 40 and np.all(np.diff(reserve) > 0) and reserve.max() < 500
