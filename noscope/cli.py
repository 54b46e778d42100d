"""Command line: thin click commands over the pipeline modules.

    noscope weights                                   # fetch the default detector (once)
    noscope label VIDEO --object person               # reference on every frame, cached
    noscope train VIDEO --object person --end 60% --name store
    noscope query VIDEO --model store --target-fpr 0.01 --target-fnr 0.01 --out out/
    noscope query DIR_OR_GLOB... --model store --out nightly/ [--executor ray]   # a batch, resumable
    noscope evaluate VIDEO --model store --start 60% --json
    noscope report out/ --clips out/clips           # timeline, cost chart, clips of the intervals
    noscope config --set train.epochs=5               # print the effective configuration

Exit codes: 0 success, 1 an error in the input or the run (one line on stderr), 2 usage errors,
3 an internal error (a bug: one line, the traceback only with -v), 130 interrupted.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from .errors import NoscopeError, UsageError
from .settings import Settings, make_targets, parse_objects

log = logging.getLogger("noscope")


class Group(click.Group):
    """Turns our errors into one line and an exit code instead of a traceback."""

    def invoke(self, ctx):
        args = list(getattr(ctx, "_protected_args", None) or []) + list(ctx.args)
        verbose = any(a in ("-v", "--verbose") for a in args)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own: --help, usage errors (exit 2)
        except NoscopeError as e:
            click.echo(f"noscope: error: {_one_line(e)}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("noscope: interrupted; finished work is kept, run the same command to resume", err=True)
            sys.exit(130)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                echo_line(f"noscope: error: no space left on device writing {e.filename or 'output'}; "
                          "nothing finished was lost, free space and run again", err=True)
                sys.exit(1)
            if e.filename is not None:  # a file we could not read or write: the environment, not a bug
                echo_line(f"noscope: error: {e.strerror or type(e).__name__}: {e.filename}", err=True)
                sys.exit(1)
            self._internal(e, verbose)
        except Exception as e:
            self._internal(e, verbose)

    @staticmethod
    def _internal(e: BaseException, verbose: bool):
        """Anything unexpected: one line and exit 3; the traceback only with -v."""
        if verbose:
            import traceback

            traceback.print_exception(e, file=sys.stderr)
        click.echo(f"noscope: internal error: {type(e).__name__}: {_one_line(e)}; run with -v for the traceback", err=True)
        sys.exit(3)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def given(ctx, param, value):
    """An option or argument given as an empty string (`--model ""`, an unset shell variable) names
    nothing: a usage error, never a silent default or a bug further down."""
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, str) and not v.strip():
            if param.param_type_name == "option":
                raise UsageError(f"{param.opts[0]} is an empty string: give a value or leave the option out")
            raise UsageError(f"{param.human_readable_name} is an empty string: name a file or folder")
    return value


def common(f):
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False), callback=given,
                     help="YAML file overriding configs/default.yaml.")(f)
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", callback=given, help="Override one config key, e.g. train.epochs=5.")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bars or chatter.")(f)
    f = click.option("-v", "--verbose", is_flag=True, help="Debug logging.")(f)
    return f


def setup(config_file, sets, quiet, verbose, reference_name=None, reference_weights=None, reference_cfg=None) -> Settings:
    """Logging for this command, and the configuration read once into typed settings (with the
    command line's reference flags applied)."""
    from .config import load_config

    configure_logging(verbose)
    settings = Settings.from_config(load_config(config_file, list(sets)))
    return settings.with_reference(settings.reference.with_options(reference_name, reference_weights, reference_cfg))


def configure_logging(verbose: bool) -> None:
    log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for h in [h for h in log.handlers if isinstance(h, _EchoHandler)]:
        log.removeHandler(h)
    log.addHandler(_EchoHandler(verbose))
    log.propagate = False


class _EchoHandler(logging.Handler):
    """Our log records as one stderr line each (`noscope: warning: ...`), through click so
    they reach whatever stderr is current."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def emit(self, record):
        try:
            where = f" ({record.name})" if self.verbose else ""
            click.echo(f"noscope: {record.levelname.lower()}{where}: {' '.join(record.getMessage().split())}", err=True)
        except Exception:
            self.handleError(record)


def segment_options(f):
    f = click.option("--end", default=None, callback=given, help="End: seconds (90, 1:30), a frame (2700f) or a share (60%).")(f)
    f = click.option("--start", default=None, callback=given, help="Start: seconds (12.5, 0:12.5), a frame (300f) or a share (60%).")(f)
    return f


def reference_options(f):
    f = click.option("--reference", "reference_name", default=None, callback=given, help="Reference detector (see `noscope references`).")(f)
    f = click.option("--reference-weights", default=None, type=click.Path(), callback=given, help="Weights file for the reference.")(f)
    f = click.option("--reference-cfg", default=None, type=click.Path(), callback=given, help="Darknet .cfg (with --reference darknet).")(f)
    return f


@click.group(cls=Group, context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(package_name="noscope")
def cli():
    """Which frames of this video contain an object? Fast, within a stated error of a detector."""


@cli.command()
@click.option("--check", is_flag=True, help="Only check that the weights are in place.")
def weights(check):
    """Fetch the default reference detector (YOLOv3-tiny, COCO) into the cache."""
    from .reference.weights import fetch_yolov3_tiny, yolov3_tiny_files

    if check:
        cfg, w, names = yolov3_tiny_files(fetch=False)
        click.echo(f"ok: {w.parent}")
    else:
        click.echo(f"ok: {fetch_yolov3_tiny()}")


@cli.command()
def references():
    """List the reference detectors."""
    from .reference import REFERENCES

    for name in REFERENCES:
        click.echo(name)


@cli.command("config")
@common
def config_cmd(config_file, sets, quiet, verbose):
    """Print the effective configuration (defaults + --config + --set)."""
    from .config import dump

    click.echo(dump(setup(config_file, sets, quiet, verbose).as_config()), nl=False)


@cli.command()
@click.argument("video", type=click.Path(), callback=given)
@click.option("--object", "object_name", required=True, callback=given, help="COCO class name, e.g. car, person, bus.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1), help="Label every Nth frame.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@segment_options
@reference_options
@common
def label(video, object_name, every, as_json, start, end, reference_name, reference_weights, reference_cfg, config_file, sets, quiet, verbose):
    """Run the reference detector on the frames of VIDEO and cache its answers."""
    from .labels import label_frames
    from .prepare import open_reference
    from .reference import reference_runtime
    from .results import describe_missing
    from .video import missing_ranges, open_video, stop_is_truncation

    settings = setup(config_file, sets, quiet, verbose, reference_name, reference_weights, reference_cfg)
    v = open_video(video, settings.decode.backend)
    s, e = v.segment(start, end)
    ref, key = open_reference(settings.reference)
    cls = ref.class_index(object_name)
    t0 = time.perf_counter()
    labels = label_frames(v, ref, key, np.arange(s, e, every), quiet=quiet or as_json)
    wall = time.perf_counter() - t0
    min_score = settings.labels.min_score
    pos = int((labels.score_of(cls) >= min_score).sum())
    n = len(labels.frames)
    fresh = n - labels.from_cache
    summary = dict(video=str(v.path), object=object_name, reference=key, runtime=reference_runtime(ref), frames=n,
                   from_cache=labels.from_cache,
                   positives=pos, min_score=min_score, seconds=round(wall, 3),
                   frames_per_s=round(fresh / labels.seconds, 2) if fresh and labels.seconds else None)
    decoding = labels.decoding  # None: every frame came from the cache
    if decoding is not None and stop_is_truncation(decoding):
        summary["stopped_at"] = decoding.stopped_at
    lost = missing_ranges(decoding.missing if decoding is not None else [], s, e)
    if lost:
        summary["missing_frames"] = lost
    if as_json:
        click.echo(json.dumps(summary))
        return
    rate = f"{summary['frames_per_s']:.1f} frames/s" if summary["frames_per_s"] else "all from cache"
    echo_line(f"{v.path.name}: {n} frames labelled ({labels.from_cache} from cache), {object_name} in {pos} "
              f"({100 * pos / max(n, 1):.1f}%, score >= {min_score}), {wall:.1f} s, {rate}")
    if "stopped_at" in summary:
        log.warning("the video stops decoding at frame %d of %d; labelled what decoded", summary["stopped_at"],
                    v.frame_count)
    if lost:
        log.warning("part of the video cannot be decoded: no labels for frames %s; labelled the rest",
                    describe_missing(lost, most=None))


@cli.command()
@click.argument("videos", nargs=-1, type=click.Path(), callback=given)
@click.option("--object", "object_name", default=None, callback=given,
              help="COCO class name, e.g. car; several (car,person,bus) train one model answering all in one pass.")
@click.option("--name", default=None, callback=given, help="Bundle name (default: VIDEOSTEM-OBJECT, VIDEOSTEM-car+person) or a path.")
@click.option("--update", "update_name", default=None, callback=given, metavar="BUNDLE",
              help="Make a new version of BUNDLE (a name or folder; not a kept version BUNDLE@N, which query and "
                   "evaluate read with --model) from the reference answers queries collected on VIDEOS (files, "
                   "folders, globs; the newest last); it replaces BUNDLE only if it validates at least as well on the "
                   "newest footage. Exit 8: too few new answers to learn from (unchanged).")
@click.option("--force", is_flag=True, help="Retrain from scratch instead of resuming.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=None, help="Random seed (default: config seed).")
@segment_options
@reference_options
@common
def train(videos, object_name, name, update_name, force, seed, start, end, reference_name, reference_weights,
          reference_cfg, config_file, sets, quiet, verbose):
    """Train specialized models and difference detectors for OBJECT on VIDEO; or, with --update BUNDLE,
    teach BUNDLE what the reference answered on VIDEOS since (a new version)."""
    from .bundle import bundle_path, names_version
    from .prepare import bundle_destination
    from .train import train as run_train

    settings = setup(config_file, sets, quiet, verbose, reference_name, reference_weights, reference_cfg).with_seed(seed)
    say = (lambda *a, **k: None) if quiet else (lambda m: click.echo(m, err=True))
    if update_name is not None:
        for flag, v in (("--object", object_name), ("--name", name), ("--force", force), ("--reference", reference_name),
                        ("--reference-weights", reference_weights), ("--reference-cfg", reference_cfg)):
            if v:
                raise UsageError(f"{flag} does not go with --update (the bundle says what it answers and with which reference)")
        update_line(update_name, videos, settings, (start, end), quiet, say)
        return
    if object_name is None:
        raise UsageError("train needs --object OBJ (or --update BUNDLE to update a trained bundle)")
    if len(videos) != 1:
        raise UsageError(f"train takes one VIDEO, not {len(videos)} (several only with --update BUNDLE)")
    if name and names_version(name):
        raise UsageError(f"--name {name!r} names a version of a bundle; versions are made by `noscope train --update`")
    video, objects = videos[0], parse_objects(object_name)
    # never another video's namesake
    out = bundle_path(name) if name else bundle_destination(video, objects, settings.decode.backend)
    m = run_train(video, objects, out, settings, start, end, quiet=quiet, force=force, say=say)
    echo_line(f"trained {out}: {len(m.candidates)} specialized models" + _best_auc_words(m.candidates, objects)
              + f", {len(m.diffs)} difference detectors, {m.video.frames_labelled} frames labelled, "
              f"{m.train_seconds:.0f} s")


def update_line(bundle_name: str, videos, settings: Settings, segment: tuple, quiet: bool, say) -> None:
    """`train --update` (and `query --update`): the update, and one line saying what it made (or why it
    made nothing). `segment`: (--start, --end) of each video. Raises update.UpdateRefused when there is
    too little new to learn from."""
    from .batch import expand_videos
    from .bundle import bundle_label, bundle_path, kept_version, version_of
    from .update import Unchanged, update_bundle

    if version_of(bundle_name) is not None or kept_version(root := bundle_path(bundle_name)):
        raise UsageError(f"--update {bundle_name!r} names a version of a bundle: versions are for reading (--model "
                         "NAME@N in query and evaluate) and an update learns on the bundle itself, whose newest good "
                         "version is what learns: give its name or folder")
    if not videos:
        raise UsageError("--update BUNDLE needs the VIDEOS whose collected reference answers it learns from")
    r = update_bundle(root, expand_videos(videos), settings, *segment, quiet=quiet, say=say)
    if isinstance(r, Unchanged):
        echo_line(f"not updated: {bundle_label(root)} stays version {r.version}: {r.why}")
        return
    v = r.entry["validation"]
    new, cur = v["new"], v["current"]
    figures = (f"held-out {v['heldout_frames']} frames: best AUC {_aucs(new)} vs {_aucs(cur)}, reference on "
               f"{new['reference_share']:.0%} vs {cur['reference_share']:.0%} of them, {new['expected_cost_ms']:.3g} vs "
               f"{cur['expected_cost_ms']:.3g} ms/frame (new vs version {r.parent})")
    if r.good:
        echo_line(f"updated {root}: version {r.version} from {r.entry['learnt_frames']} answered frames of "
                  f"{len(r.entry['videos'])} video(s) is now {root.name}; {figures}")
    else:
        echo_line(f"updated {root}: version {r.version} kept aside at {r.path}, {root.name} stays version {r.parent}: "
                  f"it validates worse ({r.reason}); {figures}")


def update_after_query(bundle_name: str, videos, settings: Settings, segment: tuple, quiet: bool, say) -> None:
    """`query --update`: the update after the answers are written. A refusal (too little new to learn
    from) is one warning line: the query's answers stand, and so does its exit status."""
    from .update import UpdateRefused

    try:
        update_line(bundle_name, videos, settings, segment, quiet, say)
    except UpdateRefused as e:
        log.warning("not updated: %s", e)


def _aucs(fig: dict) -> str:
    return "/".join("n/a" if a is None else f"{a:.3f}" for a in fig["best_auc"].values())


def _best_auc_words(cands, objects: list[str]) -> str:
    """' (best held-out AUC 0.973, NAME)' for train's line; n/a where no candidate has one (held-out
    frames of one kind only: NaN), as every rate without frames of its kind is written."""
    import math

    def finite(x) -> bool:
        return x is not None and math.isfinite(x)

    if not cands:
        return ""
    if len(objects) > 1:
        words = []
        for o in objects:
            aucs = [c.heldout_aucs[o] for c in cands if c.heldout_aucs[o] is not None]  # None: never used
            scored = [a for a in aucs if finite(a)]
            words.append(f"{o} {max(scored):.3f}" if scored else f"{o} {'n/a' if aucs else 'unused'}")
        return f" (best held-out AUC per object: {'; '.join(words)})"
    top = max((c for c in cands if finite(c.heldout_auc)), key=lambda c: c.heldout_auc, default=None)
    return f" (best held-out AUC {top.heldout_auc:.3f}, {top.name})" if top else " (held-out AUC n/a)"


def targets_options(f):
    f = click.option("--guarantee", is_flag=True, default=None,
                     help="Check on the video until the targets are certified (query.guarantee), repairing or "
                          "sending frames to the reference as needed.")(f)
    f = click.option("--target-fpr", type=float, default=None, help="Most false positives allowed (share of negative frames).")(f)
    f = click.option("--target-fnr", type=float, default=None, help="Most false negatives allowed (share of positive frames).")(f)
    f = click.option("--metric", type=click.Choice(["frames", "windows"]), default=None, help="Count errors per frame or per window (NoScope).")(f)
    f = click.option("--window", default=None, callback=given, metavar="LENGTH",
                     help="Answer per window of time: 1s, 0.5s, 30f (query.window). A window is yes when the reference "
                          "sees the object in at least query.window_share of its frames (0.5); the targets are shares of "
                          "windows.")(f)
    return f


@cli.command()
@click.argument("videos", nargs=-1, type=click.Path(), callback=given)
@click.option("--model", default=None, callback=given, help="Trained bundle name or path.")
@click.option("--object", "object_name", default=None, callback=given,
              help="Object(s) to find (car or car,person); trains a bundle on VIDEO if none exists.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), callback=given,
              help="Output folder (default noscope-out/VIDEOSTEM-OBJECT; several objects: one VIDEOSTEM-OBJECT folder "
                   "each inside it); for a batch, the root holding one folder per video and runs.jsonl (default noscope-out).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (a batch: one per video).")
@click.option("--no-plot", is_flag=True, help="Skip timeline.png.")
@click.option("--force", is_flag=True, help="Batch: redo videos that already have a finished result.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Run as a batch, here (local) or one Ray task per video (ray).")
@click.option("--ray-address", default=None, callback=given, help="Ray cluster for --executor ray (default $RAY_ADDRESS, else a local Ray).")
@click.option("--update", "update_after", is_flag=True,
              help="Afterwards, make a new version of --model from the reference answers collected on the videos "
                   "answered (as `noscope train --update MODEL VIDEOS` does).")
@targets_options
@segment_options
@reference_options
@common
def query(videos, model, object_name, out_dir, as_json, no_plot, force, executor, ray_address, update_after, guarantee,
          target_fpr, target_fnr, metric, window, start, end, reference_name, reference_weights, reference_cfg, config_file,
          sets, quiet, verbose):
    """Answer, for every frame of VIDEO, whether the object is there, within the error targets.

    Several videos, a folder (its videos, not recursive) or a quoted glob run as a batch: one
    folder per video under --out, a runs.jsonl line per video, finished videos skipped unless
    --force; exit 0 all done, 1 some videos failed."""
    from .batch import RunOptions, is_batch
    from .query import query_video
    from .report import json_safe

    settings = setup(config_file, sets, quiet, verbose, reference_name, reference_weights, reference_cfg)
    settings = settings.with_guarantee(guarantee).with_window(checked_window(window))
    targets = make_targets(settings, target_fpr, target_fnr, metric)
    if ray_address and executor != "ray":
        raise UsageError("--ray-address needs --executor ray")
    if update_after and (model is None or reference_name):
        raise UsageError("--update needs --model (the bundle to update) and its own reference")
    say = (lambda *a, **k: None) if (quiet or as_json) else (lambda m: click.echo(m, err=True))
    if is_batch(videos, executor):
        opts = RunOptions(settings, targets, start, end, reference_name, not no_plot)
        records = _query_batch(videos, opts, model, object_name, out_dir, as_json, force, executor or "local",
                               ray_address, quiet, verbose)
        answered = [r["path"] for r in records if r["status"] != "failed"]
        if update_after and answered:
            update_after_query(model, answered, settings, (start, end), quiet or as_json, say)
        if any(r["status"] == "failed" for r in records):
            click.get_current_context().exit(1)
        return
    video = videos[0] if videos else None
    summary = query_video(video, settings, targets, model=model, objects=object_name, out=out_dir, start=start, end=end,
                          reference_named=bool(reference_name), plot=not no_plot, quiet=quiet or as_json, say=say)
    click.echo(json.dumps(json_safe(summary)) if as_json else printable(_summary_line(summary)))
    if update_after:
        update_after_query(model, [video], settings, (start, end), quiet or as_json, say)


def checked_window(window):
    """--window as given, checked now (a bad one is one usage line before anything runs)."""
    if window is not None:
        from .windows import parse_window

        parse_window(window)
    return window


def _summary_line(summary: dict) -> str:
    """The one line a query prints on stdout: what was found where, how fast, and what backs it."""
    from .results import met_word, model_words

    if summary.get("unit") == "windows" and "windows" in summary:
        w = summary["window"]
        return (f"{Path(summary['video']).name}: {summary['object']} in {summary['positive_windows']} of "
                f"{summary['windows']} windows of {w['spec']} ({summary['intervals']} intervals), {summary['frames_per_s']} "
                f"frames/s, {summary['reference_calls']} reference calls, {model_words(summary)}, "
                f"targets {met_word(summary['verified']['met'])} -> {summary['out']}")
    if "objects" in summary:
        found = ", ".join(f"{o} in {r['positives']} ({r['intervals']} intervals, targets {met_word(r['verified_met'])})"
                          for o, r in summary["results"].items())
        return (f"{Path(summary['video']).name}: {found} of {summary['frames']} frames, {summary['frames_per_s']} "
                f"frames/s, {summary['reference_calls']} reference calls, {model_words(summary)} -> {summary['out']}")
    return (f"{Path(summary['video']).name}: {summary['object']} in {summary['positives']} of {summary['frames']} frames "
            f"({summary['intervals']} intervals), {summary['frames_per_s']} frames/s, "
            f"{summary['reference_calls']} reference calls, {model_words(summary)}, "
            f"targets {met_word(summary['verified']['met'])} -> {summary['out']}")


def _query_batch(videos, opts, model, object_name, out_dir, as_json, force, executor, ray_address, quiet,
                 verbose) -> list[dict]:
    """Many videos: one result folder and one runs.jsonl line each; their records (the caller exits 1
    if any failed)."""
    from collections import Counter

    from .batch import RUNS_FILE, expand_videos, plan_jobs, run_batch
    from .prepare import bundle_reference, resolve_bundle

    if model is None and object_name is None:
        raise UsageError("give --model NAME (a trained bundle) or --object OBJ (trains one per video first)")
    if executor == "ray":
        from .distributed import require_ray

        require_ray()  # a missing ray is one line before anything runs
    paths = expand_videos(videos)
    root = Path(out_dir or "noscope-out").absolute()
    model_root, obj = None, object_name
    if model is not None:  # a bundle that cannot be used would fail every video: say so once, up front
        bundle = resolve_bundle(opts.settings, None, model, object_name, quiet)
        bundle_reference(opts.settings.reference, bundle, bool(opts.reference_name))
        model_root, obj = Path(bundle.root).absolute(), object_name or bundle.object
    jobs = plan_jobs(paths, root, obj, model_root, object_name)
    say = (lambda *a, **k: None) if (quiet or as_json) else (lambda m: click.echo(m, err=True))

    def show(rec):
        _show_record(rec, executor, as_json)

    def trace(e):
        if verbose:
            import traceback

            traceback.print_exception(e, file=sys.stderr)

    remote = None
    if executor == "ray":
        from functools import partial

        from .distributed import run_on_ray

        remote = partial(run_on_ray, address=ray_address)
    records = run_batch(jobs, opts, root, force=force, remote=remote, quiet=quiet or as_json, say=say, on_record=show,
                        on_error=trace)
    n = Counter(r["status"] for r in records)
    unmet = sum(1 for r in records if r["status"] != "failed" and (r.get("verified") or {}).get("met") is not True)
    partial = sum(1 for r in records if r["status"] != "failed" and r.get("complete") is False)
    if not as_json:
        echo_line(f"{len(records)} videos: {n['done']} done, {n['skipped']} skipped, {n['failed']} failed, "
                  f"{unmet} with targets not verified met, {partial} answered in part; log {root / RUNS_FILE}")
    return records


def _show_record(rec: dict, executor: str, as_json: bool) -> None:
    """A batch's lines for one video as its record comes in: an error or warning on stderr, and its
    result line (or JSON) on stdout."""
    from .report import json_safe
    from .results import met_word, model_words

    name = Path(rec["path"]).name
    if rec["status"] == "failed":
        echo_line(f"noscope: error: {name}: {rec['error']}", err=True)
    elif executor == "ray" and rec.get("stopped_at") is not None:  # a worker's own warnings stay on the worker
        echo_line(f"noscope: warning: {name}: the video stops decoding at frame {rec['stopped_at']}; "
                  "answered the frames before it", err=True)
    if as_json:
        click.echo(json.dumps(json_safe(rec)))
    elif rec["status"] == "done":
        part = "" if rec.get("complete", True) else " (answered in part: some frames cannot be decoded)"
        echo_line(f"{name}: {rec['object']} in {rec['positives']} of {rec['frames']} frames{part}, "
                  f"{rec['reference_calls']} reference calls, {rec['seconds']:.1f} s, {model_words(rec)}, "
                  f"targets {met_word(rec['verified']['met'])} -> {rec['out']}")
    elif rec["status"] == "skipped":
        echo_line(f"{name}: already done -> {rec['out']} (--force to redo)")


def printable(text: str) -> str:
    """A line as one line: control characters (a newline in a file name) written as escapes (\\n)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def echo_line(text: str, err: bool = False) -> None:
    """One line for a person (names in it may hold anything a file name can)."""
    click.echo(printable(text), err=err)


@cli.command()
@click.argument("out_dir", type=click.Path(), callback=given)
@click.option("--clips", "clips_dir", default=None, type=click.Path(), callback=given, help="Also write one mp4 per interval into this folder.")
@click.option("--pad", default=1.0, show_default=True, type=click.FloatRange(min=0), help="Seconds of video before and after each interval.")
@click.option("--max-clips", default=50, show_default=True, type=click.IntRange(min=1), help="Most clips written (the earliest).")
@click.option("--max-clip-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Longer clips are cut to this length.")
@click.option("--video", "video_path", default=None, type=click.Path(), callback=given, help="The query's video, if it moved since.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def report(out_dir, clips_dir, pad, max_clips, max_clip_seconds, video_path, as_json, verbose):
    """Draw timeline.png and costs.png for the result in OUT_DIR; with --clips, cut clips of the intervals."""
    from .report import make_report

    configure_logging(verbose)
    rep = make_report(Path(out_dir), Path(clips_dir) if clips_dir else None, pad, max_clips, max_clip_seconds, video_path)
    if as_json:
        click.echo(json.dumps(rep))
        return
    echo_line(f"wrote {rep['timeline']}")
    echo_line(f"wrote {rep['costs']}")
    for c in rep.get("clips", []):
        echo_line(f"wrote {c['path']} ({c['frames']} frames, {c['intervals']} interval{'s' * (c['intervals'] != 1)}"
                   + (", cut at the length cap" if c["truncated"] else "") + ")")
    if rep.get("clips_omitted"):
        click.echo(f"left out {rep['clips_omitted']} later clips (--max-clips {max_clips})")
    elif "clips" in rep and not rep["clips"]:
        click.echo("no intervals: no clips written")


@cli.command()
@click.argument("video", type=click.Path(), required=False, callback=given)
@click.option("--model", required=True, callback=given, help="Trained bundle name or path.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@targets_options
@segment_options
@reference_options
@common
def evaluate(video, model, as_json, guarantee, target_fpr, target_fnr, metric, window, start, end,
             reference_name, reference_weights, reference_cfg, config_file, sets, quiet, verbose):
    """Measure a query's errors and speed-up against the reference on every frame (a several-objects
    bundle: one report per object, answered in one pass)."""
    from .evaluate import evaluate as run_evaluate
    from .evaluate import evaluate_windows
    from .prepare import open_query
    from .query import window_question
    from .report import json_safe

    settings = setup(config_file, sets, quiet, verbose, reference_name, reference_weights, reference_cfg)
    settings = settings.with_guarantee(guarantee).with_window(checked_window(window))
    targets = make_targets(settings, target_fpr, target_fnr, metric)
    q = open_query(settings, video, model, None, start, end, reference_named=bool(reference_name), quiet=quiet)
    question = window_question(settings, q)
    if question is not None and question.size > 1:
        reports = evaluate_windows(q, targets, settings, question, quiet=quiet or as_json)
    else:
        reports = run_evaluate(q, targets, settings, quiet=quiet or as_json)
    for report in reports.values():
        click.echo(json.dumps(json_safe(report)) if as_json else "\n".join(map(printable, _evaluate_lines(report, targets).split("\n"))))


def _evaluate_lines(report: dict, targets) -> str:
    """What `evaluate` prints for one object: measured errors and speed, then what the check said."""
    from .results import verified_line

    f, w = report["frames"], report["windows"]
    unit = "window" if report.get("unit") == "windows" else "frame"
    windows = (f"windows of {report['window']['spec']} ({w['count']}, {w['positives']} positive) FPR {_rate(w['fpr'])} "
               f"FNR {_rate(w['fnr'])}" if unit == "window" else f"windows FPR {_rate(w['fpr'])} FNR {_rate(w['fnr'])}")
    return (
        f"{Path(report['video']).name} [{report['segment'][0]}, {report['segment'][1]}) {report['object']} @ targets "
        f"{targets.fpr}/{targets.fnr}, {report['frames_compared']} frames compared ({report['positives']} positive): "
        f"frames FPR {_rate(f['fpr'])} FNR {_rate(f['fnr'])}; {windows}; "
        f"reference {report['reference_fps']:.1f} frames/s, query {report['cascade_fps']:.1f} frames/s, speed-up "
        f"{report['speedup']:.1f}x ({report['reference_calls']} reference calls, verification {report['verify_seconds']:.1f} s)"
        f"\n{verified_line(report['verified'], targets, unit)}"
    )


def _rate(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main():
    """Entry point: click's usage errors become one line too (exit 2), like ours."""
    try:
        rc = cli.main(prog_name="noscope", standalone_mode=False)
    except click.UsageError as e:
        hint = f"; see `{e.ctx.command_path} --help`" if e.ctx else ""
        click.echo(f"noscope: error: {' '.join(e.format_message().split()).rstrip('.')}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"noscope: error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("noscope: interrupted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
