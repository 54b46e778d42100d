"""Run a chosen cascade over a video: skip -> difference detector -> specialized CNN -> reference.

    model = load_bundle(".noscope/models/store")
    plan = choose_plan(model, Targets(0.01, 0.01), cfg["optimizer"])
    result = run_cascade(video, model, plan, reference, start, end)
    result.labels, result.decided_by                 # one entry per frame of [start, end)

Semantics are those of `optimizer.simulate`, so what the optimizer promised on held-out
frames is what runs here:
  * only every `skip`-th frame is decoded (the others are grabbed, not converted) and the rest
    copy the last processed frame's answer;
  * a processed frame the difference detector calls unchanged copies the previous processed
    frame's answer ("prev" detectors) or is answered no (empty-scene "ref" detectors);
  * the specialized CNN answers no below c_low, yes above c_high;
  * everything else goes to the reference, in one sparse second pass over the video that also
    fills the label cache, so repeated queries never pay twice for a reference call.
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
from .framecache import cached_batches
from .labels import label_frames
from .optimizer import Costs, HeldOut, Plan, Targets, optimize
from .progress import progress_bar
from .video import Video

STAGES = ("skip", "diff", "model", "reference")
# per processed frame, before the reference pass
_COPY, _NO, _YES, _REF, _EMPTY = 0, 1, 2, 3, 4  # _EMPTY: the empty-scene detector said no


@dataclass
class TrainedBundle:
    root: Path
    meta: dict
    heldout: HeldOut
    costs: Costs
    _models: dict = field(default_factory=dict)

    @property
    def object(self) -> str:
        return self.meta["object"]

    def model(self, name: str, device):
        if name not in self._models:
            c = next(c for c in self.meta["candidates"] if c["name"] == name)
            self._models[name] = specialized.load_model(B.inside(self.root, c["file"]), device=device)
        return self._models[name]

    def diff(self, name: str) -> difference.DiffDetector:
        d = next(d for d in self.meta["diffs"] if d["name"] == name)
        det = difference.DiffDetector.from_dict({k: v for k, v in d.items() if k not in ("cost_s", "size", "reference_image_file")})
        if d.get("reference_image_file"):
            det.reference_image = difference.load_npy(B.inside(self.root, d["reference_image_file"]))
        return det

    def diff_size(self, name: str) -> int:
        return int(next(d for d in self.meta["diffs"] if d["name"] == name)["size"])


def load_bundle(root: Path) -> TrainedBundle:
    """Read a bundle; anything malformed in it is one NoscopeError, never a stray KeyError."""
    meta = B.load_manifest(root)
    try:
        return _read_bundle(root, meta)
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
    heldout = HeldOut(truth=z["truth"].astype(bool), blocks=z["blocks"], model_scores=model_scores,
                      diff_scores=diff_scores, diff_kinds=kinds)
    c = meta["costs"]
    costs = Costs(decode=c["decode"], convert=c["convert"], diff=dict(c["diff"]), model=dict(c["model"]), reference=c["reference"])
    return TrainedBundle(root, meta, heldout, costs)


def usable_models(tb: TrainedBundle, min_auc: float) -> list[str]:
    """Specialized models good enough to be offered to the optimizer.

    A model that ranks the held-out frames worse than `min_auc` has not learnt the object, and
    with a few hundred held-out frames and two dozen candidates the thresholds the optimizer
    would fit to it are luck: on the urban-road clip such models (held-out AUC 0.6-0.88) scored
    AUC 0.51-0.61 on later footage and the cascade's false-positive rate went from 5% held-out
    to 87%. Rejecting them makes the cascade fall back on frame skip, difference detectors and
    the reference instead.
    """
    return [c["name"] for c in tb.meta["candidates"] if c["heldout_auc"] >= min_auc]


def choose_plan(tb: TrainedBundle, targets: Targets, optimizer_cfg: dict | None = None) -> Plan:
    ocfg = dict(tb.meta.get("optimizer", {}), **(optimizer_cfg or {}))
    skips = tuple(int(s) for s in ocfg.get("skips", (1, 2, 5, 10, 15, 30)))
    models = usable_models(tb, float(ocfg.get("min_auc", 0.0)))
    return optimize(tb.heldout, tb.costs, targets, skips=skips, models=models)


@contextmanager
def cpu_threads_beside_decoder(device, prefetch: int):
    """On CPU, leave one core to the decoding thread while the cheap stages run.

    With both cores given to torch the decoder and the CNN take turns; measured on the
    storefront clip (2 cores, a small CNN), the overlapped pass ran at about 650 frames/s with
    torch on 1 thread and 520-590 on 2, against 680-880 for decoding alone.
    """
    import torch

    n = torch.get_num_threads()
    if getattr(device, "type", str(device)) != "cpu" or prefetch <= 0 or n < 2:
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

    def fractions(self) -> dict[str, float]:
        n = max(len(self.frames), 1)
        return {s: float((self.decided_by == s).sum()) / n for s in STAGES}


def run_cascade(
    video: Video,
    tb: TrainedBundle,
    plan: Plan,
    reference,
    ref_key: str,
    start: int,
    end: int,
    *,
    batch_size: int = 256,
    use_label_cache: bool = True,
    frame_cache: bool = True,
    prefetch: int = 2,
    quiet: bool = False,
) -> CascadeResult:
    """Answer every frame of [start, end). `frame_cache` reads and fills the decoded-frame cache
    (decode once, query many); `prefetch` batches are decoded ahead in a thread."""
    t0 = time.perf_counter()
    stage_t = {"decode": 0.0, "diff": 0.0, "model": 0.0, "reference": 0.0}
    device = reference.device
    skip = max(1, int(plan.skip))
    min_score = tb.meta["labels"]["min_score"]
    cls = tb.meta["class_index"]

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
    state = np.full(len(processed), _REF, np.int8)
    if sizes:
        prev_last = None  # last processed frame of the previous batch, for "prev" difference detectors
        i = 0
        decode = partial(cached_batches, video) if frame_cache else video.batches
        with progress_bar(total=len(processed), desc="query", quiet=quiet) as bar, cpu_threads_beside_decoder(device, prefetch):
            t_dec = time.perf_counter()
            for batch in decode(sizes, start, end, stride=skip, batch_size=batch_size, prefetch=prefetch):
                stage_t["decode"] += time.perf_counter() - t_dec
                n = len(batch)
                st = np.full(n, _REF, np.int8)
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
                    todo &= ~unchanged
                    stage_t["diff"] += time.perf_counter() - t
                if model is not None and todo.any():
                    t = time.perf_counter()
                    p = specialized.predict_scores(model, batch.frames["model"][todo], mean, device=device)
                    sub = np.full(len(p), _REF, np.int8)
                    c_low = -np.inf if plan.c_low is None else plan.c_low  # None: the model never says no
                    c_high = np.inf if plan.c_high is None else plan.c_high
                    sub[p < c_low] = _NO
                    sub[p > c_high] = _YES
                    st[todo] = sub
                    stage_t["model"] += time.perf_counter() - t
                state[i : i + n] = st
                i += n
                bar.update(n)
                t_dec = time.perf_counter()
        if i < len(processed):  # the file ended early
            processed, state = processed[:i], state[:i]
    stopped_at = video.stopped_at

    # reference pass over the frames nobody else could decide
    t = time.perf_counter()
    need = processed[state == _REF]
    ref_scores: dict[int, float] = {}
    if len(need):
        lab = label_frames(video, reference, ref_key, need, use_cache=use_label_cache, quiet=quiet, desc="reference")
        ref_scores = dict(zip(lab.frames.tolist(), lab.score_of(cls).astype(float).tolist()))
        if video.stopped_at is not None:
            stopped_at = video.stopped_at if stopped_at is None else min(stopped_at, video.stopped_at)
    stage_t["reference"] = time.perf_counter() - t

    # resolve processed-frame answers in order (copies take the previous processed answer)
    plabel = np.zeros(len(processed), bool)
    pdec = np.empty(len(processed), dtype=object)
    last = False
    for j, (f, s) in enumerate(zip(processed.tolist(), state.tolist())):
        if s == _COPY:
            plabel[j], pdec[j] = last, "diff"
        elif s == _EMPTY:
            plabel[j], pdec[j] = False, "diff"
        elif s == _NO:
            plabel[j], pdec[j] = False, "model"
        elif s == _YES:
            plabel[j], pdec[j] = True, "model"
        else:
            if f not in ref_scores:  # frame vanished on the second pass (file damaged in between)
                processed, plabel, pdec = processed[:j], plabel[:j], pdec[:j]
                break
            plabel[j], pdec[j] = ref_scores[f] >= min_score, "reference"
        last = plabel[j]
    # expand to every frame: skipped frames copy the last processed frame
    last_frame = (processed[-1] + skip) if len(processed) else start
    end_eff = min(end, last_frame if stopped_at is None else max(stopped_at, start))
    frames = np.arange(start, end_eff, dtype=np.int64)
    pos = np.clip((frames - start) // skip, 0, max(len(processed) - 1, 0))
    labels = plabel[pos] if len(processed) else np.zeros(len(frames), bool)
    decided = pdec[pos].astype(str) if len(processed) else np.full(len(frames), "reference")
    decided[(frames - start) % skip != 0] = "skip"
    return CascadeResult(frames, frames / video.fps, labels, decided, ref_scores, time.perf_counter() - t0, stage_t, stopped_at)
