"""Where noscope keeps its caches and model bundles."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the label/frame/weights caches: $NOSCOPE_CACHE, else ~/.cache/noscope."""
    root = os.environ.get("NOSCOPE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "noscope"


def models_dir() -> Path:
    """Root of trained model bundles: $NOSCOPE_MODELS, else ./.noscope/models."""
    root = os.environ.get("NOSCOPE_MODELS")
    return Path(root).expanduser() if root else Path(".noscope") / "models"
