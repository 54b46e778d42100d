"""The configuration tree: defaults from default.yaml, a user file, then --set overrides.

    cfg = load_config("my.yaml", ["train.epochs=5", "labels.min_score=0.3"])
    cfg["train"]["epochs"]  # -> 5

Every key must exist in the defaults and keep its type (an int is accepted where a float is
expected; a null default accepts anything), so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError

DEFAULT_PATH = Path(__file__).with_name("default.yaml")


def defaults() -> dict:
    with open(DEFAULT_PATH) as f:
        return yaml.safe_load(f)


def _check_type(key: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"config key {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (int, float, str, list)) and not isinstance(value, type(default)):
        # grid may be a preset name or a list of architecture names
        if key == "train.grid" and isinstance(value, (str, list)):
            return value
        raise UsageError(f"config key {key} must be {type(default).__name__}, got {value!r}")
    return value


def merge(base: dict, override: dict, prefix: str = "") -> dict:
    """Deep-merge `override` into a copy of `base`, rejecting unknown keys and wrong types."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        key = f"{prefix}{k}"
        if k not in base:
            raise UsageError(f"unknown config key {key} (see `noscope config` for the valid keys)")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise UsageError(f"config key {key} is a section; set its keys, e.g. {key}.{next(iter(base[k]))}=...")
            out[k] = merge(base[k], v, key + ".")
        else:
            out[k] = _check_type(key, base[k], v)
    return out


def parse_set(item: str) -> dict:
    """'train.epochs=5' -> {'train': {'epochs': 5}} (the value is read as YAML)."""
    if "=" not in item:
        raise UsageError(f"--set takes key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    tree: dict = {}
    node = tree
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return tree


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> dict:
    cfg = defaults()
    if path:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file not found: {p}")
        try:
            with open(p) as f:
                user = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(user, dict):
            raise UsageError(f"config file {p} must hold a mapping of keys")
        cfg = merge(cfg, user)
    for item in sets:
        cfg = merge(cfg, parse_set(item))
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
