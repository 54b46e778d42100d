"""torchvision's COCO detectors (Faster/Mask R-CNN, RetinaNet, FCOS, SSDLite) as references.

    ref = TorchvisionReference("fasterrcnn_resnet50_fpn")           # weights from torch's cache
    ref = TorchvisionReference("fcos_resnet50_fpn", weights_path="fcos.pth")
    scores, dets = ref.predict(frames)                              # uint8 (N, H, W, 3) RGB

Nothing here ever downloads: the model is built with `weights=None, weights_backbone=None` and
the COCO state dict is read from a file, either the one given or the one torchvision's own cache
would hold (`$TORCH_HOME/hub/checkpoints/<file name of the official URL>`, i.e. what
`torchvision.models.detection.<arch>(weights="DEFAULT")` leaves behind on a machine with
internet). The build reproduces what torchvision does when it loads those weights itself
(FrozenBatchNorm2d in the backbone, eps=0 where torchvision overwrites it), so outputs match.

Class names are the weights' own `meta["categories"]` (91 COCO entries incl. "__background__"
and "N/A" holes), kept unchanged so column c of the score map is model label id c.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import NoscopeError
from .base import Detections, Reference

# arch -> (where the final score threshold lives: "roi_heads" (R-CNNs) or "model" (one-stage),
#          backbone uses FrozenBatchNorm2d when trained,
#          torchvision sets FrozenBatchNorm2d eps to 0 after loading the COCO_V1 weights)
ARCHS: dict[str, tuple[str, bool, bool]] = {
    "fasterrcnn_resnet50_fpn": ("roi_heads", True, True),
    "fasterrcnn_resnet50_fpn_v2": ("roi_heads", False, False),
    "fasterrcnn_mobilenet_v3_large_fpn": ("roi_heads", True, False),
    "maskrcnn_resnet50_fpn": ("roi_heads", True, True),
    "retinanet_resnet50_fpn": ("model", True, True),
    "retinanet_resnet50_fpn_v2": ("model", False, False),
    "fcos_resnet50_fpn": ("model", True, False),
    "ssdlite320_mobilenet_v3_large": ("model", False, False),
}

# Never valid object names, though they occupy label ids.
PLACEHOLDER_NAMES = frozenset({"__background__", "N/A"})

# Darknet's coco.names spells some classes differently; accept those too.
ALIASES = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "tvmonitor": "tv",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
}

# The score map is built from detections down to this score (torchvision's own defaults, 0.05
# for most heads and 0.2 for FCOS, would hide everything below them).
SCORE_FLOOR = 0.01


def weights_enum(arch: str):
    """The torchvision Weights entry (COCO_V1) for an arch."""
    import torchvision

    _check_arch(arch)
    return torchvision.models.get_model_weights(arch).DEFAULT


def default_weights_path(arch: str) -> Path:
    """Where torchvision's own download would leave the COCO weights for `arch`."""
    import torch

    url = weights_enum(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise NoscopeError(f"unknown torchvision detector {arch!r}; valid: {', '.join(ARCHS)}")


def _resolve_device(device):
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NoscopeError(f"device {device} requested but CUDA is not available; use --device cpu")
    return dev


def _freeze_batchnorm(module) -> None:
    """Replace every BatchNorm2d under `module` by FrozenBatchNorm2d, as torchvision's builders do
    for a backbone that gets pretrained weights (same math in eval mode, same state-dict keys as
    the published checkpoints, and eps can then be overwritten like torchvision does)."""
    import torch.nn as nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def _quiet_random_head(model) -> None:
    """Bias a randomly initialised classifier towards "nothing here", like a trained detector
    looking at an empty scene. Untrained heads score every box near 1/91 or their 0.01 prior,
    right at SCORE_FLOOR, so postprocessing would run NMS over ~10^5 boxes and dominate both
    test time and any timing taken with random weights. The backbone, RPN and box heads still
    do all their work; only what survives the score threshold changes."""
    import torch

    with torch.no_grad():
        roi_heads = getattr(model, "roi_heads", None)
        # The final classifier layer gets zero weights (random features through 50 untrained
        # layers are huge, any random projection of them would saturate) and a bias that
        # favours background.
        if roi_heads is not None:  # Faster/Mask R-CNN: softmax with background at index 0
            layer = roi_heads.box_predictor.cls_score
            layer.weight.zero_()
            layer.bias.zero_()
            layer.bias[0] = 8.0
            return
        cls_head = model.head.classification_head
        if hasattr(cls_head, "cls_logits"):  # RetinaNet, FCOS: per-class sigmoid
            cls_head.cls_logits.weight.zero_()
            cls_head.cls_logits.bias.fill_(-12.0)
            return
        for block in cls_head.module_list:  # SSDLite: softmax per anchor, channel = anchor * C + class
            block[-1].weight.zero_()
            block[-1].bias.zero_()
            block[-1].bias.view(-1, cls_head.num_columns)[:, 0] = 8.0


def _read_state_dict(path: Path, arch: str) -> dict:
    import torch

    try:
        sd = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # corrupt, truncated, or a pickle that is not plain tensors
        raise NoscopeError(
            f"cannot read torchvision weights {path} for {arch}: not a PyTorch state-dict file, truncated, or it "
            f"holds pickled objects other than tensors ({type(e).__name__}); re-download it"
        ) from None
    # torchvision's reference training scripts save {"model": state_dict, "optimizer": ...}
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise NoscopeError(f"{path} is not a state dict of tensors for {arch}")
    return sd


def _find_weights(arch: str, weights_path, random_weights: bool, url: str) -> Path | None:
    """The weights file to load, or None for a seeded random model (random_weights, nothing found)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise NoscopeError(f"torchvision weights file {path} for {arch} not found; check --reference-weights")
        return path
    path = default_weights_path(arch)
    if path.is_file():
        return path
    if not random_weights:
        raise NoscopeError(
            f"torchvision weights for {arch} not found at {path}; download {url} on a machine "
            "with internet into that path, or pass --reference-weights FILE"
        )
    return None


def _build(arch: str, n_classes: int, frozen_bn: bool, path: Path | None):
    """The untrained network (random init seeded, so random_weights references are reproducible
    without disturbing the caller's RNG streams)."""
    import torch
    import torchvision

    builder = torchvision.models.get_model_builder(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = builder(weights=None, weights_backbone=None, num_classes=n_classes, progress=False)
    if frozen_bn:
        _freeze_batchnorm(model.backbone)
    if path is None:
        _quiet_random_head(model)
    return model


def _load_weights(model, path: Path, arch: str, zero_eps: bool) -> None:
    """Load a state dict into `model`, refusing one that does not fit it exactly."""
    sd = _read_state_dict(path, arch)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), "shape mismatch")
        raise NoscopeError(f"weights {path} do not fit {arch} ({detail}); is it a different architecture?") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        what = (f"missing {missing[:3]}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {unexpected[:3]}" if unexpected else ""
        )
        raise NoscopeError(f"weights {path} do not fit {arch} ({what}); is it a different architecture?")
    if zero_eps:
        from torchvision.models.detection._utils import overwrite_eps

        overwrite_eps(model, 0.0)


def _configured(model, thresh_owner: str, score_floor: float, input_size):
    """Score threshold, input resolution and box-only heads set on a built model."""
    # Set after building: ssdlite's builder forwards extra kwargs to its backbone too.
    owner = model.roi_heads if thresh_owner == "roi_heads" else model
    owner.score_thresh = min(float(owner.score_thresh), score_floor)
    transform = model.transform
    if input_size is not None and getattr(transform, "fixed_size", None) is None:
        # Run at exactly the size the frames come in at (no internal upscaling to 800 px).
        w, h = input_size
        transform.min_size = (min(w, h),)
        transform.max_size = max(w, h)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "has_mask"):
        # Mask R-CNN: only boxes are needed; pasting 100 full-frame masks per image is slow.
        roi_heads.has_mask = lambda: False
    return model


class TorchvisionReference(Reference):
    """A torchvision COCO detector behind the `Reference` interface.

    arch: one of ARCHS. weights_path: a state dict file (or a {"model": state_dict} training
    checkpoint); None = torchvision's cache file (see default_weights_path), and when that is
    missing too, random_weights=True builds a seeded untrained model (tests, timing) instead of
    raising. device: None/"auto" = CUDA when available (run under fp16 autocast), else CPU.
    conf_threshold: the lowest score kept in Detections (the score map goes down to
    min(SCORE_FLOOR, conf_threshold)). input_size: None = frames of any size, resized the model's
    own way (short side to 800 px for the R-CNNs, RetinaNet and FCOS; SSDLite always 320x320);
    (w, h) = frames come at that size and the model runs at exactly that resolution.
    """

    def __init__(
        self,
        arch: str,
        weights_path: str | os.PathLike | None = None,
        device=None,
        random_weights: bool = False,
        conf_threshold: float = 0.1,
        batch_size: int = 4,
        input_size: tuple[int, int] | None = None,
    ):
        import torch

        _check_arch(arch)
        thresh_owner, frozen_bn, zero_eps = ARCHS[arch]
        weights = weights_enum(arch)
        self.name = arch
        self.class_names = list(weights.meta["categories"])
        self.conf_threshold = float(conf_threshold)
        self.batch_size = max(1, int(batch_size))
        self.input_size = tuple(int(v) for v in input_size) if input_size is not None else None
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) <= 0):
            raise NoscopeError(f"input size must be two positive numbers (width, height), got {input_size!r}")
        self.device = _resolve_device(device)
        self.score_floor = min(SCORE_FLOOR, self.conf_threshold)

        # Find the weights before building anything (building a ResNet-50 takes seconds).
        path = _find_weights(arch, weights_path, random_weights, weights.url)
        self.weights_path: Path | None = path
        self.random_weights = path is None
        self.source_files = {"weights": path} if path is not None else {}
        model = _build(arch, len(self.class_names), frozen_bn, path)
        if path is not None:
            _load_weights(model, path, arch, zero_eps)
        # channels_last: oneDNN's and cuDNN's NHWC convolutions (CPU, 2 cores, random weights at
        # 640x360: Faster R-CNN ResNet-50 +18%, SSDLite +20%); same results to float rounding.
        model = _configured(model, thresh_owner, self.score_floor, self.input_size).eval()
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def class_index(self, name: str) -> int:
        key = ALIASES.get(name, name)
        if key in PLACEHOLDER_NAMES or key not in self.class_names:
            valid = [c for c in self.class_names if c not in PLACEHOLDER_NAMES]
            raise NoscopeError(f"unknown object class {name!r} for reference {self.name}; valid: {', '.join(valid)}")
        return self.class_names.index(key)

    @property
    def precision(self) -> str:
        return "fp16-autocast" if self.device.type == "cuda" else "fp32"  # predict() autocasts on CUDA

    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, list[Detections]]:
        import torch

        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        n, num_classes = len(frames), len(self.class_names)
        scores = np.zeros((n, num_classes), np.float32)
        dets: list[Detections] = []
        if n == 0:
            return scores, dets

        cuda = self.device.type == "cuda"
        amp = torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext()
        with torch.inference_mode(), amp:
            for start in range(0, n, self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size]))
                chunk = chunk.to(self.device, non_blocking=cuda)
                # the NHWC frames viewed as NCHW are already channels_last: no layout copy
                images = chunk.permute(0, 3, 1, 2).float().div_(255.0)
                outputs = self.model(list(images))
                for i, out in enumerate(outputs):
                    boxes = out["boxes"].float().cpu().numpy().astype(np.float32, copy=False)
                    sc = out["scores"].float().cpu().numpy().astype(np.float32, copy=False)
                    labels = out["labels"].cpu().numpy().astype(np.int64, copy=False)
                    ok = (labels >= 0) & (labels < num_classes)
                    boxes, sc, labels = boxes[ok], sc[ok], labels[ok]
                    np.maximum.at(scores[start + i], labels, sc)
                    keep = sc >= self.conf_threshold
                    dets.append(Detections(boxes[keep].reshape(-1, 4), sc[keep], labels[keep]))
        np.clip(scores, 0.0, 1.0, out=scores)
        return scores, dets

    def __repr__(self) -> str:
        src = "random weights" if self.weights_path is None else str(self.weights_path)
        size = "native" if self.input_size is None else f"{self.input_size[0]}x{self.input_size[1]}"
        return f"TorchvisionReference({self.name}, {src}, {size}, {self.device})"
