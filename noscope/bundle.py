"""A model bundle: everything `noscope train` learned for one (video, object, reference).

Format 1: one object. Format 2: several objects answered in one pass (`objects` lists them;
heldout.npz's truth, scores and model__* arrays have one column per object, the models one
output per object). Single-object bundles are still written as format 1, so older noscope
versions keep reading them, and refuse format 2 with their one-line "retrain it" error.

    .noscope/models/NAME/
      bundle.yaml        readable summary: object, reference, training video, candidates, costs
      heldout.npz        held-out labels and every candidate's scores on them (for the optimizer)
      models/*.pt        the cheap models' weights (tensors only; noscope.cheap: one kind each)
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
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from . import __version__, cheap, difference
from .atomic import LOCK_NAME, atomic_write_bytes, save_npz
from .bundle_manifest import IDENTITY, Candidate, DiffRecord, Manifest, field_at
from .cheap.base import LoadContext, Mismatch
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


def inside(root: Path, rel: str) -> Path:
    """Resolve a path named in a bundle, refusing anything that leaves the bundle."""
    if os.path.isabs(rel):
        raise NoscopeError(f"bundle {root} names an absolute path {rel!r}; refusing to load it")
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise NoscopeError(f"bundle {root} names a path outside itself ({rel!r}); refusing to load it")
    return p


def write_manifest(root: Path, meta: Manifest | dict, fmt: int = FORMAT) -> None:
    """Write bundle.yaml last, with checksums of every file, so a bundle is complete or absent."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if (p.is_file() and p.name not in ("bundle.yaml", LOCK_NAME) and not p.name.startswith(".tmp-")
                and p.parent.name != "work" and rel.parts[0] != VERSIONS):  # each version lists its own files
            files[rel.as_posix()] = sha256(p)
    meta = dict(meta.content() if isinstance(meta, Manifest) else meta, format=fmt, noscope_version=__version__,
                files=files)
    atomic_write_bytes(root / "bundle.yaml", yaml.safe_dump(meta, sort_keys=False).encode())


def write_bundle(out: Path, work: Path, key: str, detectors: list, heldout: dict[str, np.ndarray], manifest: Manifest,
                 fmt: int = FORMAT) -> None:
    """A trained bundle: the models trained into `work` (named NAME-KEY.pt), the difference
    detectors' images, the held-out arrays, then bundle.yaml last; `work` is removed after."""
    out.mkdir(parents=True, exist_ok=True)
    # an earlier bundle here stops being one before its files are replaced: a crash in between
    # leaves no bundle.yaml vouching for a mix of old and new files
    (out / "bundle.yaml").unlink(missing_ok=True)
    (out / "models").mkdir(exist_ok=True)
    for c in manifest.candidates:
        shutil.copyfile(work / f"{c.name}-{key}.pt", out / c.file)
        if c.learnt_from:  # a head's training features, for refits on a query's video
            shutil.copyfile(work / f"{c.name}-{key}-learnt.npz", out / c.learnt_from)
    (out / "diff").mkdir(exist_ok=True)
    for d in detectors:
        if d.reference_image is not None:
            difference.save_npy(out / f"diff/{d.name}.npy", d.reference_image)
    save_npz(out / "heldout.npz", **heldout, **{MADE_FOR: np.array(json.dumps(manifest.made_for()))})
    write_manifest(out, manifest, fmt=fmt)
    shutil.rmtree(work, ignore_errors=True)


MADE_FOR = "made_for"  # heldout.npz's record of the bundle.yaml it was made for (bundle_manifest.IDENTITY)


def finished_bundle(root: Path, settings_key: str) -> Manifest | None:
    """The manifest of a complete bundle trained with these settings, else None."""
    if not (root / "bundle.yaml").is_file():
        return None
    try:
        meta = load_manifest(root)
        if meta.get("settings_key") != settings_key:
            return None
        return Manifest.read(root, meta)
    except NoscopeError:
        return None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None  # malformed: trained again


def recorded(root: Path, *path: str):
    """One field of the bundle.yaml at `root` as written (None where absent), read without loading or
    checking the bundle: a look before loading it, or at a version kept beside it. NoscopeError
    when bundle.yaml cannot be read as a mapping."""
    try:
        meta = yaml.safe_load((root / "bundle.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise NoscopeError(f"cannot read {root / 'bundle.yaml'} ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise NoscopeError(f"{root / 'bundle.yaml'} is not a mapping")
    return field_at(meta, path)


def listed_files(root: Path) -> dict[str, str]:
    """The files the bundle at `root` lists, file -> sha256, each checked (load_manifest)."""
    return dict(load_manifest(root)["files"])


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
    manifest: Manifest  # bundle.yaml, typed (noscope.bundle_manifest)
    costs: Costs
    heldouts: dict[str, HeldOut]  # object -> its held-out view (several objects: same frames, its own truth and scores)
    _models: dict = field(default_factory=dict)

    @property
    def object(self) -> str:
        """The object, or "car,bus" for a several-objects bundle."""
        return self.manifest.object

    @property
    def multi(self) -> bool:
        return self.manifest.multi

    @property
    def objects(self) -> list[str]:
        return self.manifest.object_names

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Its cheap models, as bundle.yaml describes them."""
        return self.manifest.candidates

    @property
    def min_score(self) -> float:
        """What counts as a positive frame: the reference's score for the class at least this."""
        return self.manifest.labels.min_score

    @property
    def smooth(self) -> int:
        return self.manifest.labels.smooth

    @property
    def reference_key(self) -> str:
        """The key of the reference it was trained with."""
        return self.manifest.reference.key

    def heldout_auc(self, candidate: Candidate, obj: str) -> float | None:
        """A candidate model's held-out AUC for one object (None: its output for that object had too
        few training examples and is never used)."""
        return candidate.auc(obj, self.multi)

    def class_index(self, obj: str) -> int:
        return self.manifest.class_of(obj)

    @property
    def version(self) -> int:
        """Which version of its bundle this is (1: as trained)."""
        return self.manifest.number

    def renumber(self, n: int) -> None:
        """Call this version `n` (an update keeps it as version n before writing the next)."""
        self.manifest = replace(self.manifest, version=n)

    def learnt_frames(self, video_hash: str, start: int = 0, end: int | None = None) -> np.ndarray:
        """The frames of the video with this content hash, in [start, end), that this version was
        fitted on (its models, thresholds or difference detectors; `train --update`): a query takes
        the reference's answer there and never certifies its answers on them. Empty for a version
        as trained (its training frames are not recorded frame by frame)."""
        if not self.manifest.learnt:
            return np.zeros(0, np.int64)
        frames = load_npz(self.root, self.manifest.learnt).get(f"v{video_hash}", np.zeros(0, np.int64)).astype(np.int64)
        return frames[(frames >= start) & (frames < (np.iinfo(np.int64).max if end is None else end))]

    def model(self, name: str, device, reference=None) -> cheap.CheapModel:
        """The model `name`, ready to score frames (one column per object), loaded by its kind
        (noscope.cheap); a head on the reference's first layers needs `reference`, whose layers it runs."""
        if name not in self._models:
            c = self.manifest.candidate(name)
            ctx = LoadContext(self.root, device, reference, self.reference_key, len(self.objects),
                              lambda rel: load_npz(self.root, rel))
            try:  # checked again: the file may have changed since loading
                self._models[name] = cheap.kind_of(c.kind).load(inside(self.root, c.file), c, ctx)
            except Mismatch as e:
                raise corrupt_model(self.root, c, e) from None
        return self._models[name]

    def adopt(self, prefix: str, model: cheap.CheapModel) -> str:
        """Keep a model made while a query runs (a head refitted on the video) under a new name
        starting with `prefix` (PREFIX1, PREFIX2, ...): plans may then name it like the bundle's own."""
        n = 1 + sum(1 for k in self._models if k.startswith(prefix))
        self._models[f"{prefix}{n}"] = model
        model.name = f"{prefix}{n}"
        return f"{prefix}{n}"

    @property
    def diffs(self) -> tuple[DiffRecord, ...]:
        return self.manifest.diffs

    def diff(self, name: str) -> difference.DiffDetector:
        d = self.manifest.diff(name)
        det = difference.DiffDetector.from_dict(d.detector())
        if d.reference_image_file:
            det.reference_image = empty_scene(self.root, d)
        return det

    def diff_size(self, name: str) -> int:
        return int(self.manifest.diff(name).size)


def corrupt_model(root: Path, candidate: Candidate, e: Mismatch) -> NoscopeError:
    """A candidate's model file holds another model than bundle.yaml names: one line naming both
    (another model under its name would run with thresholds fit to a different one)."""
    return NoscopeError(f"model bundle {root} is corrupt: {candidate.file} {e} that bundle.yaml names")


def check_models(root: Path, manifest: Manifest) -> None:
    """Each candidate's file holds the model bundle.yaml names (its kind checks it: noscope.cheap)."""
    for c in manifest.candidates:
        if c.kind not in cheap.KINDS:
            raise NoscopeError(f"model bundle {root} holds model {c.name} of kind {c.kind!r}, which this noscope "
                               f"({__version__}) does not know ({', '.join(cheap.KINDS)}); retrain it")
        try:
            cheap.kind_of(c.kind).check(inside(root, c.file), c, len(manifest.object_names))
        except Mismatch as e:
            raise corrupt_model(root, c, e) from None


def load_bundle(root: Path) -> TrainedBundle:
    """Read a bundle; anything malformed in it is one NoscopeError, never a stray KeyError.
    A bundle must be complete: every file it uses listed and checked, every model what its name
    says, and what bundle.yaml says of itself in range and agreeing with heldout.npz (check_meta,
    check_heldout) and with each difference detector's picture. (Whether its object is the class
    its class index names is the reference's to say: prepare.check_classes.)"""
    meta = load_manifest(root)
    try:
        check_complete(root, meta)
        manifest = Manifest.read(root, meta)
        bundle = _read_bundle(root, manifest)
        check_models(root, manifest)
        for d in manifest.diffs:
            if d.reference_image_file:
                empty_scene(root, d)
        return bundle
    except NoscopeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise NoscopeError(f"model bundle {root} is corrupt: bundle.yaml or heldout.npz is malformed ({type(e).__name__}: {str(e)[:100]})") from None


def _read_bundle(root: Path, m: Manifest) -> TrainedBundle:
    z = load_npz(root, m.heldout.file)
    check_heldout(root, m, z)
    z.pop(MADE_FOR, None)
    model_scores = {k[len("model__"):]: v for k, v in z.items() if k.startswith("model__")}
    diff_scores: dict[str, dict[int, np.ndarray]] = {}
    for k, v in z.items():
        if k.startswith("diff__"):
            name, skip = k[len("diff__"):].rsplit("@", 1)
            diff_scores.setdefault(name, {})[int(skip)] = v
    kinds = {d.name: d.kind for d in m.diffs}
    if not m.multi:
        heldout = HeldOut(truth=z["truth"].astype(bool), blocks=z["blocks"], model_scores=model_scores,
                          diff_scores=diff_scores, diff_kinds=kinds, frames=z.get("frames"))
        return TrainedBundle(root, m, m.costs, {m.object: heldout})
    objects = m.object_names
    if m.format != MULTI_FORMAT or len(m.class_indices) != len(objects) or len(objects) < 2:
        raise NoscopeError(f"model bundle {root} is corrupt: its objects do not match its format")
    truth = z["truth"].astype(bool)
    for what, a in (("truth", truth), *((f"model__{n}", v) for n, v in model_scores.items())):
        if a.ndim != 2 or a.shape[1] != len(objects):
            raise NoscopeError(f"model bundle {root} is corrupt: heldout.npz {what} does not have one column per object")
    # Views per object: same frames and difference scores, that object's truth and model output.
    heldouts = {o: HeldOut(truth=truth[:, k], blocks=z["blocks"], model_scores={n: v[:, k] for n, v in model_scores.items()},
                           diff_scores=diff_scores, diff_kinds=kinds, frames=z.get("frames")) for k, o in enumerate(objects)}
    return TrainedBundle(root, m, m.costs, heldouts)


# --------------------------------------------------------------------------------------------
# What heldout.npz and the pictures say, checked against bundle.yaml before any of it is used


def check_heldout(root: Path, m: Manifest, z: dict[str, np.ndarray]) -> None:
    """heldout.npz belongs to this bundle.yaml: made for what it says (the record inside it; a
    bundle written before that was recorded: its size, positives and frames alone), one row per
    held-out frame in every array, scores for every model and difference detector it names."""
    rel = m.heldout.file

    def bad(why: str):
        raise NoscopeError(f"model bundle {root} is inconsistent: {rel} {why}")

    if MADE_FOR in z:
        check_made_for(root, rel, m, z[MADE_FOR])
    if "truth" not in z:
        bad("has no truth array")
    rows = len(z["truth"]) if z["truth"].ndim else -1
    for k, a in z.items():
        if k != MADE_FOR and (a.ndim == 0 or len(a) != rows):
            bad(f"holds {k} of shape {a.shape}, not one row for each of its {rows} held-out frames")
    if rows != m.heldout.frames:
        bad(f"holds {rows} held-out frames but bundle.yaml's heldout.frames says {m.heldout.frames}")
    each = z["truth"].reshape(rows, -1).astype(bool)
    objects = m.object_names
    if each.shape[1] == len(objects):
        pos = {o: int(each[:, k].sum()) for k, o in enumerate(objects)} if m.multi else int(each.sum())
        if m.heldout.positives is not None and m.heldout.positives != pos:
            bad(f"has {pos} positive held-out frames but bundle.yaml's heldout.positives says {m.heldout.positives}")
    # an updated version's held-out frames come from the newest video it learnt from (heldout.video)
    source = "heldout.video.segment" if m.heldout.video else "video.segment"
    start, end = (m.heldout.video or m.video).segment
    if "frames" in z and len(z["frames"]) and not (start <= z["frames"].min() and z["frames"].max() < end):
        bad(f"holds frames outside the segment [{start}, {end}) that bundle.yaml's {source} names")
    for c in m.candidates:
        if f"model__{c.name}" not in z:
            bad(f"has no held-out scores of model {c.name}")
    for d in m.diffs:
        if not any(k.startswith(f"diff__{d.name}@") for k in z):
            bad(f"has no held-out scores of difference detector {d.name}")


def check_made_for(root: Path, rel: str, m: Manifest, recorded_for: np.ndarray) -> None:
    """bundle.yaml says what heldout.npz was made for (made_for): the same training (settings_key)
    first, so a file copied in from another bundle is said to be one, then field by field."""
    try:
        rec = json.loads(str(recorded_for))
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        raise NoscopeError(f"model bundle {root} is corrupt: {rel}'s record of the bundle it was made for is unreadable")
    says = json.loads(json.dumps(m.made_for()))  # yaml's and json's numbers and lists alike
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


def empty_scene(root: Path, d: DiffRecord) -> np.ndarray:
    """A "ref" difference detector's picture of the empty scene: the uint8 size x size picture
    bundle.yaml names, or one line naming the bundle and the file."""
    rel = d.reference_image_file
    img = difference.load_npy(inside(root, rel))
    size = int(d.size)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.shape[:2] != (size, size):
        raise NoscopeError(f"model bundle {root} is corrupt: {rel} holds a {img.dtype} array of shape {img.shape}, not "
                           f"the {size}x{size} uint8 picture of the empty scene difference detector {d.name} compares with")
    return img
