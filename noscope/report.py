"""A query's result folder: write frames.csv, intervals.json, summary.json and timeline.png;
read them back for `noscope report`.

Every file is written to a temporary name and renamed into place, and summary.json goes last,
so a folder with a summary.json is a finished result.

A query owns what it writes in its folder, and a new result replaces an earlier one whole
(`clear_result`): "ours" is exactly RESULT_FILES, the temp files of their atomic writes
(`.tmp-NAME.*`), the clips `noscope report` names `clip-NNN-<start>s-<end>s.mp4` in `clips/`
(the folder too once that empties it), and, for several objects answered in one pass, the
per-object folders the earlier summary.json names. Anything else a user put there stays.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import NoscopeError
from .plans import STAGES, WINDOW_STAGES, stages_of

_COLUMNS = ["frame", "time_s", "label", "decided_by"]
# What a result folder holds that noscope wrote (module docstring); summary.json first, so a
# folder being cleared stops looking finished before anything else goes.
RESULT_FILES = ("summary.json", "frames.csv", "windows.csv", "intervals.json", "timeline.png", "costs.png")
CLIPS_DIR = "clips"
_CLIP_NAME = re.compile(r"(\.tmp-\d+-)?clip-\d{3,}-\d+\.\d\ds-\d+\.\d\ds\.mp4")


@dataclass
class FrameTable:
    """One row per answered frame, as in frames.csv."""

    frame: np.ndarray  # int64 (N,)
    time_s: np.ndarray  # float64 (N,)
    label: np.ndarray  # bool (N,)
    decided_by: np.ndarray  # str (N,)
    # float64 (N,) holding the reference's float32 scores, NaN where it did not run; None: not saved
    reference_score: np.ndarray | None

    @property
    def stages(self) -> tuple[str, ...]:
        """The stage names its rows speak (a windowed result's: plans.WINDOW_STAGES)."""
        return stages_of(self.decided_by)

    def decided_counts(self) -> dict[str, int]:
        return {s: int((self.decided_by == s).sum()) for s in self.stages}

    def seconds(self, frames, fps: float) -> np.ndarray:
        """Presentation times of `frames` as the rows recorded them (variable frame rate: not
        frame / fps); frames before or after the rows (a clip's padding) step by 1 / fps."""
        f = np.asarray(frames, float)
        if len(self.frame) == 0:
            return f / fps
        near = np.clip(f, self.frame[0], self.frame[-1])
        return np.interp(near, self.frame, self.time_s) + (f - near) / fps


def intervals(frames: np.ndarray, labels: np.ndarray, fps: float, times: np.ndarray | None = None) -> list[dict]:
    """Maximal runs of consecutive positive frames, as [start, end) in frames and seconds.

    Seconds are the frames' presentation times (`times`, as in frames.csv; frame / fps without
    them): an interval starts at its first frame's time and ends at the next frame's, or one
    average frame after its last frame where no next frame was answered. A frame missing from
    `frames` (lost to damage) ends a run.
    """
    out = []
    if len(frames) == 0:
        return out
    frames, lab = np.asarray(frames, np.int64), np.asarray(labels, bool)
    times = frames / fps if times is None else np.asarray(times, float)
    cont = np.diff(frames) == 1  # frame i + 1 directly follows frame i
    first = lab & ~np.r_[False, lab[:-1] & cont]
    last = lab & ~np.r_[lab[1:] & cont, False]
    for a, b in zip(np.flatnonzero(first).tolist(), np.flatnonzero(last).tolist()):
        f0, f1 = int(frames[a]), int(frames[b]) + 1
        t1 = times[b + 1] if b + 1 < len(frames) and frames[b + 1] == f1 else times[b] + 1 / fps
        out.append(dict(start_frame=f0, end_frame=f1, start_s=round(float(times[a]), 3), end_s=round(float(t1), 3)))
    return out


def _score_text(s: float) -> str:
    # the shortest text that reads back as the same float32: exact, and the same on every run
    return np.format_float_positional(np.float32(s), unique=True, trim="-")


def frames_csv(frames, times, labels, decided_by, reference_scores: dict[int, float] | None = None,
               windows: np.ndarray | None = None) -> bytes:
    """frames.csv; reference_score is empty where the reference did not run on the frame. A windowed
    query's rows also name each frame's window (its label and decided_by are the window's)."""
    ref = reference_scores or {}
    buf = io.StringIO()
    buf.write(",".join(_COLUMNS + ["reference_score"] + (["window"] if windows is not None else [])) + "\n")
    for i, (f, t, l, d) in enumerate(zip(frames.tolist(), times.tolist(), labels.tolist(), decided_by.tolist())):
        s = ref.get(f)
        tail = f",{int(windows[i])}" if windows is not None else ""
        buf.write(f"{f},{t:.3f},{int(l)},{d},{'' if s is None else _score_text(s)}{tail}\n")
    return buf.getvalue().encode()


def read_frames_csv(path: Path) -> FrameTable:
    """frames.csv as written by any version: without a reference_score column the scores are None."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NoscopeError(f"{path.parent} has no frames.csv; run `noscope query ... --out {path.parent}` again") from None
    except UnicodeDecodeError:
        raise NoscopeError(f"{path} is not a noscope frames.csv (not text)") from None
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or header[:4] != _COLUMNS:
        raise NoscopeError(f"{path} is not a noscope frames.csv (its header should start with {','.join(_COLUMNS)})")
    has_ref = len(header) > 4 and header[4] == "reference_score"
    fr, ts, lb, dec, sc = [], [], [], [], []
    try:
        for row in rows:
            fr.append(int(row[0]))
            ts.append(float(row[1]))
            lb.append(row[2] == "1")
            if row[3] not in STAGES and row[3] not in WINDOW_STAGES:
                raise ValueError(f"unknown stage {row[3]!r}")
            dec.append(row[3])
            if has_ref:
                sc.append(float(row[4]) if row[4] else np.nan)
    except (ValueError, IndexError) as e:
        raise NoscopeError(f"{path} line {rows.line_num} is malformed ({e or 'too few fields'})") from None
    return FrameTable(np.asarray(fr, np.int64), np.asarray(ts, float), np.asarray(lb, bool),
                      np.asarray(dec, dtype="<U9"), np.asarray(sc, np.float32).astype(float) if has_ref else None)


def read_summary(out: Path) -> dict:
    """summary.json of a finished result, or one clear error saying why there is none."""
    out = Path(out)
    if not out.exists():
        raise NoscopeError(f"no result folder at {out}")
    if not out.is_dir():
        raise NoscopeError(f"{out} is not a folder; give the --out folder of a `noscope query` run")
    path = out / "summary.json"
    if not path.is_file():
        raise NoscopeError(f"{out} has no finished result (no summary.json); run `noscope query ... --out {out}` first")
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise NoscopeError(f"{path} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("video"), str):
        raise NoscopeError(f"{path} is not a noscope query summary (no video path in it)")
    return summary


def read_intervals(out: Path) -> list[dict]:
    path = Path(out) / "intervals.json"
    try:
        iv = json.loads(path.read_text())
        return [dict(start_frame=int(i["start_frame"]), end_frame=int(i["end_frame"])) for i in iv]
    except FileNotFoundError:
        raise NoscopeError(f"{out} has no intervals.json; run `noscope query ... --out {out}` again") from None
    except (ValueError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise NoscopeError(f"{path} is malformed ({type(e).__name__})") from None


def table_fps(summary: dict, table: FrameTable) -> float:
    """The video's frame rate: saved in the summary since `noscope report`; older results: from the rows."""
    fps = summary.get("fps")
    if isinstance(fps, (int, float)) and fps > 0:
        return float(fps)
    if len(table.frame) > 1 and table.time_s[-1] > table.time_s[0]:
        return float((table.frame[-1] - table.frame[0]) / (table.time_s[-1] - table.time_s[0]))
    return 25.0


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


def timeline_title(summary: dict) -> str:
    return f"{Path(summary.get('video', '')).name}: {summary.get('object', '')}"


def draw_timeline(path: Path, table: FrameTable, summary: dict) -> None:
    from .plots import timeline_png

    atomic_write_bytes(path, timeline_png(table, table_fps(summary, table), summary.get("min_score"), timeline_title(summary)))


def draw_costs(path: Path, table: FrameTable, summary: dict) -> None:
    from .plots import costs_png

    decided = summary.get("decided_frames") or table.decided_counts()
    title = (f"{timeline_title(summary)}: {summary.get('frames', len(table.frame))} frames, "
             f"{summary.get('frames_per_s')} frames/s, {summary.get('reference_calls')} reference calls")
    atomic_write_bytes(path, costs_png(summary, decided, title))


def _earlier_parts(out: Path) -> list[Path]:
    """The per-object folders an earlier several-objects result in `out` names (by name, inside `out`)."""
    try:
        old = json.loads((out / "summary.json").read_text())
        names = [Path(r["out"]).name for r in old["results"].values()] if isinstance(old.get("objects"), list) else []
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    return [out / n for n in names if n not in ("", ".", "..") and (out / n).is_dir() and not (out / n).is_symlink()]


def clear_result(out: Path, keep: tuple = ()) -> None:
    """Remove what an earlier result left in `out` (ours only: module docstring; but the files in
    `keep`, this result's own already), so the result written next is not mixed with it.
    summary.json goes first."""
    out = Path(out)
    if not out.is_dir():
        return
    parts = _earlier_parts(out)
    for name in (n for n in RESULT_FILES if n not in keep):
        (out / name).unlink(missing_ok=True)
        for tmp in out.glob(f".tmp-{name}.*"):
            tmp.unlink(missing_ok=True)
    clips = out / CLIPS_DIR
    if clips.is_dir() and not clips.is_symlink():
        for f in clips.iterdir():
            if _CLIP_NAME.fullmatch(f.name) and not f.is_dir():
                f.unlink(missing_ok=True)
        _rmdir_if_empty(clips)
    for part in parts:
        clear_result(part)
        _rmdir_if_empty(part)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # not empty: something of the user's is in it
        pass


def write_result(out: Path, result, video, summary: dict, min_score: float, plot: bool = True) -> dict:
    """The result folder: frames.csv, intervals.json, timeline.png, then summary.json, replacing
    whatever an earlier result left there (a windowed query's result, whose frames name their
    window: its windows.csv, written before, stays)."""
    windows = getattr(result, "windows", None)
    clear_result(out, keep=("windows.csv",) if windows is not None else ())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "frames.csv", frames_csv(result.frames, result.times, result.labels, result.decided_by,
                                                      result.reference_scores, windows))
    iv = intervals(result.frames, result.labels, video.fps, result.times)
    write_json(out / "intervals.json", iv)
    summary = dict(summary, intervals=len(iv))
    if plot:
        ref = result.reference_scores
        table = FrameTable(result.frames, result.times, result.labels, result.decided_by,
                           np.array([ref.get(f, np.nan) for f in result.frames.tolist()], float))
        draw_timeline(out / "timeline.png", table, dict(summary, fps=video.fps, min_score=min_score))
    write_json(out / "summary.json", summary)
    return summary


def _source_video(summary: dict, override=None):
    """The result's video for cutting clips, checked to be the one that was answered."""
    from .video import open_video

    path = Path(override or summary["video"])
    if not override and not path.exists() and summary.get("video_abspath"):
        path = Path(summary["video_abspath"])  # the query ran in another working directory
    if not path.exists():
        raise NoscopeError(f"the source video of this result is gone: {path}; pass --video PATH if it moved")
    v = open_video(path)
    if summary.get("video_hash") and v.hash != summary["video_hash"]:
        raise NoscopeError(f"{path} is not the video this result answered (its contents changed since the query)")
    return v


def make_report(out: Path, clips: Path | None = None, pad_s: float = 1.0, max_clips: int = 50,
                max_clip_s: float = 60.0, video=None) -> dict:
    """(Re)draw timeline.png and costs.png in `out`; with `clips`, cut one mp4 per padded interval.

    Works from the folder alone (the video only for clips). Returns what was written.
    """
    from .clips import clip_ranges, write_clip

    out = Path(out)
    summary = read_summary(out)
    if isinstance(summary.get("objects"), list):  # the top folder of several objects answered in one pass
        subs = ", ".join(str(Path(r["out"]).name) for r in (summary.get("results") or {}).values())
        raise NoscopeError(f"{out} holds one result per object; give one of its folders: {subs}")
    table = read_frames_csv(out / "frames.csv")
    report: dict = dict(out=str(out))
    if clips is not None:  # check the inputs before drawing anything
        clips = Path(clips)
        if clips.exists() and not clips.is_dir():
            raise NoscopeError(f"--clips {clips} is a file, not a folder")
        iv = read_intervals(out)
        v = _source_video(summary, video)
    draw_timeline(out / "timeline.png", table, summary)
    report["timeline"] = str(out / "timeline.png")
    draw_costs(out / "costs.png", table, summary)
    report["costs"] = str(out / "costs.png")
    if clips is not None:
        ranges, omitted = clip_ranges([(i["start_frame"], i["end_frame"]) for i in iv], v.fps, v.frame_count,
                                      pad_s, max_clips, max_clip_s)
        clips.mkdir(parents=True, exist_ok=True)
        written = []
        for k, c in enumerate(ranges, 1):
            start_s, end_s = table.seconds([c.start_frame, c.end_frame], v.fps).tolist()
            path = clips / c.name(k, start_s, end_s)
            n = write_clip(v, c, path, table, summary.get("object") or "object")
            written.append(dict(path=str(path), start_s=round(start_s, 3), end_s=round(end_s, 3),
                                start_frame=c.start_frame, end_frame=c.end_frame, frames=n, intervals=len(c.intervals),
                                truncated=c.truncated))
        report.update(clips=written, clips_omitted=omitted)
    return report
