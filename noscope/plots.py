"""Pictures of a query's result: the timeline and the per-stage cost chart, as PNG bytes.

    png = timeline_png(table, fps=25.0, min_score=0.5, title="cam.mp4: car")
    png = costs_png(summary, decided={"skip": 900, "diff": 80, "model": 15, "reference": 5})

Both take plain data (a FrameTable, a summary dict), so `noscope query` and `noscope report`
draw the same picture from the run in memory or from the result folder.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np

from .plans import STAGES, stages_of

# where the seconds go (skipping costs nothing); "verify" is the check on the video and its repairs
COSTS = ("decode", "diff", "model", "reference", "verify")
COLOURS = {"skip": "#b0b0b0", "decode": "#6c757d", "diff": "#5b9bd5", "model": "#f2a900", "reference": "#d9534f",
           "verify": "#8e44ad", "cheap": "#5b9bd5", "sampled": "#f08a5d"}
ANSWER = "#2e7d32"
# Time bins across the picture: about one per pixel column, so hours of video draw as fast as
# a minute and a bin's shade shows the share of its frames, not just "some frame".
_BINS = 1200


def _quiet_glyphs(draw):
    """A file name in a script the font lacks (カメラ.mp4) draws as boxes in the title; matplotlib
    would also warn once per missing glyph on stderr, noise in a batch job's log."""
    @functools.wraps(draw)
    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
            return draw(*args, **kwargs)
    return quiet


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _clock(seconds: float, hours: bool) -> str:
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if hours else f"{m}:{s % 60:02d}"


def _bin_shares(frames: np.ndarray, seconds, masks: dict[str, np.ndarray]):
    """Edges (seconds, one more than bins) of equal bins of frames, and each mask's share of frames per bin.

    Binned by frame number, not by the rounded times in frames.csv, so no bin is left empty
    by rounding; `seconds` turns frame numbers into the times the rows recorded, so that under a
    variable frame rate the bins line up with the reference scores drawn above them.
    """
    f0 = int(frames[0])
    span = int(frames[-1]) - f0 + 1
    nbins = int(min(span, _BINS))
    idx = np.minimum((frames - f0) * nbins // span, nbins - 1)
    total = np.bincount(idx, minlength=nbins).astype(float)
    shares = {k: np.bincount(idx[m], minlength=nbins) / np.maximum(total, 1) for k, m in masks.items()}
    return seconds(f0 + span * np.arange(nbins + 1) / nbins), shares


def _runs(level: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) index runs of equal non-zero values."""
    edges = np.flatnonzero(np.diff(level)) + 1
    starts, ends = np.r_[0, edges], np.r_[edges, len(level)]
    return [(int(a), int(b)) for a, b in zip(starts, ends) if level[a] > 0]


@_quiet_glyphs
def timeline_png(table, fps: float, min_score: float | None = None, title: str = "") -> bytes:
    """Reference score where known, the cascade's answer, and which stage decided, over time."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(12, 5), sharex=True, gridspec_kw=dict(height_ratios=[2, 1, 1.4]))
    times = np.asarray(table.time_s, float)
    ax = axes[0]
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("reference\nscore")
    ax.set_ylim(-0.03, 1.03)
    known = None if table.reference_score is None else ~np.isnan(table.reference_score)
    if known is not None and known.any():
        ax.plot(times[known], table.reference_score[known], ".", ms=3, color="#444444",
                label=f"reference score ({int(known.sum())} frames)")
    else:
        why = "no reference scores saved in this result" if known is None else "the reference ran on no frame"
        ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="#777777")
    if min_score is not None:
        ax.axhline(min_score, color=COLOURS["reference"], lw=0.8, ls="--", label=f"min score {min_score}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    if len(times) == 0:
        axes[-1].set_xlabel("time")
        return _png(fig, plt)

    masks = {s: table.decided_by == s for s in table.stages}
    masks["yes"] = np.asarray(table.label, bool)
    edges, shares = _bin_shares(np.asarray(table.frame, np.int64), lambda f: table.seconds(f, fps), masks)
    ax = axes[1]
    yes = shares["yes"]
    ax.fill_between(edges, 0, np.r_[yes, yes[-1]], step="post", color=ANSWER, lw=0)
    ax.set_ylim(0, 1.05)
    ax.set_yticks([0, 1], ["no", "yes"])
    ax.set_ylabel("cascade\nanswer")
    _stage_panel(axes[2], edges, shares, masks, table.stages)
    fig.tight_layout()
    return _png(fig, plt)


def _stage_panel(ax, edges: np.ndarray, shares: dict, masks: dict, stages: tuple[str, ...] = STAGES) -> None:
    """Which stage decided the frames of each time bin (a windowed result: their windows), and the time axis under it."""
    from matplotlib.colors import to_rgba
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    for k, s in enumerate(stages):
        # shade by the share of the bin's frames this stage decided, in tenths, so that runs of
        # bins with one shade draw as one bar (no hairline gaps between neighbouring bins)
        level = np.where(shares[s] > 0, np.maximum(1, np.round(shares[s] * 10)), 0).astype(int)
        bars, colours = [], []
        for a, b in _runs(level):
            bars.append((edges[a], edges[b] - edges[a]))
            colours.append(to_rgba(COLOURS[s], 0.2 + 0.08 * level[a]))
        if bars:
            ax.broken_barh(bars, (k - 0.4, 0.8), facecolors=colours, lw=0)
    ax.set_yticks(range(len(stages)), [f"{s} {100 * m.mean():.0f}%" for s, m in zip(stages, (masks[s] for s in stages))])
    ax.set_ylim(-0.6, len(stages) - 0.4)
    ax.invert_yaxis()
    ax.set_ylabel("decided by")
    ax.set_xlim(edges[0], edges[-1])
    span = edges[-1] - edges[0]
    if span > 120:  # clock time, ticks on whole minutes
        step = next((m * 60 for m in (1, 2, 5, 10, 15, 30, 60, 120, 240, 480) if span / (m * 60) <= 10), 960 * 60)
        ax.xaxis.set_major_locator(MultipleLocator(step))
        hours = edges[-1] >= 3600
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _clock(x, hours)))
        ax.set_xlabel("time (h:mm:ss)" if hours else "time (m:ss)")
    else:
        ax.set_xlabel("time (s)")


@_quiet_glyphs
def costs_png(summary: dict, decided: dict[str, int], title: str = "") -> bytes:
    """Seconds spent in each stage, and the share of frames each stage decided."""
    plt = _pyplot()

    seconds = summary.get("stage_seconds") or {}
    secs = [float(seconds.get(s) or 0.0) for s in COSTS]
    wall = float(summary.get("wall_seconds") or 0.0)
    names = list(COSTS)
    other = wall - sum(secs)
    if other > 0.005 * max(wall, 1e-9):  # bookkeeping between stages: shown so the bars add up to the wall time
        names.append("other")
        secs.append(other)
    total = sum(secs) or 1.0
    n = max(sum(decided.values()), 1)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
    y = np.arange(len(names))
    a1.barh(y, secs, color=[COLOURS.get(s, "#999999") for s in names])
    a1.set_yticks(y, names)
    a1.invert_yaxis()
    a1.set_xlabel("seconds")
    a1.set_title(f"time per stage (wall {wall:.2f} s)", fontsize=10)
    for i, x in enumerate(secs):
        a1.text(x, i, f" {x:.2f} s ({100 * x / total:.0f}%)", va="center", fontsize=8)
    a1.set_xlim(0, max(max(secs), 1e-3) * 1.45)

    stages = stages_of(list(decided))
    counts = [int(decided.get(s, 0)) for s in stages]
    y = np.arange(len(stages))
    a2.barh(y, [100 * c / n for c in counts], color=[COLOURS[s] for s in stages])
    a2.set_yticks(y, stages)
    a2.invert_yaxis()
    a2.set_xlabel("% of frames")
    a2.set_xlim(0, 125)
    a2.set_title(f"frames decided per stage ({n} frames)", fontsize=10)
    for i, c in enumerate(counts):
        a2.text(100 * c / n, i, f" {100 * c / n:.1f}% ({c})", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig, plt)
