"""Cheap models, by kind: what a bundle's candidates are, and how each kind is trained, checked and loaded.

    kind = kind_of(candidate.kind)                          # noscope.bundle: loading any candidate
    for kind in KINDS.values(): grid = kind.train_grid(data)   # noscope.train: every kind's grid

Each kind is one file implementing the interface of `base.CheapModel` (score frames, its cost, save
and load, refit where it can); `common` holds what they share. A new kind is one new file and one
line in KINDS (bundle.yaml names a candidate's kind; a candidate without one is a CNN).
"""

from __future__ import annotations

from ..errors import NoscopeError
from .base import CheapModel
from .cnn import CNNModel
from .heads import HeadModel

KINDS: dict[str, type[CheapModel]] = {
    CNNModel.kind: CNNModel,  # small CNNs on square frames (cnn.py)
    HeadModel.kind: HeadModel,  # heads on the reference's first layers (heads.py, prefix.py)
}


def kind_of(name: str) -> type[CheapModel]:
    """The kind bundle.yaml names for a candidate; one line when this noscope does not know it."""
    if name not in KINDS:
        raise NoscopeError(f"unknown kind of model {name!r} (this noscope knows {', '.join(KINDS)})")
    return KINDS[name]
