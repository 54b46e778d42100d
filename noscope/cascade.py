"""Run a chosen cascade over a video: skip -> difference detector -> specialized CNN -> reference.

    bundle = load_bundle(bundle_path("store"))                                 # noscope.bundle
    plan = choose_plan(bundle, Targets(0.01, 0.01), ["person"], settings.optimizer)   # noscope.planning
    results = run_cascade(video, bundle, plan, reference, key, start, end, decode=settings.decode)
    results["person"].labels, results["person"].decided_by     # one entry per frame of [start, end)

Semantics are those of `noscope.simulate`, so what the optimizer promised on held-out frames is
what runs here:
  * only every `skip`-th frame is decoded (the others are grabbed, not converted) and the rest
    copy the last processed frame's answer;
  * a processed frame the difference detector calls unchanged copies the previous processed
    frame's answer ("prev" detectors) or is answered no (empty-scene "ref" detectors);
  * the specialized CNN answers no below c_low, yes above c_high;
  * everything else goes to the reference, in one sparse second pass over the video that also
    fills the label cache, so repeated queries never pay twice for a reference call.

Several objects: one decode, one difference detector, one CNN pass with one output per object,
each object's own thresholds; a frame goes to the reference if any object is undecided there, and
each object's answers are exactly `simulate` of its own ObjectPlan.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from . import decode_pool
from .bundle import TrainedBundle
from .framecache import cached_batches, holds_all
from .labels import label_frames
from .plans import STAGES, ObjectPlan, Plan, stages_of
from .progress import progress_bar
from .settings import DecodeSettings
from .video import KEEP_PICTURES, DecodePass, Keep, Luma, Video, decode_workers, missing_ranges

# per processed frame, before the reference pass
COPY, NO, YES, REF, EMPTY = 0, 1, 2, 3, 4  # EMPTY: the empty-scene detector said no


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
    first_fractions: dict[str, float] | None = None  # each stage's share of frames in the first pass, before the check
    cheap: CheapAnswers | None = None  # the pass's cheap answers, shared by every object's result (run_cascade's `previous`)
    stop_time: float | None = None  # seconds where decoding stopped (`stopped_at`), by the pass that found it
    decoding: list = field(default_factory=list)  # the answer's decoding passes: what each was for, frames decoded
    windows: np.ndarray | None = None  # a windowed query's: each frame's window (frames carry their window's answer)

    def fractions(self) -> dict[str, float]:
        n = max(len(self.frames), 1)
        return {s: float((self.decided_by == s).sum()) / n for s in stages_of(self.decided_by)}


@dataclass
class PassOptions:
    """How a cascade's pass runs: decoding (`decode`: frame cache, prefetch, workers), batches, the
    reference's answers (`stream`: a labels.ReferenceStream answering in the pass, None: after it;
    `known`: frame -> class scores already in hand, never asked again; `pixels`: frame -> its picture
    at the reference's size, kept earlier), and the frames whose pictures the pass keeps (`keep`)."""

    decode: DecodeSettings
    batch_size: int = 256
    use_label_cache: bool = True
    quiet: bool = False
    stream: object | None = None  # labels.ReferenceStream
    known: dict = field(default_factory=dict)
    pixels: dict = field(default_factory=dict)
    keep: Keep | None = None
    ref_size: tuple[int, int] = (416, 416)  # the reference's input size (the video's own where it has none)


def run_cascade(video: Video, bundle: TrainedBundle, plan: Plan, reference, ref_key: str, span: tuple[int, int],
                opts: PassOptions, previous: CheapAnswers | None = None) -> dict[str, CascadeResult]:
    """Run `plan` over [start, end) = `span`: object -> CascadeResult, all from one decoding pass
    (`cheap_pass`: the difference detector on the luma plane, the model and the reference on the
    frames that reach them, converted for them alone). `previous`: an earlier pass's cheap answers (a
    result's `cheap`); where the plan keeps its skip and difference detector, they are answered again
    from those scores without decoding (`restate`), and the reference answers the frames that now
    need it from what is known or kept (`opts.pixels`), decoding only the others."""
    t0 = time.perf_counter()
    start, end = span
    stages = Stages.of(bundle, plan.plans, reference)
    cheap = restate(previous, stages) if previous is not None else None
    if cheap is None:
        cheap = cheap_pass(video, stages, span, opts, bundle)
    elif len(cheap.unscored):
        score_unscored(video, stages, cheap, opts)
    scores = reference_pass(video, bundle, stages, cheap, (reference, ref_key), opts)
    return _results(video, bundle, stages, cheap, scores, start, end, time.perf_counter() - t0)


@dataclass
class Stages:
    """The cheap stages of a plan, ready to run: skip, difference detector, CNN and each object's
    thresholds (skip, detector and CNN are shared by every object's plan)."""

    objects: list[str]
    skip: int
    det: object | None  # difference.DiffDetector
    threshold: float | None
    model: object | None  # cheap.CheapModel
    cols: list[int]  # each object's column of the model's output
    c_low: np.ndarray  # per object; -inf: the model never says no for it (it asks the reference)
    c_high: np.ndarray  # per object; +inf: never yes
    sizes: dict  # what the pass decodes for the stages (video.batches' sizes: a Luma plane, kept pictures)
    device: object
    model_name: str | None = None

    @property
    def shape(self) -> tuple:
        """What decides which frames reach the model, the model, and the model whose features it
        scores (itself, or the one a refitted model was refitted from): a later pass with the same
        skip, detector and threshold can be answered again from this one's scores or features."""
        base = None if self.model is None else self.model.base
        return self.skip, None if self.det is None else self.det.name, self.threshold, self.model_name, base

    @classmethod
    def of(cls, bundle: TrainedBundle, plans: dict[str, ObjectPlan], reference) -> "Stages":
        plan = next(iter(plans.values()))
        sizes: dict = {"pictures": KEEP_PICTURES}  # the model's and the reference's frames, converted for them alone
        det = model = None
        if plan.diff:
            det = bundle.diff(plan.diff)
            dz = bundle.diff_size(plan.diff)
            sizes["diff"] = Luma(dz, dz) if det.plane == "luma" else (dz, dz)  # a bundle from before: RGB
        if plan.model:
            model = bundle.model(plan.model, reference.device, reference)
        return cls(list(plans), max(1, int(plan.skip)), det, plan.diff_threshold, model,
                   [bundle.objects.index(o) for o in plans],
                   np.array([-np.inf if p.c_low is None else p.c_low for p in plans.values()]),
                   np.array([np.inf if p.c_high is None else p.c_high for p in plans.values()]), sizes,
                   reference.device, plan.model)


@dataclass
class CheapAnswers:
    """What the cheap stages said of every processed frame, before the reference pass."""

    processed: np.ndarray  # int64: the processed frames that decoded
    state: np.ndarray  # int8 (P, objects): COPY, NO, YES, REF or EMPTY
    pscore: np.ndarray  # float (P, objects): the CNN's score, NaN where it did not run
    dscore: np.ndarray  # float (P,): the difference detector's score, NaN where it did not run
    lost: list  # [a, b) ranges lost to damage
    stopped_at: int | None
    stage_t: dict[str, float]
    shape: tuple = ()  # Stages.shape of the pass
    scores: np.ndarray | None = None  # float (P, outputs): every output of the model where it ran, NaN elsewhere
    features: np.ndarray | None = None  # float16 (P, D): the model's features where it ran (models that have them)
    stop_time: float | None = None  # seconds where decoding stopped, by the pass that found `stopped_at`
    passes: list = field(default_factory=list)  # the decoding passes (video.DecodePass) these answers ran
    answered: dict = field(default_factory=dict)  # frame -> the reference's class scores, asked in the pass
    pending: list = field(default_factory=list)  # (frames, pictures) waiting for a reference batch to fill
    unscored: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows the model must still score

    def settle(self, rows: np.ndarray, every: np.ndarray, stages: "Stages") -> None:
        """Rows the model scored (`every`: its every output): each object's state by its thresholds."""
        p = every[:, stages.cols]
        self.state[rows] = model_states(p, stages)
        self.pscore[rows] = p

    def found(self, decoding: DecodePass) -> None:
        """Take on what a decoding pass of these answers found: the frames it lost, and where it
        stopped if that is earlier than any stop found before."""
        self.passes.append(decoding)
        self.lost += decoding.missing
        if decoding.stopped_at is not None and (self.stopped_at is None or decoding.stopped_at < self.stopped_at):
            self.stopped_at, self.stop_time = decoding.stopped_at, decoding.stop_time

    def keep(self, rows: np.ndarray) -> None:
        """Only these rows of the processed frames (the others were lost or could not be answered)."""
        self.processed, self.state, self.pscore, self.dscore = (self.processed[rows], self.state[rows], self.pscore[rows],
                                                                self.dscore[rows])
        self.scores = None if self.scores is None else self.scores[rows]
        self.features = None if self.features is None else self.features[rows]


def cheap_pass(video: Video, stages: Stages, span: tuple[int, int], opts: PassOptions, bundle: TrainedBundle) -> CheapAnswers:
    """Decode every `skip`-th frame of `span` once: the difference detector, the model on the frames
    it lets through, and (with `opts.stream`) the reference on the frames no cheap stage decides,
    each converted for the stage that needs it and no other."""
    start, end = span
    n_obj = len(stages.objects)
    processed = np.arange(start, end, stages.skip, dtype=np.int64)
    out = CheapAnswers(processed, np.full((len(processed), n_obj), REF, np.int8),
                       np.full((len(processed), n_obj), np.nan, np.float32), np.full(len(processed), np.nan, np.float32),
                       [], None, {"decode": 0.0, "diff": 0.0, "model": 0.0, "reference": 0.0}, stages.shape)
    if opts.stream is None and stages.det is None and stages.model is None:
        return out  # nothing cheap to run, and the reference answers after the pass
    d = opts.decode
    got = np.zeros(len(processed), bool)  # processed frames that decoded
    prev_last = [None]  # last processed frame of the previous batch, for "prev" difference detectors
    workers, prefetch = decode_workers(d.workers), d.prefetch
    decode = partial(cached_batches if d.frame_cache else decode_pool.batches, video)
    if d.frame_cache and holds_all(video, stages.sizes, start, end, stages.skip):  # nothing to decode: torch keeps every core
        prefetch, workers = 0, 1
    classes = [bundle.class_index(o) for o in stages.objects]
    with progress_bar(total=len(processed), desc="query", quiet=opts.quiet) as bar, \
            cpu_threads_beside_decoder(stages.device, prefetch, workers):
        t_dec = time.perf_counter()
        decoding = decode(stages.sizes, start, end, stride=stages.skip, batch_size=opts.batch_size, prefetch=prefetch,
                          workers=workers, keep=opts.keep)
        with decoding:
            for batch in decoding:
                out.stage_t["decode"] += time.perf_counter() - t_dec
                at = np.searchsorted(processed, batch.indices)  # frames lost to damage leave holes
                out.state[at] = batch_states(stages, batch, at, out, prev_last)
                if opts.stream is not None:
                    ask_in_pass(stages, batch, out.state[at], out, opts, classes)
                got[at] = True
                bar.update(len(batch))
                t_dec = time.perf_counter()
        if opts.stream is not None:
            flush_pending(out, opts)
    out.found(decoding)
    # the file ended early, or frames were lost to damage
    out.keep(got)
    return out


def ask_in_pass(stages: Stages, batch, states: np.ndarray, out: CheapAnswers, opts: PassOptions, classes) -> None:
    """The frames of `batch` some object left undecided (`states`) go to the reference now, their
    pictures converted at its input size from the ones the pass kept (answers already known or cached
    are taken as they are); the reference runs when a batch of its own has filled."""
    rows = np.flatnonzero((states == REF).any(axis=1))
    if not len(rows):
        return
    t = time.perf_counter()
    frames = batch.indices[rows]
    for f in frames.tolist():
        if f in opts.known:
            out.answered[f] = opts.known[f]
        elif f in opts.stream.cached:
            out.answered[f] = opts.stream.cached[f]
    ask = rows[[f not in out.answered for f in frames.tolist()]]
    if len(ask):
        out.pending.append((batch.indices[ask], batch.rgb(ask, opts.ref_size)))
    if sum(len(f) for f, _ in out.pending) >= opts.stream.reference.batch_size:
        flush_pending(out, opts)
    out.stage_t["reference"] += time.perf_counter() - t


def flush_pending(out: CheapAnswers, opts: PassOptions) -> None:
    """The reference on the pictures waiting for it."""
    if not out.pending:
        return
    t = time.perf_counter()
    frames = np.concatenate([f for f, _ in out.pending])
    scores = opts.stream.answer(frames, np.concatenate([p for _, p in out.pending]))
    out.answered.update(zip(frames.tolist(), scores))
    out.pending = []
    out.stage_t["reference"] += time.perf_counter() - t


def restate(previous: CheapAnswers, stages: Stages) -> CheapAnswers | None:
    """The cheap answers of a pass with `stages`, from an earlier pass's, without decoding the frames
    it scored: when skip and difference detector are the same, the detector's kept scores meet the
    (maybe repaired) threshold again, and the model's thresholds, or its head (a model refitted on
    this video's reference answers, from the kept features), decide anew. Frames a lower threshold
    now lets through to the model, which it never saw, are left in `unscored` (the caller decodes
    just those). None when that cannot be done."""
    skip, diff, threshold, model, base = stages.shape
    if previous.shape[:2] != (skip, diff) or (model is None) != (previous.shape[3] is None):
        return None
    ran = np.isfinite(previous.pscore[:, 0]) if previous.pscore.shape[1] else np.zeros(len(previous.processed), bool)
    if model is None:
        scores = None
    elif model == previous.shape[3] and previous.scores is not None:
        scores = previous.scores.copy()
    elif base == previous.shape[4] and previous.features is not None:
        scores = np.full(previous.scores.shape if previous.scores is not None else (len(previous.processed), 1), np.nan,
                         np.float32)
        scores[ran] = stages.model.from_features(previous.features[ran].astype(np.float32))
    else:
        return None
    t = time.perf_counter()
    features = None if previous.features is None else previous.features.copy()  # the caller may add rows
    out = CheapAnswers(previous.processed, previous.state.copy(), np.full((len(previous.processed), len(stages.objects)),
                       np.nan, np.float32), previous.dscore, list(previous.lost), previous.stopped_at,
                       {"decode": 0.0, "diff": 0.0, "model": 0.0, "reference": 0.0}, stages.shape, scores,
                       features, previous.stop_time)
    through = np.ones(len(out.processed), bool)
    if stages.det is not None:
        through = ~(previous.dscore < stages.threshold)  # NaN compares False: changed
        out.state[~through] = COPY if stages.det.kind == "prev" else EMPTY
    out.state[through] = REF
    if scores is not None:
        out.settle(np.flatnonzero(ran & through), scores[ran & through], stages)
        out.unscored = np.flatnonzero(through & ~ran)
    out.stage_t["model"] = time.perf_counter() - t
    return out


def score_unscored(video: Video, stages: Stages, cheap: CheapAnswers, opts: PassOptions) -> None:
    """The model on the frames `restate` left unscored, decoded in one sequential pass that
    converts only them, their states settled by the model's thresholds."""
    rows = cheap.unscored
    t_dec = time.perf_counter()
    decoding = decode_pool.batches(video, {"pictures": KEEP_PICTURES}, frames=cheap.processed[rows],
                                   batch_size=opts.batch_size, prefetch=opts.decode.prefetch)
    with decoding:
        for batch in decoding:
            cheap.stage_t["decode"] += time.perf_counter() - t_dec
            t = time.perf_counter()
            at = np.searchsorted(cheap.processed, batch.indices)
            every = _model_scores(stages.model, batch.rgb(np.arange(len(batch)), stages.model.size), at, cheap)
            cheap.settle(at, every, stages)
            cheap.stage_t["model"] += time.perf_counter() - t
            t_dec = time.perf_counter()
    cheap.found(decoding)
    cheap.unscored = np.zeros(0, np.int64)


def model_states(p: np.ndarray, stages: Stages) -> np.ndarray:
    """Each object's state from the model's scores `p` (frames, objects): no below its c_low, yes
    above its c_high, else the reference."""
    sub = np.full(p.shape, REF, np.int8)
    sub[p < stages.c_low] = NO
    sub[p > stages.c_high] = YES
    return sub


def batch_states(stages: Stages, batch, at: np.ndarray, out: CheapAnswers, prev_last: list) -> np.ndarray:
    """One batch through the difference detector and the CNN: each frame's state per object;
    the stages' scores go into `out` at rows `at`."""
    st = np.full((len(batch), len(stages.objects)), REF, np.int8)
    todo = np.ones(len(batch), bool)
    if stages.det is not None:
        t = time.perf_counter()
        x = batch.frames["diff"]
        if stages.det.kind == "prev":
            prev = np.concatenate([prev_last[0][None] if prev_last[0] is not None else x[:1], x[:-1]])
            sc = stages.det.score(x, prev)
            if prev_last[0] is None:
                sc[0] = np.nan  # first frame of the segment has nothing to compare with
            prev_last[0] = x[-1]
        else:
            sc = stages.det.score(x)
        unchanged = sc < stages.threshold  # NaN compares False: changed
        st[unchanged] = COPY if stages.det.kind == "prev" else EMPTY
        out.dscore[at] = sc
        todo &= ~unchanged
        out.stage_t["diff"] += time.perf_counter() - t
    if stages.model is not None and todo.any():
        t = time.perf_counter()
        rows = np.flatnonzero(todo)
        frames = batch.frames["model"][rows] if "model" in batch.frames else batch.rgb(rows, stages.model.size)
        every = _model_scores(stages.model, frames, at[todo], out)
        p = every[:, stages.cols]
        st[todo] = model_states(p, stages)
        out.pscore[at[todo]] = p
        out.stage_t["model"] += time.perf_counter() - t
    return st


def frame_scores(cheap: CheapAnswers, row_scores: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Scores given per processed frame (rows of `cheap`) as scores of `frames`: NaN on frames
    that were not processed (skipped, or lost)."""
    on, is_processed = _places(cheap.processed, frames)
    out = np.full(len(frames), np.nan, np.float32)
    out[is_processed] = row_scores[on[is_processed]]
    return out


def _model_scores(model, frames: np.ndarray, rows: np.ndarray, out: CheapAnswers) -> np.ndarray:
    """The model's every output on `frames` (rows `rows` of the pass), kept in `out` with its
    features where the model has them, so a later pass can answer again without decoding."""
    if model.keeps_features:
        f = model.features(frames)
        every = model.from_features(f)
        if out.features is None:
            out.features = np.zeros((len(out.processed), f.shape[1]), np.float16)
        out.features[rows] = f
    else:
        every = model.score(frames)
    if out.scores is None:
        out.scores = np.full((len(out.processed), every.shape[1]), np.nan, np.float32)
    out.scores[rows] = every
    return every


def reference_pass(video: Video, bundle: TrainedBundle, stages: Stages, cheap: CheapAnswers, reference: tuple,
                   opts: PassOptions) -> dict[int, np.ndarray]:
    """The reference's answers on the frames some object could not decide (one call answers them all):
    frame -> per-object scores. Those the pass asked for, or known before, are taken as they are; the
    others are asked now (from `opts.pixels` where kept, else decoded: one sparse pass). Frames it
    could not decode lose their answer (`cheap` is cut). `reference`: (the detector, its key)."""
    t = time.perf_counter()
    ref, ref_key = reference
    asks = (cheap.state == REF).any(axis=1)
    need = cheap.processed[asks]
    classes = [bundle.class_index(o) for o in stages.objects]
    known = opts.known
    known.update(cheap.answered)
    scores = {f: known[f][classes].astype(float) for f in need.tolist() if f in known}
    ask = np.array([f for f in need.tolist() if f not in scores], np.int64)
    if len(ask):
        lab = label_frames(video, ref, ref_key, ask, use_cache=opts.use_label_cache, quiet=opts.quiet,
                           desc="reference", pixels=opts.pixels)
        scores.update(zip(lab.frames.tolist(), lab.scores[:, classes].astype(float)))
        known.update(zip(lab.frames.tolist(), lab.scores))
        if lab.decoding is not None:
            cheap.found(lab.decoding)
    cheap.stage_t["reference"] += time.perf_counter() - t
    # A frame the second pass could not decode (lost, or the file ended) has no answer.
    answered = ~asks | np.isin(cheap.processed, np.fromiter(scores, np.int64, len(scores)))
    if not answered.all():
        cheap.keep(answered)
    return scores


def _results(video: Video, bundle: TrainedBundle, stages: Stages, cheap: CheapAnswers, scores: dict, start: int, end: int,
             seconds: float) -> dict[str, CascadeResult]:
    """Every frame's answer per object: processed frames their own, skipped frames a copy."""
    processed, skip = cheap.processed, stages.skip
    last_frame = (processed[-1] + skip) if len(processed) else start
    end_eff = min(end, last_frame if cheap.stopped_at is None else max(cheap.stopped_at, start))
    frames, missing = answerable(np.arange(start, end_eff, dtype=np.int64), processed, start, skip, cheap.lost)
    times = video.times_of(frames)
    on, on_processed = _places(processed, frames)
    diff_scores = np.full(len(frames), np.nan, np.float32)
    diff_scores[on_processed] = cheap.dscore[on[on_processed]]
    results = {}
    for k, o in enumerate(stages.objects):
        ref_scores = {f: float(v[k]) for f, v in scores.items()}
        labels, decided = _resolve(processed, cheap.state[:, k], ref_scores, bundle.min_score, frames)
        model_scores = np.full(len(frames), np.nan, np.float32)
        model_scores[on_processed] = cheap.pscore[on[on_processed], k]
        results[o] = CascadeResult(frames, times, labels, decided, ref_scores, seconds, cheap.stage_t, cheap.stopped_at,
                                   model_scores, diff_scores, missing, cheap=cheap, stop_time=cheap.stop_time)
    return results


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
    own = (state == YES) | ((state == REF) & np.array([ref_scores.get(f, -np.inf) >= min_score
                                                         for f in processed.tolist()], bool))
    idx = np.arange(len(processed))
    source = np.maximum.accumulate(np.where(state != COPY, idx, -1)) if len(processed) else idx
    plabel = np.where(source >= 0, own[np.maximum(source, 0)], False)
    pdec = np.array(STAGES)[np.select([state == REF, (state == NO) | (state == YES)], [3, 2], 1)]
    pos = np.clip(np.searchsorted(processed, frames, side="right") - 1, 0, max(len(processed) - 1, 0))
    labels = plabel[pos] if len(processed) else np.zeros(len(frames), bool)
    decided = pdec[pos].astype(str) if len(processed) else np.full(len(frames), "reference")
    if len(processed):
        decided[processed[pos] != frames] = "skip"
    return labels, decided
