"""A model bundle: everything `noscope train` learned for one (video, object, reference).

Format 1: one object. Format 2: several objects answered in one pass (`objects` lists them;
heldout.npz's truth, scores and model__* arrays have one column per object, the models one
output per object). Single-object bundles are still written as format 1, so older noscope
versions keep reading them, and refuse format 2 with their one-line "retrain it" error.

    .noscope/models/NAME/
      bundle.yaml        readable summary: object, reference, training video, candidates, costs
      heldout.npz        held-out labels and every candidate's scores on them (for the optimizer)
      models/*.pt        specialized CNN weights (tensors only)
      diff/*.npy         difference-detector images
      learnt.npz         (updated versions) the frames of each video the version was fitted on
      versions/N/        (after `noscope train --update`) every version, each a whole bundle like
                         this one; NAME/ itself holds a copy of the newest good one

`NAME@N` names version N (`bundle_path`); plain NAME the newest good one. A bundle never updated is
its own version 1. bundle.yaml's `version` and `lineage` say where a version came from.

Bundles may come from elsewhere, so loading never executes code: YAML is read with
safe_load, tensors with torch.load(weights_only=True), arrays with allow_pickle=False; every
file named in bundle.yaml must stay inside the bundle directory and match its sha256, and every
file the bundle needs (heldout.npz, each candidate's model, each difference detector's image)
must be among them (`check_complete`): deleting `files:` or one entry cannot turn the checks off.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import __version__, difference, specialized
from .atomic import LOCK_NAME, atomic_write_bytes
from .errors import NoscopeError, UsageError
from .plans import Costs, HeldOut
from .paths import models_dir

FORMAT = 1
MULTI_FORMAT = 2
FORMATS = (FORMAT, MULTI_FORMAT)


VERSIONS = "versions"  # NAME/versions/N/: version N of bundle NAME, a whole bundle
_VERSIONED = re.compile(r"(.+)@([^/@]*)")  # NAME@N, PATH@N: the last part of a name says which version


def bundle_path(name_or_path: str | Path) -> Path:
    """A bare name lives under the models directory; anything with a slash is a path. NAME@N (or
    PATH@N) is version N of that bundle (`version_path`), unless a bundle folder is called so; any
    other text after the @ is a usage error (a version is a whole number >= 1)."""
    n = version_of(name_or_path)
    s = str(name_or_path)
    return _plain_path(s) if n is None else version_path(_plain_path(s[: s.rindex("@")]), n)


def version_of(name_or_path: str | Path) -> int | None:
    """N when a bundle name or path says NAME@N (None for a plain name, or a bundle folder whose own
    name has an @); NAME@x, NAME@-1, NAME@ are usage errors."""
    s = str(name_or_path)
    if not s.strip():  # models_dir() itself is no bundle, and never a place to write one
        raise UsageError("a bundle name or path cannot be empty")
    m = _VERSIONED.fullmatch(s)
    if m is None or (_plain_path(s) / "bundle.yaml").is_file():
        return None
    if not (m.group(2).isascii() and m.group(2).isdigit() and int(m.group(2)) >= 1):
        raise UsageError(f"{s!r} names a version of bundle {m.group(1)!r}, but a version is a whole number >= 1 "
                         f"({m.group(1)}@1 is the bundle as trained), not {m.group(2)!r}")
    return int(m.group(2))


def _plain_path(s: str) -> Path:
    return Path(s) if ("/" in s or s.startswith(".")) else models_dir() / s


def names_version(name: str) -> bool:
    """Whether a bundle name reads NAME@something: a version is made by `train --update`, never a place
    to train into."""
    return _VERSIONED.fullmatch(str(name)) is not None


def versions(root: Path) -> list[int]:
    """The versions kept under a bundle (NAME/versions/N/ with a bundle.yaml), oldest first."""
    d = root / VERSIONS
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "bundle.yaml").is_file())


def version_path(root: Path, n: int) -> Path:
    """Where version `n` of the bundle at `root` is; one error line when it has no such version."""
    kept = versions(root)
    if n in kept:
        return root / VERSIONS / str(n)
    if not kept and n == 1 and (root / "bundle.yaml").is_file():
        return root  # never updated: the bundle is its own version 1
    if not kept and not (root / "bundle.yaml").is_file():
        raise NoscopeError(f"no model bundle at {root}, so no version {n} of it")
    have = ", ".join(map(str, kept)) if kept else "1 (it was never updated)"
    raise NoscopeError(f"bundle {root} has no version {n}; its versions: {have}")


def kept_version(root: str | Path) -> bool:
    """Whether `root` is a version kept inside a bundle (NAME/versions/N), the folder NAME@N names."""
    root = Path(root)
    return root.parent.name == VERSIONS and root.name.isdigit()


def bundle_label(root: str | Path) -> str:
    """How a person names the bundle at `root`: NAME, or NAME@N for a kept version."""
    root = Path(root)
    if kept_version(root):
        return f"{root.parent.parent.name}@{root.name}"
    return root.name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_npz(path: Path, **arrays) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def inside(root: Path, rel: str) -> Path:
    """Resolve a path named in a bundle, refusing anything that leaves the bundle."""
    if os.path.isabs(rel):
        raise NoscopeError(f"bundle {root} names an absolute path {rel!r}; refusing to load it")
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise NoscopeError(f"bundle {root} names a path outside itself ({rel!r}); refusing to load it")
    return p


def write_manifest(root: Path, meta: dict, fmt: int = FORMAT) -> None:
    """Write bundle.yaml last, with checksums of every file, so a bundle is complete or absent."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if (p.is_file() and p.name not in ("bundle.yaml", LOCK_NAME) and not p.name.startswith(".tmp-")
                and p.parent.name != "work" and rel.parts[0] != VERSIONS):  # each version lists its own files
            files[rel.as_posix()] = sha256(p)
    meta = dict(meta, format=fmt, noscope_version=__version__, files=files)
    atomic_write_bytes(root / "bundle.yaml", yaml.safe_dump(meta, sort_keys=False).encode())


def write_bundle(out: Path, work: Path, key: str, candidates: list[dict], detectors: list, heldout: dict[str, np.ndarray],
                 meta: dict, fmt: int = FORMAT) -> None:
    """A trained bundle: the models trained into `work` (named NAME-KEY.pt), the difference
    detectors' images, the held-out arrays, then bundle.yaml last; `work` is removed after."""
    out.mkdir(parents=True, exist_ok=True)
    # an earlier bundle here stops being one before its files are replaced: a crash in between
    # leaves no bundle.yaml vouching for a mix of old and new files
    (out / "bundle.yaml").unlink(missing_ok=True)
    (out / "models").mkdir(exist_ok=True)
    for c in candidates:
        shutil.copyfile(work / f"{c['name']}-{key}.pt", out / c["file"])
        if c.get("learnt_from"):  # a head's training features, for refits on a query's video
            shutil.copyfile(work / f"{c['name']}-{key}-learnt.npz", out / c["learnt_from"])
    (out / "diff").mkdir(exist_ok=True)
    for d in detectors:
        if d.reference_image is not None:
            difference.save_npy(out / f"diff/{d.name}.npy", d.reference_image)
    save_npz(out / "heldout.npz", **heldout, **{MADE_FOR: np.array(json.dumps(made_for(meta)))})
    write_manifest(out, meta, fmt=fmt)
    shutil.rmtree(work, ignore_errors=True)


# What heldout.npz was made for, recorded inside it (key MADE_FOR, a JSON text) when the bundle is
# written: bundle.yaml's fields that decide answers, by name. A bundle.yaml edited afterwards, or
# a heldout.npz copied in from another bundle (checksums redone or not), no longer agrees with it.
MADE_FOR = "made_for"
IDENTITY = (("settings_key", ("settings_key",)), ("object", ("object",)), ("objects", ("objects",)),
            ("class_index", ("class_index",)), ("class_indices", ("class_indices",)),
            ("labels.min_score", ("labels", "min_score")), ("labels.smooth", ("labels", "smooth")),
            ("reference.key", ("reference", "key")), ("video.hash", ("video", "hash")),
            ("video.segment", ("video", "segment")), ("heldout.frames", ("heldout", "frames")),
            ("heldout.positives", ("heldout", "positives")), ("version", ("version",)),
            ("heldout.video.hash", ("heldout", "video", "hash")), ("heldout.video.segment", ("heldout", "video", "segment")))


def _field(meta: dict, path: tuple[str, ...]):
    for k in path:
        meta = meta.get(k) if isinstance(meta, dict) else None
    return meta


def made_for(meta: dict) -> dict:
    """bundle.yaml's identifying fields (IDENTITY) as heldout.npz records them (absent ones left out)."""
    return {name: _field(meta, path) for name, path in IDENTITY if _field(meta, path) is not None}


def finished_bundle(root: Path, settings_key: str) -> dict | None:
    """bundle.yaml of a complete bundle trained with these settings, else None."""
    if not (root / "bundle.yaml").is_file():
        return None
    try:
        meta = load_manifest(root)
    except NoscopeError:
        return None
    return meta if meta.get("settings_key") == settings_key else None


def load_manifest(root: Path) -> dict:
    """Read and check bundle.yaml and the files it names; raise one clear line when unusable."""
    path = root / "bundle.yaml"
    if not path.is_file():
        if root.is_dir() and (root / "work").is_dir():
            raise NoscopeError(f"model bundle {root} is incomplete (training was interrupted); run `noscope train` again to resume")
        if versions(root):  # an update stopped while replacing it, and no good version to restore (noscope.versions)
            raise NoscopeError(f"model bundle {root} has no bundle.yaml (an update stopped while replacing it); its "
                               f"versions are kept: name one ({bundle_label(root)}@{versions(root)[-1]}, versions "
                               f"{', '.join(map(str, versions(root)))})")
        raise NoscopeError(f"no model bundle at {root} (train one with `noscope train VIDEO --object OBJ --name NAME`)")
    try:
        meta = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml is not valid YAML ({type(e).__name__})") from None
    if not isinstance(meta, dict) or "format" not in meta:
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml lacks its format field")
    if meta["format"] not in FORMATS:
        raise NoscopeError(
            f"model bundle {root} has format {meta['format']} but this noscope ({__version__}) reads formats "
            f"{', '.join(map(str, FORMATS))}; retrain it"
        )
    files = meta.get("files")
    if not files:  # written by write_manifest, never empty: a bundle holds at least heldout.npz
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml lists no files and their checksums")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml's files field is not a list of checksums")
    for rel, digest in files.items():
        p = inside(root, rel)
        if not p.is_file():
            raise NoscopeError(f"model bundle {root} is missing {rel}")
        if sha256(p) != digest:
            raise NoscopeError(f"model bundle {root} is corrupt: {rel} does not match its checksum")
    return meta


def needed_files(meta: dict) -> list[str]:
    """Every file a bundle's answers depend on, as bundle.yaml names them."""
    return ([meta["heldout"]["file"]] + [c["file"] for c in meta["candidates"]]
            + [c["learnt_from"] for c in meta["candidates"] if c.get("learnt_from")]
            + [d["reference_image_file"] for d in meta["diffs"] if d.get("reference_image_file")]
            + ([meta["learnt"]] if meta.get("learnt") else []))


def check_complete(root: Path, meta: dict) -> None:
    """Refuse a bundle that uses a file bundle.yaml does not list with a checksum (load_manifest
    has checked every listed one)."""
    listed = {inside(root, rel) for rel in meta["files"]}
    for rel in needed_files(meta):
        if not isinstance(rel, str) or inside(root, rel) not in listed:
            raise NoscopeError(f"model bundle {root} is corrupt: {rel} is not listed with a checksum in bundle.yaml")


def load_npz(root: Path, rel: str) -> dict[str, np.ndarray]:
    path = inside(root, rel)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # untrusted bytes: BadZipFile, zlib.error, ValueError, OSError, EOFError...
        raise NoscopeError(f"model bundle {root} is corrupt: {rel} cannot be read ({type(e).__name__})") from None


# --------------------------------------------------------------------------------------------
# Reading a bundle back


@dataclass
class TrainedBundle:
    root: Path
    meta: dict
    costs: Costs
    heldouts: dict[str, HeldOut]  # object -> its held-out view (several objects: same frames, its own truth and scores)
    _models: dict = field(default_factory=dict)

    @property
    def object(self) -> str:
        """The object, or "car,bus" for a several-objects bundle."""
        return self.meta["object"]

    @property
    def multi(self) -> bool:
        return "objects" in self.meta

    @property
    def objects(self) -> list[str]:
        return list(self.meta["objects"]) if self.multi else [self.meta["object"]]

    def heldout_auc(self, candidate: dict, obj: str) -> float | None:
        """A candidate model's held-out AUC for one object (None: its output for that object had too
        few training examples and is never used)."""
        return candidate["heldout_aucs"][obj] if self.multi else candidate["heldout_auc"]

    def class_index(self, obj: str) -> int:
        return int(self.meta["class_indices"][self.objects.index(obj)]) if self.multi else int(self.meta["class_index"])

    @property
    def version(self) -> int:
        """Which version of its bundle this is (1: as trained)."""
        return int(self.meta.get("version", 1))

    def learnt_frames(self, video_hash: str, start: int = 0, end: int | None = None) -> np.ndarray:
        """The frames of the video with this content hash, in [start, end), that this version was
        fitted on (its models, thresholds or difference detectors; `train --update`): a query takes
        the reference's answer there and never certifies its answers on them. Empty for a version
        as trained (its training frames are not recorded frame by frame)."""
        if not self.meta.get("learnt"):
            return np.zeros(0, np.int64)
        frames = load_npz(self.root, self.meta["learnt"]).get(f"v{video_hash}", np.zeros(0, np.int64)).astype(np.int64)
        return frames[(frames >= start) & (frames < (np.iinfo(np.int64).max if end is None else end))]

    def model(self, name: str, device, reference=None):
        """The model `name`, ready to score frames (one column per object): a specialized CNN
        (specialized.Scorer), or a head on the reference's first layers (prefix_heads.HeadScorer:
        it needs `reference`, whose layers it runs)."""
        if name not in self._models:
            c = next(c for c in self.meta["candidates"] if c["name"] == name)
            if c.get("kind") == "prefix_head":
                self._models[name] = self._head(c, device, reference)
            else:
                model, arch, mean = specialized.load_model(inside(self.root, c["file"]), device=device)
                check_model(self, c, arch, model.outputs)  # again: the file may have changed since loading
                self._models[name] = specialized.Scorer(model, arch, mean, device)
        return self._models[name]

    def _head(self, c: dict, device, reference):
        from . import prefix_heads

        if reference is None:
            raise NoscopeError(f"model {c['name']} of bundle {self.root} runs on the reference's layers: load the reference first")
        check_head(self, c, prefix_heads.read_head_meta(inside(self.root, c["file"])))
        model = prefix_heads.load_head(inside(self.root, c["file"]), reference, self.meta["reference"]["key"], device)
        learnt = None
        if c.get("learnt_from"):
            z = load_npz(self.root, c["learnt_from"])
            learnt = (z["features"].astype(np.float32), z["targets"].astype(np.float32))
        return prefix_heads.scorer(model, c["name"], learnt)

    def adopt(self, prefix: str, model) -> str:
        """Keep a model made while a query runs (a head refitted on the video) under a new name
        starting with `prefix` (PREFIX1, PREFIX2, ...): plans may then name it like the bundle's own."""
        n = 1 + sum(1 for k in self._models if k.startswith(prefix))
        self._models[f"{prefix}{n}"] = model
        return f"{prefix}{n}"

    def diff(self, name: str) -> difference.DiffDetector:
        d = next(d for d in self.meta["diffs"] if d["name"] == name)
        det = difference.DiffDetector.from_dict({k: v for k, v in d.items() if k not in ("cost_s", "size", "reference_image_file")})
        if d.get("reference_image_file"):
            det.reference_image = empty_scene(self.root, d)
        return det

    def diff_size(self, name: str) -> int:
        return int(next(d for d in self.meta["diffs"] if d["name"] == name)["size"])


def check_model(bundle: TrainedBundle, candidate: dict, arch, outputs: int) -> None:
    """A candidate's model file must hold the architecture its name says, with one output per
    object: another model under its name would run with thresholds fit to a different one."""
    want = len(bundle.objects) if bundle.multi else 1
    if arch.name != candidate["name"] or arch.size != int(candidate["size"]) or outputs != want:
        raise NoscopeError(f"model bundle {bundle.root} is corrupt: {candidate['file']} holds a {arch.name} model with "
                           f"{outputs} output(s), not the {candidate['name']} with {want} that bundle.yaml names")


def check_head(bundle: TrainedBundle, candidate: dict, meta: dict) -> None:
    """A head's file must be what bundle.yaml says: at its prefix point, of its kind, with one
    output per object. (That it was trained on the layers of the reference the query runs is
    checked when it is loaded onto them: prefix_heads.load_head.)"""
    p = candidate["prefix"]
    want = dict(layers=int(p["layers"]), size=[int(x) for x in p["size"]], kind=candidate["head"],
                outputs=len(bundle.objects))
    got = {k: meta.get(k) for k in want}
    if got != want:
        raise NoscopeError(f"model bundle {bundle.root} is corrupt: {candidate['file']} holds a head {got}, not the "
                           f"{candidate['name']} ({want}) that bundle.yaml names")


def load_bundle(root: Path) -> TrainedBundle:
    """Read a bundle; anything malformed in it is one NoscopeError, never a stray KeyError.
    A bundle must be complete: every file it uses listed and checked, every model what its name
    says, and what bundle.yaml says of itself in range and agreeing with heldout.npz (check_meta,
    check_heldout) and with each difference detector's picture. (Whether its object is the class
    its class index names is the reference's to say: prepare.check_classes.)"""
    meta = load_manifest(root)
    try:
        check_complete(root, meta)
        check_meta(root, meta)
        bundle = _read_bundle(root, meta)
        for c in meta["candidates"]:
            if c.get("kind") == "prefix_head":
                from .prefix_heads import read_head_meta

                check_head(bundle, c, read_head_meta(inside(root, c["file"])))
            else:
                check_model(bundle, c, *specialized.model_arch(inside(root, c["file"])))
        for d in meta["diffs"]:
            if d.get("reference_image_file"):
                empty_scene(root, d)
        return bundle
    except NoscopeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml or heldout.npz is malformed ({type(e).__name__}: {str(e)[:100]})") from None


def _read_bundle(root: Path, meta: dict) -> TrainedBundle:
    z = load_npz(root, meta["heldout"]["file"])
    check_heldout(root, meta, z)
    z.pop(MADE_FOR, None)
    model_scores = {k[len("model__"):]: v for k, v in z.items() if k.startswith("model__")}
    diff_scores: dict[str, dict[int, np.ndarray]] = {}
    for k, v in z.items():
        if k.startswith("diff__"):
            name, skip = k[len("diff__"):].rsplit("@", 1)
            diff_scores.setdefault(name, {})[int(skip)] = v
    kinds = {d["name"]: d["kind"] for d in meta["diffs"]}
    c = meta["costs"]
    costs = Costs(decode=c["decode"], convert=c["convert"], diff=dict(c["diff"]), model=dict(c["model"]), reference=c["reference"])
    if "objects" not in meta:
        heldout = HeldOut(truth=z["truth"].astype(bool), blocks=z["blocks"], model_scores=model_scores,
                          diff_scores=diff_scores, diff_kinds=kinds, frames=z.get("frames"))
        return TrainedBundle(root, meta, costs, {meta["object"]: heldout})
    objects = list(meta["objects"])
    if meta.get("format") != MULTI_FORMAT or len(meta["class_indices"]) != len(objects) or len(objects) < 2:
        raise NoscopeError(f"model bundle {root} is corrupt: its objects do not match its format")
    truth = z["truth"].astype(bool)
    for what, a in (("truth", truth), *((f"model__{m}", v) for m, v in model_scores.items())):
        if a.ndim != 2 or a.shape[1] != len(objects):
            raise NoscopeError(f"model bundle {root} is corrupt: heldout.npz {what} does not have one column per object")
    # Views per object: same frames and difference scores, that object's truth and model output.
    heldouts = {o: HeldOut(truth=truth[:, k], blocks=z["blocks"], model_scores={m: v[:, k] for m, v in model_scores.items()},
                           diff_scores=diff_scores, diff_kinds=kinds, frames=z.get("frames")) for k, o in enumerate(objects)}
    return TrainedBundle(root, meta, costs, heldouts)


# --------------------------------------------------------------------------------------------
# What a bundle says about itself, checked before any of it is used


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _class_number(x) -> bool:
    return _whole(x) and x >= 0


def check_meta(root: Path, meta: dict) -> None:
    """bundle.yaml's fields that decide answers, each of its kind and in range, and agreeing with
    each other; else one line naming the bundle and the field."""
    def bad(field: str, rule: str):
        value = _field(meta, tuple(field.split(".")))
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml's {field} is {value!r}; {rule}")

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
    score = _field(meta, ("labels", "min_score"))
    if not (isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score) and 0 < score <= 1):
        bad("labels.min_score", "what counts as a positive frame is a score in (0, 1]")
    smooth = _field(meta, ("labels", "smooth"))
    if not (_whole(smooth) and smooth >= 1 and smooth % 2 == 1):
        bad("labels.smooth", "it is an odd whole number >= 1")
    seg = _field(meta, ("video", "segment"))
    if not (isinstance(seg, list) and len(seg) == 2 and all(map(_class_number, seg)) and seg[0] < seg[1]):
        bad("video.segment", "it is [start, end) in frames, start before end")
    for key in ("settings_key", "reference.key", "video.hash", "video.path", "heldout.file"):
        if not isinstance(_field(meta, tuple(key.split("."))), str):
            bad(key, "it is a text")
    if not _class_number(_field(meta, ("heldout", "frames"))):
        bad("heldout.frames", "it is a number of frames")
    if "version" in meta and not (_whole(meta["version"]) and meta["version"] >= 1):
        bad("version", "a version is a whole number >= 1")
    if _field(meta, ("heldout", "video")) is not None:
        seg = _field(meta, ("heldout", "video", "segment"))
        if not isinstance(_field(meta, ("heldout", "video", "hash")), str):
            bad("heldout.video.hash", "it is a text")
        if not (isinstance(seg, list) and len(seg) == 2 and all(map(_class_number, seg)) and seg[0] < seg[1]):
            bad("heldout.video.segment", "it is [start, end) in frames, start before end")


def check_heldout(root: Path, meta: dict, z: dict[str, np.ndarray]) -> None:
    """heldout.npz belongs to this bundle.yaml: made for what it says (the record inside it; a
    bundle written before that was recorded: its size, positives and frames alone), one row per
    held-out frame in every array, scores for every model and difference detector it names."""
    rel = meta["heldout"]["file"]

    def bad(why: str):
        raise NoscopeError(f"model bundle {root} is inconsistent: {rel} {why}")

    if MADE_FOR in z:
        check_made_for(root, rel, meta, z[MADE_FOR])
    if "truth" not in z:
        bad("has no truth array")
    rows = len(z["truth"]) if z["truth"].ndim else -1
    for k, a in z.items():
        if k != MADE_FOR and (a.ndim == 0 or len(a) != rows):
            bad(f"holds {k} of shape {a.shape}, not one row for each of its {rows} held-out frames")
    if rows != meta["heldout"]["frames"]:
        bad(f"holds {rows} held-out frames but bundle.yaml's heldout.frames says {meta['heldout']['frames']}")
    each = z["truth"].reshape(rows, -1).astype(bool)
    objects = meta.get("objects") or [meta["object"]]
    if each.shape[1] == len(objects):
        pos = {o: int(each[:, k].sum()) for k, o in enumerate(objects)} if "objects" in meta else int(each.sum())
        if meta["heldout"].get("positives", pos) != pos:
            bad(f"has {pos} positive held-out frames but bundle.yaml's heldout.positives says {meta['heldout']['positives']}")
    # an updated version's held-out frames come from the newest video it learnt from (heldout.video)
    source = "heldout.video.segment" if meta["heldout"].get("video") else "video.segment"
    start, end = (meta["heldout"].get("video") or meta["video"])["segment"]
    if "frames" in z and len(z["frames"]) and not (start <= z["frames"].min() and z["frames"].max() < end):
        bad(f"holds frames outside the segment [{start}, {end}) that bundle.yaml's {source} names")
    for c in meta["candidates"]:
        if f"model__{c['name']}" not in z:
            bad(f"has no held-out scores of model {c['name']}")
    for d in meta["diffs"]:
        if not any(k.startswith(f"diff__{d['name']}@") for k in z):
            bad(f"has no held-out scores of difference detector {d['name']}")


def check_made_for(root: Path, rel: str, meta: dict, recorded: np.ndarray) -> None:
    """bundle.yaml says what heldout.npz was made for (made_for): the same training (settings_key)
    first, so a file copied in from another bundle is said to be one, then field by field."""
    try:
        rec = json.loads(str(recorded))
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        raise NoscopeError(f"model bundle {root} is corrupt: {rel}'s record of the bundle it was made for is unreadable")
    says = json.loads(json.dumps(made_for(meta)))  # yaml's and json's numbers and lists alike
    if says.get("settings_key") != rec.get("settings_key"):
        raise NoscopeError(
            f"model bundle {root} is inconsistent: {rel} was made for another bundle (training settings "
            f"{rec.get('settings_key')}, but bundle.yaml's settings_key is {says.get('settings_key')}); "
            "a bundle's files only work together: copy the whole bundle, or retrain")
    for name, _ in IDENTITY:
        if says.get(name) != rec.get(name):
            raise NoscopeError(
                f"model bundle {root} is inconsistent: bundle.yaml's {name} is {says.get(name)!r} but {rel} was made for "
                f"{rec.get(name)!r}; bundle.yaml was changed after training: restore it, or retrain")


def empty_scene(root: Path, d: dict) -> np.ndarray:
    """A "ref" difference detector's picture of the empty scene: the uint8 size x size picture
    bundle.yaml names, or one line naming the bundle and the file."""
    rel = d["reference_image_file"]
    img = difference.load_npy(inside(root, rel))
    size = int(d["size"])
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.shape[:2] != (size, size):
        raise NoscopeError(f"model bundle {root} is corrupt: {rel} holds a {img.dtype} array of shape {img.shape}, not "
                           f"the {size}x{size} uint8 picture of the empty scene difference detector {d['name']} compares with")
    return img
