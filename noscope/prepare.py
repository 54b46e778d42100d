"""Everything a run needs before it answers a frame: the video and its segment, the bundle, the reference.

    q = open_query(settings, "cam.mp4", model="store", objects=None, start="60%")
    q.video, q.bundle, q.objects, q.reference, q.ref_key, q.start, q.end

`noscope query`, `noscope evaluate`, the batch runner and the benchmark scripts all start here, so
a bundle is found, trained on demand, checked against the reference and the video the same way
wherever it is used. `noscope train` asks here where a bundle named for a video goes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .bundle import TrainedBundle, bundle_path, load_bundle, recorded
from .errors import NoscopeError, UsageError
from .reference import REFERENCES, Reference, configured_reference
from .settings import LabelSettings, ReferenceSettings, Settings, default_name, parse_objects
from .versions import restore_lost
from .video import Video, open_video

log = logging.getLogger("noscope")


@dataclass
class Query:
    """A video's segment, the bundle that answers it, for which objects, and the reference."""

    video: Video
    start: int
    end: int
    bundle: TrainedBundle
    objects: list[str]
    reference: Reference
    ref_key: str


def open_query(settings: Settings, video, model=None, objects=None, start=None, end=None, *, reference_named=False,
               quiet=False, say=None, own=False) -> Query:
    """The bundle (trained on demand with `objects` and no `model`), the video (the bundle's own when
    none is given), its segment, and the reference the bundle was trained with unless the user
    named one (`reference_named`); a reference that differs from the bundle's is an error."""
    bundle = resolve_bundle(settings, video, model, objects, quiet, say=say, own=own)
    warn_min_score(settings.labels, bundle)
    v = open_video(video or bundle.manifest.video.path, settings.decode.backend)
    s, e = v.segment(start, end)
    reference, key = bundle_reference(settings.reference, bundle, reference_named)
    return Query(v, s, e, bundle, parse_objects(objects) or bundle.objects, reference, key)


def bundle_reference(settings: ReferenceSettings, bundle: TrainedBundle, reference_named: bool) -> tuple[Reference, str]:
    """The reference the bundle was trained with (or the one the user named), checked against what
    the bundle says of it: the same detector, and its objects the classes its class indices name."""
    reference, key = open_reference(settings.for_bundle(bundle.manifest.reference, REFERENCES, reference_named))
    check_reference_matches(bundle, key)
    check_classes(bundle, reference)
    return reference, key


def open_reference(settings: ReferenceSettings) -> tuple[Reference, str]:
    """The reference detector the settings describe, and its cache key."""
    return configured_reference(settings)


def own_bundle_paths(root: Path, video_hash: str) -> list[Path]:
    """Where the bundle trained on demand for a video lives: ROOT (VIDEOSTEM-OBJECT), or
    ROOT-<video hash> when ROOT holds a bundle of another video that shared the file name."""
    return [root, root.with_name(f"{root.name}-{video_hash}")]


def trained_on(root: Path) -> str | None:
    """The content hash of the video the bundle at `root` was trained on, read from its bundle.yaml
    alone (loading the bundle checks the rest); None if that says nothing readable."""
    try:
        trained = recorded(root, "video", "hash")
    except NoscopeError:
        return None
    return None if trained is None else str(trained)


def own_bundle(root: Path, video, backend: str = "auto") -> Path:
    """The bundle of this very video (same contents) for training on demand, never one that
    merely shares its file name: another camera's clip once called b.mp4 trained `b-car`."""
    v = open_video(video, backend)
    for p in own_bundle_paths(root, v.hash):
        if not (p / "bundle.yaml").is_file() or trained_on(p) in (v.hash, None):
            return p
    raise NoscopeError(f"bundles {root} and {p} were both trained on other videos than {video}; "
                       f"give --model to pick one or remove {p}")


def bundle_destination(video, objects, backend: str = "auto") -> Path:
    """Where `train` and training on demand put a bundle named for VIDEO (VIDEOSTEM-OBJECT): there,
    unless that holds another video's bundle; then VIDEOSTEM-OBJECT-<hash> (see own_bundle)."""
    return own_bundle(bundle_path(default_name(video, objects)), video, backend)


def resolve_bundle(settings: Settings, video, model, objects, quiet, start=None, end=None, say=None,
                   own=False) -> TrainedBundle:
    """Load the bundle; with --object and no bundle, train one on this video first.

    Without --model (or with `own`: `model` is the path a batch gave this video's own bundle)
    only a bundle trained on this video is used (see own_bundle); with --model the user's bundle
    is used whatever video it was trained on (the same camera, say)."""
    from .train import train as run_train

    if model is None and objects is None:
        raise UsageError("give --model NAME (a trained bundle) or --object OBJ (trains one on this video first)")
    if model is None and not video:
        raise UsageError("--object without --model trains a bundle on VIDEO: give the video")
    say = say or (lambda *a, **k: None)
    objects = parse_objects(objects)
    root = bundle_path(model) if model else bundle_destination(video, objects, settings.decode.backend)
    if own and model and objects and video:  # a batch names this video's own bundle by its path
        root = own_bundle(root, video, settings.decode.backend)
    restore_lost(root, lambda m: log.warning("%s", m))  # never trained over, nor refused, for a publish cut short
    if not (root / "bundle.yaml").is_file() and objects and video:
        say(f"no bundle at {root}; training one on {video} for {', '.join(objects)}")
        run_train(video, objects, root, settings, start, end, quiet=quiet, say=say)
    bundle = load_bundle(root)
    # A several-objects bundle answers any of its objects; a single-object one only its own.
    if objects and not (set(objects) <= set(bundle.objects) if bundle.multi else objects == bundle.objects):
        raise NoscopeError(f"bundle {root} was trained for {bundle.object!r}, not {','.join(objects)!r}")
    return bundle


def warn_min_score(labels: LabelSettings, bundle: TrainedBundle) -> None:
    """What counts as a positive frame is the bundle's labels.min_score: its models, thresholds and
    held-out estimates were all fit to the labels it made, and the check on the video judges the
    answers by it too. A different value in the configuration is said, not silently dropped."""
    asked, used = float(labels.min_score), float(bundle.min_score)
    if asked != used:
        log.warning("labels.min_score is %g in the configuration but bundle %s was trained with %g: the answers use "
                    "%g; train a bundle with labels.min_score=%g to use that", asked, bundle.root, used, used, asked)


def check_reference_matches(bundle: TrainedBundle, ref_key: str) -> None:
    if bundle.reference_key != ref_key:
        raise NoscopeError(f"bundle {bundle.root} was trained with reference {bundle.reference_key}, "
                           f"but this run uses {ref_key}; retrain or pass the same --reference")


def check_classes(bundle: TrainedBundle, reference: Reference) -> None:
    """Each object of the bundle is the reference's class at the index bundle.yaml gives it: an
    index edited (or an object renamed) would answer with another class's scores."""
    names = reference.class_names
    field = "class_indices" if bundle.multi else "class_index"
    for o in bundle.objects:
        k = bundle.class_index(o)
        if k >= len(names):
            raise NoscopeError(f"model bundle {bundle.root} is corrupt: bundle.yaml's {field} gives {o!r} class {k}, but "
                               f"reference {reference.name} has {len(names)} classes (0-{len(names) - 1})")
        if names[k] != o:
            raise NoscopeError(f"model bundle {bundle.root} is corrupt: bundle.yaml's object {o!r} and {field} {k} disagree: "
                               f"class {k} of reference {reference.name} is {names[k]!r}")
