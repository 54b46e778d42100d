"""Typed settings: the configuration tree read once, at the command, and handed down as objects.

    settings = Settings.from_config(load_config("my.yaml", ["train.epochs=5"]))
    settings.train.epochs, settings.optimizer.min_auc, settings.check.per_stratum
    targets = make_targets(settings, fpr=0.01)              # the query's Targets
    objects = parse_objects("car,person")                   # ["car", "person"]

The command layer (noscope.cli, the scripts) reads the configuration into these once; nothing
below it looks at the raw tree (tests/test_structure.py checks). Every field is the configuration
key of the same name, as noscope/default.yaml documents it; `as_config()` gives the tree back
exactly (bundle manifests and the batch runner's result keys are made from it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .errors import UsageError
from .plans import Targets


def _section(cls, values: dict):
    return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class ReferenceSettings:
    """reference.* and the top-level device: which detector is the yardstick, and where it runs."""

    name: str
    weights: str | None
    cfg: str | None  # a Darknet .cfg file (name: darknet)
    names: str | None
    input_size: object  # [width, height], "WxH" or None (the detector's own)
    batch_size: int | None
    runtime: str = "auto"  # what runs a Darknet network: auto, torch, onnxruntime, openvino
    device: str = "auto"

    def with_options(self, name=None, weights=None, cfg=None) -> "ReferenceSettings":
        """The command line's --reference, --reference-weights and --reference-cfg, where given."""
        return replace(self, name=name or self.name, weights=weights or self.weights, cfg=cfg or self.cfg)

    def for_bundle(self, trained, known_names, user_named: bool) -> "ReferenceSettings":
        """The reference a bundle was trained with (its bundle.yaml `reference`:
        bundle_manifest.ReferenceRecord), unless the user named one: its name (when this noscope
        knows it), files the configuration leaves unset, and its input size."""
        if user_named:
            return self
        out = replace(self, name=trained.name if trained.name in known_names else self.name)
        for k in ("weights", "cfg", "names"):
            if getattr(trained, k) and not getattr(out, k):
                out = replace(out, **{k: getattr(trained, k)})
        if trained.input_size:
            out = replace(out, input_size=trained.input_size)
        return out


@dataclass(frozen=True)
class LabelSettings:
    """labels.*: what counts as "the object is in the frame"."""

    min_score: float
    smooth: int


@dataclass(frozen=True)
class TrainSettings:
    """train.*: the sample, its split, the CNN grid and the difference detectors."""

    max_frames: int
    run_length: int
    split: str
    block: int
    heldout_fraction: float
    heldout_min_runs: int
    val_fraction: float
    augment: int
    grid: object  # "default", "small" or a list of architecture names
    heads: list  # e.g. ["L6@320:linear"]: heads on the reference's first layers (config.HEAD_SPEC)
    epochs: int
    batch_size: int
    lr: float
    patience: int
    diff_size: int
    diff_grid: int


@dataclass(frozen=True)
class SearchSettings:
    """optimizer.*: how a plan is chosen from the held-out frames."""

    skips: list
    min_auc: float
    min_saving: float
    confidence: float
    strict: bool
    cost_slack: float
    metric: str
    window: int

    def options(self) -> dict:
        """The optimizer's keyword arguments (noscope.optimizer.optimize)."""
        return dict(skips=tuple(int(s) for s in self.skips), min_saving=float(self.min_saving),
                    confidence=float(self.confidence), strict=bool(self.strict), cost_slack=float(self.cost_slack))


@dataclass(frozen=True)
class DecodeSettings:
    """decode.*: the decoder and how decoding overlaps the cheap stages."""

    backend: str
    prefetch: int
    workers: int  # 0: automatic (noscope.video.decode_workers)
    frame_cache: bool


@dataclass(frozen=True)
class CheckSettings:
    """The check of a query's answers on the queried video (query.verify*, query.guarantee, and the
    optimizer's confidence and skips, which repairs step down through)."""

    per_stratum: int = 100  # query.verify: frames checked per cheap answer and round (0: no check)
    rounds: int = 4  # query.verify_rounds
    guarantee: bool = False  # query.guarantee: keep checking until the bounds meet the targets
    confidence: float = 0.95  # optimizer.confidence
    skips: tuple[int, ...] = (1, 2, 5, 10, 15, 30)


@dataclass(frozen=True)
class QuerySettings:
    """query.*: default targets, batch size, and the check."""

    target_fpr: float
    target_fnr: float
    batch_size: int
    verify: int
    verify_rounds: int
    guarantee: bool
    window: object = None  # None: per frame; else seconds or frames per window (windows.parse_window)
    window_share: float = 0.5
    verify_windows: int = 50


@dataclass(frozen=True)
class Settings:
    """The whole configuration, typed (module docstring)."""

    device: str
    seed: int
    reference: ReferenceSettings
    labels: LabelSettings
    train: TrainSettings
    optimizer: SearchSettings
    decode: DecodeSettings
    query: QuerySettings

    @classmethod
    def from_config(cls, cfg: dict) -> "Settings":
        return cls(device=cfg["device"], seed=int(cfg["seed"]),
                   reference=_section(ReferenceSettings, dict(cfg["reference"], device=cfg["device"])),
                   labels=_section(LabelSettings, cfg["labels"]), train=_section(TrainSettings, cfg["train"]),
                   optimizer=_section(SearchSettings, cfg["optimizer"]), decode=_section(DecodeSettings, cfg["decode"]),
                   query=_section(QuerySettings, cfg["query"]))

    def as_config(self) -> dict:
        """The configuration tree these settings were read from."""
        ref = asdict(self.reference)
        ref.pop("device")
        return dict(device=self.device, seed=self.seed, reference=ref, labels=asdict(self.labels),
                    train=asdict(self.train), optimizer=asdict(self.optimizer), decode=asdict(self.decode),
                    query=asdict(self.query))

    @property
    def check(self) -> CheckSettings:
        q, o = self.query, self.optimizer
        return CheckSettings(per_stratum=int(q.verify), rounds=int(q.verify_rounds), guarantee=bool(q.guarantee),
                             confidence=float(o.confidence), skips=tuple(int(s) for s in o.skips))

    @property
    def window_check(self) -> CheckSettings:
        """The check of a windowed query: windows drawn per cheap answer and round (query.verify_windows)."""
        return replace(self.check, per_stratum=int(self.query.verify_windows))

    def with_window(self, window) -> "Settings":
        """--window where given (a text like 1s), else the configuration's query.window."""
        return self if window is None else replace(self, query=replace(self.query, window=str(window)))

    def with_seed(self, seed: int | None) -> "Settings":
        return self if seed is None else replace(self, seed=int(seed))

    def with_guarantee(self, guarantee: bool | None) -> "Settings":
        return replace(self, query=replace(self.query, guarantee=True)) if guarantee else self

    def with_reference(self, reference: ReferenceSettings) -> "Settings":
        return replace(self, reference=reference)


def parse_objects(object_name) -> list[str] | None:
    """--object "car,person" -> ["car", "person"] (None stays None); order kept, repeats refused."""
    if object_name is None:
        return None
    names = [o.strip() for o in ([object_name] if isinstance(object_name, str) else object_name) for o in o.split(",")]
    if not all(names):
        raise UsageError(f"--object {object_name!r} has an empty name; give e.g. --object car or --object car,person")
    if len(set(names)) < len(names):
        raise UsageError(f"--object {object_name!r} names an object twice")
    return names


def default_name(video, objects) -> str:
    """VIDEOSTEM-OBJECT, or VIDEOSTEM-car+person for several objects (`objects`: a list or --object's text)."""
    return f"{Path(video).stem}-{'+'.join(parse_objects(objects))}"


def make_targets(settings: Settings, fpr=None, fnr=None, metric=None) -> Targets:
    """The query's targets: --target-fpr / --target-fnr / --metric where given, else the configuration's."""
    fpr = settings.query.target_fpr if fpr is None else fpr
    fnr = settings.query.target_fnr if fnr is None else fnr
    for what, v in (("FPR", fpr), ("FNR", fnr)):
        if not 0 < v < 1:
            raise UsageError(f"target {what} must be between 0 and 1 (exclusive), got {v}")
    return Targets(fpr=fpr, fnr=fnr, metric=metric or settings.optimizer.metric, window=int(settings.optimizer.window))
