"""Run a chosen cascade over a video: skip -> difference detector -> specialized CNN -> reference.

    model = load_bundle(".noscope/models/store")
    plan = choose_plan(model, Targets(0.01, 0.01), cfg["optimizer"])
    result = run_cascade(video, model, plan, reference, start, end)
    result.labels, result.decided_by                 # one entry per frame of [start, end)

    plan = choose_joint_plan(multi, Targets(0.01, 0.01))  # a several-objects bundle
    results = run_cascade(video, multi, plan, reference, start, end)   # object -> CascadeResult

Semantics are those of `optimizer.simulate`, so what the optimizer promised on held-out
frames is what runs here:
  * only every `skip`-th frame is decoded (the others are grabbed, not converted) and the rest
    copy the last processed frame's answer;
  * a processed frame the difference detector calls unchanged copies the previous processed
    frame's answer ("prev" detectors) or is answered no (empty-scene "ref" detectors);
  * the specialized CNN answers no below c_low, yes above c_high;
  * everything else goes to the reference, in one sparse second pass over the video that also
    fills the label cache, so repeated queries never pay twice for a reference call.

Several objects (noscope.joint): one decode, one difference detector, one CNN pass with one
output per object, each object's own thresholds; a frame goes to the reference if any object is
undecided there, and each object's answers are exactly `optimizer.simulate` of its own Plan.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from . import bundle as B
from . import difference, specialized
from .errors import NoscopeError
from .framecache import cached_batches, holds_all
from .joint import JointPlan, optimize_joint
from .labels import label_frames
from .optimizer import STAGES, Costs, HeldOut, Plan, Targets, optimize
from .progress import progress_bar
from .video import Video, missing_ranges

# per processed frame, before the reference pass
_COPY, _NO, _YES, _REF, _EMPTY = 0, 1, 2, 3, 4  # _EMPTY: the empty-scene detector said no


@dataclass
class TrainedBundle:
    root: Path
    meta: dict
    heldout: HeldOut | None  # None for a several-objects bundle: see heldouts
    costs: Costs
    heldouts: dict[str, HeldOut] = field(default_factory=dict)  # object -> its held-out view
    _models: dict = field(default_factory=dict)

    @property
    def object(self) -> str:
        """The object, or "car,bus" for a several-objects bundle."""
        return self.meta["object"]

    @property
    def multi(self) -> bool:
        return "objects" in self.meta

    @property
    def objects(self) -> list[str]:
        return list(self.meta["objects"]) if self.multi else [self.meta["object"]]

    def class_index(self, obj: str) -> int:
        return int(self.meta["class_indices"][self.objects.index(obj)]) if self.multi else int(self.meta["class_index"])

    def model(self, name: str, device):
        if name not in self._models:
            c = next(c for c in self.meta["candidates"] if c["name"] == name)
            loaded = specialized.load_model(B.inside(self.root, c["file"]), device=device)
            check_model(self, c, loaded[1], loaded[0].outputs)  # again: the file may have changed since loading
            self._models[name] = loaded
        return self._models[name]

    def diff(self, name: str) -> difference.DiffDetector:
        d = next(d for d in self.meta["diffs"] if d["name"] == name)
        det = difference.DiffDetector.from_dict({k: v for k, v in d.items() if k not in ("cost_s", "size", "reference_image_file")})
        if d.get("reference_image_file"):
            det.reference_image = difference.load_npy(B.inside(self.root, d["reference_image_file"]))
        return det

    def diff_size(self, name: str) -> int:
        return int(next(d for d in self.meta["diffs"] if d["name"] == name)["size"])


def check_model(tb: TrainedBundle, candidate: dict, arch, outputs: int) -> None:
    """A candidate's model file must hold the architecture its name says, with one output per
    object: another model under its name would run with thresholds fit to a different one."""
    want = len(tb.objects) if tb.multi else 1
    if arch.name != candidate["name"] or arch.size != int(candidate["size"]) or outputs != want:
        raise NoscopeError(f"model bundle {tb.root} is corrupt: {candidate['file']} holds a {arch.name} model with "
                           f"{outputs} output(s), not the {candidate['name']} with {want} that bundle.yaml names")


def load_bundle(root: Path) -> TrainedBundle:
    """Read a bundle; anything malformed in it is one NoscopeError, never a stray KeyError.
    A bundle must be complete: every file it uses listed and checked, every model what its name says."""
    meta = B.load_manifest(root)
    try:
        B.check_complete(root, meta)
        tb = _read_bundle(root, meta)
        for c in meta["candidates"]:
            check_model(tb, c, *specialized.model_arch(B.inside(root, c["file"])))
        return tb
    except NoscopeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml or heldout.npz is malformed ({type(e).__name__}: {str(e)[:100]})") from None


def _read_bundle(root: Path, meta: dict) -> TrainedBundle:
    z = B.load_npz(root, meta["heldout"]["file"])
    model_scores = {k[len("model__"):]: v for k, v in z.items() if k.startswith("model__")}
    diff_scores: dict[str, dict[int, np.ndarray]] = {}
    for k, v in z.items():
        if k.startswith("diff__"):
            name, skip = k[len("diff__"):].rsplit("@", 1)
            diff_scores.setdefault(name, {})[int(skip)] = v
    kinds = {d["name"]: d["kind"] for d in meta["diffs"]}
    c = meta["costs"]
    costs = Costs(decode=c["decode"], convert=c["convert"], diff=dict(c["diff"]), model=dict(c["model"]), reference=c["reference"])
    if "objects" not in meta:
        heldout = HeldOut(truth=z["truth"].astype(bool), blocks=z["blocks"], model_scores=model_scores,
                          diff_scores=diff_scores, diff_kinds=kinds, frames=z.get("frames"))
        return TrainedBundle(root, meta, heldout, costs, {meta["object"]: heldout})
    objects = list(meta["objects"])
    if meta.get("format") != B.MULTI_FORMAT or len(meta["class_indices"]) != len(objects) or len(objects) < 2:
        raise NoscopeError(f"model bundle {root} is corrupt: its objects do not match its format")
    truth = z["truth"].astype(bool)
    for what, a in (("truth", truth), *((f"model__{m}", v) for m, v in model_scores.items())):
        if a.ndim != 2 or a.shape[1] != len(objects):
            raise NoscopeError(f"model bundle {root} is corrupt: heldout.npz {what} does not have one column per object")
    # Views per object: same frames and difference scores, that object's truth and model output.
    heldouts = {o: HeldOut(truth=truth[:, k], blocks=z["blocks"], model_scores={m: v[:, k] for m, v in model_scores.items()},
                           diff_scores=diff_scores, diff_kinds=kinds, frames=z.get("frames")) for k, o in enumerate(objects)}
    return TrainedBundle(root, meta, None, costs, heldouts)


def usable_models(tb: TrainedBundle, min_auc: float, obj: str | None = None) -> list[str]:
    """Specialized models good enough to be offered to the optimizer.

    A model that ranks the held-out frames worse than `min_auc` has not learnt the object, and
    with a few hundred held-out frames and two dozen candidates the thresholds the optimizer
    would fit to it are luck: on the urban-road clip such models (held-out AUC 0.6-0.88) scored
    AUC 0.51-0.61 on later footage and the cascade's false-positive rate went from 5% held-out
    to 87%. Rejecting them makes the cascade fall back on frame skip, difference detectors and
    the reference instead.

    Several objects: the guard is per object (`obj`), on that object's output's held-out AUC.
    """
    if obj is not None and tb.multi:
        return [c["name"] for c in tb.meta["candidates"]
                if c["heldout_aucs"][obj] is not None and c["heldout_aucs"][obj] >= min_auc]
    return [c["name"] for c in tb.meta["candidates"] if c["heldout_auc"] >= min_auc]


def search_options(ocfg: dict) -> dict:
    """The optimizer's keyword arguments from a config's optimizer section (older bundles lack some)."""
    return dict(skips=tuple(int(s) for s in ocfg.get("skips", (1, 2, 5, 10, 15, 30))),
                min_saving=float(ocfg.get("min_saving", 0.0)), confidence=float(ocfg.get("confidence", 0.95)),
                strict=bool(ocfg.get("strict", False)), cost_slack=float(ocfg.get("cost_slack", 0.0)))


def choose_plan(tb: TrainedBundle, targets: Targets, optimizer_cfg: dict | None = None) -> Plan:
    if tb.multi:
        raise NoscopeError(f"bundle {tb.root} answers several objects ({', '.join(tb.objects)}); it needs a joint plan")
    ocfg = dict(tb.meta.get("optimizer", {}), **(optimizer_cfg or {}))
    models = usable_models(tb, float(ocfg.get("min_auc", 0.0)))
    return optimize(tb.heldout, tb.costs, targets, models=models, **search_options(ocfg))


def choose_joint_plan(tb: TrainedBundle, targets: Targets, optimizer_cfg: dict | None = None,
                      objects: list[str] | None = None) -> JointPlan:
    """One pass for `objects` (default: all of the bundle's), each held to `targets`."""
    ocfg = dict(tb.meta.get("optimizer", {}), **(optimizer_cfg or {}))
    objects = objects or tb.objects
    models = {o: usable_models(tb, float(ocfg.get("min_auc", 0.0)), o) for o in objects}
    return optimize_joint({o: tb.heldouts[o] for o in objects}, tb.costs, targets, models=models, **search_options(ocfg))


@contextmanager
def cpu_threads_beside_decoder(device, prefetch: int, workers: int = 1):
    """On CPU, leave one core to the decoding thread while the cheap stages run.

    With both cores given to torch the decoder and the CNN take turns; measured on the
    storefront clip (2 cores, a small CNN), the overlapped pass ran at about 650 frames/s with
    torch on 1 thread and 520-590 on 2, against 680-880 for decoding alone.
    """
    import torch

    n = torch.get_num_threads()
    if getattr(device, "type", str(device)) != "cpu" or (prefetch <= 0 and workers <= 1) or n < 2:
        yield
        return
    torch.set_num_threads(n - 1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class CascadeResult:
    frames: np.ndarray  # int64 (N,) frame numbers
    times: np.ndarray  # float64 (N,) seconds
    labels: np.ndarray  # bool (N,)
    decided_by: np.ndarray  # str (N,) one of STAGES
    reference_scores: dict[int, float]  # frame -> reference score, where the reference ran
    seconds: float
    stage_seconds: dict[str, float]
    stopped_at: int | None = None
    model_scores: np.ndarray | None = None  # float (N,): the CNN's score where it ran, NaN elsewhere
    diff_scores: np.ndarray | None = None  # float (N,): the difference detector's score where it ran, NaN elsewhere
    missing: list = field(default_factory=list)  # [a, b) frames with no answer: the video could not be decoded there

    def fractions(self) -> dict[str, float]:
        n = max(len(self.frames), 1)
        return {s: float((self.decided_by == s).sum()) / n for s in STAGES}


def run_cascade(
    video: Video,
    tb: TrainedBundle,
    plan: Plan | JointPlan,
    reference,
    ref_key: str,
    start: int,
    end: int,
    *,
    batch_size: int = 256,
    use_label_cache: bool = True,
    frame_cache: bool = True,
    prefetch: int = 2,
    workers: int = 1,
    quiet: bool = False,
    known: dict[int, np.ndarray] | None = None,
) -> CascadeResult | dict[str, CascadeResult]:
    """Run `plan` over [start, end): a Plan (single-object bundle) gives one CascadeResult, a
    JointPlan gives object -> CascadeResult, all from one decode, one CNN pass, one reference pass.
    `frame_cache` reads and fills the decoded-frame cache (decode once, query many); `prefetch`
    batches are decoded ahead in a thread, by `workers` processes (noscope.decode_pool).
    `known`: frame -> the reference's class scores already in hand (an earlier pass), not asked again."""
    t0 = time.perf_counter()
    stage_t = {"decode": 0.0, "diff": 0.0, "model": 0.0, "reference": 0.0}
    device = reference.device
    joint = isinstance(plan, JointPlan)
    plans = plan.plans if joint else {tb.object: plan}
    plan = next(iter(plans.values()))  # skip, diff and model are shared by every object's plan
    skip = max(1, int(plan.skip))
    min_score = tb.meta["labels"]["min_score"]
    objects = list(plans)
    cols = [tb.objects.index(o) if tb.multi else 0 for o in objects]  # each object's model output
    # None: the model never says no / yes for that object (it asks the reference).
    c_low = np.array([-np.inf if p.c_low is None else p.c_low for p in plans.values()])
    c_high = np.array([np.inf if p.c_high is None else p.c_high for p in plans.values()])

    sizes: dict[str, tuple[int, int]] = {}
    det = model = None
    if plan.diff:
        det = tb.diff(plan.diff)
        dz = tb.diff_size(plan.diff)
        sizes["diff"] = (dz, dz)
    if plan.model:
        model, arch, mean = tb.model(plan.model, device)
        sizes["model"] = (arch.size, arch.size)

    processed = np.arange(start, end, skip, dtype=np.int64)
    state = np.full((len(processed), len(objects)), _REF, np.int8)  # one column per object
    pscore = np.full((len(processed), len(objects)), np.nan, np.float32)  # the CNN's scores where it ran
    dscore = np.full(len(processed), np.nan, np.float32)  # the difference detector's
    got = np.ones(len(processed), bool)  # processed frames that decoded
    lost: list[tuple[int, int]] = []  # ranges the passes found lost to damage
    if sizes:
        got[:] = False
        prev_last = None  # last processed frame of the previous batch, for "prev" difference detectors
        i = 0
        decode = partial(cached_batches, video) if frame_cache else video.batches
        if frame_cache and holds_all(video, sizes, start, end, skip):  # nothing to decode: torch keeps every core
            prefetch, workers = 0, 1
        with progress_bar(total=len(processed), desc="query", quiet=quiet) as bar, cpu_threads_beside_decoder(device, prefetch, workers):
            t_dec = time.perf_counter()
            for batch in decode(sizes, start, end, stride=skip, batch_size=batch_size, prefetch=prefetch, workers=workers):
                stage_t["decode"] += time.perf_counter() - t_dec
                n = len(batch)
                at = np.searchsorted(processed, batch.indices)  # frames lost to damage leave holes
                st = np.full((n, len(objects)), _REF, np.int8)
                todo = np.ones(n, bool)
                if det is not None:
                    t = time.perf_counter()
                    x = batch.frames["diff"]
                    if det.kind == "prev":
                        prev = np.concatenate([prev_last[None] if prev_last is not None else x[:1], x[:-1]])
                        sc = det.score(x, prev)
                        if prev_last is None:
                            sc[0] = np.nan  # first frame of the segment has nothing to compare with
                        prev_last = x[-1]
                        unchanged = sc < plan.diff_threshold  # NaN compares False: changed
                        st[unchanged] = _COPY
                    else:
                        sc = det.score(x)
                        unchanged = sc < plan.diff_threshold
                        st[unchanged] = _EMPTY
                    dscore[at] = sc
                    todo &= ~unchanged
                    stage_t["diff"] += time.perf_counter() - t
                if model is not None and todo.any():
                    t = time.perf_counter()
                    p = specialized.predict_scores(model, batch.frames["model"][todo], mean, device=device)
                    p = p.reshape(len(p), -1)[:, cols]
                    sub = np.full(p.shape, _REF, np.int8)
                    sub[p < c_low] = _NO
                    sub[p > c_high] = _YES
                    st[todo] = sub
                    pscore[at[todo]] = p
                    stage_t["model"] += time.perf_counter() - t
                state[at] = st
                got[at] = True
                i += n
                bar.update(n)
                t_dec = time.perf_counter()
        lost += video.missing
        # the file ended early, or frames were lost to damage
        processed, state, pscore, dscore = processed[got], state[got], pscore[got], dscore[got]
    stopped_at = video.stopped_at

    # reference pass over the frames some object could not decide; it answers them all at once
    t = time.perf_counter()
    asks = (state == _REF).any(axis=1)
    need = processed[asks]
    classes = [tb.class_index(o) for o in objects]
    known = known or {}
    scores = {f: known[f][classes].astype(float) for f in need.tolist() if f in known}
    ask = np.array([f for f in need.tolist() if f not in scores], np.int64)
    if len(ask):
        lab = label_frames(video, reference, ref_key, ask, use_cache=use_label_cache, quiet=quiet, desc="reference")
        scores.update(zip(lab.frames.tolist(), lab.scores[:, classes].astype(float)))
        known.update(zip(lab.frames.tolist(), lab.scores))
        lost += video.missing
        if video.stopped_at is not None:
            stopped_at = video.stopped_at if stopped_at is None else min(stopped_at, video.stopped_at)
    stage_t["reference"] = time.perf_counter() - t
    # A frame the second pass could not decode (lost, or the file ended) has no answer.
    answered = ~asks | np.isin(processed, np.fromiter(scores, np.int64, len(scores)))
    processed, state, pscore, dscore = processed[answered], state[answered], pscore[answered], dscore[answered]

    last_frame = (processed[-1] + skip) if len(processed) else start
    end_eff = min(end, last_frame if stopped_at is None else max(stopped_at, start))
    frames, missing = answerable(np.arange(start, end_eff, dtype=np.int64), processed, start, skip, lost)
    times = video.times_of(frames)
    seconds = time.perf_counter() - t0
    results = {}
    on, on_processed = _places(processed, frames)
    diff_scores = np.full(len(frames), np.nan, np.float32)
    diff_scores[on_processed] = dscore[on[on_processed]]
    for k, o in enumerate(objects):
        ref_scores = {f: float(v[k]) for f, v in scores.items()}
        labels, decided = _resolve(processed, state[:, k], ref_scores, min_score, frames)
        model_scores = np.full(len(frames), np.nan, np.float32)
        model_scores[on_processed] = pscore[on[on_processed], k]
        results[o] = CascadeResult(frames, times, labels, decided, ref_scores, seconds, stage_t, stopped_at,
                                   model_scores, diff_scores, missing)
    return results if joint else results[objects[0]]


def _places(processed: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's place in the sorted `processed`, and whether it is a processed frame at all."""
    if not len(processed):
        return np.zeros(len(frames), np.int64), np.zeros(len(frames), bool)
    on = np.minimum(np.searchsorted(processed, frames), len(processed) - 1)
    return on, processed[on] == frames


def answerable(frames: np.ndarray, processed: np.ndarray, start: int, skip: int, lost) -> tuple[np.ndarray, list]:
    """The frames of `frames` that get an answer, and the [a, b) ranges that do not: a frame lost
    to damage has none, nor does a skipped frame whose processed frame (the one it copies) was lost.
    Empty ranges in `lost` (pictures lost where a counted file gives no numbers) are kept."""
    source = start + (frames - start) // skip * skip
    keep = np.isin(source, processed)
    for a, b in lost:
        keep &= (frames < a) | (frames >= b)
    gone = frames[~keep]
    breaks = np.flatnonzero(np.diff(gone) != 1) + 1
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(gone, breaks) if len(r)]
    marks = [(a, b) for a, b in lost if a == b]
    end = int(frames[-1]) + 1 if len(frames) else start
    return frames[keep], missing_ranges(runs + marks, start, end)


def _resolve(processed, state, ref_scores, min_score, frames) -> tuple[np.ndarray, np.ndarray]:
    """One object's answers: processed frames in order (copies take the previous processed
    answer, "no" before the first one), then every frame (skipped frames copy the last processed
    frame, `answerable` made sure it was answered)."""
    own = (state == _YES) | ((state == _REF) & np.array([ref_scores.get(f, -np.inf) >= min_score
                                                         for f in processed.tolist()], bool))
    idx = np.arange(len(processed))
    source = np.maximum.accumulate(np.where(state != _COPY, idx, -1)) if len(processed) else idx
    plabel = np.where(source >= 0, own[np.maximum(source, 0)], False)
    pdec = np.array(STAGES)[np.select([state == _REF, (state == _NO) | (state == _YES)], [3, 2], 1)]
    pos = np.clip(np.searchsorted(processed, frames, side="right") - 1, 0, max(len(processed) - 1, 0))
    labels = plabel[pos] if len(processed) else np.zeros(len(frames), bool)
    decided = pdec[pos].astype(str) if len(processed) else np.full(len(frames), "reference")
    if len(processed):
        decided[processed[pos] != frames] = "skip"
    return labels, decided
