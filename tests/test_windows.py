"""The question per window (noscope.windows) and what a windowed cascade answers on held-out frames
(noscope.window_simulate): pure functions, no video."""

from __future__ import annotations

import numpy as np
import pytest

from noscope.errors import UsageError
from noscope.plans import Cascade, HeldOut
from noscope.simulate import HeldOutArrays
from noscope.window_plans import WindowPlan
from noscope.window_simulate import CHEAP, SAMPLED, simulate_windows
from noscope.windows import Sampling, WindowGrid, decided, need, parse_window, spread_order


def test_window_lengths_parse_and_bad_ones_are_usage_errors():
    assert parse_window("1s").frames_at(29.97) == 30 and parse_window("0.5s").frames_at(25) == 12
    assert parse_window("30f").frames_at(10) == 30 and parse_window("2").frames_at(10) == 20
    assert parse_window("0.01s").frames_at(10) == 1  # never less than a frame
    for bad in ("0s", "-1", "abc", "0f", "1.5f", "", "1 s s", "1e3"):
        with pytest.raises(UsageError):
            parse_window(bad)


def test_a_window_is_decided_as_soon_as_its_share_is_certain():
    assert int(need(30, 0.5)) == 15 and int(need(30, 28 / 30)) == 28 and int(need(1, 0.5)) == 1
    assert decided(15, 0, 30, 0.5) is True and decided(0, 16, 30, 0.5) is False and decided(14, 15, 30, 0.5) is None
    assert decided(0, 3, 30, 28 / 30) is False  # three negatives leave at most 27 positive
    np.testing.assert_array_equal(decided(np.array([1, 0, 0]), np.array([0, 1, 0]), 1, 0.5), [1, 0, -1])


def test_windows_count_from_the_segment_start_and_the_last_is_shorter():
    g = WindowGrid(5, 70, 30)
    assert g.first.tolist() == [5, 35, 65] and g.last.tolist() == [34, 64, 69] and g.lengths.tolist() == [30, 30, 5]
    truth = np.zeros(65, bool)
    truth[60:63] = True  # 3 of the last window's 5 frames
    truth[5:19] = True  # 14 of the first window's 30: not half
    assert g.truth(truth).tolist() == [False, False, True]
    longer = WindowGrid(0, 12, 30)  # a window longer than the segment: one window, the segment
    assert longer.count == 1 and longer.lengths.tolist() == [12]


def test_the_spread_order_visits_every_frame_and_its_prefixes_spread():
    for n in (1, 2, 3, 10, 25, 30, 31):
        order = spread_order(n)
        assert sorted(order.tolist()) == list(range(n))
    first = spread_order(30)[:4]
    assert first[0] == 15 and max(np.diff(np.sort(np.r_[0, first, 30]))) <= 8


def test_sampling_stops_at_a_lead_and_is_exact_when_certain():
    ones = np.ones(30, bool)
    assert Sampling(3, 30).run(ones, 0.5) == (True, 3, False)
    assert Sampling(0, 30).run(ones, 0.5) == (True, 15, True)  # certain after 15 of 30
    alternating = np.array([True, False] * 15)
    answer, calls, exact = Sampling(3, 8).run(alternating, 0.5)
    assert calls == 8 and not exact and answer  # 4 of 8: half counts as yes
    with pytest.raises(UsageError):
        Sampling(-1, 3)


def arrays_of(truth, scores=None, blocks=None) -> HeldOutArrays:
    n = len(truth)
    blocks = np.zeros(n, np.int64) if blocks is None else blocks
    return HeldOutArrays(HeldOut(truth=np.asarray(truth, bool), blocks=blocks,
                                 model_scores={} if scores is None else {"m": scores}, diff_scores={}, diff_kinds={}))


def test_exact_sampling_answers_every_window_as_the_reference_does():
    rng = np.random.default_rng(3)
    truth = rng.random(330) < 0.5
    arrays = arrays_of(truth, blocks=np.repeat([0, 1], [200, 130]))
    out = simulate_windows(WindowPlan(Cascade(1), Sampling(0, 30), 30, 0.5), arrays)
    assert len(out.labels) == 7 + 5  # windows restart at the block: 200 = 6 x 30 + 20, 130 = 4 x 30 + 10
    assert (out.labels == out.truth).all() and out.exact.all() and (out.stage == SAMPLED).all()
    assert (out.calls <= 30).all() and out.calls.sum() < 330


def test_a_sure_model_settles_windows_without_the_reference():
    """The window's score is its processed frames' mean model score; past the window thresholds the
    cheap stages answer it, between them the reference samples it."""
    truth = np.repeat([False, True, False], [60, 60, 60])
    scores = np.where(truth, 0.9, 0.1)
    arrays = arrays_of(truth, scores)
    sure = WindowPlan(Cascade(5, model="m"), Sampling(3, 8), 30, 0.5, w_low=0.3, w_high=0.7)
    out = simulate_windows(sure, arrays)
    assert (out.stage == CHEAP).all() and out.calls.sum() == 0 and (out.labels == out.truth).all()
    assert out.processed == 36 and out.reached == 36 and np.allclose(out.score, [0.1, 0.1, 0.9, 0.9, 0.1, 0.1])
    unsure = simulate_windows(WindowPlan(Cascade(5, model="m"), Sampling(1, 1), 30, 0.5, w_low=0.05, w_high=0.95), arrays)
    assert (unsure.stage == SAMPLED).all() and unsure.calls.sum() == 6
    no_yes = simulate_windows(WindowPlan(Cascade(5, model="m"), Sampling(1, 1), 30, 0.5, (False,), 0.3, 0.7), arrays)
    assert (no_yes.stage[out.truth] == SAMPLED).all() and (no_yes.stage[~out.truth] == CHEAP).all()


def test_the_window_optimizer_fits_thresholds_on_window_scores():
    """A model whose frames' scores hover (0.8 on the object's frames, the reference saying yes on 4
    in 5 of them): per frame it settles nothing, per window its mean score settles every window."""
    from types import SimpleNamespace

    from noscope.plans import Costs, Targets
    from noscope.window_optimizer import optimize_windows
    from noscope.windows import WindowQuestion

    rng = np.random.default_rng(0)
    there = np.repeat(np.tile([False, True], 6), 100)
    truth = there & (rng.random(len(there)) < 0.8)
    scores = np.where(there, 0.8, 0.05) + rng.normal(0, 0.05, len(there))
    heldout = HeldOut(truth=truth, blocks=np.zeros(len(truth), np.int64), model_scores={"m": scores}, diff_scores={},
                      diff_kinds={})
    costs = Costs(decode=3e-4, convert=5e-5, diff={}, model={"m": 1e-3}, reference=3e-2)
    search = SimpleNamespace(skips=[1, 2, 5], min_saving=0.2, confidence=0.95, cost_slack=0.1)
    plan = optimize_windows({"x": heldout}, costs, Targets(0.05, 0.05), WindowQuestion(10, 0.5), search).shared
    assert plan.plan.frame.model == "m" and plan.fractions["cheap"] > 0.95
    assert 0.05 < plan.plan.w_low <= plan.plan.w_high < 0.8


class WindowChecked:
    """A windowed query's run as the check sees it (noscope.check.Run): windows are the units, a
    drawn window's answer comes from `truth` (the reference on it until its answer is certain), and
    nothing is repaired (the check's bounds are what is simulated)."""

    min_score = 0.5

    def __init__(self, truth: np.ndarray, order):
        self.truth, self.order = truth, order
        self.drawn: set[int] = set()

    def ask_reference(self, windows):
        self.drawn |= {int(w) for w in windows}
        return {int(w): {"x": float(self.truth[w])} for w in windows}

    def answer_again(self, plan):
        raise AssertionError("nothing is repaired here")

    def repair(self, plans, evidence, targets, skips):
        return plans, []

    def refit(self, model, seen):
        return None

    def timed(self, part):
        import contextlib

        return contextlib.nullcontext()


def simulated_night(rng, windows: int = 1800):
    """Per-frame answers of a hovering reference cut into 1 s windows (30 frames, "yes" at half): a
    window's truth, and a cheap answer that is wrong on some windows, more often where the window's
    share of positive frames is near half."""
    share = np.clip(rng.beta(0.6, 0.6, windows) + rng.normal(0, 0.05, windows), 0, 1)
    frames = rng.random((windows, 30)) < share[:, None]
    truth = frames.sum(axis=1) >= 15
    near = np.abs(frames.mean(axis=1) - 0.5) < 0.15
    wrong = rng.random(windows) < np.where(near, rng.uniform(0.05, 0.4), rng.uniform(0.0, 0.04))
    return truth, truth ^ wrong


def final_rates(truth, said, drawn: set):
    """The true window FPR / FNR of the final answers (a drawn window takes its own answer)."""
    final = said.copy()
    idx = np.fromiter(drawn, np.int64, len(drawn)) if drawn else np.zeros(0, np.int64)
    final[idx] = truth[idx]
    return np.mean(final[~truth]), np.mean(~final[truth])


def test_the_windowed_check_bounds_cover_the_true_window_rates():
    """Over simulated nights of windows, the check's upper bounds on the final answers' window FPR and
    FNR hold together in at least 95% of nights (they are exact: hypergeometric, windows drawn
    uniformly within the cheap answers' strata); a bound with no margin (the estimate) does not."""
    from noscope.check import check_and_repair
    from noscope.check_stats import DrawOrder
    from noscope.plans import Targets
    from noscope.settings import CheckSettings
    from noscope.window_answer import WindowResult
    from noscope.window_plans import WindowedPlan, WindowObjectPlan, WindowPlan

    rng = np.random.default_rng(7)
    plan = WindowPlan(Cascade(1), Sampling(3, 8), 30, 0.5)
    windowed = WindowedPlan({"x": WindowObjectPlan(plan, 0.0, 0.0, 0.0)}, 0.0, {})
    covered = naive = 0
    nights = 300
    for _ in range(nights):
        truth, said = simulated_night(rng)
        n = len(truth)
        result = WindowResult(np.arange(n), said, np.full(n, "cheap"), {}, np.zeros(n, np.int64), np.full(n, 0.5))
        run = WindowChecked(truth, DrawOrder(0, n, rng))
        _, reports = check_and_repair(run, {"x": result}, windowed, Targets(0.5, 0.5),
                                      CheckSettings(per_stratum=50, rounds=1, confidence=0.95))
        r = reports["x"]
        fpr, fnr = final_rates(truth, said, run.drawn)
        covered += fpr <= r["fpr"]["high"] + 1e-12 and fnr <= r["fnr"]["high"] + 1e-12
        naive += fpr <= r["fpr"]["estimate"] + 1e-12 and fnr <= r["fnr"]["estimate"] + 1e-12
    assert covered >= 0.95 * nights, covered
    assert naive < 0.8 * nights, naive  # the same check without its margin would fail


def test_a_sampling_repair_jumps_to_what_the_known_windows_show_is_enough():
    """Hovering windows (30% and 70% positive frames): one or two frames a window err often; the repair
    replays every sampling on the windows whose exact answer is known and takes the cheapest that
    answers them within half the targets, however many steps of the ladder that is."""
    from noscope.plans import Targets
    from noscope.window_repair import Replay, more_sampling, replay_one

    rng = np.random.default_rng(3)
    size, grid = 25, WindowGrid(0, 25 * 200, 25)
    share = rng.choice([0.05, 0.3, 0.7, 0.95], size=grid.count)
    frames = rng.random(grid.frames) < np.repeat(share, size)
    truth = grid.truth(frames)
    exact = Sampling(0, size)
    seen = {}
    for w in range(grid.count):  # what the check's exact truth asks: spread order until certain
        ans = frames[grid.spread(w)]
        _, calls, _ = exact.run(ans, 0.5)
        seen[w] = (size, *ans[:calls].tolist())
    replay = Replay({w: bool(truth[w]) for w in range(grid.count)}, seen.__getitem__, 0.5)
    assert replay(exact).fp == replay(exact).fn == 0  # the truth replays itself
    assert replay_one(Sampling(0, size), (size, True, False), 0.5) is None  # not known far enough
    plan = WindowPlan(Cascade(1), Sampling(1, 1), size, 0.5)
    targets = Targets(0.05, 0.05)
    assert not replay(plan.sampling).within(targets, 0.5)
    new, said = more_sampling(plan, 7, replay, targets)
    chosen = new.sampling
    assert replay(chosen).within(targets, 0.5) and "wrong windows" in said
    # the cheapest such: every sampling replayed cheaper misses
    from noscope.window_repair import candidates
    cheaper = [s for s in candidates(size) if replay(s).calls < replay(chosen).calls]
    assert all(not replay(s).within(targets, 0.5) for s in cheaper) and len(cheaper) >= 3
    # on the windows themselves the chosen sampling is within the targets, and far cheaper than every frame
    wrong = [a != t for w, t in enumerate(truth) for a in [chosen.run(frames[grid.spread(w)], 0.5)[0]]]
    assert np.mean(wrong) <= 0.05 and replay(chosen).calls < 0.7 * replay(exact).calls
    # nothing seen wrong and the sampling already good enough: unchanged
    same, said = more_sampling(new, 0, replay, targets)
    assert same is new and said is None


def test_a_cheap_answer_left_settling_few_windows_is_given_up():
    """Wrong "yes" windows scoring near the top: moving w_high past them would leave the cheap stages
    settling a handful of windows, so the repair stops them answering "yes" at all."""
    from types import SimpleNamespace

    from noscope.window_repair import past_wrong

    score = np.linspace(0.5, 1.0, 100)
    result = SimpleNamespace(frames=np.arange(100), labels=np.ones(100, bool), decided_by=np.array(["cheap"] * 100),
                             score=score, reference_scores={90: 0.0, 10: 1.0})
    plan = WindowPlan(Cascade(1), Sampling(3, 8), 25, 0.5, w_low=0.2, w_high=0.4)
    new, said = past_wrong(plan, result, True)
    assert new.settles == (False,) and "no longer answer" in said and "9 of 100" in said
    result.reference_scores = {30: 0.0}
    new, said = past_wrong(plan, result, True)  # past window 30 it still settles 69: the threshold moves
    assert new.settles == (False, True) and new.w_high == pytest.approx(score[30]) and "w_high" in said
