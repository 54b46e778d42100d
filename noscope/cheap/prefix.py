"""The frozen prefix of the reference: its first layers, run on frames at a small size keeping the
video's aspect, and the pooled features a linear head scores.

    point = PrefixPoint(ref_key, 6, *prefix_size(640, 360, 320))   # layers[:6] at 320x192
    prefix = build_prefix(ref, point)                          # frozen, eval, CPU channels-last
    maps = extract(prefix, frames_u8)[6]                       # frames uint8 (N, 192, 320, 3)
    z = pool(maps, "mean+max+grid2x3")                         # float32 (N, D)

A prefix is identified by its point (which reference, how many of its first layers, what input
size); it holds no trained weights of its own (the reference's, copied), so a head's file records
the point and the prefix is rebuilt from the reference when the head is loaded (noscope.cheap.heads).
The layers are the reference's first ones, which a frame that goes on to the reference runs too.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NoscopeError
from .common import resolve_device

DEFAULT_POOLING = "mean+max+grid2x3"
_POOL_RE = re.compile(r"mean|max|grid(\d+)x(\d+)")


# --------------------------------------------------------------------------- prefix points


def prefix_size(video_width: int, video_height: int, width: int) -> tuple[int, int]:
    """(w, h) for a prefix input `width` pixels wide keeping the video's aspect ratio, both
    multiples of 32 (what the reference's strides need): 640x360 -> 160x96 or 320x192,
    320x240 -> 160x128 or 320x256."""
    if width <= 0 or width % 32:
        raise NoscopeError(f"prefix width must be a positive multiple of 32, got {width}")
    if video_width <= 0 or video_height <= 0:
        raise NoscopeError(f"video size must be positive, got {video_width}x{video_height}")
    h = max(32, int(math.floor(width * video_height / video_width / 32 + 0.5)) * 32)
    return int(width), h


@dataclass(frozen=True)
class PrefixPoint:
    """Which reference (its key, e.g. "yolov3-tiny-416x416-3bcd6b39"), how many of its first
    layers (Darknet: modules of the cfg, in order; torchvision: children of the backbone's body),
    and the input size (width, height) the frames come in at."""

    reference: str
    layers: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.layers < 1 or self.width <= 0 or self.height <= 0 or self.width % 32 or self.height % 32:
            raise NoscopeError(f"bad prefix point {self.name}: layers >= 1 and a size in multiples of 32 needed")

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def name(self) -> str:
        """e.g. "L6-320x192" (the reference is recorded beside it, not in it)."""
        return f"L{self.layers}-{self.width}x{self.height}"


# --------------------------------------------------------------------------- the frozen prefix


class Prefix(nn.Module):
    """The reference's first layers, frozen: uint8 RGB frames (N, H, W, 3) -> feature maps.

    The input is scaled as the reference scales it (Darknet: /255; torchvision: /255, then its
    transform's mean and std; the resize is the decoder's). forward(x, taps) returns the output
    after each of the `taps` first layers (a list, in the order given), running the layers once."""

    def __init__(self, point: PrefixPoint, layers: list[nn.Module], mean: list[float] | None, std: list[float] | None):
        super().__init__()
        self.point = point
        self.body = nn.ModuleList(layers)
        m = torch.tensor(mean if mean is not None else [0.0, 0.0, 0.0]).view(1, 3, 1, 1)
        s = torch.tensor(std if std is not None else [1.0, 1.0, 1.0]).view(1, 3, 1, 1)
        # x/255 then (x - m)/s == (x - 255 m) / (255 s): one subtract and one multiply
        self.register_buffer("shift", m * 255.0, persistent=False)
        self.register_buffer("scale", 1.0 / (s * 255.0), persistent=False)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, frames_u8: torch.Tensor, taps: list[int] | None = None) -> list[torch.Tensor]:
        taps = [len(self.body)] if taps is None else list(taps)
        if not taps or min(taps) < 1 or max(taps) > len(self.body):
            raise NoscopeError(f"prefix taps must be in 1..{len(self.body)}, got {taps}")
        x = frames_u8.permute(0, 3, 1, 2).float()
        x = ((x - self.shift) * self.scale).contiguous(memory_format=torch.channels_last)
        out: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.body[: max(taps)], 1):
            x = layer(x)
            if i in taps:
                out[i] = x
        return [out[t] for t in taps]

    def train(self, mode: bool = True) -> "Prefix":
        return super().train(False)  # frozen: batch norms (torchvision) stay in inference mode


def has_layers(reference) -> bool:
    """Whether a prefix can be taken from this reference (a Darknet network, a torchvision backbone)."""
    net = getattr(reference, "net", None)
    return (net is not None and hasattr(net, "layers")) or \
        getattr(getattr(getattr(reference, "model", None), "backbone", None), "body", None) is not None


def build_prefix(reference, point: PrefixPoint, device=None) -> Prefix:
    """The first `point.layers` layers of `reference`, copied, frozen, float32, channels-last.

    Darknet references: cfg modules in order; only plain layers (convolutional, maxpool, upsample)
    may be in a prefix (yolov3-tiny: up to 16). torchvision detectors with a `backbone.body`
    (R-CNNs, RetinaNet, FCOS): the body's children (ResNet: conv1, bn1, relu, maxpool, layer1..4),
    with the model's own normalisation."""
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    net = getattr(reference, "net", None)
    if net is not None and hasattr(net, "layers"):
        layers, mean, std = _darknet_layers(net, point.layers), None, None
    elif getattr(getattr(getattr(reference, "model", None), "backbone", None), "body", None) is not None:
        layers, mean, std = _torchvision_layers(reference.model, point.layers)
    else:
        raise NoscopeError(f"reference {getattr(reference, 'name', reference)!r} has no layers a prefix can be taken from")
    prefix = Prefix(point, [copy.deepcopy(m) for m in layers], mean, std)
    return prefix.to(dev, torch.float32).to(memory_format=torch.channels_last).eval()


def _darknet_layers(net, k: int) -> list[nn.Module]:
    from ..reference.darknet import ConvLayer, MaxPoolLayer, UpsampleLayer

    if k > len(net.layers):
        raise NoscopeError(f"the reference has {len(net.layers)} layers; a prefix of {k} is not possible")
    for i, m in enumerate(net.layers[:k]):
        if not isinstance(m, (ConvLayer, MaxPoolLayer, UpsampleLayer)):
            raise NoscopeError(f"a prefix of {k} layers would include layer {i} ({type(m).__name__}): a prefix is a "
                               f"plain chain of convolutional, maxpool and upsample layers; use at most {i} layers")
    return list(net.layers[:k])


def _torchvision_layers(model, k: int) -> tuple[list[nn.Module], list[float], list[float]]:
    body = list(model.backbone.body.children())
    if k > len(body):
        raise NoscopeError(f"the reference's backbone has {len(body)} stages; a prefix of {k} is not possible")
    t = model.transform
    return body[:k], [float(v) for v in t.image_mean], [float(v) for v in t.image_std]


def extract(prefix: Prefix, frames_u8, taps: list[int] | None = None, batch_size: int = 64,
            dtype: torch.dtype = torch.float16, pooled: dict[int, str] | None = None) -> dict[int, torch.Tensor]:
    """Feature maps of uint8 RGB frames at the prefix size, after each of `taps` first layers
    (default: all of the prefix): {tap: CPU tensor (N, C, h, w)} stored as `dtype` (float16 halves
    the memory; heads compute in float32). The prefix runs once per frame for all taps.

    frames_u8: an array (N, H, W, 3), or an iterable of such batches in sample order (decoded
    batches: the frames need not all be held at the prefix size). pooled {tap: spec}: keep only
    the pooled features (float32 (N, D), see `pool`) of those taps, which is all a linear head
    needs (a few KB per frame instead of up to 250 KB)."""
    taps = sorted(set(taps or [len(prefix.body)]))
    pooled = pooled or {}
    dev = next(iter(prefix.buffers())).device
    out: dict[int, list[torch.Tensor]] = {t: [] for t in taps}
    chunks = (frames_u8[s : s + batch_size] for s in range(0, len(frames_u8), batch_size)) \
        if isinstance(frames_u8, np.ndarray) else frames_u8
    with torch.inference_mode():
        for chunk in chunks:
            chunk = check_frames(chunk, prefix.point)
            for s in range(0, len(chunk), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(chunk[s : s + batch_size])).to(dev)
                for t, m in zip(taps, prefix(batch, taps)):
                    out[t].append(pool(m, pooled[t]).cpu() if t in pooled else m.to("cpu", dtype).contiguous())
    return {t: torch.cat(v) if v else torch.zeros(0) for t, v in out.items()}


def check_frames(frames_u8: np.ndarray, point: PrefixPoint) -> np.ndarray:
    frames_u8 = np.asarray(frames_u8)
    want = (point.height, point.width, 3)
    if frames_u8.dtype != np.uint8 or frames_u8.ndim != 4 or frames_u8.shape[1:] != want:
        raise NoscopeError(f"frames for prefix {point.name} must be uint8 (N, {want[0]}, {want[1]}, 3) RGB, "
                           f"got {frames_u8.dtype} {frames_u8.shape}")
    return frames_u8


# --------------------------------------------------------------------------- pooling


def parse_pooling(spec: str) -> list[tuple[str, int, int]]:
    """"mean+max+grid2x3" -> [("mean", 1, 1), ("max", 1, 1), ("grid", 2, 3)]."""
    parts = []
    for p in str(spec).lower().split("+"):
        m = _POOL_RE.fullmatch(p.strip())
        if not m or (m.group(1) and not (1 <= int(m.group(1)) <= 8 and 1 <= int(m.group(2)) <= 8)):
            raise NoscopeError(f"cannot read pooling {spec!r}: use mean, max, gridRxC (R, C in 1..8), joined by +")
        parts.append(("grid", int(m.group(1)), int(m.group(2))) if m.group(1) else (m.group(0), 1, 1))
    return parts


def pooled_size(spec: str, channels: int) -> int:
    return channels * sum(r * c for _, r, c in parse_pooling(spec))


def pool(maps: torch.Tensor, spec: str) -> torch.Tensor:
    """(N, C, h, w) -> float32 (N, D): per channel the global mean, global max and/or the means
    of a coarse RxC grid of cells (the camera is fixed: where something is matters)."""
    x = maps.float()
    out = []
    for kind, r, c in parse_pooling(spec):
        if kind == "mean":
            out.append(x.mean(dim=(2, 3)))
        elif kind == "max":
            out.append(x.amax(dim=(2, 3)))
        else:
            out.append(F.adaptive_avg_pool2d(x, (r, c)).flatten(1))
    return torch.cat(out, 1)


def extract_channels(prefix: Prefix) -> int:
    """Channels of the prefix's output (one tiny forward pass)."""
    w, h = prefix.point.size
    with torch.inference_mode():
        dev = next(iter(prefix.buffers())).device
        return int(prefix(torch.zeros(1, h, w, 3, dtype=torch.uint8, device=dev))[0].shape[1])
