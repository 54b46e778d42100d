"""What every kind of cheap model uses: the device, ranking (AUC), timing, and which objects a sample
has too few training frames of.

    dev = resolve_device(None)                         # CUDA when present, else CPU
    auc = roc_auc(scores, truth)                       # ties count half; NaN with one class
    s = median_seconds(lambda: model(batch), 5)        # two warm-up calls first
    lacking = lacking_objects(truth[parts.train], ["car", "bus"])   # {"bus": "positive"}
    auc, aucs = heldout_aucs(scores, truth[parts.heldout], ["car", "bus"], lacking)
"""

from __future__ import annotations

import time

import numpy as np
import torch

MIN_EXAMPLES_PER_CLASS = 10  # fewer training frames of one answer: no model output trusted for that object


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None -> CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); labels >= 0.5 are positive. NaN if one class."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(labels, dtype=np.float64) >= 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U from average ranks, which handles tied scores exactly.
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def median_seconds(once, repeats: int) -> float:
    """Median wall seconds of `once()` over `repeats` calls, after two warm-up calls (cuDNN autotuning,
    allocator, lazy init)."""
    for _ in range(2):
        once()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def lacking_objects(train_truth: np.ndarray, objects: list[str]) -> dict[str, str]:
    """object -> "negative" | "positive": too few training frames of that answer (bool (N, K), one
    column per object) for a model's output to be trusted for it."""
    out = {}
    for k, o in enumerate(objects):
        n_neg = int((~train_truth[:, k]).sum())
        if n_neg < MIN_EXAMPLES_PER_CLASS or int(train_truth[:, k].sum()) < MIN_EXAMPLES_PER_CLASS:
            out[o] = "negative" if n_neg < MIN_EXAMPLES_PER_CLASS else "positive"
    return out


def heldout_aucs(scores: np.ndarray, truth: np.ndarray, objects: list[str],
                 lacking) -> tuple[float, dict[str, float | None]]:
    """A candidate's held-out AUC per object (None for an object in `lacking`: never offered for it)
    from its scores (N,) or (N, K) and the truth (N,) or (N, K), and the worst trusted one (NaN when
    none is trusted, or one class is held out: NaN stays NaN)."""
    each = np.asarray(scores).reshape(len(scores), -1).T
    aucs = {o: None if o in lacking else float(roc_auc(p, t))
            for o, p, t in zip(objects, each, truth.reshape(len(truth), -1).T)}
    trusted = [a for a in aucs.values() if a is not None]
    return (float(np.min(trusted)) if trusted else float("nan")), aucs


def plain(v):
    """numpy numbers and tuples as plain Python, for bundle.yaml."""
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v
