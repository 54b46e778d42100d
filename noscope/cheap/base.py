"""What a cheap model is to the rest of noscope, whatever its kind: the interface each kind implements.

    model = bundle.model("c2f16d32s50", device)             # noscope.bundle loads any kind (the registry)
    model.size                                              # (width, height) of the frames it takes
    p = model.score(frames)                                 # uint8 (N, h, w, 3) -> float32 (N, K), column k: object k
    seconds = model.measure_cost()                          # per frame, the frames already decoded
    new = model.refit(features, targets) if model.can_refit else None   # a head refitted on a video's answers

A kind is a CheapModel subclass: the methods above for one model, and as class methods what a
bundle does with the kind: `train_grid` (every candidate of the kind for a bundle, with its held-out
scores and cost), `check` (a file holds the model bundle.yaml names, read without building it) and
`load`. Its candidates in bundle.yaml carry its `kind` (noscope.bundle_manifest.Candidate), by which
noscope.cheap's registry finds it. A new kind is one file and one line there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable

import numpy as np

from ..bundle_manifest import Candidate
from ..errors import NoscopeError


class Mismatch(Exception):
    """A model file holds another model than bundle.yaml names: what it holds and what was named,
    e.g. "holds a c2f16d32s50 model with 1 output(s), not the c2f32d64s50 with 1" (the bundle says
    which bundle and file, noscope.bundle.corrupt_model)."""


@dataclass
class LoadContext:
    """What loading a bundle's model may need: the bundle (`root`, and its other files by the names
    bundle.yaml gives them, checked: `read_arrays`), the device, the reference (whose layers a head
    runs) and its key, and how many outputs (objects) the model must have."""

    root: Path
    device: object
    reference: object | None
    ref_key: str
    outputs: int
    read_arrays: Callable[[str], dict[str, np.ndarray]]


@dataclass
class TrainingData:
    """What a kind trains its grid on, for a bundle: the labelled sample and its split, decoded as needed.

    small: the sample at the square sizes the kinds asked for (`CheapModel.sizes`); batches_at(size):
    the sample at any (w, h), batch after batch in sample order, decoded as it is read (a size too
    large to hold every frame at); conversion_cost(size): seconds per frame a decoding pass spends
    converting a frame to RGB at that size (charged to the model that takes it: a query's pass
    converts a frame for the model that sees it, and reads only the luma plane of the others)."""

    objects: list[str]
    truth: np.ndarray  # bool (N,) or (N, K): the reference's answers
    scores: np.ndarray  # the reference's scores of the objects (N,) or (N, K)
    parts: object  # split.SampleSplit: masks train, val, heldout (and blocks)
    small: dict[int, np.ndarray]
    batches_at: Callable[[tuple[int, int]], Iterable[np.ndarray]]
    conversion_cost: Callable[[tuple[int, int]], float]
    video_size: tuple[int, int]
    reference: object
    ref_key: str
    settings: object  # settings.TrainSettings (train.*)
    work: Path  # finished models wait here as NAME-KEY.pt (and NAME-KEY-learnt.npz) for the bundle
    key: str
    seed: int
    device: object
    say: Callable[[str], None] = print


@dataclass
class KindGrid:
    """What training a kind's grid left for a bundle: bundle.yaml candidates, held-out scores ((N,) for
    one object, (N, K) for several) and seconds per frame, by candidate name."""

    candidates: list[Candidate] = field(default_factory=list)
    heldout_scores: dict[str, np.ndarray] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)


class CheapModel(ABC):
    """One trained cheap model, ready to score frames (module docstring)."""

    kind: ClassVar[str]  # bundle.yaml's name for the kind
    keeps_features: ClassVar[bool] = False  # features() and from_features() work
    name: str  # its name in the bundle (a refitted model: the name the bundle adopted it under)
    base: str  # the bundle's candidate whose features it scores (itself, or the one it was refitted from)
    learnt_from: tuple[np.ndarray, np.ndarray] | None = None  # (features, targets) a refittable model was fitted on

    @property
    @abstractmethod
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames it takes."""

    @abstractmethod
    def score(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, h, w, 3) at its size -> float32 (N, K) in [0, 1], one column per object."""

    @abstractmethod
    def measure_cost(self) -> float:
        """Seconds per frame of scoring frames already decoded at its size."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Its file (what `load` reads back with the candidate bundle.yaml holds for it)."""

    def features(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames -> float32 (N, D): what it scores, kept by a pass so it can score them again
        (keeps_features)."""
        raise NoscopeError(f"model {self.name} keeps no features")

    def from_features(self, z: np.ndarray) -> np.ndarray:
        """features (N, D) -> float32 (N, K) scores, as `score` gives them."""
        raise NoscopeError(f"model {self.name} keeps no features")

    @property
    def can_refit(self) -> bool:
        """Whether `refit` gives a new model (it keeps features, and what it was fitted on)."""
        return False

    def refit(self, features: np.ndarray, targets: np.ndarray, seed: int = 0) -> CheapModel | None:
        """This model fitted again on what it was fitted on and the frames of `features` (its
        features of them), whose answers are `targets` (N, K) in [0, 1]; None: it cannot learn so."""
        return None

    @classmethod
    def sizes(cls, settings) -> list[int]:
        """Square sizes its grid trains on, decoded with the sample for it (TrainingData.small)."""
        return []

    @classmethod
    @abstractmethod
    def train_grid(cls, data: TrainingData) -> KindGrid:
        """Train (or resume from data.work) every candidate of its grid, score each on the held-out
        frames, time it; each finished model saved as data.work / NAME-KEY.pt."""

    @classmethod
    @abstractmethod
    def check(cls, path: Path, candidate: Candidate, outputs: int) -> None:
        """The file holds the model `candidate` names, with `outputs` outputs (read without building
        it): Mismatch saying what it holds instead; NoscopeError for a file that is no such model."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, candidate: Candidate, ctx: LoadContext) -> CheapModel:
        """The model in `path`, checked against `candidate` (Mismatch), ready on ctx.device."""
