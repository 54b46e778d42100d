"""Cost-based cascade search: pick the cheapest cascade that still answers like the reference.

    plan = optimize({"car": heldout_car, "bus": heldout_bus}, costs, Targets(0.01, 0.01))
    plan.plans["car"].c_low, plan.shared.skip, plan.expected_cost      # noscope.plans.Plan

The words (Targets, Costs, HeldOut, Cascade, Plan) are in noscope.plans, what a cascade outputs on
held-out frames in noscope.simulate; this module is the search over them, for one object or for
several answered from one pass (one object is K = 1).

Cost model (seconds per frame, `Costs`, `plans.expected_cost`): every frame is decoded; processed
frames pay colour conversion + resize and the difference detector; frames that reach the model pay
the model; frames that reach the reference pay the reference.

Search (`optimize`): a grid over skip x (no diff | each diff x thresholds) x (no model | each
model), shared by every object. For each grid point each object's model thresholds are set by the
rule explained in `model_thresholds` (NoScope's: pick c_low for the FNR target and c_high for the
FPR target separately); the point's cost counts the union of the objects' undecided frames as
reference calls. Of all grid points where every object meets its targets on the held-out frames
the cheapest wins, ties going to the one with fewer reference calls (with `cost_slack`, the
best-backed among the nearly cheapest). Calling the reference on every frame meets any target (its
labels *are* the truth) and is the fallback. The rule is sound (the plan meets every object's
targets on the held-out frames) but not exhaustive: per-object thresholds are not traded against
each other to shrink the union.

Accuracy is measured as `Targets` says (noscope.metrics): per frame, or per window of frames,
windows restarting at every block.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .bounds import rate_upper
from .errors import NoscopeError, UsageError
from .metrics import Windowing, evaluate, rates
from .plans import (DEFAULT_SKIPS, REFERENCE, Cascade, Costs, HeldOut, ObjectPlan, Plan, Targets, cost_of,
                    expected_cost, pass_decided, stage_fractions)
from .simulate import HeldOutArrays, Layout, assemble, layout_of, simulate_arrays

# Difference-detector thresholds tried when none are given: these quantiles of the detector's
# scores on the frames it would see. Denser at the top, where "ref" detectors on mostly-empty
# video have their useful thresholds.
DEFAULT_DIFF_QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

# Two costs closer than this (relative) are a tie, broken by reference calls.
_COST_RTOL = 1e-9


# --------------------------------------------------------------------------------------------
# Error counting inside the search (must agree with simulate + metrics.evaluate; tests check it)


class FrameErrors:
    """Frame-metric (FPR, FNR) from the labels of the frames that reach model/reference.

    Every frame copies its source's label, so the errors are sums over sources of how many
    positive / negative frames each one labels: O(#sources) per evaluation instead of O(N).
    """

    def __init__(self, arrays: HeldOutArrays, layout: Layout):
        truth = arrays.truth
        covered = np.bincount(layout.src, minlength=arrays.n)
        pos = np.bincount(layout.src, weights=truth, minlength=arrays.n)
        self.pos_r = pos[layout.reach]
        self.neg_r = covered[layout.reach] - self.pos_r
        # Positives copied from a "ref" detector's unchanged frames (labelled no): always missed.
        self.fn_fixed = float(truth.sum() - self.pos_r.sum())
        self.n_pos = float(truth.sum())
        self.n_neg = float(arrays.n - self.n_pos)

    def _rates(self, fp, fn):
        return (fp / self.n_neg if self.n_neg else 0.0 * fp), (fn / self.n_pos if self.n_pos else 0.0 * fn)

    def __call__(self, reach_labels: np.ndarray) -> tuple[float, float]:
        fp = float(np.sum(self.neg_r[reach_labels]))
        fn = self.fn_fixed + float(np.sum(self.pos_r[~reach_labels]))
        return self._rates(fp, fn)

    def curves(self, rank: np.ndarray, k: int, truth_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both threshold searches of `model_thresholds` at once, for j = 0..k.

        fnr[j]: the frames with the j lowest distinct scores say no, the rest go to the reference.
        fpr[j]: the frames above the j lowest distinct scores say yes, the rest go to the reference.
        The counts are sums of whole numbers, so they are exact and match `metrics.rates`.
        """
        # All to the reference: positives copied from a truly-negative source are missed, ...
        fn_all_ref = self.fn_fixed + float(np.sum(self.pos_r[~truth_r]))
        # ... and negatives copied from a truly-positive source are false alarms.
        fp_all_ref = float(np.sum(self.neg_r[truth_r]))
        # Saying no at a truly-positive source adds the positives it labels to FN; saying yes at a
        # truly-negative one adds the negatives it labels to FP. Summed per distinct score.
        new_fn = np.bincount(rank, weights=np.where(truth_r, self.pos_r, 0.0), minlength=k)
        new_fp = np.bincount(rank, weights=np.where(truth_r, 0.0, self.neg_r), minlength=k)
        fn = fn_all_ref + np.r_[0.0, np.cumsum(new_fn)]
        fp = fp_all_ref + np.r_[np.cumsum(new_fp[::-1])[::-1], 0.0]
        return self._rates(fp, fn)


class WindowErrors:
    """Window-metric (FPR, FNR): assemble the frame labels and window them (O(N))."""

    def __init__(self, arrays: HeldOutArrays, layout: Layout, windowing: Windowing, truth_windows: np.ndarray):
        self.arrays, self.layout, self.windowing, self.truth_windows = arrays, layout, windowing, truth_windows

    def __call__(self, reach_labels: np.ndarray) -> tuple[float, float]:
        labels = assemble(self.arrays, self.layout, reach_labels)
        return rates(self.windowing.labels(labels), self.truth_windows)


def model_thresholds(errors, truth_r: np.ndarray, p: np.ndarray, targets: Targets):
    """Choose (c_low, c_high, n_reference) for one model on one layout, or None if infeasible.

    Why two independent searches are enough: order each frame's possible labels no < truth < yes.
    Raising any frame's label can only remove false negatives and add false positives; copying
    labels forward preserves this (a frame's label is its source's), and so does windowing
    (window labels are monotone in frame labels, see noscope.metrics). Hence
      * FNR(c_low, c_high=+inf) grows with c_low (more frames pushed down to no): search for
        the largest c_low* meeting the FNR target;
      * FPR(c_low=-inf, c_high) shrinks as c_high grows (fewer frames pushed up to yes): search
        for the smallest c_high* meeting the FPR target.
    (Binary search on simulated errors; for the frame metric the errors are additive over
    frames, so `FrameErrors.curves` gives every candidate at once.)
    If c_low* <= c_high*, using both at once only moves labels the helpful way for each target
    compared with its own search (lowering c_high from +inf moves frames up to yes: FN can only
    drop; raising c_low from -inf moves frames down to no: FP can only drop), so both targets
    still hold. If c_low* > c_high*, any single threshold c in between has FN(c, c) <= FN(c, inf)
    <= FN(c_low*, inf) and FP(c, c) <= FP(-inf, c) <= FP(-inf, c_high*): both hold, and no frame
    needs the reference. The search is sound (whatever it returns meets the targets) but not
    exhaustive: a pair meeting both targets only jointly is not looked for (NoScope's rule too).

    Candidate thresholds lie between consecutive distinct scores (t_0 = -inf, t_j = midpoint of
    scores j-1 and j, t_k = +inf), so "p < t_j" is exactly "p is one of the j lowest scores" and a
    held-out score never sits on a threshold. None when even t_0 (FNR) or t_k (FPR), i.e. the
    reference on every frame that reaches the model, misses its target.
    """
    uniq, rank = np.unique(p, return_inverse=True)
    k = len(uniq)
    cuts = np.r_[-np.inf, (uniq[:-1] + uniq[1:]) / 2, np.inf]

    def fnr_ok(j):  # frames among the j lowest scores -> no, the rest -> reference
        return errors(np.where(rank < j, False, truth_r))[1] <= targets.fnr

    def fpr_ok(j):  # frames above the j lowest scores -> yes, the rest -> reference
        return errors(np.where(rank >= j, True, truth_r))[0] <= targets.fpr

    if isinstance(errors, FrameErrors):
        # Frame errors are sums over sources: get every j at once. Monotone curves, so the
        # feasible j form a prefix (FNR) and a suffix (FPR).
        fpr, fnr = errors.curves(rank, k, truth_r)
        j_low = int(np.count_nonzero(fnr <= targets.fnr)) - 1
        j_high = k + 1 - int(np.count_nonzero(fpr <= targets.fpr))
    else:
        if not (fnr_ok(0) and fpr_ok(k)):
            return None
        lo, hi = 0, k  # largest j with fnr_ok: fnr_ok(0) holds
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fnr_ok(mid) else (lo, mid - 1)
        j_low = lo
        lo, hi = 0, k  # smallest j with fpr_ok: fpr_ok(k) holds
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fpr_ok(mid) else (mid + 1, hi)
        j_high = lo
    if j_low < 0 or j_high > k:
        return None  # even sending every frame to the reference misses a target
    if j_low >= j_high:
        j = (j_low + j_high) // 2  # thresholds crossed: one cut in the middle of the feasible range
        return float(cuts[j]), float(cuts[j]), 0
    n_reference = int(np.count_nonzero((rank >= j_low) & (rank < j_high)))
    return float(cuts[j_low]), float(cuts[j_high]), n_reference



# --------------------------------------------------------------------------------------------
# Evidence: upper bounds on a plan's held-out error rates


class Evidence:
    """Upper confidence bounds on held-out FPR and FNR, counting evidence honestly (noscope.bounds).

    The effective sample size of FNR is the number of positive runs (stretches of consecutive
    positive frames), of FPR the number of negative runs; the observed rate is applied to it. FPR
    and FNR get alpha/2 each, so both bounds hold together at `confidence`. A plan whose every frame
    is the reference's own answer cannot err (bounds 0). A plan that copies answers (frame skip or a
    difference detector) on held-out frames whose labels never change has seen nothing it could
    get wrong: no evidence (bounds 1)."""

    def __init__(self, arrays: HeldOutArrays, confidence: float):
        if not 0.0 < float(confidence) < 1.0:
            raise UsageError(f"optimizer.confidence must be between 0 and 1, got {confidence}")
        self.confidence = float(confidence)
        self.alpha = (1.0 - self.confidence) / 2
        self.pos_runs, self.neg_runs, self.changes = arrays.runs

    def bounds(self, cascade: Cascade, decided: np.ndarray, fpr: float, fnr: float) -> tuple[float, float]:
        if np.all(decided == REFERENCE):
            return 0.0, 0.0
        if (cascade.skip > 1 or cascade.diff is not None) and self.changes == 0:
            return 1.0, 1.0
        return (rate_upper(fpr * self.neg_runs, self.neg_runs, self.alpha),
                rate_upper(fnr * self.pos_runs, self.pos_runs, self.alpha))

    def strict_targets(self, targets: Targets) -> Targets | None:
        """Point targets whose every feasible plan has bounds within `targets` (the bound grows with
        the observed rate, so this is a plain search at lower rates); None when no plan that can err
        could be certified by these held-out frames, not even one with no error at all."""
        fpr = largest_rate(targets.fpr, self.neg_runs, self.alpha)
        fnr = largest_rate(targets.fnr, self.pos_runs, self.alpha)
        if fpr is None or fnr is None:
            return None
        return Targets(fpr, fnr, targets.metric, targets.window, targets.window_min_fraction)

    def ratio(self, arrays: HeldOutArrays, cascade: Cascade, targets: Targets) -> float:
        """How far the plan's bounds are from its targets (<= 1: certified); smaller is better backed."""
        labels, decided = simulate_arrays(arrays, cascade)
        fpr, fnr = evaluate(labels, arrays.truth, targets.metric, targets.window, targets.window_min_fraction, arrays.blocks)
        b_fpr, b_fnr = self.bounds(cascade, decided, fpr, fnr)
        return max(b_fpr / targets.fpr, b_fnr / targets.fnr)


def largest_rate(target: float, runs: int, alpha: float) -> float | None:
    if rate_upper(0.0, runs, alpha) > target:
        return None
    lo, hi = 0.0, float(target)
    for _ in range(40):  # bisection: rate_upper(r * runs, runs) grows with r
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate_upper(mid * runs, runs, alpha) <= target else (lo, mid)
    return max(lo, 1e-12)  # Targets wants a positive rate; this one admits no error at all


# --------------------------------------------------------------------------------------------
# The search


def _default_diff_thresholds(arrays: HeldOutArrays, scores: np.ndarray, skip: int) -> np.ndarray:
    seen = scores[(arrays.pos % skip == 0) & np.isfinite(scores)]  # scores the detector would see
    if seen.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(seen, DEFAULT_DIFF_QUANTILES))


def _thresholds_for(diff_thresholds, name: str) -> np.ndarray | None:
    if diff_thresholds is None:
        return None
    if isinstance(diff_thresholds, Mapping):
        if name not in diff_thresholds:
            return None
        return np.asarray(diff_thresholds[name], dtype=np.float64).ravel()
    return np.asarray(diff_thresholds, dtype=np.float64).ravel()



def optimize(heldouts: Mapping[str, HeldOut], costs: Costs, targets: Targets | Mapping[str, Targets],
             skips: Sequence[int] = DEFAULT_SKIPS, diff_thresholds=None,
             models: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
             diffs: Sequence[str] | None = None, min_saving: float = 0.0, confidence: float = 0.95,
             strict: bool = False, cost_slack: float = 0.0) -> Plan:
    """The cheapest one-pass cascade meeting every object's targets on the held-out frames
    (reference-only if none does, or none costs at most 1 - `min_saving` of the reference alone).

    heldouts: object -> HeldOut; all share the same frames (blocks) and difference-detector scores
    (those of the first are used), each has its own truth and model scores (the model's output for
    that object). targets: one for all, or one per object. models: the names offered (default:
    all with held-out scores), or per object the names whose output for that object may be used (a
    model not usable for an object may still be chosen for the others, and that object then sends
    every frame reaching the model to the reference). diff_thresholds: None (DEFAULT_DIFF_QUANTILES
    of each detector's scores at each skip), one sequence for all detectors, or a mapping detector
    name -> sequence. diffs: restrict the detectors tried. A "prev" detector is only tried at the
    skips it has scores for.

    Every object's plan also gets upper bounds on its FPR and FNR at `confidence` (see Evidence).
    strict: only plans whose bounds meet the targets. Otherwise the point estimates must meet
    them, and among the plans costing at most (1 + cost_slack) times the cheapest, the one whose
    worst-backed object's bounds are closest to its targets wins (the query checks the choice on
    the queried video).
    """
    names, tg, arrays = _checked(heldouts, targets)
    first = arrays[names[0]]
    allowed, offered = _offered(heldouts, models)
    model_cost = {m: cost_of(costs.model, m, "specialized model") for m in offered}
    for k in names:
        for m in allowed[k]:
            arrays[k].model_scores(m)  # fail early on missing/bad scores
    evidence = {k: Evidence(arrays[k], confidence) for k in names}
    search = {k: evidence[k].strict_targets(tg[k]) if strict else tg[k] for k in names}
    fallback = {k: Cascade(1) for k in names}
    if any(t is None for t in search.values()):
        return make_plan(arrays, fallback, costs, tg, evidence)
    if strict and any(e.changes == 0 for e in evidence.values()):
        skips, diffs = (1,), []  # nothing shows what copying an answer forward would miss
    configs = search_configs(first, costs, skips, diff_thresholds, diffs)
    # The fallback: the reference on every frame. Its labels are the truth, so it meets any target.
    offers = Offers(fallback, costs.decode + costs.convert + costs.reference, 1.0, min_saving, cost_slack)
    layouts = {k: LayoutCache(arrays[k], configs, search[k]) for k in names}
    for lower_bound, i, m in search_candidates(configs, costs, model_cost):
        if offers.beyond(lower_bound):
            break  # sorted by lower bound: nothing after this can be cheaper
        found = _offer_for(arrays, layouts, configs[i], i, m, search, allowed)
        if found is None:
            continue
        cascades, n_reach, n_ref = found
        base = configs[i][2]
        ref_share = n_ref / first.n
        if m is None:
            cost = base + ref_share * costs.reference
        else:
            cost = base + n_reach / first.n * model_cost[m] + ref_share * costs.reference
        offers.offer(cascades, cost, ref_share)
    chosen = offers.choose(lambda cs: max(evidence[k].ratio(arrays[k], cs[k], tg[k]) for k in names))
    return make_plan(arrays, chosen, costs, tg, evidence)


def _offer_for(arrays, layouts, grid_point, i: int, m: str | None, search, allowed):
    """Every object's cascade on one grid point -> (cascades, frames reaching the model, frames
    sent to the reference by any object), or None when some object cannot meet its targets."""
    names = list(arrays)
    (s, d, t), _, _ = grid_point
    lay = layouts[names[0]].get(i)[0]
    per = {k: layouts[k].get(i, lay) for k in names}
    if not all(feasible for _, _, feasible in per.values()):
        return None
    reach = lay.reach
    if m is None:
        return {k: Cascade(s, d, t) for k in names}, 0, len(reach)
    undecided = np.zeros(len(reach), bool)
    cascades = {}
    for k, arr in arrays.items():
        if m not in allowed[k]:
            undecided[:] = True  # this object asks the reference wherever the model runs
            cascades[k] = Cascade(s, d, t, m, None, None)
            continue
        p = arr.model_scores(m)[reach]
        found = model_thresholds(per[k][1], arr.truth[reach], p, search[k])
        if found is None:
            return None
        c_low, c_high = found[:2]
        undecided |= (p >= c_low) & (p <= c_high)
        cascades[k] = Cascade(s, d, t, m, c_low, c_high)
    return cascades, len(reach), int(np.count_nonzero(undecided))


def _checked(heldouts: Mapping[str, HeldOut], targets) -> tuple[list[str], dict[str, Targets], dict[str, HeldOutArrays]]:
    """(objects, each object's targets, each object's checked held-out arrays): one pass needs the same frames."""
    if not heldouts or not isinstance(heldouts, Mapping):
        raise NoscopeError("optimize needs the held-out frames of at least one object (object -> HeldOut)")
    names = list(heldouts)
    tg = {k: (targets[k] if isinstance(targets, Mapping) else targets) for k in names}
    for t in tg.values():
        t.validate()
    arrays = {k: HeldOutArrays(h) for k, h in heldouts.items()}
    for k in names[1:]:
        if arrays[k].n != arrays[names[0]].n or not np.array_equal(arrays[k].blocks, arrays[names[0]].blocks):
            raise NoscopeError(f"held-out frames of {k!r} and {names[0]!r} differ: one pass needs the same frames")
    return names, tg, arrays


def _offered(heldouts: Mapping[str, HeldOut], models) -> tuple[dict[str, set[str]], list[str]]:
    """(object -> models whose output may be used for it, every model offered in search order)."""
    names = list(heldouts)
    if models is None or not isinstance(models, Mapping):
        offered = list(heldouts[names[0]].model_scores) if models is None else list(models)
        return {k: set(offered) for k in names}, offered
    allowed = {k: set(models.get(k, ())) for k in names}
    offered = [m for m in heldouts[names[0]].model_scores if any(m in a for a in allowed.values())]
    offered += sorted({m for a in allowed.values() for m in a} - set(offered))
    return allowed, offered




def search_configs(arrays: HeldOutArrays, costs: Costs, skips: Sequence[int], diff_thresholds, diffs: Sequence[str] | None) -> list:
    """Every (skip, diff, threshold) with a cheap lower bound on the cost of any cascade built on
    it: decode + processed * (convert + diff) + reaching * (model, or reference without one).

    Returns [((skip, diff, threshold), share of frames reaching model/reference, base cost)].
    """
    heldout = arrays.heldout
    for s in skips:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise UsageError(f"frame skips must be positive integers, got {s!r}")
    skips = sorted({int(s) for s in skips} | {1})  # skip 1 always: the reference-only fallback lives there
    diff_names = list(heldout.diff_scores) if diffs is None else list(diffs)
    diff_cost = {d: cost_of(costs.diff, d, "difference detector") for d in diff_names}
    configs = []
    for s in skips:
        processed = float(np.mean(arrays.pos % s == 0))
        configs.append(((s, None, None), processed, costs.decode + processed * costs.convert))
        for d in diff_names:
            scores = arrays.diff_scores(d, s)
            if scores is None:
                continue
            given = _thresholds_for(diff_thresholds, d)
            candidates = _default_diff_thresholds(arrays, scores, s) if given is None else given
            # Frames the detector could call unchanged (a "prev" detector never does at a block start).
            eligible = arrays.pos % s == 0
            if heldout.diff_kinds[d] == "prev":
                eligible &= arrays.pos != 0
            base = costs.decode + processed * (costs.convert + diff_cost[d])
            for t in candidates:
                with np.errstate(invalid="ignore"):
                    reach = processed - np.count_nonzero(eligible & (scores < t)) / arrays.n
                configs.append(((s, d, float(t)), reach, base))
    return configs


def search_candidates(configs: list, costs: Costs, model_cost: Mapping[str, float]) -> list:
    """(lower bound on cost, config index, model or None), cheapest bound first."""
    candidates = []
    for i, (_, reach, base) in enumerate(configs):
        candidates.append((base + reach * costs.reference, i, None))  # exact cost without a model
        for m in model_cost:
            candidates.append((base + reach * model_cost[m], i, m))
    candidates.sort(key=lambda c: (c[0], c[1], c[2] or ""))
    return candidates


class Offers:
    """The cascades offered so far, and the one to choose; the reference on every frame is the
    fallback. A cascade must cost at most (1 - min_saving) of the reference alone to replace it:
    a predicted saving of a few percent is within what the held-out estimate misses by on new
    footage, and then the cheap stages are pure overhead. Without `slack` the cheapest wins (equal
    costs: fewer reference calls); with it, the best-backed plan (`evidence`, smaller is better)
    among those costing at most (1 + slack) times the cheapest."""

    def __init__(self, cascade, cost: float, ref_share: float, min_saving: float = 0.0, slack: float = 0.0):
        if not 0.0 <= min_saving < 1.0:
            raise UsageError(f"optimizer.min_saving must be in [0, 1), not {min_saving}")
        if not 0.0 <= slack:
            raise UsageError(f"optimizer.cost_slack must be >= 0, not {slack}")
        self.fallback, self.slack = cascade, float(slack)
        self.limit = (1.0 - min_saving) * cost  # the most a cascade may cost
        self.offers: list[tuple[float, float, object]] = []  # (cost, reference share, cascade)
        self.cheapest = math.inf

    def _ceiling(self) -> float:
        return min(self.cheapest * (1 + self.slack), self.limit) if self.offers else self.limit

    def beyond(self, lower_bound: float) -> bool:
        bound = self._ceiling()
        return lower_bound > bound + _COST_RTOL * bound

    def offer(self, cascade, cost: float, ref_share: float) -> None:
        if cost > self.limit * (1 + _COST_RTOL):
            return
        self.offers.append((cost, ref_share, cascade))
        self.cheapest = min(self.cheapest, cost)

    def choose(self, evidence=None):
        if not self.offers:
            return self.fallback
        tol = _COST_RTOL * max(abs(self.cheapest), 1e-12)
        if self.slack == 0 or evidence is None:
            ties = [o for o in self.offers if o[0] <= self.cheapest + tol]
            return min(ties, key=lambda o: o[1])[2]
        pool = sorted((o for o in self.offers if o[0] <= self.cheapest * (1 + self.slack) + tol), key=lambda o: o[:2])
        return min(pool, key=lambda o: (evidence(o[2]), o[0], o[1]))[2]


class LayoutCache:
    """Per config index: (layout, error counter, does the model-free cascade meet the targets?).

    Computed on first use and kept. `layout` may be passed in when another object's LayoutCache
    already built it (the layout does not depend on the truth, only on blocks and diff scores).
    """

    def __init__(self, arrays: HeldOutArrays, configs: list, targets: Targets):
        self.arrays, self.configs, self.targets = arrays, configs, targets
        self.windowing, self.truth_windows = None, None
        if targets.metric == "windows":
            self.windowing = Windowing(arrays.n, targets.window, targets.window_min_fraction, arrays.blocks)
            self.truth_windows = self.windowing.labels(arrays.truth)
        self._cache: dict[int, tuple] = {}

    def get(self, i: int, layout: Layout | None = None) -> tuple:
        if i not in self._cache:
            arrays = self.arrays
            if layout is None:
                (s, d, t), _, _ = self.configs[i]
                scores = None if d is None else arrays.diff_scores(d, s)
                layout = layout_of(arrays, s, scores, None if d is None else arrays.heldout.diff_kinds[d], t)
            if self.windowing is None:
                errors = FrameErrors(arrays, layout)
            else:
                errors = WindowErrors(arrays, layout, self.windowing, self.truth_windows)
            fpr, fnr = errors(arrays.truth[layout.reach])
            # Without a model every reaching frame gets its true label: the fewest errors this
            # layout allows under our threshold rule (see model_thresholds), so if that misses
            # the targets, no model on this layout is tried.
            self._cache[i] = (layout, errors, fpr <= self.targets.fpr and fnr <= self.targets.fnr)
        return self._cache[i]



def make_object_plan(arrays: HeldOutArrays, cascade: Cascade, costs: Costs, targets: Targets,
                     evidence: Evidence | None = None) -> ObjectPlan:
    """One object's plan, with what `simulate` (the one definition) says of it, not what the search computed."""
    labels, decided = simulate_arrays(arrays, cascade)
    fpr, fnr = evaluate(labels, arrays.truth, targets.metric, targets.window, targets.window_min_fraction, arrays.blocks)
    fractions = stage_fractions(decided)
    evidence = evidence or Evidence(arrays, 0.95)
    b_fpr, b_fnr = evidence.bounds(cascade, decided, fpr, fnr)
    return ObjectPlan(
        skip=int(cascade.skip), diff=cascade.diff, diff_threshold=cascade.diff_threshold,
        model=cascade.model, c_low=cascade.c_low, c_high=cascade.c_high,
        expected_cost=expected_cost(cascade, costs, fractions),
        heldout_fpr=fpr if (~arrays.truth).any() else None, heldout_fnr=fnr if arrays.truth.any() else None,
        fractions=fractions,
        reference_only=cascade.skip == 1 and cascade.diff is None and cascade.model is None,
        bound_fpr=b_fpr, bound_fnr=b_fnr, confidence=evidence.confidence,
        certified=b_fpr <= targets.fpr and b_fnr <= targets.fnr,
    )


def make_plan(arrays: Mapping[str, HeldOutArrays], cascades: Mapping[str, Cascade], costs: Costs,
              targets: Mapping[str, Targets], evidence: Mapping[str, Evidence]) -> Plan:
    """Each object's plan from its cascade; the pass's fractions and cost, shared by all."""
    names = list(cascades)
    plans = {k: make_object_plan(arrays[k], cascades[k], costs, targets[k], evidence[k]) for k in names}
    decided = pass_decided([simulate_arrays(arrays[k], cascades[k])[1] for k in names])
    fractions = stage_fractions(decided)
    cost = expected_cost(cascades[names[0]], costs, fractions)
    for p in plans.values():
        p.expected_cost = cost  # the pass is paid once, whichever object is looked at
    return Plan(plans, cost, fractions)
