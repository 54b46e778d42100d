"""The head kind of cheap model ("prefix_head"): a small trained head on the feature map of the
reference's own first layers (its frozen prefix, noscope.cheap.prefix).

Specialized CNNs trained from scratch on a minute of footage often do not carry over to later
footage (issue 19: forward held-out AUC 0.31-0.85 on several clips). The reference's first layers
already tell edges, textures and object parts apart on any footage; a head trained on them has
far fewer free weights and keeps ranking later frames well. Such a model is identified by its
prefix point (which reference, how many of its first layers, what input size) and its head.

    from noscope.cheap import heads as ph, prefix as pf

    point = pf.PrefixPoint(ref_key, 6, *pf.prefix_size(640, 360, 320))   # layers[:6] at 320x192
    prefix = pf.build_prefix(ref, point)                       # frozen, eval, CPU channels-last
    maps = pf.extract(prefix, frames_u8)[6]                    # frames uint8 (N, 192, 320, 3)
    model, info = ph.train_head("linear", prefix, {"train": maps[tr], "val": maps[va]},
                                {"train": truth[tr], "val": truth[va]}, seed=0)
    scores = model.predict(frames_u8)                          # float32 (N, K) in [0, 1]
    ph.save_head(model, "bundle/models/L6-320x192-linear.pt")
    model = ph.load_head("bundle/models/L6-320x192-linear.pt", ref, ref_key)
    head = ph.scorer(model, "ref-L6-320x192-linear")           # the cheap-model interface (noscope.cheap.base)

Heads: "linear" (logistic regression on pooled features: per channel mean, max and a coarse grid
of means; standardised, L2-regularised, class-balanced, one output per object, early stopping per
object on the validation frames) and "spatial" (per-channel standardisation, 1x1 conv to a few
channels, a 3x3 conv, max pooled to a coarse grid, linear: it sees *where* on the map something
is). Training is deterministic for a seed on CPU and takes seconds: the prefix runs once per
frame (`extract`), the head trains on the stored feature maps.

A head file holds only the head's weights and the prefix point (reference key, layers, size);
the prefix is rebuilt from the reference's weights when it is loaded, and a file made on another
reference is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import atomic
from ..atomic import save_npz
from ..bundle_manifest import Candidate
from ..errors import NoscopeError
from .base import CheapModel, KindGrid, LoadContext, Mismatch, TrainingData
from .common import heldout_aucs, lacking_objects, median_seconds
from .prefix import (DEFAULT_POOLING, Prefix, PrefixPoint, build_prefix, check_frames, extract, extract_channels,
                     has_layers, pool, pooled_size, prefix_size)

FORMAT = "noscope-prefix-head-v1"
HEAD_KINDS = ("linear", "spatial")


# --------------------------------------------------------------------------- heads


class LinearHead(nn.Module):
    """Logistic regression on standardised pooled features: maps -> (N, K) logits."""

    def __init__(self, channels: int, outputs: int, pooling: str = DEFAULT_POOLING):
        super().__init__()
        self.pooling = pooling
        d = pooled_size(pooling, channels)
        self.register_buffer("mu", torch.zeros(d))
        self.register_buffer("inv_sd", torch.ones(d))
        self.linear = nn.Linear(d, outputs)

    def forward_pooled(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear((z - self.mu) * self.inv_sd)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.forward_pooled(pool(maps, self.pooling))


class SpatialHead(nn.Module):
    """Per-channel standardisation, 1x1 conv to `width` channels, ReLU, 3x3 conv, ReLU, max pooled
    to a `grid` of cells (an object anywhere in a cell counts), linear: maps -> (N, K) logits."""

    def __init__(self, channels: int, outputs: int, width: int = 16, grid: tuple[int, int] = (2, 3)):
        super().__init__()
        self.width, self.grid = int(width), (int(grid[0]), int(grid[1]))
        self.register_buffer("mu", torch.zeros(1, channels, 1, 1))
        self.register_buffer("inv_sd", torch.ones(1, channels, 1, 1))
        self.reduce = nn.Conv2d(channels, self.width, 1)
        self.conv = nn.Conv2d(self.width, self.width, 3, padding=1)
        self.drop = nn.Dropout(0.25)
        self.linear = nn.Linear(self.width * self.grid[0] * self.grid[1], outputs)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = (maps.float() - self.mu) * self.inv_sd
        x = F.relu(self.conv(F.relu(self.reduce(x))))
        x = F.adaptive_max_pool2d(x, self.grid).flatten(1)
        return self.linear(self.drop(x))


def make_head(kind: str, channels: int, outputs: int, pooling: str = DEFAULT_POOLING) -> nn.Module:
    if kind == "linear":
        return LinearHead(channels, outputs, pooling)
    if kind == "spatial":
        return SpatialHead(channels, outputs)
    raise NoscopeError(f"unknown head kind {kind!r}; valid: {', '.join(HEAD_KINDS)}")


class PrefixModel(nn.Module):
    """A frozen prefix and a trained head: uint8 frames at the prefix size -> (N, K) scores."""

    def __init__(self, prefix: Prefix, head: nn.Module, kind: str):
        super().__init__()
        self.prefix, self.head, self.kind = prefix, head, kind

    @property
    def point(self) -> PrefixPoint:
        return self.prefix.point

    @property
    def outputs(self) -> int:
        return self.head.linear.out_features

    @property
    def pooling(self) -> str | None:
        return getattr(self.head, "pooling", None)

    def forward(self, frames_u8: torch.Tensor) -> torch.Tensor:
        return self.head(self.prefix(frames_u8)[0])

    def predict(self, frames_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probability that each frame shows each object: uint8 (N, H, W, 3) at the prefix size ->
        float32 (N, K) in [0, 1]."""
        frames_u8 = check_frames(frames_u8, self.point)
        dev = next(iter(self.prefix.buffers())).device
        out = np.empty((len(frames_u8), self.outputs), np.float32)
        self.eval()
        with torch.inference_mode():
            for s in range(0, len(frames_u8), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(frames_u8[s : s + batch_size])).to(dev)
                out[s : s + len(batch)] = torch.sigmoid(self(batch).float()).cpu().numpy()
        return out

    def predict_maps(self, maps: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        """The same scores from what `extract` stored for the prefix's last layer: feature maps, or
        (linear head) the pooled features."""
        self.head.eval()
        dev = next(iter(self.head.buffers())).device
        head = self.head.forward_pooled if maps.ndim == 2 and self.kind == "linear" else self.head
        with torch.inference_mode():
            parts = [torch.sigmoid(head(maps[s : s + batch_size].to(dev)).float()).cpu()
                     for s in range(0, len(maps), batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.outputs), np.float32)


# --------------------------------------------------------------------------- training


def _balanced_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per object (column): the mean loss over its positive frames plus that over its negative
    frames, halved; a column without one kind counts the other alone. -> (K,)"""
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    pos, neg = y.sum(0), (1 - y).sum(0)
    lp = (loss * y).sum(0) / pos.clamp(min=1)
    ln = (loss * (1 - y)).sum(0) / neg.clamp(min=1)
    both = (pos > 0) & (neg > 0)
    return torch.where(both, (lp + ln) / 2, lp + ln)


def _judged(y: torch.Tensor) -> torch.Tensor:
    """(K,) bool: the objects whose validation frames show both answers (their loss can rank
    training steps; the loss of one answer alone only rewards pushing every score that way)."""
    return (y.sum(0) > 0) & ((1 - y).sum(0) > 0)


def _labels2d(y: np.ndarray, n: int) -> torch.Tensor:
    y = np.asarray(y)
    y = y.reshape(n, -1) if y.ndim == 1 else y
    if y.shape[0] != n or y.ndim != 2 or y.shape[1] < 1:
        raise NoscopeError(f"labels must have shape ({n},) or ({n}, objects), got {y.shape}")
    y = y.astype(np.float32)
    if not np.all(np.isfinite(y)) or y.min(initial=0) < 0 or y.max(initial=0) > 1:
        raise NoscopeError("labels must be booleans or scores in [0, 1]")
    return torch.from_numpy(y)


@dataclass
class HeadFit:
    """Settings of head training (the defaults were chosen on the shared clips, see scripts/feature_heads.py)."""

    # linear: L2 strengths tried, each object keeping its best on the validation frames. One by
    # default: on the shared clips the validation slice (9% of the frames) picked worse strengths
    # for later footage than 1.0 alone did (highway-cctv car L10 320x256: 0.35 vs 0.60 AUC).
    l2s: tuple[float, ...] = (1.0,)
    l2: float = 1.0  # linear: the strength for an object the validation frames show one answer of
    lr: float = 0.05  # linear: full-batch Adam
    max_steps: int = 400  # linear: full-batch steps
    patience: int = 25  # linear: steps without improvement of an object's validation loss
    epochs: int = 30  # spatial: passes over the training frames
    spatial_lr: float = 3e-3
    spatial_l2: float = 1e-3
    spatial_patience: int = 4  # spatial: epochs without validation improvement
    batch_size: int = 64  # spatial


def train_head(kind: str, prefix: Prefix, maps: dict[str, torch.Tensor], y: dict[str, np.ndarray], *,
               pooling: str = DEFAULT_POOLING, fit: HeadFit | None = None, seed: int = 0) -> tuple[PrefixModel, dict]:
    """Train a head on stored feature maps of the prefix's last layer.

    maps: {"train": (N, C, h, w), "val": (M, C, h, w)} from `extract` (linear head: or the pooled
    features (N, D) `extract(pooled=...)` kept with this `pooling`); y: {"train": (N,) or (N, K),
    "val": ...} (one column per object): the reference's answers (bools) or its scores themselves
    (soft targets in [0, 1], which carried over to later footage better on the shared clips: see
    scripts/feature_heads.py). Early stopping on the validation frames' class-balanced loss (per
    object for the linear head), counting only objects they show both answers of. Deterministic
    for a seed on CPU; the caller's RNG state is left alone, and so is its thread count (training
    runs on one thread: `one_thread`).
    Returns (model in eval mode, info: kind, steps, best, val_loss, seconds)."""
    fit = fit or HeadFit()
    t0 = time.perf_counter()
    ytr, yva = _labels2d(y["train"], len(maps["train"])), _labels2d(y["val"], len(maps["val"]))
    if ytr.shape[1] != yva.shape[1]:
        raise NoscopeError("training and validation labels have different numbers of objects")
    if len(ytr) == 0 or len(yva) == 0:
        raise NoscopeError(f"a head needs training and validation frames, got {len(ytr)} and {len(yva)}")
    channels = maps["train"].shape[1]
    if maps["train"].ndim == 2:  # pooled features (linear head only)
        if kind != "linear" or channels % pooled_size(pooling, 1):
            raise NoscopeError(f"pooled features ({channels} per frame) only train a linear head with pooling {pooling}")
        channels //= pooled_size(pooling, 1)
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(seed)
        head = make_head(kind, channels, ytr.shape[1], pooling)
        if kind == "linear":
            ztr, zva = (m if m.ndim == 2 else pool(m, pooling) for m in (maps["train"], maps["val"]))
            info = _fit_linear(head, ztr.float(), ytr, zva.float(), yva, fit)
        else:
            info = _fit_spatial(head, maps["train"], ytr, maps["val"], yva, fit, seed)
    head.eval()
    info.update(kind=kind, pooling=pooling if kind == "linear" else None, seconds=time.perf_counter() - t0)
    return PrefixModel(prefix, head.to(next(iter(prefix.buffers())).device), kind).eval(), info


@contextmanager
def one_thread():
    """Torch on one CPU thread inside: a head's ops are too small to split, and on a busy machine
    two threads made spatial-head training 15x slower (1.1 s vs 17 s, 2 cores with 8 jobs
    waiting); the result also no longer depends on the caller's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inverse_sd(sd: torch.Tensor) -> torch.Tensor:
    """1 / sd, with a feature that (nearly) never varies scaled like one a thousand times livelier
    than the most constant-looking (a dead channel must not blow up to huge values on new footage)."""
    return 1.0 / sd.clamp(min=max(1e-3 * float(sd.max()), 1e-6))


def _fit_linear(head: LinearHead, ztr: torch.Tensor, ytr: torch.Tensor, zva: torch.Tensor, yva: torch.Tensor,
                fit: HeadFit) -> dict:
    """Standardise, then one fit per L2 strength of `fit.l2s`; each object keeps the strength and
    step with its best validation loss (an object the validation frames show one answer of gets
    `fit.l2`, run to the end: nothing there can rank the alternatives)."""
    mu, inv = ztr.mean(0, keepdim=True), _inverse_sd(ztr.std(0, keepdim=True, unbiased=False))
    head.mu.copy_(mu[0]), head.inv_sd.copy_(inv[0])
    xtr, xva = (ztr - mu) * inv, (zva - mu) * inv
    judged = _judged(yva)
    k = ytr.shape[1]
    w, b = torch.zeros(k, xtr.shape[1]), torch.zeros(k)
    val, step, strength, total = torch.full((k,), math.inf), torch.zeros(k, dtype=torch.long), torch.zeros(k), 0
    for l2 in sorted(set(fit.l2s) | {fit.l2}):
        w2, b2, val2, step2, steps = _fit_logistic(xtr, ytr, xva, yva, l2, fit, judged)
        take = torch.where(judged, val2 < val, torch.tensor(l2 == fit.l2))
        w[take], b[take], val[take], step[take], strength[take] = w2[take], b2[take], val2[take], step2[take], l2
        total += steps
    with torch.no_grad():
        head.linear.weight.copy_(w), head.linear.bias.copy_(b)
    return dict(steps=total, best=step.tolist(), l2=strength.tolist(), val_loss=val.tolist())


def _fit_logistic(xtr, ytr, xva, yva, l2: float, fit: HeadFit, judged: torch.Tensor):
    """Full-batch Adam from zero weights (no randomness) on the class-balanced loss + L2; per object
    the step with the best validation loss -> (weights, biases, val loss, best step, steps run)."""
    lin = nn.Linear(xtr.shape[1], ytr.shape[1])
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=fit.lr)
    k = ytr.shape[1]
    best_loss = torch.full((k,), math.inf)
    best_w, best_b = lin.weight.detach().clone(), lin.bias.detach().clone()
    best_step, stale, step = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long), 0
    for step in range(1, fit.max_steps + 1):
        loss = _balanced_bce(lin(xtr), ytr).sum() + l2 * lin.weight.pow(2).sum() / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = _balanced_bce(lin(xva), yva)
            better = (val < best_loss - 1e-5) | ~judged  # not judged: the last step
            best_loss = torch.where(better, val, best_loss)
            best_w[better], best_b[better] = lin.weight[better], lin.bias[better]
            best_step[better] = step
            stale = torch.where(better, torch.zeros_like(stale), stale + 1)
        if bool((stale >= fit.patience).all()):  # never while an object is not judged
            break
    return best_w, best_b, best_loss, best_step, step


def _fit_spatial(head: SpatialHead, mtr: torch.Tensor, ytr: torch.Tensor, mva: torch.Tensor, yva: torch.Tensor,
                 fit: HeadFit, seed: int) -> dict:
    """Minibatch Adam; the state with the best mean validation loss over objects is kept."""
    mu = torch.zeros(1, mtr.shape[1], 1, 1)
    sq = torch.zeros_like(mu)
    for s in range(0, len(mtr), 256):  # float64 sums over float16 maps, chunked (memory)
        x = mtr[s : s + 256].double()
        mu += x.sum(dim=(0, 2, 3), keepdim=True).float()
        sq += x.pow(2).sum(dim=(0, 2, 3), keepdim=True).float()
    cells = len(mtr) * mtr.shape[2] * mtr.shape[3]
    mu /= cells
    sd = (sq / cells - mu.pow(2)).clamp(min=0).sqrt()
    head.mu.copy_(mu), head.inv_sd.copy_(_inverse_sd(sd))
    params = [p for n, p in head.named_parameters()]
    opt = torch.optim.AdamW(params, lr=fit.spatial_lr, weight_decay=fit.spatial_l2)
    gen = torch.Generator().manual_seed(seed)
    best = dict(loss=math.inf, state=copy.deepcopy(head.state_dict()), epoch=0)
    stale, epoch, judged = 0, 0, _judged(yva)
    for epoch in range(1, fit.epochs + 1):
        head.train()
        for idx in torch.randperm(len(mtr), generator=gen).split(fit.batch_size):
            loss = _balanced_bce(head(mtr[idx]), ytr[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            logits = torch.cat([head(mva[s : s + 512]) for s in range(0, len(mva), 512)])
            val = float(_balanced_bce(logits, yva)[judged].mean()) if judged.any() else -epoch  # none: the last
        if val < best["loss"] - 1e-4:
            best, stale = dict(loss=val, state=copy.deepcopy(head.state_dict()), epoch=epoch), 0
        else:
            stale += 1
            if stale >= fit.spatial_patience:
                break
    head.load_state_dict(best["state"])
    return dict(steps=epoch, best=best["epoch"], val_loss=best["loss"])


# --------------------------------------------------------------------------- cost


def measure_cost(model: PrefixModel, batch_size: int = 64, repeats: int = 5, head_only: bool = False) -> float:
    """Seconds per frame of prefix + head + sigmoid on uint8 frames already in memory at the
    prefix size (decoding is charged to the video reader), at `batch_size` frames a call; two
    warm-up calls, then the median of `repeats`. head_only: the head alone, on the prefix's maps."""
    dev = next(iter(model.prefix.buffers())).device
    w, h = model.point.size
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8, generator=gen).to(dev)
    model.eval()
    with torch.inference_mode():
        maps = model.prefix(batch)[0] if head_only else None

        def once() -> None:
            torch.sigmoid(model.head(maps) if head_only else model(batch))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return median_seconds(once, repeats) / batch_size


# --------------------------------------------------------------------------- the kind


class HeadModel(CheapModel):
    """A head on the reference's first layers as a cheap model (noscope.cheap.base): frames at its
    prefix size in, one score per object out. Loading one needs the reference, whose layers it runs."""

    kind = "prefix_head"

    def __init__(self, model: PrefixModel, base: str):
        self.model, self.name, self.base = model, base, base  # base: the bundle candidate whose features it scores

    @property
    def size(self) -> tuple[int, int]:
        return self.model.point.size

    def score(self, frames: np.ndarray) -> np.ndarray:
        return self.model.predict(frames)

    def measure_cost(self) -> float:
        return measure_cost(self.model)

    def save(self, path: Path) -> None:
        save_head(self.model, path)

    @classmethod
    def train_grid(cls, data: TrainingData) -> KindGrid:
        return train_grid(data)

    @classmethod
    def check(cls, path: Path, candidate: Candidate, outputs: int) -> None:
        """The file is a head at the candidate's prefix point, of its kind, with one output per
        object. (That it was trained on the layers of the reference the query runs is checked when it
        is loaded onto them: load_head.)"""
        p = candidate.spec["prefix"]
        want = dict(layers=int(p["layers"]), size=[int(x) for x in p["size"]], kind=candidate.spec["head"], outputs=outputs)
        info = read_head_meta(path)
        got = {k: info.get(k) for k in want}
        if got != want:
            raise Mismatch(f"holds a head {got}, not the {candidate.name} ({want})")

    @classmethod
    def load(cls, path: Path, candidate: Candidate, ctx: LoadContext) -> "HeadModel":
        if ctx.reference is None:
            raise NoscopeError(f"model {candidate.name} of bundle {ctx.root} runs on the reference's layers: load the "
                               "reference first")
        cls.check(path, candidate, ctx.outputs)
        model = load_head(path, ctx.reference, ctx.ref_key, ctx.device)
        learnt = None
        if candidate.learnt_from:
            z = ctx.read_arrays(candidate.learnt_from)
            learnt = (z["features"].astype(np.float32), z["targets"].astype(np.float32))
        return scorer(model, candidate.name, learnt)


class LinearHeadModel(HeadModel):
    """A linear head also gives the pooled features it scores, scores them, and can be refitted on
    more frames (noscope.refit, noscope.update): a pass keeps every frame's features, so a refitted
    head answers the whole video again without decoding it."""

    keeps_features = True

    def __init__(self, model: PrefixModel, base: str, learnt_from: tuple[np.ndarray, np.ndarray] | None):
        super().__init__(model, base)
        self.learnt_from = learnt_from  # (pooled features, targets) of the frames it was trained on

    def features(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames at the prefix size -> float32 (N, D): the pooled features its head scores."""
        frames = check_frames(frames, self.model.point)
        dev = next(iter(self.model.prefix.buffers())).device
        out = []
        with torch.inference_mode():
            for s in range(0, len(frames), 256):
                batch = torch.from_numpy(np.ascontiguousarray(frames[s : s + 256])).to(dev)
                out.append(pool(self.model.prefix(batch)[0], self.model.head.pooling).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.head.mu.numel()), np.float32)

    def from_features(self, z: np.ndarray) -> np.ndarray:
        """Pooled features (N, D) -> float32 (N, K) scores."""
        with torch.inference_mode():
            return torch.sigmoid(self.model.head.forward_pooled(torch.from_numpy(np.asarray(z, np.float32)))).numpy()

    @property
    def can_refit(self) -> bool:
        return True

    def refit(self, features: np.ndarray, targets: np.ndarray, seed: int = 0) -> "LinearHeadModel":
        """This head fitted again on its training frames plus `features` (pooled features of more
        frames, with `targets` (N, K) in [0, 1]), each set weighing half (a few hundred frames of
        tonight count as much as the training minutes), from the current weights."""
        z = features
        base_z, base_y = self.learnt_from if self.learnt_from is not None else (z[:0], targets[:0])
        x = np.concatenate([np.asarray(base_z, np.float32), np.asarray(z, np.float32)])
        y = np.concatenate([np.asarray(base_y, np.float32), np.asarray(targets, np.float32)])
        w = np.concatenate([np.full(len(base_z), 0.5 / max(len(base_z), 1)), np.full(len(z), 0.5 / max(len(z), 1))])
        head = copy.deepcopy(self.model.head)
        with torch.random.fork_rng(devices=[]), one_thread():
            torch.manual_seed(seed)
            _refit_weighted(head, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w.astype(np.float32)))
        model = PrefixModel(self.model.prefix, head.eval(), self.model.kind).eval()
        return LinearHeadModel(model, self.base, (x, y))


def _refit_weighted(head: LinearHead, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, l2: float = 1.0,
                    steps: int = 200, lr: float = 0.05) -> None:
    """Full-batch Adam on the weighted, class-balanced logistic loss + L2, from the head's weights
    (its standardisation stays: the features keep their scale)."""
    x = (z - head.mu) * head.inv_sd
    opt = torch.optim.Adam(head.linear.parameters(), lr=lr)
    pos = (w[:, None] * y).sum(0).clamp(min=1e-9)
    neg = (w[:, None] * (1 - y)).sum(0).clamp(min=1e-9)
    for _ in range(steps):  # the loss is a weighted mean, so L2 weighs as it did in training (HeadFit.l2)
        loss = F.binary_cross_entropy_with_logits(head.linear(x), y, reduction="none")
        per = ((w[:, None] * y * loss).sum(0) / pos + (w[:, None] * (1 - y) * loss).sum(0) / neg) / 2
        total = per.sum() + l2 * head.linear.weight.pow(2).sum() / 2
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()


def scorer(model: PrefixModel, base: str, learnt_from=None) -> HeadModel:
    """A head as a cheap model: linear heads also give features and refit."""
    return LinearHeadModel(model, base, learnt_from) if model.kind == "linear" else HeadModel(model, base)


# --------------------------------------------------------------------------- files


def _digest(info: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(info, sort_keys=True).encode())
    for k in sorted(state):
        t = state[k]
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _file_info(model: PrefixModel) -> dict:
    """What a head file says of its head: the prefix point and the head's settings."""
    p = model.point
    head = model.head
    return dict(reference=p.reference, layers=p.layers, size=[p.width, p.height], kind=model.kind,
                outputs=model.outputs, channels=int(head.mu.numel() if model.kind == "spatial" else 0),
                pooling=model.pooling, width=getattr(head, "width", None), grid=list(getattr(head, "grid", ())) or None)


def save_head(model: PrefixModel, path: str | Path) -> None:
    """Write the head's weights and the prefix point to `path`, atomically: tensors, strings and
    numbers only (weights-only loading), with a digest over both. The prefix is not saved."""
    info = _file_info(model)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.head.state_dict().items()}
    payload = dict(format=FORMAT, meta=json.dumps(info, sort_keys=True), state_dict=state, digest=_digest(info, state))
    atomic.atomic_write(Path(path), lambda f: torch.save(payload, f))


def read_head_meta(path: str | Path) -> dict:
    """A head file's prefix point and head settings (reference, layers, size, kind, outputs, ...),
    checked against its digest, without building anything."""
    info, _ = _read(Path(path))
    return info


def _read(path: Path) -> tuple[dict, dict]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NoscopeError(f"prefix head {path} not found") from None
    except Exception as e:  # untrusted bytes: whatever the unpickler or zip reader raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NoscopeError(f"refusing to load {path}: not a plain-tensor noscope prefix head ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NoscopeError(f"{path} is not a noscope prefix head (format {FORMAT} expected)")
    try:
        info, state = json.loads(payload["meta"]), payload["state_dict"]
        if not isinstance(info, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("unexpected contents")
        if payload["digest"] != _digest(info, state):
            raise ValueError("its digest does not match its contents")
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as e:
        raise NoscopeError(f"{path} is a damaged prefix head: {str(e)[:200]}") from None
    return info, state


def load_head(path: str | Path, reference, ref_key: str, device=None) -> PrefixModel:
    """A head written by `save_head`, on a prefix rebuilt from `reference`, whose key must be the
    one recorded in the file (another reference's layers would feed the head other features)."""
    path = Path(path)
    info, state = _read(path)
    if info.get("reference") != ref_key:
        raise NoscopeError(f"{path} was trained on the layers of reference {info.get('reference')!r}, not {ref_key!r}")
    try:
        point = PrefixPoint(str(ref_key), int(info["layers"]), *(int(v) for v in info["size"]))
        prefix = build_prefix(reference, point, device)
        channels = int(extract_channels(prefix))
        head = make_head(info["kind"], channels, int(info["outputs"]), info.get("pooling") or DEFAULT_POOLING)
        head.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise NoscopeError(f"{path} does not fit the reference's layers: {str(e).splitlines()[0][:200]}") from None
    return PrefixModel(prefix, head.to(next(iter(prefix.buffers())).device), info["kind"]).eval()


# --------------------------------------------------------------------------- the grid, for a bundle


def candidate_name(point: PrefixPoint, kind: str) -> str:
    """A bundle candidate's name, e.g. "ref-L6-320x192-linear" (never a specialized CNN's cNfNdNsN)."""
    return f"ref-{point.name}-{kind}"


# The heads a bundle trains by default, per prefix length, at 320 wide: on the shared clips a linear
# head on layers[:6] and a spatial head on layers[:8], both on the reference's scores, carried over
# to later footage best (docs/prefix_heads.md). One prefix pass to layer 8 serves both.
DEFAULT_KINDS = {6: ("linear",), 8: ("spatial",)}
DEFAULT_WIDTHS = (320,)


def default_points(ref_key: str, video_width: int, video_height: int, layers=tuple(DEFAULT_KINDS),
                   widths=DEFAULT_WIDTHS) -> list[PrefixPoint]:
    """The prefix points a bundle trains heads on by default (see scripts/feature_heads.py)."""
    return [PrefixPoint(ref_key, k, *prefix_size(video_width, video_height, w)) for w in widths for k in layers]


@dataclass
class PrefixGrid:
    """What training heads left for a bundle (KindGrid, and more): bundle.yaml candidates, held-out
    scores ((N,) for one object, (N, K) for several), seconds per frame, and the models."""

    candidates: list[Candidate]
    heldout_scores: dict[str, np.ndarray]
    costs: dict[str, float]
    models: dict[str, PrefixModel]
    # linear heads: the pooled features and targets of their training and validation frames, kept in
    # the bundle so a query can refit the head on its video's reference answers beside them
    learnt_from: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def train_grid(data: TrainingData) -> KindGrid:
    """Heads on the reference's first layers (train.heads, e.g. "L6@320:linear"), trained on the
    reference's scores of the sample (they carried over to later footage better than its answers
    did: docs/prefix_heads.md). The sample is decoded at each head's size as the heads need it,
    never all at once (184 KB a frame at 320x192). Each head's cost counts its own conversion."""
    specs = [config_head(h) for h in data.settings.heads]
    w, h = data.video_size
    points = {(k, width): PrefixPoint(data.ref_key, k, *prefix_size(w, h, width)) for k, width, _ in specs}
    if not specs:
        return KindGrid()
    if not has_layers(data.reference):
        data.say(f"warning: reference {data.reference.name} has no layers to put heads on; training no heads")
        return KindGrid()
    kinds: dict[int, tuple] = {}
    for k, _, kind in specs:
        kinds[k] = tuple(sorted(set(kinds.get(k, ())) | {kind}))
    frames_at = {p.size: partial(data.batches_at, p.size) for p in points.values()}
    data.say(f"training {len(specs)} head(s) on the reference's first layers at "
             f"{', '.join(f'{a}x{b}' for a, b in frames_at)}")
    grid = train_heads(data.reference, list(points.values()), frames_at, data.truth, data.parts, data.objects, data.work,
                       data.key, kinds=kinds, seed=data.seed, device=data.device, targets=data.scores, say=data.say)
    out = KindGrid([], grid.heldout_scores, grid.costs)
    for c in grid.candidates:
        cost = grid.costs[c.name] = float(grid.costs[c.name] + data.conversion_cost(tuple(c.spec["prefix"]["size"])))
        learnt_from = None
        if c.name in grid.learnt_from:
            z, y = grid.learnt_from[c.name]
            learnt_from = f"models/{c.name}-learnt.npz"
            save_npz(data.work / f"{c.name}-{data.key}-learnt.npz", features=z, targets=y)
        out.candidates.append(replace(c, cost_s=cost, learnt_from=learnt_from))
    return out


def config_head(spec: str) -> tuple[int, int, str]:
    """"L6@320:linear" (a train.heads entry, checked by noscope.config) -> (6, 320, "linear")."""
    point, kind = spec.strip().split(":")
    layers, width = point[1:].split("@")
    return int(layers), int(width), kind


def train_heads(reference, points: list[PrefixPoint], frames_at: dict[tuple[int, int], np.ndarray], truth: np.ndarray,
                parts, objects: list[str], work: Path, key: str, kinds=DEFAULT_KINDS, seed: int = 0, device=None,
                batch_size: int = 64, fit: HeadFit | None = None, pooling: str = DEFAULT_POOLING,
                targets: np.ndarray | None = None, say=lambda msg: None) -> PrefixGrid:
    """Train a head of every kind at every prefix point on the training frames (early stopping on
    the validation frames), score the held-out frames, time each; a finished head is saved in
    `work` as `<name>-<key>.pt` and reused by a resumed run.

    frames_at: {(w, h): the sampled frames at that size, in sample order}: a uint8 array (N, h, w, 3),
    or a callable returning an iterable of such batches (decoded as they are needed: at 320x192
    20,000 frames are 3.7 GB); with linear heads only, just the pooled features are kept;
    truth: bool (N,) or (N, K), what held-out AUCs are judged against; targets: what the heads learn
    (None: truth; the sample's reference scores, clipped to [0, 1], to learn those); parts: masks
    train, val, heldout (split.SampleSplit); kinds: the head kinds trained at every point, or {layers: kinds} per
    prefix length (DEFAULT_KINDS). Points of one size share one
    run of the prefix (taps). An object with fewer than common.MIN_EXAMPLES_PER_CLASS training
    frames of one answer gets heldout_aucs None (never offered for it)."""
    each = truth.reshape(len(truth), -1).astype(bool)
    learn = each if targets is None else np.clip(np.asarray(targets, np.float32).reshape(each.shape), 0, 1)
    lacking = set(lacking_objects(each[parts.train], objects))
    out = PrefixGrid([], {}, {}, {})
    kinds_of = (lambda p: tuple(kinds.get(p.layers, ()))) if isinstance(kinds, dict) else (lambda p: tuple(kinds))
    by_size: dict[tuple[int, int], list[PrefixPoint]] = {}
    for p in points:
        by_size.setdefault(p.size, []).append(p)
    for size, pts in by_size.items():
        source = frames_at[size]() if callable(frames_at[size]) else frames_at[size]
        deepest = build_prefix(reference, max(pts, key=lambda p: p.layers), device)
        only_pooled = {p.layers: pooling for p in pts if "spatial" not in kinds_of(p)}
        maps = extract(deepest, source, taps=[p.layers for p in pts], batch_size=batch_size, pooled=only_pooled)
        for p in pts:
            prefix = build_prefix(reference, p, device)
            for kind in kinds_of(p):
                name, path = candidate_name(p, kind), work / f"{candidate_name(p, kind)}-{key}.pt"
                if path.is_file():
                    model, info = load_head(path, reference, p.reference, device), {"resumed": True}
                else:
                    model, info = train_head(kind, prefix, {"train": maps[p.layers][parts.train],
                                                            "val": maps[p.layers][parts.val]},
                                             {"train": learn[parts.train], "val": learn[parts.val]}, pooling=pooling,
                                             fit=fit, seed=seed)
                    save_head(model, path)
                scores = model.predict_maps(maps[p.layers][parts.heldout])
                cost = measure_cost(model, batch_size=batch_size)
                auc, aucs = heldout_aucs(scores, each[parts.heldout], objects, lacking)
                say(f"{name}: held-out AUC {auc:.3f}, {cost * 1e3:.2f} ms/frame")
                out.candidates.append(Candidate(
                    name, f"models/{name}.pt", kind=HeadModel.kind,
                    spec=dict(head=kind, prefix=dict(reference=p.reference, layers=p.layers, size=[p.width, p.height])),
                    cost_s=float(cost), heldout_auc=auc, heldout_aucs=aucs if len(objects) > 1 else None,
                    train={k: v for k, v in info.items() if isinstance(v, (int, float, str, list, type(None)))}))
                out.heldout_scores[name] = scores if len(objects) > 1 else scores[:, 0]
                out.costs[name], out.models[name] = float(cost), model
                if kind == "linear":
                    fitted = parts.train | parts.val
                    z = maps[p.layers][fitted]
                    z = z if z.ndim == 2 else pool(z, pooling)
                    out.learnt_from[name] = (z.numpy().astype(np.float16), learn[fitted].astype(np.float16))
        del maps
    return out
