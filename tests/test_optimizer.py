"""noscope.optimizer and noscope.simulate: simulate's semantics by hand, and the search on synthetic data with a
known optimum (one object; tests/test_joint.py has several)."""

import json

import numpy as np
import pytest

import noscope.optimizer as opt
from noscope.errors import NoscopeError, UsageError
from noscope.metrics import Windowing, evaluate
from noscope.plans import (
    DEFAULT_SKIPS,
    DIFF,
    MODEL,
    REFERENCE,
    SKIP,
    Cascade,
    Costs,
    HeldOut,
    ObjectPlan as Plan,
    Targets,
    expected_cost,
    object_plan_line as plan_summary,
    stage_fractions,
)
from noscope.simulate import HeldOutArrays, layout_of, simulate
from noscope.cheap.common import roc_auc


def optimize(heldout, costs, targets, **options):
    """The optimizer's one entry point with one object (K = 1): that object's plan."""
    return opt.optimize({"x": heldout}, costs, targets, **options).plans["x"]

# --------------------------------------------------------------------------------------------
# helpers


def runs(n, rng, mean_len, p_on):
    """Truth made of constant runs (cars come and stay a while)."""
    truth = np.zeros(n, bool)
    t = 0
    while t < n:
        length = int(rng.integers(1, 2 * mean_len))
        truth[t:t + length] = rng.random() < p_on
        t += length
    return truth


def prev_scores(truth, blocks, skip, rng, noise=0.0):
    """A 'prev' difference score: large where the label changed since frame t - skip."""
    n = len(truth)
    scores = np.full(n, np.nan)
    idx = np.arange(n)
    ok = (idx >= skip) & (blocks == np.roll(blocks, skip))
    scores[ok] = (truth[ok] != truth[idx[ok] - skip]) + noise * rng.random(ok.sum())
    return scores


def costs(models=None, diffs=None, reference=0.1):
    return Costs(decode=1e-3, convert=1e-3, diff=diffs or {}, model=models or {}, reference=reference)


def heldout(truth, blocks=None, models=None, diffs=None, kinds=None):
    blocks = np.zeros(len(truth), int) if blocks is None else blocks
    return HeldOut(np.asarray(truth, bool), np.asarray(blocks), models or {}, diffs or {}, kinds or {})


def reference_only_cost(c):
    return c.decode + c.convert + c.reference


def check_plan(plan, h, targets, c):
    """What every plan must satisfy, recomputed through simulate (the one definition)."""
    labels, decided = simulate(plan, h)
    fpr, fnr = evaluate(labels, h.truth, targets.metric, targets.window, targets.window_min_fraction, h.blocks)
    assert fpr <= targets.fpr and fnr <= targets.fnr
    truth = np.asarray(h.truth, bool)  # issue 13: a rate with no frame of its kind is None, not 0
    assert (fpr if (~truth).any() else None, fnr if truth.any() else None) == \
        pytest.approx((plan.heldout_fpr, plan.heldout_fnr))
    fractions = stage_fractions(decided)
    assert fractions == pytest.approx(plan.fractions)
    assert sum(plan.fractions.values()) == pytest.approx(1.0)
    assert plan.expected_cost == pytest.approx(expected_cost(plan, c, fractions))
    assert plan.expected_cost <= reference_only_cost(c) * (1 + 1e-9)


# --------------------------------------------------------------------------------------------
# simulate, by hand


def test_skip_copies_last_processed_frame_within_blocks():
    truth = [1, 0, 0, 1, 0, 1, 1, 0]
    blocks = [0, 0, 0, 0, 1, 1, 1, 1]
    labels, decided = simulate((2, None, None, None, None, None), heldout(truth, blocks))
    assert labels.astype(int).tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert decided.tolist() == [REFERENCE, SKIP] * 4
    # A block that starts at an odd position restarts the count: block 1 starts at frame 3.
    labels, decided = simulate(Cascade(2), heldout(truth, [0, 0, 0, 1, 1, 1, 1, 1]))
    assert labels.astype(int).tolist() == [1, 1, 0, 1, 1, 1, 1, 0]
    assert decided.tolist() == [REFERENCE, SKIP, REFERENCE, REFERENCE, SKIP, REFERENCE, SKIP, REFERENCE]


def test_prev_diff_copies_previous_processed_label():
    truth = [1, 0, 1, 1, 0, 0]
    blocks = [0, 0, 0, 1, 1, 1]
    # Frames 0 and 3 start blocks: always "changed" (frame 0's NaN, and even frame 3's 0.0).
    scores = np.array([np.nan, 0.1, 0.9, 0.0, 0.1, 0.9])
    h = heldout(truth, blocks, diffs={"d": {1: scores}}, kinds={"d": "prev"})
    labels, decided = simulate(Cascade(1, "d", 0.5), h)
    assert labels.astype(int).tolist() == [1, 1, 1, 1, 1, 0]
    assert decided.tolist() == [REFERENCE, DIFF, REFERENCE, REFERENCE, DIFF, REFERENCE]
    # NaN elsewhere also means "changed".
    scores[1] = np.nan
    assert simulate(Cascade(1, "d", 0.5), h)[1][1] == REFERENCE


def test_ref_diff_says_no_and_skipped_frames_follow():
    truth = [1, 1, 1, 0, 1, 1]
    scores = np.array([0.9, 0.0, 0.1, 0.0, 0.9, 0.9])  # vs the empty scene
    h = heldout(truth, diffs={"e": {1: scores}}, kinds={"e": "ref"})
    labels, decided = simulate(Cascade(1, "e", 0.5), h)
    assert labels.astype(int).tolist() == [1, 0, 0, 0, 1, 1]
    assert decided.tolist() == [REFERENCE, DIFF, DIFF, DIFF, REFERENCE, REFERENCE]
    # Skip 2: frames 0, 2, 4 processed; "ref" scores do not depend on the skip, so any are used.
    labels, decided = simulate(Cascade(2, "e", 0.5), h)
    assert labels.astype(int).tolist() == [1, 1, 0, 0, 1, 1]
    assert decided.tolist() == [REFERENCE, SKIP, DIFF, SKIP, REFERENCE, SKIP]


def test_model_thresholds_and_reference_in_between():
    truth = [1, 0, 1, 0, 1]
    p = np.array([0.1, 0.9, 0.5, 0.45, 0.95])
    h = heldout(truth, models={"m": p})
    labels, decided = simulate(Cascade(1, None, None, "m", 0.2, 0.8), h)
    assert labels.astype(int).tolist() == [0, 1, 1, 0, 1]
    assert decided.tolist() == [MODEL, MODEL, REFERENCE, REFERENCE, MODEL]
    # No thresholds given: everything goes to the reference.
    labels, decided = simulate(Cascade(1, None, None, "m"), h)
    assert labels.tolist() == h.truth.tolist() and (decided == REFERENCE).all()


def test_full_cascade_by_hand():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    blocks = np.zeros(10, int)
    diff = np.array([np.nan, 0, 0.9, 0, 0.9, 0, 0.1, 0, 0.9, 0])  # skip 2: frames 0, 2, 4, 6, 8
    p = np.array([0, 0, 0.5, 0, 0.1, 0, 0, 0, 0.9, 0])
    h = heldout(truth, blocks, {"m": p}, {"d": {2: diff}}, {"d": "prev"})
    labels, decided = simulate(Cascade(2, "d", 0.5, "m", 0.2, 0.8), h)
    # 0: block start -> model 0.0 < 0.2 -> no (wrong!); 2: model unsure -> reference yes;
    # 4: model no; 6: unchanged -> copies 4 (no); 8: model yes. Skipped frames copy.
    assert labels.astype(int).tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    assert decided.tolist() == [MODEL, SKIP, REFERENCE, SKIP, MODEL, SKIP, DIFF, SKIP, MODEL, SKIP]
    f = stage_fractions(decided)
    assert f == pytest.approx({"skip": 0.5, "diff": 0.1, "model": 0.3, "reference": 0.1})
    c = Costs(decode=1.0, convert=10.0, diff={"d": 100.0}, model={"m": 1000.0}, reference=10000.0)
    # decode + 0.5 * (convert + diff) + 0.4 * model + 0.1 * reference
    assert expected_cost(Cascade(2, "d", 0.5, "m", 0.2, 0.8), c, f) == pytest.approx(1 + 55 + 400 + 1000)


def test_simulate_rejects_bad_cascades():
    h = heldout([1, 0], models={"m": np.array([0.1, 0.2])})
    with pytest.raises(UsageError):
        simulate(Cascade(1, None, None, "m", 0.9, 0.1), h)
    with pytest.raises(UsageError):
        simulate((0, None, None, None, None, None), h)
    with pytest.raises(NoscopeError, match="'x'"):
        simulate(Cascade(1, None, None, "x", 0.1, 0.2), h)
    with pytest.raises(NoscopeError, match="empty"):
        simulate(Cascade(1), heldout([]))


# --------------------------------------------------------------------------------------------
# the search


def test_perfect_model_is_used_without_reference_calls():
    rng = np.random.default_rng(1)
    truth = rng.random(3000) < 0.4  # no temporal structure: skipping would not work
    h = heldout(truth, models={"m": truth + 0.0})
    c = costs({"m": 1e-3})
    targets = Targets(0.01, 0.01)
    plan = optimize(h, c, targets)
    assert plan.model == "m" and plan.skip == 1
    assert plan.fractions["reference"] == 0.0 and plan.heldout_fpr == 0.0 and plan.heldout_fnr == 0.0
    assert not plan.reference_only
    check_plan(plan, h, targets, c)


def test_useless_model_is_not_used():
    rng = np.random.default_rng(2)
    truth = rng.random(3000) < 0.4
    h = heldout(truth, models={"noise": rng.random(3000)})
    # The model costs 10% of the reference: letting it decide the ~1% of frames the targets
    # allow it to get wrong can never pay for running it on every frame.
    c = costs({"noise": 1e-2}, reference=0.1)
    plan = optimize(h, c, Targets(0.01, 0.01))
    assert plan.reference_only and plan.model is None and plan.skip == 1
    assert plan.expected_cost == pytest.approx(reference_only_cost(c))
    assert plan.fractions == {"skip": 0.0, "diff": 0.0, "model": 0.0, "reference": 1.0}


def test_a_model_below_the_old_auc_guard_settles_what_it_is_sure_of_and_nothing_else():
    """Models are used by evidence (optimizer.min_auc 0): a model sure of half the frames and blind on
    the rest (AUC well below the old 0.9 guard) answers the half it is sure of; the frames where its
    score hovers go to the reference. The old guard would have sent every frame there."""
    rng = np.random.default_rng(4)
    n = 4000
    truth = rng.random(n) < 0.4
    sure = rng.random(n) < 0.5
    scores = np.where(sure, np.where(truth, 0.95, 0.05) + rng.normal(0, 0.01, n), rng.uniform(0.3, 0.7, n))
    assert 0.6 < roc_auc(scores, truth) < 0.9
    h = heldout(truth, models={"weak": scores})
    c = costs({"weak": 1e-3}, reference=0.1)
    targets = Targets(0.01, 0.01)
    plan = optimize(h, c, targets)
    assert plan.model == "weak" and plan.skip == 1 and plan.diff is None
    check_plan(plan, h, targets, c)
    _, decided = simulate(plan, h)
    # where its score says nothing it answers almost nothing (the targets' 1% lets a few edge frames through)
    assert np.mean(decided[~sure] == REFERENCE) > 0.95
    assert np.mean(decided[sure] == MODEL) > 0.95  # where it is sure, it answers
    assert plan.expected_cost < 0.6 * reference_only_cost(c)
    # the old guard (min_auc 0.9) would not have offered it: the reference on every frame
    guarded = opt.optimize({"x": h}, c, targets, models={"x": []}).plans["x"]
    assert guarded.reference_only


def test_useless_model_with_long_runs_means_skipping():
    rng = np.random.default_rng(3)
    n = 6000
    blocks = np.arange(n) // 1500  # block starts are multiples of 30 too
    truth = np.zeros(n, bool)
    for start in range(0, n, 600):  # runs aligned to 30 frames inside each block
        truth[start:start + 300] = rng.random() < 0.5
    truth[:300] = True
    h = heldout(truth, blocks, models={"noise": rng.random(n)})
    c = costs({"noise": 1e-2})
    targets = Targets(0.01, 0.01)
    plan = optimize(h, c, targets)
    assert plan.model is None and plan.skip == 30
    assert plan.heldout_fpr == 0.0 and plan.heldout_fnr == 0.0
    check_plan(plan, h, targets, c)


def test_long_runs_choose_a_large_skip_that_meets_targets():
    rng = np.random.default_rng(4)
    n = 20000
    truth = runs(n, rng, mean_len=2000, p_on=0.5)
    blocks = np.arange(n) // 5000
    h = heldout(truth, blocks)
    c = costs()
    for metric in ("frames", "windows"):
        targets = Targets(0.02, 0.02, metric=metric)
        plan = optimize(h, c, targets)
        assert plan.skip >= 10
        check_plan(plan, h, targets, c)


def test_perfect_ref_diff_is_used_on_mostly_empty_video():
    rng = np.random.default_rng(5)
    n = 5000
    truth = np.zeros(n, bool)
    for start in rng.choice(n - 3, size=60, replace=False):  # short visits: skipping would miss them
        truth[start:start + rng.integers(1, 4)] = True
    assert truth.mean() < 0.1
    empty_scene = truth + 0.05 * rng.random(n)  # far from the empty scene exactly when a car is there
    h = heldout(truth, models={"noise": rng.random(n)},
                diffs={"empty": {1: empty_scene}}, kinds={"empty": "ref"})
    c = costs({"noise": 1e-2}, {"empty": 1e-4})
    targets = Targets(0.01, 0.01)
    # With a threshold that separates the scores, every empty frame is settled by the detector.
    plan = optimize(h, c, targets, diff_thresholds=[0.5])
    assert plan.diff == "empty" and plan.skip == 1
    assert plan.fractions["diff"] == pytest.approx(1 - truth.mean())
    assert plan.heldout_fpr == 0.0 and plan.heldout_fnr == 0.0
    # Every frame it lets through has a car, so even the noise model is worth running as a
    # constant "yes" (both thresholds below all scores) instead of calling the reference.
    assert plan.model == "noise" and plan.c_high == -np.inf and plan.fractions["reference"] == 0.0
    check_plan(plan, h, targets, c)
    without_models = heldout(truth, diffs=h.diff_scores, kinds=h.diff_kinds)
    plan = optimize(without_models, c, targets, diff_thresholds=[0.5])
    assert plan.diff == "empty" and plan.model is None
    assert plan.fractions["reference"] == pytest.approx(truth.mean())
    # With the default (quantile) thresholds it is still the detector that does the work.
    plan = optimize(h, c, targets)
    assert plan.diff == "empty" and plan.fractions["diff"] > 0.9
    check_plan(plan, h, targets, c)


@pytest.mark.parametrize("empty_share, min_saving, used", [(0.1, 0.2, False), (0.1, 0.0, True), (0.5, 0.2, True)])
def test_small_predicted_savings_keep_the_reference_alone(empty_share, min_saving, used):
    """A detector that settles 10% of the frames saves ~10%: under min_saving=0.2 that is noise."""
    n = 2000
    truth = np.ones(n, bool)
    truth[: int(empty_share * n)] = False  # the empty frames, which the detector recognises exactly
    h = heldout(truth, diffs={"empty": {1: truth.astype(float)}}, kinds={"empty": "ref"})
    c = costs(diffs={"empty": 1e-4})
    plan = optimize(h, c, Targets(0.01, 0.01), skips=[1], diff_thresholds=[0.5], min_saving=min_saving)
    assert (plan.diff == "empty") is used and plan.reference_only is not used
    check_plan(plan, h, Targets(0.01, 0.01), c)
    if used:
        assert plan.expected_cost <= (1 - min_saving) * reference_only_cost(c)


def test_min_saving_out_of_range_is_a_usage_error():
    with pytest.raises(UsageError):
        optimize(heldout([True, False] * 10), costs(), Targets(0.01, 0.01), min_saving=1.0)


def test_cheaper_of_two_equally_accurate_models_wins():
    rng = np.random.default_rng(6)
    truth = rng.random(2000) < 0.3
    scores = truth + rng.normal(0, 0.3, 2000)
    h = heldout(truth, models={"big": scores, "small": scores.copy()})
    c = costs({"big": 5e-3, "small": 1e-3})
    targets = Targets(0.05, 0.05)
    plan = optimize(h, c, targets)
    assert plan.model == "small"
    check_plan(plan, h, targets, c)


def test_equal_cost_ties_go_to_fewer_reference_calls():
    rng = np.random.default_rng(7)
    truth = rng.random(2000) < 0.3
    h = heldout(truth, models={"a": truth + rng.normal(0, 0.3, 2000), "b": truth + 0.0})
    # Models and reference are free, so every skip-1 cascade costs the same; b needs no reference calls.
    c = Costs(decode=1e-3, convert=1e-3, diff={}, model={"a": 0.0, "b": 0.0}, reference=0.0)
    plan = optimize(h, c, Targets(0.01, 0.01))  # a needs the reference on its unsure frames
    assert plan.model == "b" and plan.fractions["reference"] == 0.0


@pytest.mark.parametrize("fpr, fnr, bad", [(0, 0.01, "FPR"), (0.01, 1, "FNR"), (-0.1, 0.5, "FPR"),
                                           (0.5, 1.5, "FNR"), ("x", 0.5, "FPR"), (None, 0.5, "FPR")])
def test_invalid_targets_raise_usage_error(fpr, fnr, bad):
    with pytest.raises(UsageError, match=f"target {bad} must be between 0 and 1, got"):
        Targets(fpr, fnr)


def test_invalid_metric_and_window():
    with pytest.raises(UsageError):
        Targets(0.1, 0.1, metric="seconds")
    with pytest.raises(UsageError):
        Targets(0.1, 0.1, metric="windows", window=0)


def test_missing_cost_is_a_clear_error():
    h = heldout([1, 0], models={"m": np.array([0.9, 0.1])})
    with pytest.raises(NoscopeError, match="no measured cost for specialized model 'm'"):
        optimize(h, costs(), Targets(0.1, 0.1))


def random_instance(rng, n=None):
    n = n or int(rng.integers(200, 2500))
    truth = runs(n, rng, mean_len=int(rng.integers(2, 300)), p_on=rng.uniform(0.05, 0.8))
    blocks = np.repeat(np.arange(n), rng.integers(50, 800, size=n))[:n]
    models = {}
    for i in range(int(rng.integers(0, 4))):
        quality = rng.uniform(0, 2)  # 0: noise
        models[f"m{i}"] = quality * truth + rng.normal(0, 0.5, n)
    diffs, kinds = {}, {}
    if rng.random() < 0.7:
        kinds["prev"] = "prev"
        diffs["prev"] = {s: prev_scores(truth, blocks, s, rng, noise=rng.uniform(0, 1.5)) for s in DEFAULT_SKIPS}
    if rng.random() < 0.7:
        kinds["ref"] = "ref"
        diffs["ref"] = {1: truth * rng.uniform(0, 2) + rng.random(n)}
    h = HeldOut(truth, blocks, models, diffs, kinds)
    c = Costs(decode=rng.uniform(0, 1e-3), convert=rng.uniform(0, 1e-3),
              diff={d: rng.uniform(0, 1e-3) for d in diffs},
              model={m: rng.uniform(1e-4, 1e-2) for m in models}, reference=rng.uniform(1e-2, 1e-1))
    metric = "frames" if rng.random() < 0.5 else "windows"
    targets = Targets(rng.uniform(0.001, 0.2), rng.uniform(0.001, 0.2), metric=metric,
                      window=int(rng.choice([5, 30])))
    return h, c, targets


def test_random_instances_meet_targets_and_beat_reference_only():
    rng = np.random.default_rng(8)
    for _ in range(40):
        h, c, targets = random_instance(rng)
        plan = optimize(h, c, targets)
        check_plan(plan, h, targets, c)


def test_search_is_not_beaten_by_any_model_free_grid_point():
    """Pruning must not lose a cheaper cascade: brute-force skip x diff x threshold through simulate."""
    rng = np.random.default_rng(9)
    for _ in range(10):
        h, c, targets = random_instance(rng, n=800)
        thresholds = [0.2, 0.5, 1.0, 1.5]
        plan = optimize(h, c, targets, diff_thresholds=thresholds)
        for s in DEFAULT_SKIPS:
            for d in [None, *h.diff_scores]:
                for t in [None] if d is None else thresholds:
                    labels, decided = simulate(Cascade(s, d, t), h)
                    fpr, fnr = evaluate(labels, h.truth, targets.metric, targets.window, blocks=h.blocks)
                    if fpr <= targets.fpr and fnr <= targets.fnr:
                        cost = expected_cost(Cascade(s, d, t), c, stage_fractions(decided))
                        assert plan.expected_cost <= cost * (1 + 1e-9)


def test_search_error_counts_agree_with_simulate():
    """The search's fast error counting (per source, closed-form curves) matches simulate + evaluate."""
    rng = np.random.default_rng(10)
    for _ in range(15):
        h, c, targets = random_instance(rng)
        prep = HeldOutArrays(h)
        for s, d in [(1, None), (5, None), *[(s, d) for d in h.diff_scores for s in (1, 10)]]:
            scores = None if d is None else prep.diff_scores(d, s)
            t = None if d is None else float(np.nanmedian(scores))
            layout = layout_of(prep, s, scores, None if d is None else h.diff_kinds[d], t)
            for metric in ("frames", "windows"):
                tg = Targets(targets.fpr, targets.fnr, metric=metric, window=targets.window)
                if metric == "frames":
                    errors = opt.FrameErrors(prep, layout)
                else:
                    windowing = Windowing(prep.n, tg.window, blocks=h.blocks)
                    errors = opt.WindowErrors(prep, layout, windowing, windowing.labels(h.truth))
                for m in h.model_scores:
                    p = prep.model_scores(m)
                    c_low, c_high = np.quantile(p, [0.3, 0.7])
                    cascade = Cascade(s, d, t, m, c_low, c_high)
                    labels, _ = simulate(cascade, h)
                    pr = p[layout.reach]
                    reach_labels = np.where(pr < c_low, False, np.where(pr > c_high, True, h.truth[layout.reach]))
                    assert errors(reach_labels) == evaluate(labels, h.truth, metric, tg.window, blocks=h.blocks)
                    if metric == "frames":
                        # Closed-form curves give the same thresholds as the generic binary search.
                        fast = opt.model_thresholds(errors, h.truth[layout.reach], pr, tg)
                        slow = opt.model_thresholds(lambda lab, e=errors: e(lab), h.truth[layout.reach], pr, tg)
                        ok = errors(h.truth[layout.reach])
                        if ok[0] <= tg.fpr and ok[1] <= tg.fnr:
                            assert fast == slow


def test_windows_metric_forgives_flicker_that_frames_do_not():
    n = 6000
    truth = (np.arange(n) // 300) % 2 == 0  # 300 frames with a car, 300 without, ...
    truth[(np.arange(n) % 30 == 15) & ~truth] = True  # ... and a one-frame flicker every second
    h = heldout(truth)
    c = costs()
    # Per frame, any skip misses or spreads the flicker: only the reference on every frame works.
    frames = Targets(0.01, 0.01, metric="frames")
    assert optimize(h, c, frames).reference_only
    # Per 30-frame window (majority), skip 30 sees the runs and never the flicker: exact.
    windows = Targets(0.01, 0.01, metric="windows", window=30)
    plan = optimize(h, c, windows)
    assert plan.skip == 30 and plan.heldout_fpr == 0.0 and plan.heldout_fnr == 0.0
    check_plan(plan, h, windows, c)


def test_plan_round_trips_through_json():
    rng = np.random.default_rng(12)
    truth = rng.random(500) < 0.3
    h = heldout(truth, models={"m": truth + 0.0})
    plan = optimize(h, costs({"m": 1e-3}), Targets(0.01, 0.01))
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert simulate(again, h)[0].tolist() == simulate(plan, h)[0].tolist()
    # Infinite thresholds survive (Python's json writes Infinity).
    inf_plan = Plan(1, None, None, "m", -np.inf, np.inf, 0.1, 0.0, 0.0, {"reference": 1.0}, False)
    assert Plan.from_dict(json.loads(json.dumps(inf_plan.to_dict()))) == inf_plan
    broken = plan.to_dict()
    del broken["skip"]
    with pytest.raises(NoscopeError, match="skip"):
        Plan.from_dict(broken)


def test_plan_summary_is_one_line():
    rng = np.random.default_rng(13)
    truth = rng.random(500) < 0.3
    h = heldout(truth, models={"m": truth + 0.0, "noise": rng.random(500)})
    for c in (costs({"m": 1e-3, "noise": 1e-3}), costs({"m": 1.0, "noise": 1.0})):
        plan = optimize(h, c, Targets(0.01, 0.01))
        text = plan_summary(plan)
        assert "\n" not in text and "ms/frame" in text
        assert ("reference on every frame" in text) == plan.reference_only


def test_optimize_is_fast_on_a_full_grid():
    import time

    rng = np.random.default_rng(14)
    n = 5000
    truth = runs(n, rng, mean_len=100, p_on=0.3)
    blocks = np.arange(n) // 1000
    models = {f"m{i}": truth * (0.2 + 0.2 * i) + rng.normal(0, 0.5, n) for i in range(10)}
    diffs = {"prev": {s: prev_scores(truth, blocks, s, rng, 0.5) for s in DEFAULT_SKIPS},
             "ref": {1: truth + rng.normal(0, 0.5, n)}}
    h = HeldOut(truth, blocks, models, diffs, {"prev": "prev", "ref": "ref"})
    # Costs under which pruning helps little: the reference is the only expensive stage.
    c = Costs(1e-4, 1e-4, {"prev": 1e-5, "ref": 1e-5}, {m: 1e-5 for m in models}, reference=1e-1)
    for metric in ("frames", "windows"):
        start = time.perf_counter()
        plan = optimize(h, c, Targets(0.01, 0.01, metric=metric))
        assert time.perf_counter() - start < 10
        check_plan(plan, h, Targets(0.01, 0.01, metric=metric), c)


# --------------------------------------------------------------------------------------------
# confidence bounds: evidence counted per run, absence of evidence is not perfection


def _rich_heldout(truth, rng):
    """A model that separates the classes perfectly and a 'prev' detector, on `truth`."""
    blocks = np.zeros(len(truth), int)
    p = np.where(truth, 0.9, 0.1) + 0.05 * rng.random(len(truth))
    diffs = {"prev": {s: prev_scores(truth, blocks, s, rng, noise=0.1) for s in (1, 2, 5)}}
    return heldout(truth, blocks, {"m": p}, diffs, {"prev": "prev"})


def test_no_heldout_positive_certifies_no_plan_that_can_miss_one():
    rng = np.random.default_rng(0)
    h = _rich_heldout(np.zeros(600, bool), rng)
    c = costs({"m": 1e-4}, {"prev": 1e-5})
    strict = optimize(h, c, Targets(0.05, 0.05), skips=[1, 2, 5], strict=True)
    assert strict.reference_only and strict.certified and strict.bound_fnr == 0.0
    loose = optimize(h, c, Targets(0.05, 0.05), skips=[1, 2, 5])
    assert not loose.reference_only  # a cheap plan, for verification on the queried video to check
    assert loose.heldout_fnr is None and loose.bound_fnr == 1.0 and not loose.certified  # no positive: no FNR
    assert "FNR n/a" in plan_summary(loose)


def test_strict_certifies_only_with_enough_runs():
    rng = np.random.default_rng(1)
    c = costs({"m": 1e-4}, {"prev": 1e-5})
    few = _rich_heldout(np.r_[np.zeros(300, bool), np.ones(300, bool)], rng)  # one run each
    assert optimize(few, c, Targets(0.05, 0.05), skips=[1, 2, 5], strict=True).reference_only
    many = _rich_heldout(runs(20000, rng, 40, 0.5), rng)  # hundreds of runs of each answer
    plan = optimize(many, c, Targets(0.05, 0.05), skips=[1, 2, 5], strict=True)
    assert not plan.reference_only and plan.certified
    assert plan.bound_fpr <= 0.05 and plan.bound_fnr <= 0.05
    # the bounds count runs: hundreds of runs, not 20000 frames, so they sit well above the point estimates
    assert plan.bound_fnr > plan.heldout_fnr + 0.005


def test_copying_answers_is_not_vouched_for_without_label_changes():
    rng = np.random.default_rng(2)
    h = _rich_heldout(np.ones(500, bool), rng)
    plan = optimize(h, costs({"m": 1e-4}, {"prev": 1e-5}), Targets(0.05, 0.05), skips=[1, 2, 5])
    assert plan.skip > 1 and plan.bound_fpr == plan.bound_fnr == 1.0  # cheapest: copy "yes" forward
    model_only = optimize(h, costs({"m": 1e-4}, {"prev": 1e-5}), Targets(0.05, 0.05), skips=[1], diffs=[])
    assert model_only.skip == 1 and model_only.bound_fnr < 1.0  # one run: weak evidence, but some


def test_cost_slack_prefers_the_better_backed_plan():
    """Two models at about the same cost: without slack the cheaper wins; with it, the one whose
    bounds are closer to the targets (fewer held-out errors)."""
    rng = np.random.default_rng(3)
    truth = runs(4000, rng, 30, 0.4)
    sure = np.where(truth, 0.9, 0.1)
    shaky = np.where(rng.random(len(truth)) < 0.03, 1 - sure, sure)  # wrong on 3% of frames, confidently
    h = heldout(truth, None, {"sure": sure, "shaky": shaky})
    c = costs({"sure": 1.05e-3, "shaky": 1.0e-3})
    targets = Targets(0.05, 0.05)
    assert optimize(h, c, targets, skips=[1]).model == "shaky"
    assert optimize(h, c, targets, skips=[1], cost_slack=0.1).model == "sure"
