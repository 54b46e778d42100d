"""noscope.optimizer with several objects: one cascade for all of them, on synthetic held-out data with known answers."""

import json

import numpy as np
import pytest

from noscope.errors import NoscopeError
from noscope.metrics import evaluate
from noscope.optimizer import optimize as optimize_joint
from noscope.plans import (DEFAULT_SKIPS, REFERENCE, Cascade, Costs, HeldOut, Plan as JointPlan, Targets, expected_cost,
                           pass_decided as joint_decided, stage_fractions)
from noscope.simulate import simulate, simulate_plan as simulate_joint

from .test_optimizer import optimize, random_instance, runs


def objects_of(truths, blocks, models, diffs=None, kinds=None):
    """object -> HeldOut sharing blocks and diff scores; models: name -> {object: scores}."""
    return {k: HeldOut(t, blocks, {m: s[k] for m, s in models.items()}, diffs or {}, kinds or {})
            for k, t in truths.items()}


def check_joint(plan, heldouts, targets, costs):
    """What the plan promises holds when simulated, object by object, and as one pass."""
    sims = simulate_joint(plan, heldouts)
    assert set(sims) == set(heldouts)
    s = plan.shared
    for k, (labels, decided) in sims.items():
        p = plan.plans[k]
        assert (p.skip, p.diff, p.diff_threshold, p.model) == (s.skip, s.diff, s.diff_threshold, s.model)
        h = heldouts[k]
        fpr, fnr = evaluate(labels, h.truth, targets.metric, targets.window, blocks=h.blocks)
        assert fpr <= targets.fpr + 1e-12 and fnr <= targets.fnr + 1e-12, (k, fpr, fnr)
        truth = np.asarray(h.truth, bool)  # issue 13: a rate with no frame of its kind is None, not 0
        assert (fpr if (~truth).any() else None, fnr if truth.any() else None) == (p.heldout_fpr, p.heldout_fnr)
        assert p.fractions == stage_fractions(decided)
    decided = joint_decided([d for _, d in sims.values()])
    assert plan.fractions == stage_fractions(decided)
    assert plan.expected_cost == pytest.approx(expected_cost(s.cascade, costs, plan.fractions))
    assert plan.expected_cost <= costs.decode + costs.convert + costs.reference + 1e-12


def test_one_object_is_a_pass_of_one():
    """K = 1: the pass's cost and stage shares are the object's own, and its promises hold."""
    rng = np.random.default_rng(21)
    for _ in range(25):
        h, c, targets = random_instance(rng)
        plan = optimize_joint({"x": h}, c, targets)
        p = plan.plans["x"]
        assert plan.objects == ["x"] and plan.shared is p
        assert plan.expected_cost == p.expected_cost
        assert plan.fractions == p.fractions
        check_joint(plan, {"x": h}, targets, c)


def test_objects_share_skip_diff_and_model_but_not_thresholds():
    """Alone, the slow object would skip 30 frames and the flickering one would use the model at
    skip 1; one pass must serve both, so both use the model at skip 1, with their own thresholds."""
    rng = np.random.default_rng(22)
    n = 6000
    blocks = np.arange(n) // 1500
    slow = (np.arange(n) // 300) % 2 == 0  # runs aligned to 30 frames inside each block
    flicker = rng.random(n) < 0.4
    # One model, two outputs with different scales: each object needs its own cut.
    models = {"m": {"slow": slow * 0.2 + 0.1, "flicker": flicker * 0.6 + 0.3}}
    h = objects_of({"slow": slow, "flicker": flicker}, blocks, models)
    c = Costs(decode=1e-4, convert=1e-4, diff={}, model={"m": 1e-3}, reference=0.1)
    targets = Targets(0.01, 0.01)
    assert optimize(h["slow"], c, targets).skip == 30
    assert optimize(h["flicker"], c, targets).model == "m"
    plan = optimize_joint(h, c, targets)
    assert plan.shared.skip == 1 and plan.shared.model == "m"
    assert 0.1 < plan.plans["slow"].c_low <= plan.plans["slow"].c_high < 0.3
    assert 0.3 < plan.plans["flicker"].c_low <= plan.plans["flicker"].c_high < 0.9
    assert plan.fractions["reference"] == 0.0 and plan.fractions["model"] == 1.0
    check_joint(plan, h, targets, c)


def test_reference_share_is_the_union_of_undecided_frames():
    """Each object leaves a different half of the frames undecided: every frame is sent."""
    n = 4000
    blocks = np.zeros(n, int)
    a = np.arange(n) % 2 == 0
    b = np.arange(n) % 3 == 0
    # Scores decide one object only on its own half of the frames (the other half sits on 0.5).
    half = np.arange(n) < n // 2
    models = {"m": {"a": np.where(half, a * 1.0, 0.5), "b": np.where(~half, b * 1.0, 0.5)}}
    h = objects_of({"a": a, "b": b}, blocks, models)
    c = Costs(decode=1e-4, convert=1e-4, diff={}, model={"m": 1e-3}, reference=0.01)
    targets = Targets(0.01, 0.01)
    for k in ("a", "b"):  # alone, each object pays for half the frames
        assert optimize(h[k], c, targets).fractions["reference"] == pytest.approx(0.5)
    plan = optimize_joint(h, c, targets)
    # Together the union is every frame: the model no longer pays, the reference does it all.
    assert plan.reference_only and plan.fractions["reference"] == 1.0
    check_joint(plan, h, targets, c)


def test_an_untrusted_output_sends_its_object_to_the_reference():
    rng = np.random.default_rng(23)
    n = 3000
    blocks = np.zeros(n, int)
    a, b = rng.random(n) < 0.4, rng.random(n) < 0.3
    models = {"m": {"a": a * 1.0, "b": b * 1.0}}
    h = objects_of({"a": a, "b": b}, blocks, models)
    c = Costs(decode=1e-4, convert=1e-4, diff={}, model={"m": 1e-3}, reference=0.1)
    targets = Targets(0.01, 0.01)
    trusted = optimize_joint(h, c, targets, models={"a": ["m"], "b": ["m"]})
    assert trusted.fractions["reference"] == 0.0
    # b's output is not trusted (e.g. failed the AUC guard): the reference answers b wherever
    # the model runs, so the model buys nothing and reference-only is as cheap.
    plan = optimize_joint(h, c, targets, models={"a": ["m"], "b": []})
    assert plan.fractions["reference"] == 1.0
    check_joint(plan, h, targets, c)
    assert (plan.plans["b"].c_low, plan.plans["b"].c_high) == (None, None)


def test_random_instances_meet_every_objects_targets():
    rng = np.random.default_rng(24)
    for _ in range(20):
        h1, c, targets = random_instance(rng)
        n = len(h1.truth)
        # A second object on the same frames, its own truth, the same models' second outputs.
        t2 = runs(n, rng, mean_len=int(rng.integers(2, 300)), p_on=rng.uniform(0.05, 0.8))
        m2 = {m: rng.uniform(0, 2) * t2 + rng.normal(0, 0.5, n) for m in h1.model_scores}
        h2 = HeldOut(t2, h1.blocks, m2, h1.diff_scores, h1.diff_kinds)
        h = {"one": h1, "two": h2}
        plan = optimize_joint(h, c, targets)
        check_joint(plan, h, targets, c)
        # One pass can never be cheaper than either object's own best plan.
        alone = max(optimize(x, c, targets).expected_cost for x in h.values())
        assert plan.expected_cost >= alone * (1 - 1e-9)


def test_no_model_free_grid_point_beats_the_joint_search():
    """Pruning must not lose a cheaper shared cascade: brute force through simulate."""
    rng = np.random.default_rng(25)
    for _ in range(8):
        h1, c, targets = random_instance(rng, n=800)
        t2 = runs(800, rng, mean_len=int(rng.integers(2, 300)), p_on=rng.uniform(0.05, 0.8))
        h = {"one": h1, "two": HeldOut(t2, h1.blocks, {m: v[::-1] for m, v in h1.model_scores.items()},
                                       h1.diff_scores, h1.diff_kinds)}
        thresholds = [0.2, 0.5, 1.0, 1.5]
        plan = optimize_joint(h, c, targets, diff_thresholds=thresholds)
        for s in DEFAULT_SKIPS:
            for d in [None, *h1.diff_scores]:
                for t in [None] if d is None else thresholds:
                    sims = [simulate(Cascade(s, d, t), x) for x in h.values()]
                    if all(_meets(lab, x, targets) for (lab, _), x in zip(sims, h.values())):
                        cost = expected_cost(Cascade(s, d, t), c, stage_fractions(joint_decided([d_ for _, d_ in sims])))
                        assert plan.expected_cost <= cost * (1 + 1e-9)


def _meets(labels, h, targets):
    fpr, fnr = evaluate(labels, h.truth, targets.metric, targets.window, blocks=h.blocks)
    return fpr <= targets.fpr and fnr <= targets.fnr


def test_joint_decided_sends_a_frame_to_the_reference_if_any_object_does():
    assert joint_decided([np.array([0, 1, 2, 2]), np.array([0, 1, 2, REFERENCE])]).tolist() == [0, 1, 2, REFERENCE]


def test_joint_plan_round_trips_through_json():
    rng = np.random.default_rng(26)
    n = 600
    a, b = rng.random(n) < 0.3, rng.random(n) < 0.5
    h = objects_of({"a": a, "b": b}, np.zeros(n, int), {"m": {"a": a + rng.normal(0, 0.2, n), "b": b * 1.0}})
    c = Costs(decode=1e-4, convert=1e-4, diff={}, model={"m": 1e-3}, reference=0.1)
    plan = optimize_joint(h, c, Targets(0.05, 0.05))
    again = JointPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict()
    bad = plan.to_dict()
    bad["objects"]["b"]["skip"] = plan.shared.skip + 1
    with pytest.raises(NoscopeError, match="share"):
        JointPlan.from_dict(bad)


def test_objects_on_different_frames_are_refused():
    h = HeldOut(np.zeros(10, bool), np.zeros(10, int), {}, {}, {})
    g = HeldOut(np.zeros(12, bool), np.zeros(12, int), {}, {}, {})
    with pytest.raises(NoscopeError, match="same frames"):
        optimize_joint({"a": h, "b": g}, Costs(1e-3, 1e-3, {}, {}, 0.1), Targets(0.1, 0.1))
