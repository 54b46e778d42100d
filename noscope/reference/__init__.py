"""Reference detectors: the registry of names the command line accepts.

    from noscope.reference import load_reference, reference_key
    ref = load_reference("yolov3-tiny")                         # the cached darknet YOLOv3-tiny
    ref = load_reference("darknet", cfg="yolov4.cfg", weights="yolov4.weights")
    ref = load_reference("fasterrcnn_resnet50_fpn")              # torchvision, from torch's cache
    key = reference_key(ref)                                    # "yolov3-tiny-416x416-3bcd6b39"

Implementations are imported lazily, so `import noscope.reference` stays cheap.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from ..errors import NoscopeError
from .base import Detections, Reference

TORCHVISION_ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
)

# name -> one-line description (for `noscope references` / help texts)
REFERENCES: dict[str, str] = {
    "yolov3-tiny": "darknet YOLOv3-tiny, 416x416 (default; `noscope weights` fetches it)",
    "darknet": "any darknet YOLO (yolov3, yolov4, yolov4-tiny): pass --reference-cfg and --reference-weights "
    "(and --reference-names unless COCO)",
    **{arch: "torchvision COCO detector (weights from torch's hub cache or --reference-weights)" for arch in TORCHVISION_ARCHS},
}
DEFAULT_REFERENCE = "yolov3-tiny"

__all__ = [
    "DEFAULT_REFERENCE",
    "configured_device",
    "configured_reference",
    "Detections",
    "REFERENCES",
    "Reference",
    "TORCHVISION_ARCHS",
    "load_reference",
    "reference_key",
    "reference_runtime",
]


def _normalize_size(input_size) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", input_size)
        if not m:
            raise NoscopeError(f"input size must look like WIDTHxHEIGHT (e.g. 416x416), got {input_size!r}")
        input_size = (m.group(1), m.group(2))
    try:
        w, h = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise NoscopeError(f"input size must be [width, height], got {input_size!r}") from None
    if w <= 0 or h <= 0:
        raise NoscopeError(f"input size must be positive, got {w}x{h}")
    return w, h


def _normalize_device(device):
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return None
    return device


def _existing(path, what: str, fix: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise NoscopeError(f"{what} {p} not found; {fix}")
    return p


def configured_device(device: str = "auto"):
    """The torch device the configuration's `device` asks for (auto: CUDA when available)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NoscopeError("device: cuda was asked for but no CUDA GPU is available; use --set device=cpu")
    return torch.device(device)


def configured_reference(r) -> tuple[Reference, str]:
    """The reference that reference settings (noscope.settings.ReferenceSettings: name, weights,
    cfg, names, input_size, batch_size, runtime, device) describe, and its cache key."""
    ref = load_reference(r.name, device=configured_device(r.device), weights=r.weights, cfg=r.cfg, names=r.names,
                         input_size=r.input_size or None, batch_size=r.batch_size, runtime=r.runtime)
    return ref, reference_key(ref)


def load_reference(
    name: str = DEFAULT_REFERENCE,
    *,
    device=None,
    weights=None,
    cfg=None,
    names=None,
    input_size=None,
    batch_size: int | None = None,
    random_weights: bool = False,
    runtime: str = "auto",
) -> Reference:
    """Build the reference detector called `name` (one of REFERENCES).

    yolov3-tiny: the cached files (`noscope weights`), each replaceable by weights/cfg/names.
    darknet: cfg and weights required; names default to the cached COCO names.
    torchvision archs: weights default to torch's hub cache; random_weights=True builds an
    untrained model when none is found (tests, timing only).
    device: None/"auto" (CUDA when available), "cpu", "cuda", "cuda:1", a torch.device.
    input_size: (width, height) or "WxH"; None = the detector's own.
    batch_size: None = the detector's default.
    runtime: what runs a darknet network (noscope.reference.runtime): "auto" (the fastest installed
    here, else PyTorch), "torch", "onnxruntime", "openvino"; torchvision detectors run in PyTorch.
    """
    key = (name or DEFAULT_REFERENCE).strip().lower()
    if key not in REFERENCES:
        raise NoscopeError(f"unknown reference {name!r}; valid: {', '.join(REFERENCES)}")
    device = _normalize_device(device)
    size = _normalize_size(input_size)
    extra = {} if batch_size is None else {"batch_size": int(batch_size)}

    from . import runtime as runtimes

    if key in TORCHVISION_ARCHS:
        if cfg is not None or names is not None:
            raise NoscopeError(f"--reference-cfg/--reference-names only apply to darknet references, not {key}")
        runtimes.torch_only(runtime, key)
        from .torchvision_ref import TorchvisionReference

        if weights is not None:
            weights = _existing(weights, f"torchvision weights for {key}", "check --reference-weights")
        return TorchvisionReference(
            key, weights_path=weights, device=device, random_weights=random_weights, input_size=size, **extra
        )

    if random_weights:
        raise NoscopeError(f"random weights are only available for torchvision references, not {key}")
    runtimes.check_name(runtime)  # a typo fails before the network is built

    cfg_p, weights_p, names_p = _yolo_tiny_files(weights, cfg, names) if key == "yolov3-tiny" else \
        _darknet_files(weights, cfg, names)
    from .darknet import DarknetReference

    ref = DarknetReference(cfg_p, weights_p, names_p, device=device, input_size=size, **extra)
    ref.source_files = {"weights": Path(weights_p), "cfg": Path(cfg_p), "names": Path(names_p)}
    if key == "yolov3-tiny":
        ref.name = "yolov3-tiny"
    runtimes.attach(ref, runtime, reference_key(ref))
    return ref


def _yolo_tiny_files(weights, cfg, names) -> tuple[Path, Path, Path]:
    """(cfg, weights, names) of YOLOv3-tiny: the cached files, each replaceable by the user's."""
    from .weights import CFG, NAMES, WEIGHTS, weights_dir, yolov3_tiny_files

    if weights is None and cfg is None and names is None:
        return yolov3_tiny_files()  # its error says how to fetch them
    d = weights_dir()
    fetch = "run `noscope weights`, or pass"

    def one(given, default, what, flag):
        return _existing(given if given is not None else d / default, what,
                         f"check {flag}" if given is not None else f"{fetch} {flag} FILE")

    weights_p = one(weights, WEIGHTS, "YOLOv3-tiny weights", "--reference-weights")  # checked in this order
    cfg_p = one(cfg, CFG, "darknet cfg", "--reference-cfg")
    return cfg_p, weights_p, one(names, NAMES, "class names file", "--reference-names")


def _darknet_files(weights, cfg, names) -> tuple[Path, Path, Path]:
    """(cfg, weights, names) of any darknet YOLO: cfg and weights given, names default to COCO's."""
    from .weights import NAMES, weights_dir

    if cfg is None or weights is None:
        raise NoscopeError(
            "reference darknet needs --reference-cfg FILE.cfg and --reference-weights FILE.weights "
            "(e.g. yolov4.cfg + yolov4.weights from github.com/AlexeyAB/darknet)"
        )
    cfg_p = _existing(cfg, "darknet cfg", "check --reference-cfg")
    weights_p = _existing(weights, "darknet weights", "check --reference-weights")
    if names is not None:
        return cfg_p, weights_p, _existing(names, "class names file", "check --reference-names")
    return cfg_p, weights_p, _existing(
        weights_dir() / NAMES, "COCO class names",
        "run `noscope weights` to fetch it, or pass --reference-names FILE (one class name per line)",
    )


# ---------------------------------------------------------------------------------------------
# cache keys


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=64)
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    """The identity of a weights file: its md5 when it is the verified stock YOLOv3-tiny (so every
    machine agrees), else a hash of where it is, its size and its modification time (instant,
    even for the 170 MB ResNet-50 checkpoints; a touched or copied file just relabels)."""
    try:
        from . import weights as W

        stock = W.weights_dir() / W.WEIGHTS
        if stock.is_file() and str(stock.resolve()) == path and W._marker_matches(stock.parent):
            return W.WEIGHTS_MD5
    except Exception:  # weights module missing or changed: fall back to the stamp
        pass
    return hashlib.md5(f"{path}:{size}:{mtime_ns}".encode()).hexdigest()


def _files_of(ref: Reference) -> dict[str, Path]:
    files = getattr(ref, "source_files", None)
    if files is None:  # built directly, not via load_reference
        files = {k: getattr(ref, f"{k}_path", None) for k in ("weights", "cfg", "names")}
    return {k: Path(v) for k, v in files.items() if v is not None}


def reference_key(ref: Reference) -> str:
    """Short id of a reference for cache keys: name, input size, hash of its files' identity.

    e.g. "yolov3-tiny-416x416-3bcd6b39", "fasterrcnn_resnet50_fpn-native-5c1e0a2f",
    "ssdlite320_mobilenet_v3_large-native-random" (seeded random weights).
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.name or "reference")
    size = "native" if ref.input_size is None else f"{ref.input_size[0]}x{ref.input_size[1]}"
    files = _files_of(ref)
    if "weights" not in files:
        digest = "random"
    else:
        parts = []
        for kind in ("weights", "cfg", "names"):
            if kind in files:
                p = files[kind]
                try:
                    parts.append(_file_identity(*_stamp(p)))
                except OSError:
                    parts.append(f"missing:{p}")
        # The stock yolov3-tiny bundle is identified by its weights alone (cfg/names are fixed);
        # anything else combines all files, since a cfg change is a different network.
        digest = parts[0] if _is_stock_bundle(files) else hashlib.md5("|".join(parts).encode()).hexdigest()
        digest = digest[:8]
    return f"{name}-{size}-{digest}"


def reference_runtime(ref: Reference) -> str:
    """Where, in what arithmetic and by what the reference runs here: "cpu-fp32", "cuda-fp16"
    (PyTorch), "cpu-fp32-onnxruntime-<export>", "cpu-fp32-openvino-<export>" (<export>: the start of
    the exported file's sha256, checked before every use: noscope.reference.runtime).

    Part of the label cache's key (fp16 CUDA and fp32 CPU answers differ on borderline frames, and
    another runtime's float rounding might too; labels made by one export are never mixed with
    another's, nor with those of a file damaged before its checksum was checked), not of
    reference_key: a bundle trained on a GPU is still the same reference's on a CPU. PyTorch adds no
    suffix, so its labels cached before runtimes existed are still found.
    """
    device = getattr(ref, "device", None)
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    engine = getattr(ref, "runtime", "torch")
    if engine == "torch":
        return f"{kind}-{getattr(ref, 'precision', 'fp32')}"
    export = getattr(getattr(ref, "runner", None), "export", None)
    return f"{kind}-{getattr(ref, 'precision', 'fp32')}-{engine}" + (f"-{export}" if export else "")


def _is_stock_bundle(files: dict[str, Path]) -> bool:
    try:
        from . import weights as W

        d = W.weights_dir().resolve()
        expect = {"weights": d / W.WEIGHTS, "cfg": d / W.CFG, "names": d / W.NAMES}
        return all(files.get(k) is not None and files[k].resolve() == v for k, v in expect.items())
    except Exception:
        return False


def __getattr__(name: str):  # lazy access: noscope.reference.TorchvisionReference etc.
    if name == "TorchvisionReference":
        from .torchvision_ref import TorchvisionReference

        return TorchvisionReference
    if name == "DarknetReference":
        from .darknet import DarknetReference

        return DarknetReference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
