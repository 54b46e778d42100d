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
  4. train every kind of cheap model's grid (noscope.cheap: small CNNs, heads on the reference's first
     layers decoded at their own size), scoring each model on the held-out frames and timing it;
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
from . import cheap, decode_pool, difference
from .bundle_manifest import Candidate, DiffRecord, LabelRule, Manifest, ReferenceRecord, TrainedVideo, HeldoutRecord
from .cheap.base import TrainingData
from .config import MIN_TRAIN_FRAMES
from .costs import measure_decode_costs, measure_reference_cost
from .errors import NoscopeError
from .labels import Sample, labelled_sample
from .plans import Costs
from .progress import progress_bar
from .reference import Reference, configured_reference, reference_runtime
from .settings import Settings
from .split import SampleSplit, sample_frames, split
from .video import Luma, Video, decode_workers, open_video

LUMA = "luma"  # decode_sample's key of the sample's luma planes (the difference detectors')

MIN_FRAMES = MIN_TRAIN_FRAMES  # fewer labelled frames than this cannot be split into training and held-out


def train(video_path: str | Path, objects: str | list[str], out: Path, settings: Settings, start=None, end=None,
          quiet: bool = False, force: bool = False, say=print) -> Manifest:
    """Train a bundle for `objects` (one name or a list) on a segment of `video_path`, written to `out`.

    Several objects train one bundle for all of them: one sample labelled once, one model per grid
    point with one output per object, one set of difference detectors (see
    difference.fit_detectors), and per-object held-out truth and scores (bundle format 2).
    """
    t0 = time.perf_counter()
    run = TrainingRun.open(video_path, objects, settings, start, end)
    done = None if force else B.finished_bundle(out, run.key)
    if done is not None:
        say(f"{out} is already trained with these settings (use --force to retrain)")
        return done
    ts, labels = settings.train, settings.labels
    frames, run_ids = sample_frames(run.start, run.end, ts.max_frames, ts.run_length)
    sample = labelled_sample(run.video, run.reference, run.ref_key, frames, run_ids, run.classes, labels.min_score,
                             labels.smooth, quiet)
    _check_sample(sample, run, labels.min_score)
    parts = _split(sample, run, settings, say)
    kinds = list(cheap.KINDS.values())
    sizes = sorted({z for kind in kinds for z in kind.sizes(ts)})
    say(f"decoding {len(sample.frames)} sampled frames at {', '.join(f'{z}x{z}' for z in sizes)} and their luma "
        f"at {ts.diff_size}x{ts.diff_size}")
    d = settings.decode
    small = decode_sample(run.video, sample.frames, sizes, ts.diff_size, quiet, d.prefetch, decode_workers(d.workers))
    work = _work_dir(out, force)
    data = training_data(run, sample, parts, small, settings, work, say)
    grids = [kind.train_grid(data) for kind in kinds]
    diffs = difference.fit_and_score(small[LUMA], sample.truth, parts.blocks, parts,
                                     [int(k) for k in settings.optimizer.skips], ts.diff_grid, ts.diff_size)
    # what a query's pass pays (costs.measure_decode_costs): every frame decoded, each processed frame's
    # luma plane; each model's frames converted to RGB at its size count in its own cost (training_data)
    t_decode, t_luma = measure_decode_costs(run.video, run.start, run.end, Luma(ts.diff_size, ts.diff_size))
    costs = Costs(decode=t_decode, convert=t_luma, diff=diffs.costs, model={n: c for g in grids for n, c in g.costs.items()},
                  reference=float(sample.reference_cost or measure_reference_cost(run.reference)))
    candidates = [c for g in grids for c in g.candidates]
    manifest = _manifest(run, sample, parts, settings, costs, candidates, diffs.meta, round(time.perf_counter() - t0, 1))
    heldout = dict(frames=sample.frames[parts.heldout], truth=sample.truth[parts.heldout],
                   scores=sample.scores[parts.heldout].astype(np.float32), blocks=parts.blocks[parts.heldout],
                   **{f"model__{k}": v.astype(np.float32) for g in grids for k, v in g.heldout_scores.items()},
                   **{f"diff__{k}": v.astype(np.float32) for k, v in diffs.heldout_scores.items()})
    B.write_bundle(out, work, run.key, diffs.detectors, heldout, manifest, fmt=B.MULTI_FORMAT if run.multi else B.FORMAT)
    return manifest


def training_data(run: TrainingRun, sample: Sample, parts: SampleSplit, small: dict[int, np.ndarray],
                  settings: Settings, work: Path, say) -> TrainingData:
    """What every kind of cheap model trains on (noscope.cheap.base.TrainingData): the sample, its
    split and small frames, the sample at any other size decoded as it is read (not into the frame
    cache: 184 KB a frame at 320x192), and what converting to such a size costs a decoding pass."""
    v, ts = run.video, settings.train

    def conversion_cost(size: tuple[int, int]) -> float:
        # a frame a model sees is converted to RGB at its size for it alone (the pass reads the luma plane)
        return measure_decode_costs(v, run.start, run.end, tuple(size))[1]

    return TrainingData(run.objects, sample.truth, sample.scores, parts, small,
                        partial(_sample_batches, v, sample.frames, settings=settings), conversion_cost,
                        (v.width, v.height), run.reference, run.ref_key, ts, work, run.key, run.seed,
                        run.reference.device, say)


def _sample_batches(video: Video, frames: np.ndarray, size: tuple[int, int], *, settings: Settings):
    """The sampled frames at `size`, batch after batch in sample order (every one of them: a frame
    lost here would shift every later frame's label)."""
    d = settings.decode
    at = 0
    for b in decode_pool.batches(video, {"p": size}, frames=frames, batch_size=256, prefetch=d.prefetch,
                                 workers=decode_workers(d.workers)):
        if not np.array_equal(b.indices, frames[at : at + len(b)]):
            raise NoscopeError(f"frames of {video.path} that were labelled could not be decoded again at {size}")
        at += len(b)
        yield b.frames["p"]
    if at != len(frames):
        raise NoscopeError(f"only {at} of the {len(frames)} labelled frames of {video.path} decoded again at {size}")


@dataclass
class TrainingRun:
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
    def open(cls, video_path, objects, settings: Settings, start, end) -> "TrainingRun":
        objects = [objects] if isinstance(objects, str) else list(objects)
        video = open_video(video_path, settings.decode.backend)
        s, e = video.segment(start, end)
        reference, ref_key = configured_reference(settings.reference)
        classes = [reference.class_index(o) for o in objects]
        config = settings.as_config()
        # diff_plane: difference detectors on the luma plane (a bundle from before compares RGB: trained again)
        what = dict(video=video.hash, segment=[s, e], ref=ref_key, object=objects if len(objects) > 1 else objects[0],
                    labels=config["labels"], train=config["train"], seed=settings.seed, diff_plane="luma")
        key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return cls(video, s, e, objects, reference, ref_key, classes, settings.seed, key)


def _check_sample(sample: Sample, run: TrainingRun, min_score: float) -> None:
    if len(sample.frames) < MIN_FRAMES:
        raise NoscopeError(f"only {len(sample.frames)} frames could be labelled in the segment; train needs at least {MIN_FRAMES}")
    each = sample.truth.reshape(len(sample.truth), -1)
    for k, o in enumerate(run.objects):
        if not each[:, k].any():
            raise NoscopeError(
                f"too few positive frames: the reference never sees {o} (score >= {min_score}) in the "
                f"{len(sample.frames)} sampled frames; use a segment where it appears or lower labels.min_score"
            )


def _split(sample: Sample, run: TrainingRun, settings: Settings, say) -> SampleSplit:
    """Held-out frames after the training ones in time (train.split: forward), and a warning for
    every answer the held-out frames never show (the optimizer cannot estimate that rate)."""
    ts = settings.train
    block = min(int(ts.block), len(sample.frames) // 4)
    parts = SampleSplit(*split(sample.run_ids, sample.truth, ts.split, block, ts.heldout_fraction, ts.val_fraction,
                               run.seed, ts.heldout_min_runs))
    each = sample.truth.reshape(len(sample.truth), -1)
    for k, o in enumerate(run.objects):
        lacks = [w for w, m in (("positive", each[parts.heldout, k]), ("negative", ~each[parts.heldout, k])) if not m.any()]
        if lacks:
            say(f"warning: the held-out frames{f' of {o}' if run.multi else ''} have no {lacks[0]} frame, so the optimizer "
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


def _manifest(run: TrainingRun, sample: Sample, parts: SampleSplit, settings: Settings, costs: Costs,
              candidates: list[Candidate], diffs: list[dict], seconds: float) -> Manifest:
    """bundle.yaml's contents (without format and checksums, which the writer adds)."""
    objects, truth, rs, ls, config = run.objects, sample.truth, settings.reference, settings.labels, settings.as_config()
    each = truth.reshape(len(truth), -1)
    ho = parts.heldout
    ident = (dict(object=",".join(objects), objects=tuple(objects), class_indices=tuple(int(c) for c in run.classes))
             if run.multi else dict(object=objects[0], class_index=int(run.classes[0])))
    positives = {o: int(each[:, k].sum()) for k, o in enumerate(objects)} if run.multi else int(truth.sum())
    held_pos = {o: int(each[ho, k].sum()) for k, o in enumerate(objects)} if run.multi else int(truth[ho].sum())
    ref, v = run.reference, run.video
    return Manifest(
        **ident,
        reference=ReferenceRecord(ref.name, run.ref_key, list(ref.input_size) if ref.input_size else None, rs.weights,
                                  rs.cfg, rs.names, reference_runtime(ref)),
        labels=LabelRule(float(ls.min_score), int(ls.smooth)),
        video=TrainedVideo(str(v.path.resolve()), v.hash, v.fps, v.width, v.height, (int(run.start), int(run.end)),
                           int(len(sample.frames)), positives),
        seed=run.seed,
        settings_key=run.key,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        train=dict(config["train"], seconds=seconds),
        optimizer=config["optimizer"],
        costs=costs,
        candidates=tuple(candidates),
        diffs=tuple(DiffRecord.from_dict(d) for d in diffs),
        heldout=HeldoutRecord("heldout.npz", int(ho.sum()), held_pos),
    )


def decode_sample(video: Video, frames: np.ndarray, sizes: list[int], luma: int, quiet: bool, prefetch: int = 2,
                  workers: int = 1) -> dict:
    """The sampled frames in RGB at every small size (the CNNs'), and their luma plane at `luma` x
    `luma` under the key LUMA (the difference detectors', as a query's pass makes it)."""
    out: dict = {z: np.zeros((len(frames), z, z, 3), np.uint8) for z in sizes}
    out[LUMA] = np.zeros((len(frames), luma, luma), np.uint8)
    pos = {f: i for i, f in enumerate(frames.tolist())}
    want = {**{z: (z, z) for z in sizes}, LUMA: Luma(luma, luma)}
    with progress_bar(total=len(frames), desc="decode", quiet=quiet) as bar:
        for b in decode_pool.batches(video, want, frames=frames, batch_size=256, prefetch=prefetch, workers=workers):
            idx = [pos[f] for f in b.indices.tolist()]
            for z in want:
                out[z][idx] = b.frames[z]
            bar.update(len(b))
    return out