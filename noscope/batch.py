"""`noscope query` over many videos: one result folder per video and one runs.jsonl line each.

    videos = expand_videos(["/cams/night/", "/cams/extra/*.avi"])
    jobs = plan_jobs(videos, out_root, "bus", model_root)
    records = run_batch(jobs, RunOptions(settings, targets), out_root)   # here, one video after another
    records = run_batch(jobs, options, out_root, remote=run_on_ray)   # elsewhere (noscope.distributed)

A video that fails is one "failed" line in runs.jsonl and the run goes on; a video whose folder
already holds a finished result for the same video, model and targets is skipped. Both
executors run `run_job`, so a video answered on Ray is answered exactly as it is locally.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .atomic import hold_folder
from .errors import NoscopeError
from .plans import Targets
from .settings import Settings, default_name

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".mjpeg", ".mjpg"}
GLOB_CHARS = set("*?[")
RUNS_FILE = "runs.jsonl"


@dataclass(frozen=True)
class Job:
    """One video of a batch; every path absolute so any process (or Ray worker) can run it."""

    video: str
    out: str
    model: str
    object: str  # what the answers are about (names the output folder)
    object_name: str | None = None  # --object as given: checked against the bundle, or trains one
    trains: bool = False  # no --model: the run may train this video's bundle itself


@dataclass
class RunOptions:
    """What every video of a batch is run with: the effective settings and the query's options."""

    settings: Settings
    targets: Targets
    start: str | None = None
    end: str | None = None
    reference_name: str | None = None
    plot: bool = True


def is_batch(args, executor=None) -> bool:
    """Several videos, a folder or an unexpanded glob, or an explicit --executor: the batch runner.
    One plain file (or none) keeps the one-video command exactly as it was."""
    if executor is not None or len(args) > 1:
        return True
    return len(args) == 1 and (Path(args[0]).is_dir() or _is_glob(args[0]))


def _is_glob(arg: str) -> bool:
    return not Path(arg).exists() and bool(GLOB_CHARS & set(arg))


def _is_video_name(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")


def _is_video_entry(p: Path) -> bool:
    """A folder's or glob's entry that is a video by its name: a file, or a link to one. A link whose
    target is gone counts too, so it fails as its own video (as when named explicitly) instead of
    vanishing from the run; a folder, or a link to one, does not."""
    return _is_video_name(p) and (p.is_file() or (p.is_symlink() and not p.exists()))


def expand_videos(args) -> list[Path]:
    """Files as given, folders' videos (by extension, not recursive), globs the shell left alone;
    sorted, each video once. A missing file stays in the list: it fails as that video's own error."""
    found: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found += [c for c in p.iterdir() if _is_video_entry(c)]
        elif _is_glob(arg):
            found += [Path(m) for m in glob.glob(arg) if _is_video_entry(Path(m))]
        else:
            found.append(p)
    out, seen = [], set()
    for p in sorted((q.absolute() for q in found), key=str):
        key = os.path.realpath(p)  # two links to one file are one video
        if key not in seen:
            seen.add(key)
            out.append(p)
    if not out:  # bad input like a missing video (exit 1), not a wrong flag
        exts = ", ".join(sorted(VIDEO_EXTENSIONS))
        if len(args) == 1 and Path(args[0]).is_dir():
            raise NoscopeError(f"{args[0]} is a directory with no videos in it (looked for {exts})")
        raise NoscopeError(f"no videos found in {' '.join(map(str, args))} (looked for {exts})")
    return out


def plan_jobs(videos: list[Path], out_root: Path, object_for_names: str, model_root: Path | None = None,
              object_name: str | None = None) -> list[Job]:
    """One output folder per video, named STEM-OBJECT; stems that clash also get a hash of the
    video's path, so each video always lands in the same folder (what resuming relies on)."""
    from .bundle import bundle_path

    stems = Counter(v.stem for v in videos)
    jobs = []
    for v in videos:
        suffix = "-" + hashlib.sha256(str(v).encode()).hexdigest()[:8] if stems[v.stem] > 1 else ""
        model = model_root
        if model is None:  # --object alone: each video gets (or trains) its own bundle, named like its folder
            model = bundle_path(default_name(v, object_name) + suffix).absolute()
        jobs.append(Job(video=str(v), out=str(out_root.absolute() / (default_name(v, object_for_names) + suffix)),
                        model=str(model), object=object_for_names, object_name=object_name, trains=model_root is None))
    return jobs


def query_key(job: Job, opts: RunOptions) -> str | None:
    """A fingerprint of everything that decides this video's answers besides its path and the
    bundle's: the effective config, targets, segment, reference, the video file's size and
    mtime, and (with --model) the bundle's manifest, which holds its files' checksums.
    None when the video or bundle cannot be read (the query then fails with its own error)."""
    try:
        st = os.stat(job.video)
        # with --object the bundle may be trained by this very run, so it cannot be part of the key
        bundle = None if job.trains else hashlib.sha256((Path(job.model) / "bundle.yaml").read_bytes()).hexdigest()
    except OSError:
        return None
    what = dict(cfg=opts.settings.as_config(), targets=[opts.targets.fpr, opts.targets.fnr, opts.targets.metric, opts.targets.window],
                start=opts.start, end=opts.end, reference=opts.reference_name, video=[st.st_size, st.st_mtime_ns],
                bundle=bundle)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _bundles(job: Job, summary: dict) -> list[str]:
    """The bundles this job may have answered with: its own may have moved aside for one of another
    video that shared the file name (query.own_bundle_paths)."""
    from .prepare import own_bundle_paths

    if not job.trains:
        return [job.model]
    return [str(p) for p in own_bundle_paths(Path(job.model), str(summary.get("video_hash")))]


def finished_result(job: Job, opts: RunOptions) -> dict | None:
    """The summary of a finished result for this very query in job.out, else None.
    summary.json is written last, so its presence means the folder is complete."""
    try:
        s = json.loads((Path(job.out) / "summary.json").read_text())
        if not isinstance(s, dict) or s.get("video") != job.video or s.get("model") not in _bundles(job, s):
            return None
        key = query_key(job, opts)
        return s if key is not None and s.get("query_key") == key else None
    except (OSError, ValueError):
        return None  # no result, a damaged one, or the video or bundle is unreadable now: run it


def record(job: Job, status: str, summary: dict | None = None, seconds: float | None = None, error: str | None = None) -> dict:
    """One runs.jsonl line."""
    s = summary or {}
    positives = s.get("positives")
    if positives is None and isinstance(s.get("results"), dict):  # several objects in one pass: per object
        positives = {o: r.get("positives") for o, r in s["results"].items()}
    rec = dict(path=job.video, status=status, out=job.out, model=s.get("model", job.model),
               object=s.get("object", ",".join(s.get("objects", [])) or job.object),
               frames=s.get("frames"), positives=positives, reference_calls=s.get("reference_calls"),
               seconds=None if seconds is None else round(seconds, 3), error=error,
               finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if summary is not None:
        rec["unit"] = s.get("unit", "frames")  # what `verified` counts: frames, or windows of rec["window"]
        if s.get("window"):
            rec["window"] = s["window"]
            rec["windows"], rec["positive_windows"] = s.get("windows"), s.get("positive_windows")
        rec["verified"] = verified_record(s)
        rec["trained_on"] = s.get("trained_on")  # the bundle's video: this one, or another the user chose
        rec["model_version"] = s.get("model_version", 1)  # which version of the bundle answered (train --update)
        # every frame of the asked-for segment answered; false when decoding stopped early or lost
        # frames in the middle (stopped_at, missing_frames say where): met then speaks for a part
        rec["complete"] = s.get("stopped_at") is None and not s.get("missing_frames")
    if s.get("stopped_at") is not None:
        rec["stopped_at"] = s["stopped_at"]
    if s.get("missing_frames"):  # a damaged middle: the nightly log names the lost ranges too
        rec["missing_frames"] = s["missing_frames"]
    return rec


def verified_record(summary: dict) -> dict:
    """What the check on the queried video said, for runs.jsonl: met (True, False, or None: not
    enough evidence), and each rate's estimate and upper bound; several objects: met per object."""
    if isinstance(summary.get("results"), dict):
        return dict(met=summary.get("verified_met"), objects={o: r.get("verified_met") for o, r in summary["results"].items()})
    v = summary.get("verified") or {}
    keep = lambda r: None if r is None else {k: r.get(k) for k in ("estimate", "high", "count_high")}  # noqa: E731
    return dict(met=v.get("met"), fpr=keep(v.get("fpr")), fnr=keep(v.get("fnr")), escalated=v.get("escalated"),
                checked=v.get("checked"))


def describe(e: BaseException) -> str:
    """An exception as the one line the command line would print for it."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, NoscopeError):
        return msg
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on device writing {e.filename or 'output'}"
        if e.filename is not None:
            return f"{e.strerror or type(e).__name__}: {e.filename}"
    return f"internal error: {type(e).__name__}: {msg}"


def run_job(job: Job, opts: RunOptions, quiet: bool = True, say=None, on_error: Callable | None = None) -> dict:
    """Answer one video into job.out and return its runs.jsonl record; any failure is a record too.

    KeyboardInterrupt is not caught: Ctrl-C stops the whole batch."""
    from .query import query_video
    from .report import clear_result

    t0 = time.perf_counter()
    try:
        with hold_folder(job.out):  # another run writing this video's folder: this one fails, and says why
            # a half-rewritten folder must not look finished while this run replaces it; cleared now,
            # while the earlier summary.json still names an earlier several-objects result's folders
            clear_result(Path(job.out))
            key = query_key(job, opts)
            summary = query_video(job.video, opts.settings, opts.targets, model=job.model, objects=job.object_name,
                                  out=job.out, start=opts.start, end=opts.end, reference_named=bool(opts.reference_name),
                                  plot=opts.plot, quiet=quiet, say=say, summary_extra=dict(query_key=key), tell=False,
                                  own_model=job.trains)
    except Exception as e:
        if on_error:
            on_error(e)
        return record(job, "failed", seconds=time.perf_counter() - t0, error=describe(e))
    return record(job, "done", summary, seconds=time.perf_counter() - t0)


def append_record(path: Path, rec: dict) -> None:
    """Append one whole line: a single O_APPEND write, fsynced, so concurrent runs never interleave
    within a line and a crash leaves at most a last line without its newline, which readers skip."""
    from .report import json_safe

    data = (json.dumps(json_safe(rec), allow_nan=False) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # an earlier run died mid-line: start ours on a line of its own
        n = os.write(fd, data)
        if n != len(data):
            os.ftruncate(fd, size)
            raise OSError(errno.ENOSPC, "short write", str(path))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict]:
    """runs.jsonl's complete lines, oldest first."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def run_batch(jobs: list[Job], opts: RunOptions, out_root: Path, *, force=False, remote: Callable | None = None,
              quiet=True, say=None, on_record: Callable[[dict], None] | None = None, on_error: Callable | None = None) -> list[dict]:
    """Run every job (skipping finished ones unless `force`), appending each record to
    out_root/runs.jsonl as it comes in. Returns the records in job order.

    remote(todo, opts, got): runs the (index, job) pairs elsewhere and calls got(index, record)
    for each (e.g. noscope.distributed.run_on_ray); None runs them here, one after another."""
    say = say or (lambda *a, **k: None)
    runs = Path(out_root).absolute() / RUNS_FILE
    records: dict[int, dict] = {}

    def got(i: int, rec: dict) -> None:
        append_record(runs, rec)
        records[i] = rec
        if on_record:
            on_record(rec)

    todo = []
    for i, job in enumerate(jobs):
        done = None if force else finished_result(job, opts)
        if done is not None:
            got(i, record(job, "skipped", done))
        else:
            todo.append((i, job))
    if todo and remote is not None:
        remote(todo, opts, got)
    else:
        for k, (i, job) in enumerate(todo, 1):
            say(f"[{k}/{len(todo)}] {job.video}")
            got(i, run_job(job, opts, quiet=quiet, say=say, on_error=on_error))
    return [records[i] for i in range(len(jobs))]
