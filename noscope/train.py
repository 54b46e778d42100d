"""`noscope train`: label a sample, train specialized CNNs and difference detectors, save a bundle.

    noscope train ../shared/videos/storefront-cctv_people.mp4 --object person --end 60% --name store

`train` reads as its steps, each in the module that owns it; every step resumes (labels are
cached in chunks, every finished candidate is kept in the bundle's work/ folder and reused by the
next run with the same settings):
  1. sample frames of the segment in runs of consecutive frames (frame skip and difference
     detectors need temporal neighbours) and label them with the reference (split, labels);
  2. split the sample: the held-out frames for the optimizer come after the training frames in
     time, so drift between earlier and later minutes shows before a plan is chosen (split);
  3. decode the sample at the small sizes the models and detectors use (framecache, video);
  4. train every specialized CNN of the grid, score it on the held-out frames, time it (specialized);
  5. fit the difference detectors, score them on the held-out frames for every frame skip, time them (difference);
  6. time decoding and the reference (costs), and write bundle.yaml last: a bundle is complete or absent (bundle).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from . import bundle as B
from . import decode_pool, difference, specialized
from .config import MIN_TRAIN_FRAMES
from .costs import measure_decode_costs, measure_reference_cost
from .errors import NoscopeError
from .framecache import cached_batches
from .labels import Sample, labelled_sample
from .progress import progress_bar
from .reference import Reference, configured_reference
from .split import sample_frames, split
from .video import Video, decode_options, open_video

MIN_FRAMES = MIN_TRAIN_FRAMES  # fewer labelled frames than this cannot be split into training and held-out


def train(video_path: str | Path, object_name: str | list[str], out: Path, cfg: dict, start=None, end=None,
          quiet: bool = False, force: bool = False, say=print) -> dict:
    """Train a bundle for `object_name` on a segment of `video_path`, written to `out`.

    A list of several objects trains one bundle for all of them: one sample labelled once, one
    model per grid point with one output per object, one set of difference detectors (see
    difference.fit_detectors), and per-object held-out truth and scores (bundle format 2).
    """
    t0 = time.perf_counter()
    job = Job.open(video_path, object_name, cfg, start, end)
    done = None if force else B.finished(out, job.key)
    if done is not None:
        say(f"{out} is already trained with these settings (use --force to retrain)")
        return done
    tcfg = cfg["train"]
    frames, run_ids = sample_frames(job.start, job.end, tcfg["max_frames"], tcfg["run_length"])
    sample = labelled_sample(job.video, job.reference, job.ref_key, frames, run_ids, job.classes,
                             cfg["labels"]["min_score"], cfg["labels"]["smooth"], quiet)
    _check_sample(sample, job, cfg)
    parts = _split(sample, job, tcfg, say)
    archs = specialized.resolve_grid(tcfg["grid"])
    sizes = sorted({a.size for a in archs} | {tcfg["diff_size"]})
    say(f"decoding {len(sample.frames)} sampled frames at {', '.join(f'{z}x{z}' for z in sizes)}")
    small = decode_sample(job.video, sample.frames, sizes, quiet, **decode_options(cfg))
    work = _work_dir(out, force)
    grid = specialized.train_grid(archs, small, sample.truth, parts, job.objects, work, job.key, tcfg, job.seed,
                                  job.reference.device, say)
    diffs = difference.fit_and_score(small[tcfg["diff_size"]], sample.truth, parts.blocks, parts,
                                     [int(k) for k in cfg["optimizer"]["skips"]], tcfg["diff_grid"], tcfg["diff_size"])
    t_grab, t_convert = measure_decode_costs(job.video, job.start, job.end, (max(sizes), max(sizes)))
    costs = dict(decode=t_grab, convert=t_convert, diff=diffs.costs, model=grid.costs,
                 reference=float(sample.reference_cost or measure_reference_cost(job.reference)))
    meta = _manifest(job, sample, parts, cfg, costs, grid.candidates, diffs.meta, round(time.perf_counter() - t0, 1))
    heldout = dict(frames=sample.frames[parts.ho], truth=sample.truth[parts.ho],
                   scores=sample.scores[parts.ho].astype(np.float32), blocks=parts.blocks[parts.ho],
                   **{f"model__{k}": v.astype(np.float32) for k, v in grid.heldout_scores.items()},
                   **{f"diff__{k}": v.astype(np.float32) for k, v in diffs.heldout_scores.items()})
    B.write_bundle(out, work, job.key, grid.candidates, diffs.detectors, heldout, meta,
                   fmt=B.MULTI_FORMAT if job.multi else B.FORMAT)
    return meta


@dataclass
class Job:
    """What is trained: the video's segment, the objects, the reference, and the settings' key
    (a finished bundle with the same key is reused, a resumed run finds its work by it)."""

    video: Video
    start: int
    end: int
    objects: list[str]
    reference: Reference
    ref_key: str
    classes: list[int]
    seed: int
    key: str

    @property
    def multi(self) -> bool:
        return len(self.objects) > 1

    @classmethod
    def open(cls, video_path, object_name, cfg: dict, start, end) -> "Job":
        objects = [object_name] if isinstance(object_name, str) else list(object_name)
        video = open_video(video_path, cfg["decode"]["backend"])
        s, e = video.segment(start, end)
        reference, ref_key = configured_reference(cfg)
        classes = [reference.class_index(o) for o in objects]
        seed = int(cfg["seed"])
        settings = dict(video=video.hash, segment=[s, e], ref=ref_key, object=objects if len(objects) > 1 else objects[0],
                        labels=cfg["labels"], train=cfg["train"], seed=seed)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return cls(video, s, e, objects, reference, ref_key, classes, seed, key)


@dataclass
class Parts:
    """The sample split: block ids, and masks of the training, validation and held-out frames."""

    blocks: np.ndarray
    tr: np.ndarray
    va: np.ndarray
    ho: np.ndarray


def _check_sample(sample: Sample, job: Job, cfg: dict) -> None:
    if len(sample.frames) < MIN_FRAMES:
        raise NoscopeError(f"only {len(sample.frames)} frames could be labelled in the segment; train needs at least {MIN_FRAMES}")
    each = sample.truth.reshape(len(sample.truth), -1)
    for k, o in enumerate(job.objects):
        if not each[:, k].any():
            raise NoscopeError(
                f"too few positive frames: the reference never sees {o} (score >= {cfg['labels']['min_score']}) in the "
                f"{len(sample.frames)} sampled frames; use a segment where it appears or lower labels.min_score"
            )


def _split(sample: Sample, job: Job, tcfg: dict, say) -> Parts:
    """Held-out frames after the training ones in time (train.split: forward), and a warning for
    every answer the held-out frames never show (the optimizer cannot estimate that rate)."""
    block = min(int(tcfg["block"]), len(sample.frames) // 4)
    parts = Parts(*split(sample.run_ids, sample.truth, tcfg["split"], block, tcfg["heldout_fraction"],
                         tcfg["val_fraction"], job.seed, tcfg["heldout_min_runs"]))
    each = sample.truth.reshape(len(sample.truth), -1)
    for k, o in enumerate(job.objects):
        lacks = [w for w, m in (("positive", each[parts.ho, k]), ("negative", ~each[parts.ho, k])) if not m.any()]
        if lacks:
            say(f"warning: the held-out frames{f' of {o}' if job.multi else ''} have no {lacks[0]} frame, so the optimizer "
                f"cannot estimate that error rate; query-time verification checks the plan on the queried video")
    return parts


def _work_dir(out: Path, force: bool) -> Path:
    """Where finished candidates wait for the bundle (an interrupted run resumes from them)."""
    import shutil

    work = out / "work"
    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def _manifest(job: Job, sample: Sample, parts: Parts, cfg: dict, costs: dict, candidates: list[dict], diffs: list[dict],
              seconds: float) -> dict:
    """bundle.yaml's contents (without format and checksums, which the writer adds)."""
    objects, truth, rcfg, lcfg = job.objects, sample.truth, cfg["reference"], cfg["labels"]
    each = truth.reshape(len(truth), -1)
    ident = (dict(object=",".join(objects), objects=objects, class_indices=[int(c) for c in job.classes]) if job.multi
             else dict(object=objects[0], class_index=int(job.classes[0])))
    positives = {o: int(each[:, k].sum()) for k, o in enumerate(objects)} if job.multi else int(truth.sum())
    held_pos = {o: int(each[parts.ho, k].sum()) for k, o in enumerate(objects)} if job.multi else int(truth[parts.ho].sum())
    ref, v = job.reference, job.video
    return dict(
        **ident,
        reference=dict(name=ref.name, key=job.ref_key, input_size=list(ref.input_size) if ref.input_size else None,
                       weights=rcfg["weights"], cfg=rcfg["cfg"], names=rcfg["names"]),
        labels=dict(min_score=float(lcfg["min_score"]), smooth=int(lcfg["smooth"])),
        video=dict(path=str(v.path.resolve()), hash=v.hash, fps=v.fps, width=v.width, height=v.height,
                   segment=[int(job.start), int(job.end)], frames_labelled=int(len(sample.frames)), positives=positives),
        seed=job.seed,
        settings_key=job.key,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        train=dict(cfg["train"], seconds=seconds),
        optimizer=cfg["optimizer"],
        costs=costs,
        candidates=candidates,
        diffs=diffs,
        heldout=dict(file="heldout.npz", frames=int(parts.ho.sum()), positives=held_pos),
    )


def decode_sample(video: Video, frames: np.ndarray, sizes: list[int], quiet: bool, frame_cache: bool = True,
                  prefetch: int = 2, workers: int = 1) -> dict[int, np.ndarray]:
    """The sampled frames at every small size; through the frame cache, so the query that
    follows training does not decode these frames again."""
    out = {z: np.zeros((len(frames), z, z, 3), np.uint8) for z in sizes}
    pos = {f: i for i, f in enumerate(frames.tolist())}
    decode = partial(cached_batches if frame_cache else decode_pool.batches, video)
    with progress_bar(total=len(frames), desc="decode", quiet=quiet) as bar:
        for b in decode({z: (z, z) for z in sizes}, frames=frames, batch_size=256, prefetch=prefetch, workers=workers):
            idx = [pos[f] for f in b.indices.tolist()]
            for z in sizes:
                out[z][idx] = b.frames[z]
            bar.update(len(b))
    return out
