"""The configuration tree: defaults from default.yaml, a user file, then --set overrides.

    cfg = load_config("my.yaml", ["train.epochs=5", "labels.min_score=0.3"])
    cfg["train"]["epochs"]  # -> 5

Every key must exist in the defaults and keep its type (an int is accepted where a float is
expected; a null default accepts anything), so a typo fails loudly instead of being ignored.
Every value is also range-checked here (RULES), so a value that cannot work (a batch size of 0,
a score threshold of 1.5) is one usage error naming the key, never a crash deep inside a run.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import NoscopeError, UsageError

DEFAULT_PATH = Path(__file__).with_name("default.yaml")

MIN_TRAIN_FRAMES = 100  # train.MIN_FRAMES: fewer labelled frames cannot be split into training and held-out


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


# ----------------------------------------------------------------------------- value ranges
# A rule returns None for a good value, else what the value must be ("an integer >= 1").

Rule = Callable[[Any], "str | None"]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def between(lo=None, hi=None, *, lo_open=False, hi_open=False, integer=False) -> Rule:
    """A number in the interval (NaN, infinities and booleans are never in it)."""
    what = "an integer" if integer else "a number"
    g = str if integer else (lambda x: f"{x:g}")
    if lo is not None and hi is not None:
        what += f" in {'(' if lo_open else '['}{g(lo)}, {g(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        what += f" {'>' if lo_open else '>='} {g(lo)}"
    elif hi is not None:
        what += f" {'<' if hi_open else '<='} {g(hi)}"

    def rule(v):
        ok = _number(v) and (not integer or isinstance(v, int))
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
        return None if ok else what
    return rule


def one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else f"one of {', '.join(choices)}"


def nullable(rule: Rule) -> Rule:
    return lambda v: None if v is None else (None if rule(v) is None else f"null or {rule(v)}")


def _path(v):
    return None if isinstance(v, str) and v.strip() else "a file path"


def _name(v):
    return None if isinstance(v, str) and v.strip() else "a detector name (see `noscope references`)"


def _device(v):
    return None if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else "auto, cpu, cuda or cuda:N"


def _odd(v):
    return None if _number(v) and isinstance(v, int) and v >= 1 and v % 2 == 1 else "an odd integer >= 1 (1 = off)"


def _size(v):
    """[width, height] or "WxH", as the reference loader reads it."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", v)
        v = [int(m.group(1)), int(m.group(2))] if m else None
    ok = isinstance(v, list) and len(v) == 2 and all(between(1, 8192, integer=True)(x) is None for x in v)
    return None if ok else "[width, height] (or WxH) of two integers in [1, 8192]"


def _window(v):
    """query.window: seconds or frames (1s, 0.5s, 30f), as --window reads it."""
    from .windows import parse_window

    try:
        parse_window(v)
    except NoscopeError:
        return "a window like 1s, 0.5s or 30f (more than 0)"
    return None


def _skips(v):
    ok = isinstance(v, list) and v and all(_POSITIVE_INT(x) is None for x in v)
    return None if ok else f"a non-empty list of integers in [1, {MAX_COUNT}]"


HEAD_SPEC = re.compile(r"L(\d+)@(\d+):(linear|spatial)")


def _heads(v):
    """train.heads: e.g. [L6@320:linear]: a head of that kind on the reference's first 6 layers, the
    frame 320 pixels wide (a multiple of 32; its height keeps the video's aspect)."""
    ok = isinstance(v, list) and all(isinstance(h, str) and (m := HEAD_SPEC.fullmatch(h.strip()))
                                     and 1 <= int(m.group(1)) <= 64 and int(m.group(2)) % 32 == 0
                                     and 32 <= int(m.group(2)) <= 1024 for h in v)
    return None if ok else "a list like [L6@320:linear] (layers 1-64, a width in 32..1024 that is a multiple of 32, linear or spatial)"


def _grid(v):
    if v in ("default", "small"):
        return None
    if not isinstance(v, list) or not v or not all(isinstance(n, str) for n in v):
        return "default, small, or a non-empty list of CNN names like [c2f32d128s50]"
    from .cheap.cnn import Arch  # only for a custom grid: it imports torch

    try:
        for n in v:
            Arch.parse(n)
    except NoscopeError as e:
        return f"a list of valid CNN names ({e})"
    return None


# Counts, sizes and windows stop at 2^31 - 1 (a frame number's range here): a larger value is a typo,
# and one past int64 is not even an array size (an OverflowError far from the setting that caused it).
MAX_COUNT = 2**31 - 1
MAX_WINDOW = 10**6  # frames per window (over 9 hours at 30 fps)
_FRACTION = between(0, 1, lo_open=True, hi_open=True)
_POSITIVE_INT = between(1, MAX_COUNT, integer=True)
_COUNT = between(0, MAX_COUNT, integer=True)
_BOOL: Rule = lambda v: None  # noqa: E731 - the type check already allows only true or false

RULES: dict[str, Rule] = {
    "device": _device, "seed": between(0, 2**64 - 1, integer=True),
    "reference.name": _name, "reference.weights": nullable(_path), "reference.cfg": nullable(_path),
    "reference.names": nullable(_path), "reference.input_size": nullable(_size),
    "reference.batch_size": nullable(_POSITIVE_INT),
    "reference.runtime": one_of("auto", "torch", "onnxruntime", "openvino"),
    "labels.min_score": between(0, 1, lo_open=True), "labels.smooth": _odd,
    "train.max_frames": between(MIN_TRAIN_FRAMES, MAX_COUNT, integer=True), "train.run_length": _POSITIVE_INT,
    "train.split": one_of("forward", "interleaved"), "train.block": _POSITIVE_INT,
    "train.heldout_fraction": _FRACTION, "train.heldout_min_runs": _COUNT, "train.val_fraction": _FRACTION,
    "train.augment": _COUNT, "train.grid": _grid, "train.heads": _heads, "train.epochs": _POSITIVE_INT, "train.batch_size": _POSITIVE_INT,
    "train.lr": between(0, lo_open=True), "train.patience": _POSITIVE_INT,
    "train.diff_size": between(8, 1024, integer=True), "train.diff_grid": _POSITIVE_INT,
    "optimizer.skips": _skips, "optimizer.min_auc": between(0),  # above 1: no CNN is ever used
    "optimizer.min_saving": between(0, 1, hi_open=True), "optimizer.confidence": _FRACTION,
    "optimizer.strict": _BOOL, "optimizer.cost_slack": between(0),
    "optimizer.metric": one_of("frames", "windows"), "optimizer.window": between(1, MAX_WINDOW, integer=True),
    "decode.backend": one_of("auto", "pyav", "opencv"), "decode.prefetch": _COUNT, "decode.workers": _COUNT,
    "decode.frame_cache": _BOOL,
    "query.target_fpr": _FRACTION, "query.target_fnr": _FRACTION, "query.batch_size": _POSITIVE_INT,
    "query.verify": _COUNT, "query.verify_rounds": _POSITIVE_INT, "query.guarantee": _BOOL,
    "query.window": nullable(_window), "query.window_share": between(0, 1, lo_open=True), "query.verify_windows": _COUNT,
}


def check_range(key: str, value: Any) -> None:
    rule = RULES.get(key)
    must = rule(value) if rule else None
    if must:
        raise UsageError(f"config key {key} must be {must}, got {value!r}")


def _check_together(cfg: dict) -> None:
    """Limits that involve two keys."""
    t = cfg["train"]
    if t["diff_grid"] > t["diff_size"]:
        raise UsageError(f"config key train.diff_grid must be at most train.diff_size ({t['diff_size']}), "
                         f"got {t['diff_grid']!r}")


def merge(base: dict, override: dict, prefix: str = "") -> dict:
    """Deep-merge `override` into a copy of `base`, rejecting unknown keys, wrong types and values out of range."""
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
            check_range(key, out[k])
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
    _check_together(cfg)
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
