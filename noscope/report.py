"""Write a query's answers: frames.csv, intervals.json, summary.json and timeline.png.

Every file is written to a temporary name and renamed into place, and summary.json goes last,
so a folder with a summary.json is a finished result.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .bundle import atomic_write_bytes


def intervals(frames: np.ndarray, labels: np.ndarray, fps: float) -> list[dict]:
    """Maximal runs of consecutive positive frames, as [start, end) in frames and seconds."""
    out = []
    if len(frames) == 0:
        return out
    x = np.concatenate([[False], labels.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(x.astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):
        f0, f1 = int(frames[a]), int(frames[b - 1]) + 1
        out.append(dict(start_frame=f0, end_frame=f1, start_s=round(f0 / fps, 3), end_s=round(f1 / fps, 3)))
    return out


def frames_csv(frames, times, labels, decided_by) -> bytes:
    buf = io.StringIO()
    buf.write("frame,time_s,label,decided_by\n")
    for f, t, l, d in zip(frames.tolist(), times.tolist(), labels.tolist(), decided_by.tolist()):
        buf.write(f"{f},{t:.3f},{int(l)},{d}\n")
    return buf.getvalue().encode()


def json_safe(obj):
    """Strict JSON: infinite thresholds become null (a missing bound, as in a Plan)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n").encode())


def timeline_png(path: Path, times, labels, decided_by, ref_times=None, ref_scores=None, min_score=None, title="") -> None:
    """Timeline: reference score where known, the cascade's answer, and which stage decided."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["skip", "diff", "model", "reference"]
    colours = {"skip": "#cccccc", "diff": "#8fb9e3", "model": "#f2b134", "reference": "#d9534f"}
    fig, axes = plt.subplots(3, 1, figsize=(12, 5), sharex=True, gridspec_kw=dict(height_ratios=[2, 1, 1]))
    ax = axes[0]
    if ref_times is not None and len(ref_times):
        ax.plot(ref_times, ref_scores, ".", ms=2, color="#555555", label="reference score")
        if min_score is not None:
            ax.axhline(min_score, color="#d9534f", lw=0.8, ls="--", label=f"min score {min_score}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("reference")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    axes[1].fill_between(times, 0, labels.astype(float), step="post", color="#2e7d32")
    axes[1].set_ylabel("answer")
    axes[1].set_yticks([0, 1], ["no", "yes"])
    ax = axes[2]
    for k, s in enumerate(stages):
        m = decided_by == s
        ax.scatter(np.asarray(times)[m], np.full(m.sum(), k), s=2, color=colours[s], marker="|")
    ax.set_yticks(range(len(stages)), stages)
    ax.set_ylabel("decided by")
    ax.set_xlabel("time (s)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_result(out: Path, result, video, summary: dict, min_score: float, plot: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "frames.csv", frames_csv(result.frames, result.times, result.labels, result.decided_by))
    iv = intervals(result.frames, result.labels, video.fps)
    write_json(out / "intervals.json", iv)
    if plot:
        rf = np.array(sorted(result.reference_scores), dtype=np.int64)
        timeline_png(out / "timeline.png", result.times, result.labels, result.decided_by,
                     rf / video.fps, np.array([result.reference_scores[f] for f in rf.tolist()]), min_score,
                     title=f"{video.path.name}: {summary.get('object', '')}")
    summary = dict(summary, intervals=len(iv))
    write_json(out / "summary.json", summary)
    return summary
