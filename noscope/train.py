"""`noscope train`: label a sample, train specialized CNNs and difference detectors, save a bundle.

    noscope train ../shared/videos/storefront-cctv_people.mp4 --object person --end 60% --name store

Steps, each resumable (labels are cached in chunks, every finished candidate is kept in the
bundle's work/ folder and reused by the next run with the same settings):
  1. sample frames of the segment in runs of consecutive frames (frame skip and difference
     detectors need temporal neighbours) and label them with the reference;
  2. split the sample into blocks; 40% of the blocks are held out for the optimizer, the rest
     train the models (with a slice for early stopping), so no held-out frame is ever a
     near-duplicate neighbour of a training frame within the same block;
  3. train every specialized CNN of the grid, score it on the held-out frames, time it;
  4. fit the difference detectors, score them on the held-out frames for every frame skip, time them;
  5. time decoding and the reference, and write bundle.yaml last (a bundle is complete or absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from . import bundle as B
from . import difference, specialized
from .config import MIN_TRAIN_FRAMES
from .errors import NoscopeError
from .framecache import cached_batches
from .labels import label_frames
from .metrics import smooth
from .progress import progress_bar
from .reference import load_reference, reference_key
from .split import sample_frames, split
from .video import Video, decode_options, open_video

log = logging.getLogger(__name__)

MIN_EXAMPLES_PER_CLASS = 10  # fewer training frames of one answer: no CNN, cascade uses skip/diff/reference
MIN_FRAMES = MIN_TRAIN_FRAMES  # fewer labelled frames than this cannot be split into training and held-out


def object_truth(scores: np.ndarray, min_score: float, smooth_k: int, blocks: np.ndarray | None = None) -> np.ndarray:
    """The reference's answer: score >= min_score, optionally majority-smoothed over time
    (within runs of consecutive frames). The cascade is judged against this."""
    return smooth(scores >= min_score, smooth_k, blocks=blocks)


def resolve_grid(grid) -> list:
    if grid == "default":
        return specialized.default_grid()
    if grid == "small":
        return specialized.small_grid()
    if isinstance(grid, list):
        return [specialized.Arch.parse(n) for n in grid]
    raise NoscopeError(f"unknown train.grid {grid!r}: use default, small, or a list like [c2f32d128s50]")


def measure_decode_costs(video: Video, start: int, end: int, size: tuple[int, int], n: int = 200) -> tuple[float, float]:
    """Seconds per frame to demux+decode (grab) and to also convert+resize one frame."""
    import cv2

    n = max(1, min(n, end - start))
    cap = cv2.VideoCapture(str(video.path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    t0 = time.perf_counter()
    grabbed = sum(1 for _ in range(n) if cap.grab())
    t_grab = (time.perf_counter() - t0) / max(grabbed, 1)
    cap.release()
    begin = 0 if video.counted else start  # a counted file is decoded from its start: time its first frames
    t0 = time.perf_counter()
    got = sum(len(b) for b in video.batches({"x": size}, begin, begin + n))
    t_full = (time.perf_counter() - t0) / max(got, 1)
    return t_grab, max(t_full - t_grab, 1e-7)


def measure_reference_cost(reference, n: int = 8) -> float:
    w, h = reference.input_size or (640, 360)
    frames = np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    reference.predict(frames[:1])  # warm-up
    t0 = time.perf_counter()
    reference.predict(frames)
    return (time.perf_counter() - t0) / n


def _settings_key(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train(
    video_path: str | Path,
    object_name: str | list[str],
    out: Path,
    cfg: dict,
    start=None,
    end=None,
    quiet: bool = False,
    force: bool = False,
    say=print,
) -> dict:
    """Train a bundle for `object_name` on a segment of `video_path`, written to `out`.

    A list of several objects trains one bundle for all of them: one sample labelled once, one
    model per grid point with one output per object, one set of difference detectors (see
    difference.fit_detectors), and per-object held-out truth and scores (bundle format 2).
    """
    t_start = time.perf_counter()
    objects = [object_name] if isinstance(object_name, str) else list(object_name)
    multi = len(objects) > 1
    video = open_video(video_path, cfg["decode"]["backend"])
    s, e = video.segment(start, end)
    rcfg, tcfg, lcfg = cfg["reference"], cfg["train"], cfg["labels"]
    reference = load_reference(
        rcfg["name"], device=_device(cfg), weights=rcfg["weights"], cfg=rcfg["cfg"], names=rcfg["names"],
        input_size=tuple(rcfg["input_size"]) if rcfg["input_size"] else None, batch_size=rcfg["batch_size"],
    )
    classes = [reference.class_index(o) for o in objects]
    ref_key = reference_key(reference)

    # A finished bundle with the same settings is reused rather than trained again.
    seed = int(cfg["seed"])
    settings = dict(video=video.hash, segment=[s, e], ref=ref_key, object=objects if multi else objects[0], labels=lcfg,
                    train=tcfg, seed=seed)
    skey = _settings_key(settings)
    work = out / "work"
    if not force and (out / "bundle.yaml").is_file():
        try:
            meta = B.load_manifest(out)
        except NoscopeError:
            meta = {}
        if meta.get("settings_key") == skey:
            say(f"{out} is already trained with these settings (use --force to retrain)")
            return meta

    # 1. sample + label
    frames, run_ids = sample_frames(s, e, tcfg["max_frames"], tcfg["run_length"])
    labels = label_frames(video, reference, ref_key, frames, quiet=quiet, desc="label")
    if len(labels.frames) < len(frames):
        keep = np.isin(frames, labels.frames)
        frames, run_ids = frames[keep], run_ids[keep]
    if len(frames) < MIN_FRAMES:
        raise NoscopeError(f"only {len(frames)} frames could be labelled in the segment; train needs at least {MIN_FRAMES}")
    # One column per object (several objects), or one vector: the single-object arrays as ever.
    scores = labels.scores[:, classes] if multi else labels.score_of(classes[0])
    truth = (np.stack([object_truth(c, lcfg["min_score"], lcfg["smooth"], blocks=run_ids) for c in scores.T], axis=1)
             if multi else object_truth(scores, lcfg["min_score"], lcfg["smooth"], blocks=run_ids))
    each = truth.reshape(len(truth), -1)  # (N, objects) view for the per-object checks
    for k, o in enumerate(objects):
        if not each[:, k].any():
            raise NoscopeError(
                f"too few positive frames: the reference never sees {o} (score >= {lcfg['min_score']}) in the "
                f"{len(frames)} sampled frames; use a segment where it appears or lower labels.min_score"
            )
    ref_cost = labels.seconds / max(len(frames) - labels.from_cache, 1) if labels.seconds > 0 and len(frames) - labels.from_cache >= 32 else None

    # 2. split: held-out frames after the training ones in time (train.split: forward)
    block = min(int(tcfg["block"]), len(frames) // 4)
    block_ids, tr, va, ho = split(run_ids, truth, tcfg["split"], block, tcfg["heldout_fraction"], tcfg["val_fraction"],
                                  seed, tcfg["heldout_min_runs"])
    for k, o in enumerate(objects):
        lacks = [w for w, m in (("positive", each[ho, k]), ("negative", ~each[ho, k])) if not m.any()]
        if lacks:
            say(f"warning: the held-out frames{f' of {o}' if multi else ''} have no {lacks[0]} frame, so the optimizer "
                f"cannot estimate that error rate; query-time verification checks the plan on the queried video")

    archs = resolve_grid(tcfg["grid"])
    sizes = sorted({a.size for a in archs} | {tcfg["diff_size"]})
    say(f"decoding {len(frames)} sampled frames at {', '.join(f'{z}x{z}' for z in sizes)}")
    small = _decode_small(video, frames, sizes, quiet, **decode_options(cfg))

    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    device = reference.device

    # 3. specialized models
    candidates = []
    model_scores: dict[str, np.ndarray] = {}
    model_costs: dict[str, float] = {}
    lacking = {}  # object -> "negative" | "positive": too few training frames of that kind
    for k, o in enumerate(objects):
        n_neg_train = int((~each[tr, k]).sum())
        if n_neg_train < MIN_EXAMPLES_PER_CLASS or int(each[tr, k].sum()) < MIN_EXAMPLES_PER_CLASS:
            lacking[o] = "negative" if n_neg_train < MIN_EXAMPLES_PER_CLASS else "positive"
    if len(lacking) == len(objects):
        say(f"warning: too few {lacking[objects[0]]} training frames{f' of any object' if multi else ''} for a "
            f"specialized model; the cascade will use frame skip, difference detectors and the reference only")
        archs = []
    for o, kind in lacking.items():
        # Several objects: the model is still trained for the others; this object's output is
        # never trusted (no held-out AUC), so the reference answers it wherever the model runs.
        if archs:
            say(f"warning: too few {kind} training frames of {o}; its model output will not be used")
    for i, arch in enumerate(archs):
        path = work / f"{arch.name}-{skey}.pt"
        x = small[arch.size]
        if path.is_file():
            model, _, mean = specialized.load_model(path, device=device)
            info = {"resumed": True}
        else:
            mean = specialized.mean_frame(x[tr])
            model, info = specialized.train_candidate(
                arch, x[tr], truth[tr], x[va], truth[va], mean, epochs=tcfg["epochs"], batch_size=tcfg["batch_size"],
                lr=tcfg["lr"], patience=tcfg["patience"], augment=tcfg["augment"], seed=seed, device=device,
            )
            specialized.save_model(model, arch, mean, path)
        p = specialized.predict_scores(model, x[ho], mean, device=device)
        cost = specialized.measure_cost(model, arch.size, device=device)
        model_scores[arch.name] = p
        model_costs[arch.name] = cost
        aucs = {o: None if o in lacking else float(specialized.roc_auc(pk, tk))
                for o, pk, tk in zip(objects, p.reshape(len(p), -1).T, each[ho].T)}
        # Several objects: the worst-learnt trusted output's (the guard is applied per object).
        auc = float(np.min([a for a in aucs.values() if a is not None]))  # NaN (one class held out) stays NaN
        per = f" ({', '.join(f'{o} ' + ('unused' if a is None else f'{a:.3f}') for o, a in aucs.items())})" if multi else ""
        say(f"[{i + 1}/{len(archs)}] {arch.name}: held-out AUC {auc:.3f}{per}, {cost * 1e6:.1f} us/frame")
        cand = dict(name=arch.name, file=f"models/{arch.name}.pt", size=arch.size, cost_s=float(cost),
                    heldout_auc=float(auc), train={k: _plain(v) for k, v in info.items()})
        if multi:
            cand["heldout_aucs"] = aucs  # None: too few training examples, never offered for that object
        candidates.append(cand)

    # 4. difference detectors
    skips = [int(k) for k in cfg["optimizer"]["skips"]]
    dsz = tcfg["diff_size"]
    detectors = difference.fit_detectors(small[dsz][tr], truth[tr], block_ids[tr], skips=skips, grid=tcfg["diff_grid"])
    diff_scores, diff_costs, diffs_meta = {}, {}, []
    for d in detectors:
        scores_by_skip = difference.diff_scores(d, small[dsz][ho], block_ids[ho], skips)
        for k, v in scores_by_skip.items():
            diff_scores[f"{d.name}@{k}"] = v
        diff_costs[d.name] = float(difference.measure_cost(d, dsz))
        meta = d.to_dict()
        if d.reference_image is not None:
            meta["reference_image_file"] = f"diff/{d.name}.npy"
        diffs_meta.append(dict(meta, cost_s=diff_costs[d.name], size=dsz))

    # 5. costs
    t_grab, t_convert = measure_decode_costs(video, s, e, (max(sizes), max(sizes)))
    if ref_cost is None:
        ref_cost = measure_reference_cost(reference)
    costs = dict(decode=t_grab, convert=t_convert, reference=float(ref_cost), diff=diff_costs, model=model_costs)

    # write the bundle: files first, manifest last
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    for c in candidates:
        shutil.copyfile(work / f"{c['name']}-{skey}.pt", out / c["file"])
    (out / "diff").mkdir(exist_ok=True)
    for d in detectors:
        if d.reference_image is not None:
            difference.save_npy(out / f"diff/{d.name}.npy", d.reference_image)
    B.save_npz(
        out / "heldout.npz", frames=frames[ho], truth=truth[ho], scores=scores[ho].astype(np.float32), blocks=block_ids[ho],
        **{f"model__{k}": v.astype(np.float32) for k, v in model_scores.items()},
        **{f"diff__{k}": v.astype(np.float32) for k, v in diff_scores.items()},
    )
    ident = (dict(object=",".join(objects), objects=objects, class_indices=[int(c) for c in classes]) if multi
             else dict(object=objects[0], class_index=int(classes[0])))
    positives = {o: int(each[:, k].sum()) for k, o in enumerate(objects)} if multi else int(truth.sum())
    held_pos = {o: int(each[ho, k].sum()) for k, o in enumerate(objects)} if multi else int(truth[ho].sum())
    meta = dict(
        **ident,
        reference=dict(name=reference.name, key=ref_key, input_size=list(reference.input_size) if reference.input_size else None,
                       weights=rcfg["weights"], cfg=rcfg["cfg"], names=rcfg["names"]),
        labels=dict(min_score=float(lcfg["min_score"]), smooth=int(lcfg["smooth"])),
        video=dict(path=str(video.path.resolve()), hash=video.hash, fps=video.fps, width=video.width, height=video.height,
                   segment=[int(s), int(e)], frames_labelled=int(len(frames)), positives=positives),
        seed=seed,
        settings_key=skey,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        train=dict(tcfg, seconds=round(time.perf_counter() - t_start, 1)),
        optimizer=cfg["optimizer"],
        costs=costs,
        candidates=candidates,
        diffs=diffs_meta,
        heldout=dict(file="heldout.npz", frames=int(ho.sum()), positives=held_pos),
    )
    B.write_manifest(out, meta, fmt=B.MULTI_FORMAT if multi else B.FORMAT)
    shutil.rmtree(work, ignore_errors=True)
    return meta


def _decode_small(video: Video, frames: np.ndarray, sizes: list[int], quiet: bool, frame_cache: bool = True,
                  prefetch: int = 2, workers: int = 1) -> dict[int, np.ndarray]:
    """The sampled frames at every small size; through the frame cache, so the query that
    follows training does not decode these frames again."""
    out = {z: np.zeros((len(frames), z, z, 3), np.uint8) for z in sizes}
    pos = {f: i for i, f in enumerate(frames.tolist())}
    decode = partial(cached_batches, video) if frame_cache else video.batches
    with progress_bar(total=len(frames), desc="decode", quiet=quiet) as bar:
        for b in decode({z: (z, z) for z in sizes}, frames=frames, batch_size=256, prefetch=prefetch, workers=workers):
            idx = [pos[f] for f in b.indices.tolist()]
            for z in sizes:
                out[z][idx] = b.frames[z]
            bar.update(len(b))
    return out


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _device(cfg: dict):
    import torch

    d = cfg.get("device", "auto")
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cuda" and not torch.cuda.is_available():
        raise NoscopeError("device: cuda was asked for but no CUDA GPU is available; use --set device=cpu")
    return torch.device(d)
