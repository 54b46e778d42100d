"""`noscope train --update`: a bundle learns from the reference answers its queries paid for.

    result = update_bundle(bundle_path("gate-car"), ["night1.mp4", "night2.mp4"], settings, say=print)
    result.version, result.good, result.reason, result.path

A camera drifts (light, season, a moved parking spot); a query on tonight's footage then pays the
reference for thousands of frames of exactly that footage: the cascade's uncertain frames, the
check's uniform draws, the strata a repair handed to the reference. They sit in the label cache
(noscope.labels, per video content hash). An update learns from them and writes a new version:

  1. collect every reference answer the label cache holds for each video, inside [start, end),
     less the frames the bundle already learnt from (and the original training segment); all of
     them are learnt from: the reference-stage frames are the cascade's uncertain band, exactly
     where a model needs to get better, and the check's draws are uniform samples of the rest;
  2. split forward in time: the last part of the newest video's answered frames (the videos come
     in the order given, the newest last; a folder's in name order) is held out, the rest is
     fitted on (noscope.split, as training splits its sample), less the frames whose picture a
     held-out frame shows again (a looped video, a recorder repeating frames: `repeats`);
  3. decode just those frames, in one sequential pass per video, at the sizes the models and the
     difference detectors take, and score them with the current version's models (a linear head:
     its pooled features, run through the reference's first layers);
  4. refit: linear heads from their weights on their kept training features and the new frames,
     each half (cheap.heads.LinearHeadModel.refit; a head without kept features on the new frames
     alone); difference detectors on the new frames (the empty scene of the newest negatives; the
     blocked weights where the frames show both answers, else the current ones). Specialized CNNs
     and spatial heads keep their weights; like every model they get new held-out scores, so the
     optimizer chooses their thresholds anew on the newest footage;
  5. validate, forward in time: the new and the current version on the same held-out frames (which
     neither was fitted on): each model's AUC, and the plan the optimizer would choose there (its
     errors, reference share, expected cost); also the current version's own plan (chosen on its
     own held-out frames) measured there, which shows the drift, and what the current version's
     own query of the newest video noted of its check (`vouched`, `gives_up`);
  6. write version N under NAME/versions/N/ (the held-out frames become its held-out set: tonight
     resembles the newest footage). When it validates at least as well as the current version
     (`judge`), NAME/ becomes a copy of it; otherwise it is kept aside and the run says why.

Each version's bundle.yaml carries its `lineage` (every version it descends from, with the videos,
the frames learnt from each, and the validation figures) and learnt.npz the frames it was fitted on,
which a query on one of those videos answers with the reference and never certifies on
(noscope.answer: `QueryRun.learnt_frames_answered`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import bundle as B
from . import decode_pool, difference
from .atomic import FolderBusy, hold_folder, save_npz
from .bundle_manifest import Candidate, DiffRecord, HeldoutRecord, HeldoutVideo, Manifest
from .versions import archive_top, publish, restore_top
from .errors import NoscopeError
from .labels import checks_noted, load_cached, object_truth, store_dir
from .optimizer import optimize
from .planning import choose_plan
from .plans import HeldOut, Targets, expected_cost, pass_decided, stage_fractions
from .prepare import bundle_reference
from .settings import Settings
from .simulate import simulate_plan
from .cheap.common import roc_auc
from .split import split
from .video import Luma, Video, decode_workers, open_video

MIN_HELDOUT = 30  # held-out frames of the newest video below this: nothing to validate a new version on
MIN_FIT = 20  # frames to fit on below this: nothing to learn
AUC_SLACK = 0.02  # a new version's best held-out AUC may be this much below the current one's...
AUC_RANKS = 0.6  # ... where the current one's ranks at all (below this, near chance's 0.5, no model of it can be used)
COST_SLACK = 0.02  # ... and its plan's expected cost this share above,
NOISE_FRAMES = 3  # ... or by as much as the reference on this many more of the held-out frames (a tie on so few)
MIN_PER_ANSWER = 10  # frames of each answer a blocked difference detector's refit needs
MAX_LEARNT = 20000  # a linear head keeps at most this many frames' features (older ones thinned evenly)
VOUCHED = 0.2  # a cheap share the current version's check let stand on the newest video: a reference-only plan gives it up


@dataclass
class Answers:
    """The reference answers one video holds for an update: frames in time order, every class's
    score, and the objects' truth."""

    video: Video
    frames: np.ndarray
    scores: np.ndarray  # (N, classes)
    truth: np.ndarray  # bool (N, K)
    runs: np.ndarray  # run of consecutive frame numbers each frame belongs to (unique over videos)


@dataclass
class Scored:
    """Every answered frame (all videos, in order): the difference detectors' small frames, each
    model's scores (N, K), linear heads' pooled features, and which frames are fitted on / held out."""

    frames: np.ndarray
    video_of: np.ndarray  # index into the answers list
    small: np.ndarray
    scores: dict[str, np.ndarray]
    features: dict[str, np.ndarray]
    truth: np.ndarray
    targets: np.ndarray  # the reference's scores of the objects, (N, K)
    runs: np.ndarray
    fit: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    heldout: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    repeats: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # neither: a held-out frame's picture again
    blocks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    inputs: str = ""  # inputs_digest of the update these frames are for


@dataclass
class UpdateResult:
    """What an update did: the version it made, where, whether it is now the bundle, and why not."""

    version: int
    path: Path
    good: bool
    reason: str
    parent: int
    entry: dict  # the version's lineage entry (videos, frames, validation figures)


@dataclass
class Unchanged:
    """An update that made no version, and rightly so: nothing new to learn (every answer collected was
    learnt from already), or the same inputs as a version made before (`matches`)."""

    version: int  # the bundle's version, as it stays
    why: str
    matches: int | None = None


class UpdateRefused(NoscopeError):
    """Too few new answered frames to learn from or to hold out: the bundle is unchanged. Not a failure
    of the run (query more video, then update), so it has an exit code of its own."""

    exit_code = 8


class NothingNew(NoscopeError):
    """Every reference answer collected on the videos was learnt from already (update_bundle: Unchanged)."""


def update_bundle(root: Path, videos: list, settings: Settings, start=None, end=None, quiet: bool = False,
                  say=print) -> UpdateResult | Unchanged:
    """Learn from the reference answers collected on `videos` (module docstring). Unchanged when there
    is nothing new to learn or a version was made from these very inputs before (nothing written);
    UpdateRefused when too few new frames to learn from or hold out; one NoscopeError, and nothing
    changed, when the videos hold no answers at all or the bundle is unusable."""
    root = Path(root)
    with updating(root):
        restore_top(root, say)
        parent = B.load_bundle(root)
        reference, ref_key = bundle_reference(settings.reference, parent, False)
        try:
            answers = collect(parent, reference, ref_key, videos, settings, start, end, say)
        except NothingNew as e:
            return Unchanged(parent.version, str(e))
        inputs = inputs_digest(root, answers, settings)
        same = made_from(root, inputs)
        if same is not None:
            return Unchanged(parent.version, f"its inputs (the bundle, the answers collected, the settings) are those "
                             f"version {same[0]} was made from ({same[1]}): nothing written", same[0])
        scored = dataclasses.replace(decode_and_score(parent, reference, answers, settings, quiet), inputs=inputs)
        split_forward(scored, answers, settings)
        checked = vouched(parent, store_dir(answers[-1].video, ref_key, reference), validation_targets(settings))
        return refit_validate_write(root, parent, reference, answers, scored, settings, say, checked)


@contextmanager
def updating(root: Path):
    """One update of a bundle at a time: a second is told which process holds it."""
    try:
        with hold_folder(root):
            yield
    except FolderBusy as e:
        raise NoscopeError(f"bundle {root} is being updated by another noscope run (pid {e.pid}); the bundle is "
                           "unchanged by this one: run it again when that one is done") from None


def inputs_digest(root: Path, answers: list[Answers], settings: Settings) -> str:
    """What decides the version an update makes: the bundle it starts from (its bundle.yaml, byte for
    byte, which holds every file's checksum), each video's answered frames and the reference's scores
    of them, and the settings it fits and validates with. The same inputs make the same version."""
    h = hashlib.sha256((root / "bundle.yaml").read_bytes())
    config = settings.as_config()
    relevant = {k: config[k] for k in ("seed", "reference", "labels", "train", "optimizer")}
    relevant["targets"] = [config["query"]["target_fpr"], config["query"]["target_fnr"]]
    h.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    for a in answers:
        h.update(a.video.hash.encode())
        h.update(np.ascontiguousarray(a.frames, np.int64).tobytes())
        h.update(np.ascontiguousarray(a.scores, np.float32).tobytes())
    return h.hexdigest()[:16]


def made_from(root: Path, inputs: str) -> tuple[int, str] | None:
    """(version, its status and reason) of a kept version made from these inputs, or None."""
    for n in reversed(B.versions(root)):
        try:
            entry = (B.recorded(root / B.VERSIONS / str(n), "lineage") or [{}])[-1]
        except (NoscopeError, TypeError, KeyError, IndexError):
            continue
        if isinstance(entry, dict) and entry.get("inputs") == inputs:
            status = entry.get("status", "good")
            return n, status + (f": {entry['reason']}" if entry.get("reason") else "")
    return None


# --------------------------------------------------------------------------- 1. collect


def collect(parent: B.TrainedBundle, reference, ref_key: str, videos: list, settings: Settings, start, end,
            say) -> list[Answers]:
    """Each video's reference answers from the label cache (module docstring, step 1), oldest video
    first. NothingNew when the videos hold answers but the bundle learnt from every one of them."""
    out, empty, learnt = [], [], []
    for path in videos:
        v = open_video(path, settings.decode.backend)
        s, e = v.segment(start, end)
        cached = load_cached(store_dir(v, ref_key, reference), len(reference.class_names))
        frames = np.array(sorted(f for f in cached if s <= f < e), np.int64)
        new = not_learnt(parent, v.hash, frames)
        if not len(new):
            (learnt if len(frames) else empty).append(str(path))
            continue
        out.append(answers_of(parent, v, new, cached, 1 + max((int(a.runs.max()) for a in out), default=-1)))
    name = B.bundle_label(parent.root)
    if not out and not learnt:
        raise NoscopeError(f"no reference answers collected on {', '.join(empty)}: nothing to learn; the bundle is "
                           f"unchanged (version {parent.version}). Run `noscope query` on them first")
    if not out:
        raise NothingNew(f"nothing new to learn: {name} (version {parent.version}) has learnt from every reference "
                         f"answer collected on {', '.join(learnt)} (or they are its training frames)")
    for path in empty:
        say(f"{path}: no reference answers collected there; learning from the other videos")
    for path in learnt:
        say(f"{path}: {name} has learnt from every reference answer collected there; learning from the other videos")
    return out


def not_learnt(parent: B.TrainedBundle, video_hash: str, frames: np.ndarray) -> np.ndarray:
    """The answered frames the bundle has not learnt from: neither its training segment (labelled for
    training, so in the cache too) nor frames a version of it was fitted on."""
    trained = parent.manifest.video
    if video_hash == trained.hash:
        frames = frames[(frames < trained.segment[0]) | (frames >= trained.segment[1])]
    return frames[~np.isin(frames, parent.learnt_frames(video_hash))]


def answers_of(parent: B.TrainedBundle, video: Video, frames: np.ndarray, cached: dict, first_run: int) -> Answers:
    """One video's answers on `frames`, its runs of consecutive frames numbered from `first_run`."""
    scores = np.stack([cached[f][0] for f in frames.tolist()]).astype(np.float32)
    runs = first_run + np.r_[0, np.cumsum(np.diff(frames) != 1)]
    truth = np.stack([object_truth(scores[:, parent.class_index(o)], float(parent.min_score), int(parent.smooth),
                                   blocks=runs) for o in parent.objects], axis=1)
    return Answers(video, frames, scores, truth, runs)


# --------------------------------------------------------------------------- 2. split, 3. decode and score


def split_forward(scored: Scored, answers: list[Answers], settings: Settings) -> None:
    """Held out: the last part in time of the newest video's answered frames (split.split, forward,
    as training splits its sample); fitted on: everything else."""
    ts = settings.train
    newest = scored.video_of == len(answers) - 1
    n = int(newest.sum())
    runs, truth = scored.runs[newest], scored.truth[newest]
    block = max(1, min(int(ts.block), n // 4))
    ids, _, _, ho = split(runs, truth, "forward", block, ts.heldout_fraction, ts.val_fraction, settings.seed,
                          ts.heldout_min_runs) if n >= 2 else (np.zeros(n, np.int64), None, None, np.zeros(n, bool))
    scored.heldout = np.zeros(len(scored.frames), bool)
    scored.heldout[np.flatnonzero(newest)[ho]] = True
    scored.repeats = repeats(scored.small, scored.heldout)
    scored.fit = ~scored.heldout & ~scored.repeats
    scored.blocks = np.full(len(scored.frames), -1, np.int64)
    scored.blocks[newest] = ids
    name = answers[-1].video.path
    if ho.sum() < MIN_HELDOUT:
        raise UpdateRefused(f"only {int(ho.sum())} answered frames of the newest video ({name}) could be held out to "
                           f"validate a new version (at least {MIN_HELDOUT}); the bundle is unchanged: query more of it first")
    if scored.fit.sum() < MIN_FIT:
        again = (f" ({int(scored.repeats.sum())} more show a picture a held-out frame shows: a looped or frozen video)"
                 if scored.repeats.any() else "")
        raise UpdateRefused(f"only {int(scored.fit.sum())} answered frames to learn from besides the {int(ho.sum())} held "
                           f"out{again} (at least {MIN_FIT}); the bundle is unchanged: query more video first")


def repeats(small: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """Frames not held out whose picture (at the difference detectors' size, byte for byte) a held-out
    frame shows: fitting on them would validate a version on pictures it learnt (a looped video, a
    recorder repeating frames), so they are learnt from by no version of this update."""
    keys = np.array([hash(bytes(f)) for f in small.reshape(len(small), -1)], np.int64) if len(small) else np.zeros(0, np.int64)
    return ~heldout & np.isin(keys, keys[heldout])


def decode_and_score(parent: B.TrainedBundle, reference, answers: list[Answers], settings: Settings,
                     quiet: bool) -> Scored:
    """Decode each video's answered frames at every size a model or detector takes (one sequential
    pass a video) and score them with the current version's models (module docstring, step 3)."""
    dz = int(parent.diffs[0].size) if parent.diffs else int(settings.train.diff_size)
    models = {c.name: parent.model(c.name, reference.device, reference) for c in parent.candidates}
    luma = diff_plane(parent) == "luma"  # the plane the current version's detectors compare (a bundle from before: RGB)
    sizes = {"diff": Luma(dz, dz) if luma else (dz, dz), **{f"m:{n}": tuple(m.size) for n, m in models.items()}}
    classes = [parent.class_index(o) for o in parent.objects]
    parts: list[dict] = []
    d = settings.decode
    for i, a in enumerate(answers):
        got = dict(frames=[], small=[], scores={n: [] for n in models}, features={})
        for b in decode_pool.batches(a.video, sizes, frames=a.frames, batch_size=128, prefetch=d.prefetch,
                                     workers=decode_workers(d.workers)):
            got["frames"].append(b.indices)
            got["small"].append(b.frames["diff"])
            for n, m in models.items():
                if m.can_refit:  # a linear head: its pooled features, scored
                    z = m.features(b.frames[f"m:{n}"])
                    got["features"].setdefault(n, []).append(z)
                    got["scores"][n].append(m.from_features(z))
                else:
                    got["scores"][n].append(np.asarray(m.score(b.frames[f"m:{n}"]), np.float32).reshape(len(b), -1))
        if not got["frames"]:
            continue  # the video no longer decodes: nothing of it to learn from
        frames = np.concatenate(got["frames"])
        keep = np.isin(a.frames, frames)  # a frame that no longer decodes is left out
        parts.append(dict(got, frames=frames, video=np.full(len(frames), i), truth=a.truth[keep],
                          targets=np.clip(a.scores[keep][:, classes], 0, 1), runs=a.runs[keep]))
    if not parts:
        raise NoscopeError(f"none of the answered frames of {', '.join(str(a.video.path) for a in answers)} decode any "
                           "more; the bundle is unchanged")
    cat = lambda key: np.concatenate([p[key] for p in parts])  # noqa: E731
    join = lambda key, n: np.concatenate([np.concatenate(p[key][n]) for p in parts if p[key].get(n)])  # noqa: E731
    return Scored(frames=cat("frames"), video_of=cat("video"), small=np.concatenate([np.concatenate(p["small"]) for p in parts]),
                  scores={n: join("scores", n) for n in models},
                  features={n: join("features", n) for n in models if models[n].can_refit},
                  truth=cat("truth"), targets=cat("targets"), runs=cat("runs"))


# --------------------------------------------------------------------------- 4. refit


@dataclass
class Fitted:
    """A version's models and detectors and their scores on the held-out frames."""

    scores: dict[str, np.ndarray]  # model -> (H, K) on the held-out frames
    detectors: list[difference.DiffDetector]
    diff_scores: dict[str, dict[int, np.ndarray]]
    heads: dict = field(default_factory=dict)  # refitted models (linear heads): name -> cheap.CheapModel
    refitted_diffs: list[str] = field(default_factory=list)


def current(parent: B.TrainedBundle, scored: Scored, skips: list[int]) -> Fitted:
    """The current version on the held-out frames: its models' scores, its detectors' scores."""
    ho = scored.heldout
    dets = [parent.diff(d.name) for d in parent.diffs]
    return Fitted({n: s[ho] for n, s in scored.scores.items()}, dets, diff_scores(dets, scored, skips))


def refitted(parent: B.TrainedBundle, scored: Scored, settings: Settings, reference) -> Fitted:
    """The new version (module docstring, step 4)."""
    fit, ho = scored.fit, scored.heldout
    scores, heads = {n: s[ho] for n, s in scored.scores.items()}, {}
    for n, z in scored.features.items():
        head = parent.model(n, reference.device, reference)
        heads[n] = head.refit(z[fit], scored.targets[fit], seed=int(settings.seed))
        scores[n] = heads[n].from_features(z[ho])
    dets, changed = refit_detectors(parent, scored, settings)
    return Fitted(scores, dets, diff_scores(dets, scored, [int(k) for k in settings.optimizer.skips]), heads, changed)


def refit_detectors(parent: B.TrainedBundle, scored: Scored, settings: Settings) -> tuple[list, list[str]]:
    """The difference detectors fitted on the frames learnt from; a detector whose fit those frames
    cannot support (too few of an answer, too few frame pairs that show a change) stays as it was."""
    fit = scored.fit
    skips = [int(k) for k in settings.optimizer.skips]
    frames, any_yes, runs = scored.small[fit], scored.truth[fit].any(axis=1), scored.runs[fit]
    grid = next((int(d.grid) for d in parent.diffs if d.mode == "blocked"), int(settings.train.diff_grid))
    new = {d.name: dataclasses.replace(d, plane=diff_plane(parent))
           for d in difference.fit_detectors(frames, scored.truth[fit], runs, skips=skips, grid=grid)}
    changes = pair_changes(any_yes, runs, skips)
    can = {"prev-global": True, "ref-global": int((~any_yes).sum()) >= MIN_PER_ANSWER,
           "ref-blocked": min(int(any_yes.sum()), int((~any_yes).sum())) >= MIN_PER_ANSWER,
           "prev-blocked": min(int(changes.sum()), int((~changes).sum())) >= MIN_PER_ANSWER}
    out, changed = [], []
    for d in parent.diffs:
        if can.get(d.name) and d.name in new:
            out.append(new[d.name])
            changed.append(d.name)
        else:
            out.append(parent.diff(d.name))
    return out, changed


def diff_plane(parent: B.TrainedBundle) -> str:
    """What the bundle's difference detectors compare: the luma plane, or RGB (a bundle from before)."""
    return str(parent.diffs[0].params.get("plane", "rgb")) if parent.diffs else "luma"


def pair_changes(yes: np.ndarray, runs: np.ndarray, skips: list[int]) -> np.ndarray:
    """For every pair of frames s apart in one run (s in skips): whether the answer changed."""
    out = []
    for s in skips:
        if s < len(runs):
            t = np.flatnonzero(runs[s:] == runs[:-s]) + s
            out.append(yes[t] != yes[t - s])
    return np.concatenate(out) if out else np.zeros(0, bool)


def diff_scores(dets: list, scored: Scored, skips: list[int]) -> dict[str, dict[int, np.ndarray]]:
    ho = scored.heldout
    return {d.name: difference.diff_scores(d, scored.small[ho], scored.blocks[ho], skips) for d in dets}


# --------------------------------------------------------------------------- 5. validate


def validation_targets(settings: Settings) -> Targets:
    """The targets a new version is validated at: the queries' (query.target_fpr / target_fnr)."""
    q, o = settings.query, settings.optimizer
    return Targets(float(q.target_fpr), float(q.target_fnr), o.metric, int(o.window))


def heldouts(parent: B.TrainedBundle, scored: Scored, f: Fitted) -> dict[str, HeldOut]:
    """One version's view of the held-out frames, per object."""
    ho = scored.heldout
    kinds = {d.name: d.kind for d in f.detectors}
    return {o: HeldOut(truth=scored.truth[ho, k], blocks=scored.blocks[ho], diff_kinds=kinds, frames=scored.frames[ho],
                       model_scores={n: s[:, k] for n, s in f.scores.items()}, diff_scores=f.diff_scores)
            for k, o in enumerate(parent.objects)}


def aucs(parent: B.TrainedBundle, views: dict[str, HeldOut]) -> dict[str, dict[str, float | None]]:
    """object -> model -> held-out AUC (None: that output is never used, NaN: one answer only)."""
    out = {}
    for o, h in views.items():
        out[o] = {c.name: None if parent.multi and c.heldout_aucs[o] is None
                  else float(roc_auc(h.model_scores[c.name], h.truth)) for c in parent.candidates}
    return out


def figures(parent: B.TrainedBundle, views: dict[str, HeldOut], targets: Targets, settings: Settings) -> dict:
    """A version on the held-out frames: each object's best model AUC, and the plan the optimizer
    chooses there: its errors, its reference share and expected cost."""
    each = aucs(parent, views)
    min_auc = float(settings.optimizer.min_auc)
    offered = {o: [n for n, a in m.items() if a is not None and a >= min_auc] for o, m in each.items()}
    plan = optimize(views, parent.costs, targets, models=offered, **settings.optimizer.options())
    best = {o: max((a for a in m.values() if a is not None and np.isfinite(a)), default=None) for o, m in each.items()}
    n = len(next(iter(views.values())).truth)
    return dict(best_auc={o: _r(a) for o, a in best.items()}, aucs={o: {n: _r(a) for n, a in m.items()} for o, m in each.items()},
                answers={o: [int(h.truth.sum()), int((~h.truth).sum())] for o, h in views.items()},
                noise_ms=_r(NOISE_FRAMES / n * parent.costs.reference * 1e3, 4),
                plan=plan.describe(), expected_cost_ms=_r(plan.expected_cost * 1e3, 4),
                reference_share=_r(plan.fractions["reference"]),
                errors={o: dict(fpr=_r(p.heldout_fpr), fnr=_r(p.heldout_fnr)) for o, p in plan.plans.items()})


def as_planned(parent: B.TrainedBundle, views: dict[str, HeldOut], targets: Targets, settings: Settings) -> dict:
    """The current version's own plan (chosen on its own held-out frames, as tonight's query would)
    measured on the held-out frames of the newest video: the drift it meets."""
    plan = choose_plan(parent, targets, parent.objects, settings.optimizer)
    out = simulate_plan(plan, views)
    errors = {}
    for o, (labels, _) in out.items():
        t = views[o].truth
        errors[o] = dict(fpr=_r(float(np.mean(labels[~t])) if (~t).any() else None),
                         fnr=_r(float(np.mean(~labels[t])) if t.any() else None))
    fr = stage_fractions(pass_decided([d for _, d in out.values()]))
    return dict(plan=plan.describe(), errors=errors, reference_share=_r(fr["reference"]),
                expected_cost_ms=_r(expected_cost(plan.shared, parent.costs, fr) * 1e3, 4))


def judge(new: dict, cur: dict, targets: Targets) -> str:
    """Why the new version validates worse than the current one ("" when it validates at least as
    well): per object a best AUC more than AUC_SLACK lower (where the current one's is at least
    AUC_RANKS and the held-out frames show MIN_PER_ANSWER frames of each answer: one positive frame's
    rank is no ranking), or an error above both the target and the current plan's; an expected cost
    higher by more than COST_SLACK of the current one's or than NOISE_FRAMES more held-out frames for
    the reference would add (`noise_ms`). Both plans are the optimizer's on the same held-out frames,
    so they differ only by what the models and detectors make of footage neither was fitted on."""
    why = []
    for o, a in new["best_auc"].items():
        c = cur["best_auc"].get(o)
        if (c is not None and c < AUC_RANKS) or min(new.get("answers", {}).get(o, [MIN_PER_ANSWER])) < MIN_PER_ANSWER:
            pass  # the current models do not rank this object there, or too few frames of an answer to tell
        elif a is not None and c is not None and a < c - AUC_SLACK:
            why.append(f"{o}'s best held-out AUC {a:.3f} < the current version's {c:.3f}")
        elif a is None and c is not None:
            why.append(f"no model of it ranks {o} on the held-out frames (the current version's: AUC {c:.3f})")
        for rate in ("fpr", "fnr"):
            n, k = new["errors"][o][rate], cur["errors"][o][rate]
            if n is not None and n > max(getattr(targets, rate), k or 0.0) + 1e-9:
                why.append(f"its plan's held-out {rate.upper()} of {o} {n:.2%} > the target and the current version's")
    tie = max(cur["expected_cost_ms"] * COST_SLACK, new.get("noise_ms", 0.0))
    if new["expected_cost_ms"] > cur["expected_cost_ms"] + tie + 1e-9:
        why.append(f"its plan costs {new['expected_cost_ms']:.3g} ms a frame > the current version's "
                   f"{cur['expected_cost_ms']:.3g} (reference on {new['reference_share']:.0%} of the held-out frames, "
                   f"against {cur['reference_share']:.0%})")
    return "; ".join(why)


def too_thin(parent: B.TrainedBundle, scored: Scored) -> str:
    """Why the newest held-out frames cannot stand in for the current version's ("" when they can): the
    new version plans on them alone, and where they show under MIN_PER_ANSWER frames of an answer the
    current held-out set shows, no model has an AUC there and the new plan would leave every frame a
    model settled today to the reference (an empty doorway's minute says nothing of the people)."""
    why = []
    for k, o in enumerate(parent.objects):
        new, cur = scored.truth[scored.heldout, k], np.asarray(parent.heldouts[o].truth, bool)
        for answer, n, c in (("positive", int(new.sum()), int(cur.sum())), ("negative", int((~new).sum()), int((~cur).sum()))):
            if n < MIN_PER_ANSWER <= c:
                why.append(f"its held-out frames show {n} {answer} frames of {o} (the current version's show {c}; "
                           f"at least {MIN_PER_ANSWER} are needed to rank its models)")
    return "; ".join(why)


def vouched(parent: B.TrainedBundle, labels_dir: Path, targets: Targets) -> dict | None:
    """The newest record of a query of the newest video by the current version at these targets
    (labels.checks_noted), or None."""
    root = str(parent.root.resolve())
    want = dict(fpr=targets.fpr, fnr=targets.fnr)
    got = [r for r in checks_noted(labels_dir)
           if r.get("bundle") == root and r.get("version") == parent.version and r.get("targets") == want]
    return got[-1] if got else None


def gives_up(new: dict, checked: dict | None, version: int, name: str) -> str:
    """Why the new version gives up what the current one showed on the newest video ("" when it does
    not): its plan is the reference on every held-out frame, while the current version's query of
    that video settled at least VOUCHED of the frames without the reference and its check, having
    drawn frames, repaired nothing. The held-out frames are the ones the reference answered, scattered
    through the night, where a frame skip or a difference from the previous frame cannot be measured;
    the check's draws were uniform over the frames those stages settled."""
    if not checked or checked.get("escalated") or not checked.get("checked") or checked.get("cheap", 0) < VOUCHED:
        return ""
    if new["reference_share"] < 1 - 1e-9:
        return ""
    return (f"its plan is the reference on every held-out frame, while version {version}'s query of {name} at these "
            f"targets settled {checked['cheap']:.0%} of the frames without the reference and its check repaired nothing")


def _r(x, digits: int = 4):
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


# --------------------------------------------------------------------------- 6. write


def refit_validate_write(root: Path, parent: B.TrainedBundle, reference, answers: list[Answers], scored: Scored,
                         settings: Settings, say, checked: dict | None = None) -> UpdateResult:
    """Steps 4-6 of the module docstring (`checked`: what the current version's check found on the
    newest video, `vouched`)."""
    skips = [int(k) for k in settings.optimizer.skips]
    targets = validation_targets(settings)
    old, new = current(parent, scored, skips), refitted(parent, scored, settings, reference)
    views_old, views_new = heldouts(parent, scored, old), heldouts(parent, scored, new)
    fig_new, fig_old = figures(parent, views_new, targets, settings), figures(parent, views_old, targets, settings)
    reason = "; ".join(filter(None, [judge(fig_new, fig_old, targets), too_thin(parent, scored),
                                     gives_up(fig_new, checked, parent.version, answers[-1].video.path.name)]))
    archive_top(root, parent)  # the current version is kept before anything is written
    n = 1 + max(B.versions(root) + [parent.version])
    entry = lineage_entry(n, parent, answers, scored, new, dict(
        targets=dict(fpr=targets.fpr, fnr=targets.fnr), heldout_frames=int(scored.heldout.sum()),
        heldout_positives={o: int(scored.truth[scored.heldout, k].sum()) for k, o in enumerate(parent.objects)},
        new=fig_new, current=fig_old, current_as_planned=as_planned(parent, views_old, targets, settings),
        current_checked=checked), reason)
    entry["inputs"] = scored.inputs or None  # a later update with the same inputs writes nothing (made_from)
    path = write_version(root, n, parent, scored, new, views_new, entry)
    if not reason:
        publish(root, path)
    say(f"version {n}: {entry['learnt_frames']} frames learnt from {len(answers)} video(s), validated on "
        f"{entry['validation']['heldout_frames']} held-out frames of {answers[-1].video.path.name}")
    return UpdateResult(n, path, not reason, reason, parent.version, entry)


def lineage_entry(n: int, parent: B.TrainedBundle, answers: list[Answers], scored: Scored, new: Fitted,
                  validation: dict, reason: str) -> dict:
    """This version's line in bundle.yaml's lineage."""
    videos = []
    for i, a in enumerate(answers):
        mine = scored.video_of == i
        videos.append(dict(path=str(a.video.path.resolve()), hash=a.video.hash, frames=int((mine & scored.fit).sum()),
                           heldout=int((mine & scored.heldout).sum()), repeats=int((mine & scored.repeats).sum()),
                           positives={o: int(scored.truth[mine, k].sum()) for k, o in enumerate(parent.objects)},
                           span=[int(scored.frames[mine].min()), int(scored.frames[mine].max()) + 1]))
    return dict(version=n, parent=parent.version, made_by="update",
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"), status="aside" if reason else "good",
                reason=reason or None, learnt_frames=int(scored.fit.sum()), videos=videos,
                refitted=dict(heads=sorted(new.heads), diffs=new.refitted_diffs), validation=validation)


def first_entry(m: Manifest) -> dict:
    """The lineage entry of a version as trained (a bundle written before lineage existed)."""
    v, ho = m.video, m.heldout
    aucs = {c.name: c.heldout_aucs if c.heldout_aucs is not None else c.heldout_auc for c in m.candidates}
    return dict(version=m.number, made_by="train", created=m.created, status="good",
                videos=[dict(path=v.path, hash=v.hash, segment=v.segment, frames=v.frames_labelled, positives=v.positives)],
                validation=dict(heldout_frames=ho.frames, heldout_positives=ho.positives, aucs=aucs))


def write_version(root: Path, n: int, parent: B.TrainedBundle, scored: Scored, new: Fitted, views: dict[str, HeldOut],
                  entry: dict) -> Path:
    """Version `n` under root/versions/n: written into a temp folder, renamed into place when complete."""
    final = root / B.VERSIONS / str(n)
    tmp = root / B.VERSIONS / f".tmp-{n}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "models").mkdir(parents=True)
    (tmp / "diff").mkdir()
    ho, multi = scored.heldout, parent.multi
    col = (lambda a: a) if multi else (lambda a: a[:, 0])
    frames = scored.frames[ho]
    newest = entry["videos"][-1]
    heldout = HeldoutRecord("heldout.npz", int(ho.sum()),
                            {o: int(scored.truth[ho, k].sum()) for k, o in enumerate(parent.objects)} if multi
                            else int(scored.truth[ho, 0].sum()),
                            HeldoutVideo(newest["path"], newest["hash"], (int(frames.min()), int(frames.max()) + 1)))
    m = parent.manifest
    m = replace(m, candidates=tuple(version_candidates(n, parent, scored, new, views, tmp)),
                diffs=tuple(diff_meta(parent, new.detectors, tmp)), heldout=heldout, version=n,
                created=entry["created"], learnt="learnt.npz", lineage=list(m.lineage or [first_entry(m)]) + [entry])
    arrays = dict(frames=frames, truth=col(scored.truth[ho]), scores=col(scored.targets[ho]).astype(np.float32),
                  blocks=scored.blocks[ho], **{f"model__{k}": col(v).astype(np.float32) for k, v in new.scores.items()},
                  **{f"diff__{d}@{s}": v.astype(np.float32) for d, by in new.diff_scores.items() for s, v in by.items()})
    save_npz(tmp / "heldout.npz", **arrays, **{B.MADE_FOR: np.array(json.dumps(m.made_for()))})
    save_npz(tmp / "learnt.npz", **learnt_record(parent, entry, scored))
    B.write_manifest(tmp, json.loads(json.dumps(m.content())), fmt=int(parent.manifest.format))
    B.load_bundle(tmp)  # what was written reads back whole before it is put in place
    os.replace(tmp, final)
    return final


def version_candidates(n: int, parent: B.TrainedBundle, scored: Scored, new: Fitted, views: dict[str, HeldOut],
                       folder: Path) -> list[Candidate]:
    """bundle.yaml's candidates for version `n`: every model's held-out AUCs on the new held-out
    frames; a refitted model's file, the features it was fitted on and its refit, written into
    `folder`; every other model's files copied from the current version."""
    each = aucs(parent, views)
    out = []
    for c in parent.candidates:
        if parent.multi:
            per = {o: each[o][c.name] for o in parent.objects}
            trusted = [a for a in per.values() if a is not None]
            c = replace(c, heldout_aucs=per, heldout_auc=float(np.min(trusted)) if trusted else float("nan"))
        else:
            c = replace(c, heldout_auc=float(each[parent.objects[0]][c.name]))
        if c.name in new.heads:
            model = new.heads[c.name]
            model.save(folder / c.file)
            c = replace(c, learnt_from=c.learnt_from or f"models/{c.name}-learnt.npz")
            z, y = thinned(*model.learnt_from)
            save_npz(folder / c.learnt_from, features=z.astype(np.float16), targets=y.astype(np.float16))
            c = replace(c, refit=dict(version=n, frames=int(scored.fit.sum())))
        else:
            shutil.copyfile(parent.root / c.file, folder / c.file)
            if c.learnt_from:
                shutil.copyfile(parent.root / c.learnt_from, folder / c.learnt_from)
        out.append(c)
    return out


def diff_meta(parent: B.TrainedBundle, dets: list, folder: Path) -> list[DiffRecord]:
    """bundle.yaml's diffs for the version's detectors (their measured costs are the current ones':
    the same computation on the same size), their pictures of the empty scene saved."""
    old = {d.name: d for d in parent.diffs}
    out = []
    for d in dets:
        entry = dict(d.to_dict(), cost_s=old[d.name].cost_s, size=old[d.name].size)
        if d.reference_image is not None:
            entry["reference_image_file"] = f"diff/{d.name}.npy"
            difference.save_npy(folder / entry["reference_image_file"], d.reference_image)
        out.append(DiffRecord.from_dict(entry))
    return out


def learnt_record(parent: B.TrainedBundle, entry: dict, scored: Scored) -> dict[str, np.ndarray]:
    """learnt.npz: per video (v<hash>) every frame this version and its ancestors were fitted on or
    validated with (the held-out frames choose its thresholds)."""
    out = {}
    if parent.manifest.learnt:
        out.update(B.load_npz(parent.root, parent.manifest.learnt))
    for i, v in enumerate(entry["videos"]):
        mine = scored.frames[scored.video_of == i]
        out[f"v{v['hash']}"] = np.union1d(out.get(f"v{v['hash']}", np.zeros(0, np.int64)), mine).astype(np.int64)
    return out


def thinned(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_LEARNT rows: the newest kept whole, older ones thinned evenly."""
    if len(z) <= MAX_LEARNT:
        return z, y
    keep = np.r_[np.linspace(0, len(z) - MAX_LEARNT // 2 - 1, MAX_LEARNT - MAX_LEARNT // 2).round().astype(np.int64),
                 np.arange(len(z) - MAX_LEARNT // 2, len(z))]
    return z[keep], y[keep]
