"""bundle.yaml, typed: what a bundle says of itself, read and checked once when it is loaded.

    m = Manifest.read(root, yaml.safe_load(text))      # check_meta's rules, then the typed records
    m.labels.min_score, m.reference.key, m.video.hash, m.candidates[0].kind, m.heldout.frames
    m2 = replace(m, version=3, candidates=[...])        # frozen: a new version is a copy with changes
    m2.content()                                        # the dict written back (noscope.bundle.write_manifest)

Each record keeps the mapping it was read from (`raw`): written back, a record gives the keys it
was read with in their order, its fields' values in place, and any key it does not model
unchanged, so a bundle written by an older noscope is rewritten (an update's new version) with
nothing lost or moved. A record made by this code writes its fields in the order declared, those
marked optional only when set: bundle.yaml keeps the keys and order it always had.

Only noscope.bundle and this module read bundle.yaml's dict; everything else uses these fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

from .errors import NoscopeError
from .plans import Costs

_ALWAYS = object()  # a field written even when None (the default for fields without "omit")


def optional(default=None, omit=None):
    """A field left out of a record made by this code while it is `omit` (None: unset)."""
    return field(default=default, metadata={"omit": omit})


def _plain(v):
    """Records and containers as plain YAML-ready Python (fresh containers; tuples as lists)."""
    if isinstance(v, Record):
        return v.to_dict()
    if is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass(frozen=True)
class Record:
    """A part of bundle.yaml. `raw`: the mapping it was read from (None: made by this code)."""

    raw: dict | None = field(default=None, kw_only=True, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The mapping written to bundle.yaml (module docstring: what is kept, in which order)."""
        raw = self.raw
        out = {} if raw is None else {k: _plain(v) for k, v in raw.items()}
        for f in fields(self):
            if f.name == "raw":
                continue
            v = getattr(self, f.name)
            if f.metadata.get("flat"):  # a kind's own keys, at the record's level
                out.update({k: _plain(x) for k, x in v.items()})
                continue
            omit = f.metadata.get("omit", _ALWAYS)
            if f.name in out or (v is not None and (omit is _ALWAYS or v != omit)) or (raw is None and omit is _ALWAYS):
                out[f.name] = _plain(v)
        return out


@dataclass(frozen=True)
class ReferenceRecord(Record):
    """The reference the bundle was trained with (its key names the exact detector and its files)."""

    name: str | None
    key: str
    input_size: list | None = None
    weights: str | None = None
    cfg: str | None = None
    names: str | None = None
    runtime: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "ReferenceRecord":
        return cls(d.get("name"), d["key"], d.get("input_size"), d.get("weights"), d.get("cfg"), d.get("names"),
                   d.get("runtime"), raw=d)


@dataclass(frozen=True)
class LabelRule(Record):
    """What counts as a positive frame: the reference's score for the class at least min_score,
    smoothed over `smooth` frames."""

    min_score: float
    smooth: int

    @classmethod
    def from_dict(cls, d: dict) -> "LabelRule":
        return cls(d["min_score"], d["smooth"], raw=d)


@dataclass(frozen=True)
class TrainedVideo(Record):
    """The video the bundle was trained on, and the segment of it that was sampled."""

    path: str
    hash: str
    fps: float | None = optional()
    width: int | None = optional()
    height: int | None = optional()
    segment: tuple[int, int] = (0, 0)
    frames_labelled: int | None = optional()
    positives: int | dict | None = optional()  # one object: a count; several: object -> count

    @classmethod
    def from_dict(cls, d: dict) -> "TrainedVideo":
        return cls(d["path"], d["hash"], d.get("fps"), d.get("width"), d.get("height"), tuple(d["segment"]),
                   d.get("frames_labelled"), d.get("positives"), raw=d)


@dataclass(frozen=True)
class HeldoutVideo(Record):
    """Where an updated version's held-out frames come from (the newest video it learnt from)."""

    path: str | None
    hash: str
    segment: tuple[int, int]

    @classmethod
    def from_dict(cls, d: dict) -> "HeldoutVideo":
        return cls(d.get("path"), d["hash"], tuple(d["segment"]), raw=d)


@dataclass(frozen=True)
class HeldoutRecord(Record):
    """heldout.npz: its file, how many frames it holds and how many positive ones."""

    file: str
    frames: int
    positives: int | dict | None = optional()  # one object: a count; several: object -> count
    video: HeldoutVideo | None = optional()  # an updated version's; None: the training video's segment

    @classmethod
    def from_dict(cls, d: dict) -> "HeldoutRecord":
        v = d.get("video")
        return cls(d["file"], d["frames"], d.get("positives"), None if v is None else HeldoutVideo.from_dict(v), raw=d)


CNN = "cnn"  # the kind of a candidate bundle.yaml gives no kind (every bundle before there were others)
_CANDIDATE_FIELDS = ("name", "file", "kind", "cost_s", "heldout_auc", "train", "heldout_aucs", "learnt_from", "refit")


@dataclass(frozen=True)
class Candidate(Record):
    """One cheap model of the bundle: its name, file and kind (noscope.cheap: the registry), the
    kind's own settings (`spec`: a CNN's `size`, a head's `head` and `prefix`), its measured cost,
    its held-out AUC (several objects: per object too, None where it is never offered), how it was
    trained, the features it was fitted on (a head that can be refitted) and its last refit."""

    name: str
    file: str
    kind: str = optional(CNN, omit=CNN)
    spec: dict = field(default_factory=dict, metadata={"flat": True})
    cost_s: float | None = optional()
    heldout_auc: float | None = optional()
    train: dict | None = optional()
    heldout_aucs: dict | None = optional()
    learnt_from: str | None = optional()
    refit: dict | None = optional()

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        spec = {k: v for k, v in d.items() if k not in _CANDIDATE_FIELDS}
        return cls(d["name"], d["file"], d.get("kind", CNN), spec, d.get("cost_s"), d.get("heldout_auc"), d.get("train"),
                   d.get("heldout_aucs"), d.get("learnt_from"), d.get("refit"), raw=d)

    def auc(self, obj: str, multi: bool) -> float | None:
        """Its held-out AUC for one object (None: its output for that object had too few training
        examples and is never used)."""
        return self.heldout_aucs[obj] if multi else self.heldout_auc


_DIFF_FIELDS = ("name", "kind", "mode", "grid", "reference_image_file", "cost_s", "size")


@dataclass(frozen=True)
class DiffRecord(Record):
    """One difference detector: what difference.DiffDetector.from_dict reads (its kind, mode, grid
    and `params`: features, weights, bias), the frame size it compares, its cost, and its picture
    of the empty scene ("ref" detectors)."""

    name: str
    kind: str
    mode: str | None = None
    grid: int | None = None
    params: dict = field(default_factory=dict, metadata={"flat": True})
    reference_image_file: str | None = optional()
    cost_s: float | None = None
    size: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "DiffRecord":
        params = {k: v for k, v in d.items() if k not in _DIFF_FIELDS}
        return cls(d["name"], d["kind"], d.get("mode"), d.get("grid"), params, d.get("reference_image_file"),
                   d.get("cost_s"), d.get("size"), raw=d)

    def detector(self) -> dict:
        """What difference.DiffDetector.from_dict takes."""
        return {k: v for k, v in self.to_dict().items() if k not in ("cost_s", "size", "reference_image_file")}


# Written by noscope.bundle.write_manifest, not part of what a bundle says of itself.
WRITER_FIELDS = ("format", "noscope_version", "files")


@dataclass(frozen=True)
class Manifest(Record):
    """bundle.yaml. One object: `object` and `class_index`; several: `object` is their names joined
    by commas, `objects` and `class_indices` one per object."""

    object: str
    objects: tuple[str, ...] | None = optional()
    class_indices: tuple[int, ...] | None = optional()
    class_index: int | None = optional()
    reference: ReferenceRecord | None = None
    labels: LabelRule | None = None
    video: TrainedVideo | None = None
    seed: int | None = None
    settings_key: str = ""
    created: str | None = None
    train: dict | None = None  # the train.* settings as recorded, and `seconds`
    optimizer: dict | None = None  # the optimizer.* settings as recorded
    costs: Costs | None = None
    candidates: tuple[Candidate, ...] = ()
    diffs: tuple[DiffRecord, ...] = ()
    heldout: HeldoutRecord | None = None
    version: int | None = optional()  # None: never updated (version 1)
    learnt: str | None = optional()  # learnt.npz: the frames of each video an updated version was fitted on
    lineage: list | None = optional()  # one entry (a dict) per version it descends from, itself last
    format: int | None = optional()
    noscope_version: str | None = optional()
    files: dict | None = optional()  # file -> sha256

    @classmethod
    def read(cls, root: Path, meta: dict) -> "Manifest":
        """bundle.yaml's dict checked (check_meta: one line naming the bundle and the field), then typed."""
        check_meta(root, meta)
        return cls.from_dict(meta)

    @classmethod
    def from_dict(cls, m: dict) -> "Manifest":
        c = m["costs"]
        costs = Costs(decode=c["decode"], convert=c["convert"], diff=dict(c["diff"]), model=dict(c["model"]),
                      reference=c["reference"])
        seq = lambda k: None if m.get(k) is None else tuple(m[k])  # noqa: E731
        return cls(m["object"], seq("objects"), seq("class_indices"), m.get("class_index"),
                   ReferenceRecord.from_dict(m["reference"]), LabelRule.from_dict(m["labels"]),
                   TrainedVideo.from_dict(m["video"]), m.get("seed"), m["settings_key"], m.get("created"), m.get("train"),
                   m.get("optimizer"), costs, tuple(Candidate.from_dict(x) for x in m["candidates"]),
                   tuple(DiffRecord.from_dict(d) for d in m["diffs"]), HeldoutRecord.from_dict(m["heldout"]),
                   m.get("version"), m.get("learnt"), m.get("lineage"), m.get("format"), m.get("noscope_version"),
                   m.get("files"), raw=m)

    @property
    def multi(self) -> bool:
        return self.objects is not None

    @property
    def object_names(self) -> list[str]:
        return list(self.objects) if self.multi else [self.object]

    def class_of(self, obj: str) -> int:
        """The reference's class number of one of its objects."""
        return int(self.class_indices[self.object_names.index(obj)]) if self.multi else int(self.class_index)

    @property
    def number(self) -> int:
        """Which version of its bundle this is (1: as trained)."""
        return int(self.version if self.version is not None else 1)

    @property
    def train_seconds(self) -> float | None:
        return (self.train or {}).get("seconds")

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def diff(self, name: str) -> DiffRecord:
        return next(d for d in self.diffs if d.name == name)

    def content(self) -> dict:
        """What bundle.yaml says of the bundle: to_dict without what the writer adds (format, version of
        noscope, checksums)."""
        return {k: v for k, v in self.to_dict().items() if k not in WRITER_FIELDS}

    def made_for(self) -> dict:
        """Its identifying fields, as heldout.npz records them (made_for)."""
        return made_for(self.to_dict())


# --------------------------------------------------------------------------------------------
# What a bundle says about itself, checked before any of it is used

# What heldout.npz was made for, recorded inside it (noscope.bundle.MADE_FOR, a JSON text) when the
# bundle is written: bundle.yaml's fields that decide answers, by name. A bundle.yaml edited
# afterwards, or a heldout.npz copied in from another bundle (checksums redone or not), no longer
# agrees with it.
IDENTITY = (("settings_key", ("settings_key",)), ("object", ("object",)), ("objects", ("objects",)),
            ("class_index", ("class_index",)), ("class_indices", ("class_indices",)),
            ("labels.min_score", ("labels", "min_score")), ("labels.smooth", ("labels", "smooth")),
            ("reference.key", ("reference", "key")), ("video.hash", ("video", "hash")),
            ("video.segment", ("video", "segment")), ("heldout.frames", ("heldout", "frames")),
            ("heldout.positives", ("heldout", "positives")), ("version", ("version",)),
            ("heldout.video.hash", ("heldout", "video", "hash")), ("heldout.video.segment", ("heldout", "video", "segment")))


def field_at(meta: dict, path: tuple[str, ...]):
    """bundle.yaml's field at `path` (("labels", "min_score")), or None where any part is missing."""
    for k in path:
        meta = meta.get(k) if isinstance(meta, dict) else None
    return meta


def made_for(meta: dict) -> dict:
    """bundle.yaml's identifying fields (IDENTITY) as heldout.npz records them (absent ones left out)."""
    return {name: field_at(meta, path) for name, path in IDENTITY if field_at(meta, path) is not None}


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _class_number(x) -> bool:
    return _whole(x) and x >= 0


def _segment(seg) -> bool:
    return isinstance(seg, list) and len(seg) == 2 and all(map(_class_number, seg)) and seg[0] < seg[1]


def check_meta(root: Path, meta: dict) -> None:
    """bundle.yaml's fields that decide answers, each of its kind and in range, and agreeing with
    each other; else one line naming the bundle and the field."""
    def bad(name: str, rule: str):
        value = field_at(meta, tuple(name.split(".")))
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml's {name} is {value!r}; {rule}")

    _check_objects(meta, bad)
    score = field_at(meta, ("labels", "min_score"))
    if not (isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score) and 0 < score <= 1):
        bad("labels.min_score", "what counts as a positive frame is a score in (0, 1]")
    smooth = field_at(meta, ("labels", "smooth"))
    if not (_whole(smooth) and smooth >= 1 and smooth % 2 == 1):
        bad("labels.smooth", "it is an odd whole number >= 1")
    if not _segment(field_at(meta, ("video", "segment"))):
        bad("video.segment", "it is [start, end) in frames, start before end")
    for key in ("settings_key", "reference.key", "video.hash", "video.path", "heldout.file"):
        if not isinstance(field_at(meta, tuple(key.split("."))), str):
            bad(key, "it is a text")
    if not _class_number(field_at(meta, ("heldout", "frames"))):
        bad("heldout.frames", "it is a number of frames")
    if "version" in meta and not (_whole(meta["version"]) and meta["version"] >= 1):
        bad("version", "a version is a whole number >= 1")
    if field_at(meta, ("heldout", "video")) is not None:
        if not isinstance(field_at(meta, ("heldout", "video", "hash")), str):
            bad("heldout.video.hash", "it is a text")
        if not _segment(field_at(meta, ("heldout", "video", "segment"))):
            bad("heldout.video.segment", "it is [start, end) in frames, start before end")


def _check_objects(meta: dict, bad) -> None:
    """The object (several: the objects and one class number each), or `bad` naming the field."""
    obj = meta.get("object")
    if not isinstance(obj, str) or not obj.strip():
        bad("object", "it names the object, a class of the reference")
    if "objects" in meta:
        objects, idx = meta["objects"], meta.get("class_indices")
        if not (isinstance(objects, list) and len(objects) >= 2 and len(set(map(str, objects))) == len(objects)
                and all(isinstance(o, str) and o.strip() for o in objects)):
            bad("objects", "a several-objects bundle lists two or more different object names")
        if obj != ",".join(objects):
            bad("object", f"a several-objects bundle's object is its objects joined by commas ({','.join(objects)!r})")
        if not (isinstance(idx, list) and len(idx) == len(objects) and all(map(_class_number, idx))
                and len(set(idx)) == len(idx)):
            bad("class_indices", "one class number (a whole number >= 0) per object, all different")
    elif not _class_number(meta.get("class_index")):
        bad("class_index", "a class number is a whole number >= 0")
