"""Which labelled frames train the models, which stop training early, which the optimizer judges on.

    frames, runs = sample_frames(0, 20000, max_frames=20000, run_length=300)
    parts = SampleSplit(*split(runs, truth, "forward", block=150, heldout_fraction=0.4, val_fraction=0.15, seed=0))
    parts.train, parts.val, parts.heldout                 # masks over the sampled frames

A user trains on last week and queries tonight, so the optimizer's held-out frames must come
*after* the training frames in time ("forward", the default): drift between the minutes the
models learnt from and later ones (light, parked cars that leave, a model whose scores slide)
then shows up in the held-out estimate before a plan is chosen, and no held-out frame has a
training neighbour one frame away except at the single cut. Time order is train | val | held-out.

"interleaved" is the older split: whole blocks of consecutive frames, drawn at random (stratified
by the objects they show) from the whole segment. It sees every part of the segment in both
sets, so it estimates the error *inside* the training period; kept as an option
(`train.split: interleaved`) for footage known to be stationary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("forward", "interleaved")
# A forward held-out set reaches back at most this share of the sample: the rest trains.
MAX_FORWARD_HELDOUT = 2 / 3


@dataclass
class SampleSplit:
    """The sample split: block ids, and masks of the training, validation and held-out frames."""

    blocks: np.ndarray
    train: np.ndarray
    val: np.ndarray
    heldout: np.ndarray


def sample_frames(start: int, end: int, max_frames: int, run_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers to label and the run each belongs to: all of [start, end) if it fits,
    else evenly spread runs of `run_length` consecutive frames."""
    n = end - start
    if n <= max_frames:
        return np.arange(start, end, dtype=np.int64), np.zeros(n, np.int64)
    run_length = min(run_length, max_frames, n)  # a run longer than the sample would read past `end`
    runs = max(1, max_frames // run_length)
    starts = np.linspace(start, end - run_length, runs).round().astype(np.int64)
    frames = np.concatenate([np.arange(s, s + run_length) for s in starts])
    run_ids = np.repeat(np.arange(runs), run_length)
    return frames, run_ids


def block_ids(run_ids: np.ndarray, block: int) -> np.ndarray:
    """Consecutive ids for blocks of at most `block` consecutive frames; a run never shares a block
    with another, and ids grow with time (frames are in video order)."""
    pos_in_run = np.zeros(len(run_ids), np.int64)
    for r in np.unique(run_ids):
        m = run_ids == r
        pos_in_run[m] = np.arange(m.sum())
    ids = run_ids * (1 + len(run_ids) // max(block, 1)) + pos_in_run // block
    return np.unique(ids, return_inverse=True)[1]


def split(run_ids: np.ndarray, truth: np.ndarray, how: str, block: int, heldout_fraction: float,
          val_fraction: float, seed: int, min_runs: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(block ids, train, val, held-out masks) by `how`: "forward" or "interleaved" (module docstring).

    forward: the held-out frames are the last blocks, at least `heldout_fraction` of the frames,
    reaching back further (up to MAX_FORWARD_HELDOUT of them) until they show `min_runs`
    separate stretches of each answer for every object, when the segment has that many."""
    ids = block_ids(run_ids, block)
    if how == "forward":
        ho = _forward_heldout(ids, truth, run_ids, heldout_fraction, min_runs)
        va = _forward_val(ho, val_fraction)
        if not _has_both(truth, va):  # a val stretch showing one answer cannot rank epochs: block tails
            va = _block_tails(ids, ho, val_fraction)
        return ids, ~ho & ~va, va, ho
    if how == "interleaved":
        ho = _interleaved_heldout(ids, truth, heldout_fraction, seed)
        va = _block_tails(ids, ho, val_fraction)
        return ids, ~ho & ~va, va, ho
    raise ValueError(f"unknown split {how!r}; valid: {', '.join(SPLITS)}")


def _forward_heldout(ids: np.ndarray, truth: np.ndarray, run_ids: np.ndarray, heldout_fraction: float,
                     min_runs: int) -> np.ndarray:
    """The last blocks in time: about `heldout_fraction` of the frames (at least one block), and
    more blocks while some object's answer shows in fewer than `min_runs` stretches there."""
    n_blocks = int(ids.max()) + 1
    first = n_blocks - min(max(1, int(round(n_blocks * heldout_fraction))), n_blocks - 1)
    each = truth.reshape(len(truth), -1)
    whole = _fewest_runs(each, run_ids, np.ones(len(ids), bool))
    while first > 1 and np.mean(ids >= first - 1) <= MAX_FORWARD_HELDOUT:
        if _fewest_runs(each, run_ids, ids >= first) >= min(min_runs, whole):
            break
        first -= 1
    return ids >= first


def _fewest_runs(each: np.ndarray, run_ids: np.ndarray, mask: np.ndarray) -> int:
    """The fewest stretches of one answer (yes or no, any object) among the masked frames."""
    pieces = np.r_[True, (run_ids[1:] != run_ids[:-1]) | ~mask[1:] | ~mask[:-1]]
    fewest = len(mask)
    for col in each.T:
        starts = mask & (pieces | np.r_[True, col[1:] != col[:-1]])
        fewest = min(fewest, int(np.count_nonzero(starts & col)), int(np.count_nonzero(starts & ~col)))
    return fewest


def _forward_val(ho: np.ndarray, val_fraction: float) -> np.ndarray:
    """The last `val_fraction` of the training frames, just before the held-out ones."""
    train = np.flatnonzero(~ho)
    va = np.zeros(len(ho), bool)
    va[train[len(train) - max(1, int(round(len(train) * val_fraction))):]] = True
    return va


def _has_both(truth: np.ndarray, mask: np.ndarray) -> bool:
    each = truth.reshape(len(truth), -1)[mask]
    return bool(len(each)) and bool(each.any(axis=0).all() and (~each).any(axis=0).all())


def _block_tails(ids: np.ndarray, ho: np.ndarray, val_fraction: float) -> np.ndarray:
    """The last `val_fraction` of every training block (for early stopping only)."""
    size = np.bincount(ids)
    first = np.zeros(len(size), np.int64)
    first[ids[::-1]] = np.arange(len(ids))[::-1]
    share = (np.arange(len(ids)) - first[ids]) / size[ids]
    return ~ho & (share >= 1 - val_fraction)


def _interleaved_heldout(ids: np.ndarray, truth: np.ndarray, heldout_fraction: float, seed: int) -> np.ndarray:
    """Whole blocks drawn at random, stratified: blocks with and without positives are split
    separately, so the held-out set sees positives even when the object is rare. With several
    objects (truth (N, K)) a block is filed under the rarest object it shows (rarest = in the
    fewest blocks), so each object's blocks are split on their own."""
    n_blocks = int(ids.max()) + 1
    each = truth.reshape(len(truth), -1)  # (N, objects)
    has_pos = np.zeros((n_blocks, each.shape[1]), bool)
    np.logical_or.at(has_pos, ids, each)
    rarest_first = np.argsort(has_pos.sum(axis=0), kind="stable")
    stratum = np.full(n_blocks, len(rarest_first))  # blocks showing no object go last
    for rank, k in reversed(list(enumerate(rarest_first))):
        stratum[has_pos[:, k]] = rank
    rng = np.random.default_rng(seed)
    held = np.zeros(n_blocks, bool)
    for group in (np.flatnonzero(stratum == r) for r in range(len(rarest_first) + 1)):
        group = rng.permutation(group)
        held[group[: int(round(len(group) * heldout_fraction))]] = True
    return held[ids]
