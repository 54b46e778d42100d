"""Darknet YOLO (v3, v3-tiny, v4, v4-tiny) in plain PyTorch, as a noscope reference detector.

It reads the original darknet files: the .cfg text, the .weights blob and a .names list. The
output matches OpenCV's darknet importer (cv2.dnn.readNetFromDarknet) to float rounding; see
tests/test_darknet.py. Commands:

    python -m noscope.reference.weights                  # once: fetch yolov3-tiny into the cache
    python -m noscope.reference.darknet IMAGE [IMAGE...] # print the classes and boxes found
    python -m pytest tests/test_darknet.py               # check agreement with OpenCV

From Python:

    from noscope.reference.darknet import DarknetReference
    from noscope.reference.weights import yolov3_tiny_files

    ref = DarknetReference(*yolov3_tiny_files())         # cfg, weights, names
    scores, dets = ref.predict(frames)                   # frames: uint8 RGB (N, H, W, 3)
    has_car = scores[:, ref.class_index("car")] > 0.5    # per-frame max confidence of "car"

Frames are resized to the network input (416x416 for yolov3-tiny) with a plain bilinear resize,
exactly like cv2.dnn.blobFromImage(img, 1/255, size, swapRB=True): no letterboxing.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NoscopeError
from .base import Detections, Reference
from .yolo_post import postprocess

# Darknet (AlexeyAB) normalizes with sqrt(var + 1e-5); pjreddie's used sqrt(var) + 1e-6 and
# OpenCV sqrt(var + 1e-6). With trained variances the three differ by ~1e-6 relative: immaterial.
BN_EPS = 1e-5
SECTION_TYPES = {"net", "convolutional", "maxpool", "upsample", "route", "shortcut", "yolo"}
SECTION_ALIASES = {"network": "net", "conv": "convolutional", "max": "maxpool"}


# ---------------------------------------------------------------------------------------------
# .cfg parsing


def parse_cfg(path: str | Path) -> list[dict]:
    """Sections of a darknet .cfg, in order: [{"type": "net", "width": "416", ...}, ...].

    Values stay strings; the layer constructors convert them. Whole-line comments start with
    '#' or ';' (we also drop trailing '#' comments, which darknet would choke on anyway).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise NoscopeError(f"cannot read darknet cfg {path}: {e.strerror}") from None
    sections: list[dict] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise NoscopeError(f"{path}:{lineno}: bad section header {line!r}")
            kind = line[1:-1].strip().lower()
            kind = SECTION_ALIASES.get(kind, kind)
            if kind not in SECTION_TYPES:
                raise NoscopeError(
                    f"{path}:{lineno}: unsupported darknet layer [{kind}]; supported: "
                    + ", ".join(f"[{t}]" for t in sorted(SECTION_TYPES))
                )
            sections.append({"type": kind})
        else:
            key, sep, value = line.partition("=")
            if not sep or not sections:
                raise NoscopeError(f"{path}:{lineno}: expected key=value inside a section, got {line!r}")
            sections[-1][key.strip()] = value.strip()
    if not sections or sections[0]["type"] != "net":
        raise NoscopeError(f"{path}: a darknet cfg must start with a [net] section")
    return sections


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",") if v.strip()]


# ---------------------------------------------------------------------------------------------
# Layers. Each takes the running tensor and, where the cfg refers back, earlier layer outputs.

def _linear(x):
    return x


def _leaky(x):
    return F.leaky_relu(x, 0.1)  # darknet's "leaky" slope


# Plain functions, not lambdas, so a built net can still be pickled/deep-copied.
ACTIVATIONS = {
    "linear": _linear,
    "leaky": _leaky,
    "relu": F.relu,
    "logistic": torch.sigmoid,
    "mish": F.mish,
    "swish": F.silu,
}


def _activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise NoscopeError(f"unsupported darknet activation {name!r}; supported: {', '.join(ACTIVATIONS)}") from None


class ConvLayer(nn.Module):
    """[convolutional]: conv, optional batch norm (then no conv bias), activation."""

    def __init__(self, in_channels: int, opts: dict):
        super().__init__()
        for key, default in (("dilation", "1"), ("antialiasing", "0"), ("binary", "0"), ("xnor", "0")):
            if opts.get(key, default) != default:
                raise NoscopeError(f"darknet [convolutional] with {key}={opts[key]} is not supported")
        if "stride_x" in opts or "stride_y" in opts:
            raise NoscopeError("darknet [convolutional] with stride_x/stride_y is not supported")
        size = int(opts.get("size", 1))
        # "pad=1" means "same" padding (size // 2) and overrides an explicit "padding".
        padding = size // 2 if int(opts.get("pad", 0)) else int(opts.get("padding", 0))
        self.batch_normalize = bool(int(opts.get("batch_normalize", 0)))
        self.conv = nn.Conv2d(
            in_channels,
            int(opts["filters"]),
            size,
            stride=int(opts.get("stride", 1)),
            padding=padding,
            groups=int(opts.get("groups", 1)),
            bias=not self.batch_normalize,
        )
        self.bn = nn.BatchNorm2d(self.conv.out_channels, eps=BN_EPS) if self.batch_normalize else None
        self.act = _activation(opts.get("activation", "logistic"))  # darknet's default

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self):
        """Fold the (inference-mode) batch norm into the conv: one op instead of two."""
        if self.bn is None:
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, groups=conv.groups, bias=True
        ).to(conv.weight.device, conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, None


class MaxPoolLayer(nn.Module):
    """[maxpool]. Darknet pads by `padding` (default size-1) split as floor/ceil on left/right and
    ignores the padded cells, so size=2 stride=1 keeps the size (13x13 -> 13x13) and the edge
    row/column is max-ed with nothing. Padding with -inf then pooling is exactly that."""

    def __init__(self, opts: dict):
        super().__init__()
        self.stride = int(opts.get("stride", 1))  # darknet's defaults: stride 1, size = stride
        self.size = int(opts.get("size", self.stride))
        pad = int(opts.get("padding", self.size - 1))
        self.pad = (pad // 2, pad - pad // 2) * 2  # (left, right, top, bottom)

    def forward(self, x):
        if any(self.pad) and not self._pad_unused(x.shape[-2], x.shape[-1]):
            x = F.pad(x, self.pad, value=-math.inf)
        return F.max_pool2d(x, self.size, self.stride)

    def _pad_unused(self, h: int, w: int) -> bool:
        # The common size=2 stride=2 on an even size: no window reaches the right/bottom pad, so
        # skip the padded copy (it costs as much as the pooling itself on CPU).
        k, s, (lo, hi) = self.size, self.stride, self.pad[:2]
        return lo == 0 and all((n + hi - k) // s == (n - k) // s for n in (h, w))


class UpsampleLayer(nn.Module):
    def __init__(self, opts: dict):
        super().__init__()
        self.stride = int(opts.get("stride", 2))
        if float(opts.get("scale", 1)) != 1:
            raise NoscopeError("darknet [upsample] with scale != 1 is not supported")

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class RouteLayer(nn.Module):
    """[route]: concatenate earlier outputs along channels. With groups/group_id (yolov4-tiny)
    each input contributes only its group_id-th slice of channels."""

    def __init__(self, sources: list[int], opts: dict):
        super().__init__()
        self.sources = sources  # absolute layer indexes
        self.groups = int(opts.get("groups", 1))
        self.group_id = int(opts.get("group_id", 0))

    def forward(self, outputs: list):
        parts = []
        for i in self.sources:
            t = outputs[i]
            if self.groups > 1:
                c = t.shape[1] // self.groups
                t = t[:, self.group_id * c : (self.group_id + 1) * c]
            parts.append(t)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


class ShortcutLayer(nn.Module):
    """[shortcut]: residual add of an earlier output, then activation (linear in yolov3/v4)."""

    def __init__(self, source: int, opts: dict):
        super().__init__()
        self.source = source
        self.act = _activation(opts.get("activation", "linear"))
        if opts.get("weights_type", "none") != "none":
            raise NoscopeError("darknet [shortcut] with weights_type is not supported")

    def forward(self, x, outputs: list):
        return self.act(x + outputs[self.source])


class YoloLayer(nn.Module):
    """[yolo]: no computation in the forward pass (the raw conv output is what we keep); `decode`
    turns it into boxes. Output rows are ordered (cell_y, cell_x, anchor) like OpenCV's."""

    def __init__(self, opts: dict):
        super().__init__()
        anchors = _floats(opts["anchors"])
        mask = _ints(opts["mask"]) if "mask" in opts else list(range(len(anchors) // 2))
        self.classes = int(opts["classes"])
        self.scale_x_y = float(opts.get("scale_x_y", 1.0))
        if int(opts.get("new_coords", 0)):
            raise NoscopeError("darknet [yolo] with new_coords=1 (scaled-YOLOv4) is not supported")
        pairs = torch.tensor(anchors, dtype=torch.float32).view(-1, 2)
        self.register_buffer("anchors", pairs[mask].clone(), persistent=False)  # (A, 2) in net pixels

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    def forward(self, x):
        return x

    # The math below runs on a (N, A, 5+C, H, W) view of the raw output in its own memory order:
    # planes of H*W for a contiguous tensor (ONNX runtimes), rows of 5+C for a channels_last one
    # (PyTorch). A copy to one fixed layout, or the old (cell, anchor, channel) permute of the
    # contiguous tensor (stride H*W floats), cost about a sixth of the network on CPU.

    def _planes(self, raw: torch.Tensor) -> torch.Tensor:
        n, _, h, w = raw.shape
        a, c5 = self.num_anchors, 5 + self.classes
        if raw.is_contiguous():
            return raw.float().reshape(n, a, c5, h, w)
        # channels_last: memory is (N, H, W, A, 5+C); a view of it
        return raw.float().permute(0, 2, 3, 1).reshape(n, h, w, a, c5).permute(0, 3, 4, 1, 2)

    def objectness(self, raw: torch.Tensor) -> torch.Tensor:
        """raw (N, A*(5+C), H, W) -> (N, A, H, W) float32 objectness."""
        return torch.sigmoid(self._planes(raw)[:, :, 4])

    def class_probs(self, raw: torch.Tensor) -> torch.Tensor:
        """raw (N, A*(5+C), H, W) -> (N, A, C, H, W) float32 objectness * p(class)."""
        p = self._planes(raw)
        return torch.sigmoid(p[:, :, 5:]) * torch.sigmoid(p[:, :, 4:5])

    def boxes_at(self, raw: torch.Tensor, b, a, y, x, net_w: int, net_h: int) -> torch.Tensor:
        """(K, 4) [cx, cy, w, h] as fractions of the image, of the K cells (frame b, anchor a,
        row y, column x) only: boxes are decoded after the score threshold, not for every cell."""
        _, _, h, w = raw.shape
        t = self._planes(raw)[b, a, :4, y, x]  # (K, 4)
        s = self.scale_x_y
        # scale_x_y > 1 (yolov4) lets the centre reach the cell borders: sigmoid*s - (s-1)/2.
        xy = torch.sigmoid(t[:, 0:2]) * s - (s - 1) / 2
        cx = (xy[:, 0] + x.float()) / w
        cy = (xy[:, 1] + y.float()) / h
        anchors = self.anchors.float()[a]  # the buffer follows the net to fp16; decode in fp32
        bw = torch.exp(t[:, 2]) * anchors[:, 0] / net_w
        bh = torch.exp(t[:, 3]) * anchors[:, 1] / net_h
        return torch.stack([cx, cy, bw, bh], 1)

    def decode(self, raw: torch.Tensor, net_w: int, net_h: int) -> torch.Tensor:
        """raw (N, A*(5+C), H, W) -> (N, H*W*A, 5+C) float32 rows of
        [cx, cy, w, h (all as fractions of the image), objectness, objectness * p(class)...]."""
        n, _, h, w = raw.shape
        a, c = self.num_anchors, self.classes
        p = self._planes(raw)  # N, A, 5+C, H, W
        gy, gx = torch.meshgrid(
            torch.arange(h, device=raw.device, dtype=torch.float32),
            torch.arange(w, device=raw.device, dtype=torch.float32),
            indexing="ij",
        )
        s = self.scale_x_y
        xy = torch.sigmoid(p[:, :, 0:2]) * s - (s - 1) / 2
        cx = (xy[:, :, 0] + gx) / w
        cy = (xy[:, :, 1] + gy) / h
        anchors = self.anchors.float()[:, :, None, None]  # (A, 2, 1, 1)
        bw = torch.exp(p[:, :, 2]) * anchors[:, 0] / net_w
        bh = torch.exp(p[:, :, 3]) * anchors[:, 1] / net_h
        obj = torch.sigmoid(p[:, :, 4])
        out = torch.cat([torch.stack([cx, cy, bw, bh, obj], 2), self.class_probs(raw)], 2)  # N, A, 5+C, H, W
        return out.permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 5 + c)


# ---------------------------------------------------------------------------------------------
# The network


class DarknetNet(nn.Module):
    """The layers of a parsed cfg. forward(x) returns the raw input of every [yolo] layer;
    decode() turns those into box rows."""

    def __init__(self, sections: list[dict]):
        super().__init__()
        net = sections[0]
        self.width = int(net.get("width", 416))
        self.height = int(net.get("height", 416))
        if int(net.get("channels", 3)) != 3:
            raise NoscopeError("only 3-channel (RGB) darknet networks are supported")
        layers: list[nn.Module] = []
        channels: list[int] = []  # output channels of each layer, for convs and routes that follow
        for i, opts in enumerate(sections[1:]):
            kind = opts["type"]
            prev = channels[-1] if channels else 3

            def absolute(ref: str) -> int:
                j = int(ref)
                j = j + i if j < 0 else j  # negative = relative to this layer
                if not 0 <= j < i:
                    raise NoscopeError(f"darknet layer {i} ([{kind}]) refers to layer {ref}, which does not exist")
                return j

            try:
                if kind == "convolutional":
                    layer = ConvLayer(prev, opts)
                    out = layer.conv.out_channels
                elif kind == "maxpool":
                    layer, out = MaxPoolLayer(opts), prev
                elif kind == "upsample":
                    layer, out = UpsampleLayer(opts), prev
                elif kind == "route":
                    layer = RouteLayer([absolute(r) for r in opts["layers"].split(",") if r.strip()], opts)
                    out = sum(channels[j] // layer.groups for j in layer.sources)
                elif kind == "shortcut":
                    layer, out = ShortcutLayer(absolute(opts["from"]), opts), prev
                    if channels[layer.source] != prev:
                        raise NoscopeError(f"darknet [shortcut] at layer {i} adds tensors of different channel counts")
                elif kind == "yolo":
                    layer, out = YoloLayer(opts), prev
                    if prev != layer.num_anchors * (5 + layer.classes):
                        raise NoscopeError(
                            f"darknet [yolo] at layer {i} expects {layer.num_anchors * (5 + layer.classes)} "
                            f"input channels (anchors x (5 + classes)), gets {prev}"
                        )
                else:  # parse_cfg already rejected anything else; [net] may only come first
                    raise NoscopeError(f"darknet cfg has a [{kind}] section at layer {i}")
            except KeyError as e:
                raise NoscopeError(f"darknet layer {i} ([{kind}]) is missing its {e.args[0]!r} option") from None
            except ValueError as e:  # int("abc"), a bad anchors list, ...
                raise NoscopeError(f"darknet layer {i} ([{kind}]) has a bad option value: {e}") from None
            layers.append(layer)
            channels.append(out)
        self.layers = nn.ModuleList(layers)
        self.yolo_layers = [m for m in layers if isinstance(m, YoloLayer)]
        if not self.yolo_layers:
            raise NoscopeError("darknet cfg has no [yolo] layer: not a detector")
        if len({m.classes for m in self.yolo_layers}) != 1:
            raise NoscopeError("darknet [yolo] layers disagree on the number of classes")
        self.num_classes = self.yolo_layers[0].classes
        # Only keep outputs that a later route/shortcut reads; the rest can be freed at once.
        self._keep = {j for m in layers if isinstance(m, RouteLayer) for j in m.sources}
        self._keep |= {m.source for m in layers if isinstance(m, ShortcutLayer)}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list = []
        heads = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, RouteLayer):
                x = layer(outputs)
            elif isinstance(layer, ShortcutLayer):
                x = layer(x, outputs)
            elif isinstance(layer, YoloLayer):
                heads.append(x)
            else:
                x = layer(x)
            outputs.append(x if i in self._keep else None)
        return heads

    def decode(self, heads: list[torch.Tensor], net_w: int, net_h: int) -> torch.Tensor:
        """(N, R, 5+C) float32 rows from all [yolo] layers, in cfg order (as OpenCV lists them)."""
        return torch.cat([m.decode(h, net_w, net_h) for m, h in zip(self.yolo_layers, heads)], 1)

    def conv_layers(self) -> list[ConvLayer]:
        return [m for m in self.layers if isinstance(m, ConvLayer)]

    def fuse(self) -> "DarknetNet":
        for m in self.conv_layers():
            m.fuse()
        return self


# ---------------------------------------------------------------------------------------------
# .weights loading


def load_darknet_weights(net: DarknetNet, path: str | Path) -> None:
    """Fill `net` (unfused) from a darknet .weights file.

    Layout: int32 major, minor, revision; `seen` images (int64 from version 0.2 on, int32
    before); then float32s, for each conv in cfg order: with batch norm beta (stored in the
    "bias" slot), gamma, running mean, running variance; without, the conv bias; then the conv
    weights (out, in/groups, k, k). Nothing else: a size mismatch means another cfg.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NoscopeError(f"cannot read darknet weights {path}: {e.strerror}") from None
    if len(data) < 16:
        raise NoscopeError(f"{path} is too short to be a darknet weights file")
    major, minor, _revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    offset = 12 + (8 if major * 10 + minor >= 2 else 4)
    convs = net.conv_layers()
    needed = sum(
        m.conv.weight.numel() + m.conv.out_channels * (4 if m.batch_normalize else 1) for m in convs
    )
    if not (0 <= major <= 1000 and 0 <= minor <= 1000):  # over 1000: darknet's marker for transposed weights
        if len(data) - offset == 4 * needed:
            raise NoscopeError(f"{path}: transposed darknet weights are not supported")
        raise NoscopeError(f"{path} is not a darknet weights file: its header (version {major}.{minor}) is not one "
                           f"darknet writes, and its {len(data)} bytes do not fit the cfg's {needed} parameters")
    if any(m.batch_normalize and m.bn is None for m in convs):
        raise RuntimeError("load_darknet_weights needs the net before fuse()")
    have = len(data) - offset
    if have != 4 * needed:
        raise NoscopeError(
            f"{path.name} has {have} bytes of parameters but the cfg needs {4 * needed} "
            f"({needed} float32s): weights do not match cfg"
        )
    values = torch.from_numpy(np.frombuffer(data, "<f4", offset=offset).copy())
    pos = 0

    def take(like: torch.Tensor) -> torch.Tensor:
        nonlocal pos
        chunk = values[pos : pos + like.numel()].view_as(like)
        pos += like.numel()
        return chunk

    with torch.no_grad():
        for m in convs:
            if m.bn is not None:
                # Stored order is beta, gamma, mean, var: bias first, unlike the math.
                for t in (m.bn.bias, m.bn.weight, m.bn.running_mean, m.bn.running_var):
                    t.copy_(take(t))
            else:
                m.conv.bias.copy_(take(m.conv.bias))
            m.conv.weight.copy_(take(m.conv.weight))
    assert pos == needed


# ---------------------------------------------------------------------------------------------
# The reference detector


def read_names(path: str | Path) -> list[str]:
    try:
        return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise NoscopeError(f"cannot read class names {path}: {e.strerror}") from None


class FramesToHeads(nn.Module):
    """uint8 RGB frames (N, H, W, 3) in, the raw input of every [yolo] layer out.

    The scaling to [0, 1] and the NHWC -> NCHW permute are part of the module, so an exported
    model takes decoded frames as they are and nothing is converted in Python first. In PyTorch
    the permuted view already has channels_last strides: with the net in channels_last too, no
    layout copy is made at all (oneDNN and cuDNN both run their NHWC kernels).
    """

    def __init__(self, net: DarknetNet, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = frames.permute(0, 3, 1, 2).to(self.dtype).mul(1 / 255.0)
        return tuple(self.net(x))


class TorchRunner:
    """The network's forward pass in PyTorch: uint8 NHWC frames (numpy) -> raw heads on the device."""

    name = "torch"

    def __init__(self, module: FramesToHeads, device: torch.device):
        self.module, self.device = module, device

    def __call__(self, frames: np.ndarray) -> list[torch.Tensor]:
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        return list(self.module(x))


class DarknetReference(Reference):
    """A darknet YOLO as a noscope Reference (see the module docstring).

    The forward pass runs in PyTorch unless `use_runner` swaps in an exported model
    (noscope.reference.runtime); decoding and NMS stay here, in PyTorch, for every runtime.
    """

    def __init__(
        self,
        cfg_path: str | Path,
        weights_path: str | Path,
        names_path: str | Path,
        device: str | torch.device | None = None,
        input_size: tuple[int, int] | None = None,
        half: bool | None = None,
        conf_threshold: float = 0.1,
        nms_threshold: float = 0.45,
        batch_size: int = 16,
    ):
        cfg_path = Path(cfg_path)
        self.cfg_path, self.weights_path, self.names_path = cfg_path, Path(weights_path), Path(names_path)
        self.name = cfg_path.stem
        self.class_names = read_names(names_path)
        self.net = DarknetNet(parse_cfg(cfg_path))
        if self.net.num_classes != len(self.class_names):
            raise NoscopeError(
                f"{cfg_path.name} has {self.net.num_classes} classes but {Path(names_path).name} "
                f"lists {len(self.class_names)} names"
            )
        load_darknet_weights(self.net, weights_path)
        self.net.fuse().eval()

        w, h = input_size if input_size is not None else (self.net.width, self.net.height)
        if w <= 0 or h <= 0 or w % 32 or h % 32:
            raise NoscopeError(f"darknet input size must be a positive multiple of 32, got {w}x{h}")
        self.input_size = (int(w), int(h))
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        )
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NoscopeError(f"device {self.device} requested but CUDA is not available here; use cpu")
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        self.dtype = torch.float16 if self.half else torch.float32
        # channels_last everywhere: oneDNN's NHWC convolutions are ~1.5x faster on CPU (yolov3-tiny,
        # 2 cores) and cuDNN's NHWC ones use tensor cores on CUDA.
        self.net.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        self.conf_threshold = float(conf_threshold)
        self.nms_threshold = float(nms_threshold)
        self.batch_size = int(batch_size)
        self.runner = TorchRunner(FramesToHeads(self.net, self.dtype), self.device)

    @property
    def precision(self) -> str:
        return "fp16" if self.half else "fp32"  # the whole net is converted (CUDA default)

    @property
    def runtime(self) -> str:
        """What runs the network: "torch", "onnxruntime" or "openvino" (reference_runtime names it)."""
        return self.runner.name

    def frames_module(self) -> FramesToHeads:
        """The network with its input conversion, as exported for the other runtimes."""
        return self.runner.module if isinstance(self.runner, TorchRunner) else FramesToHeads(self.net, self.dtype)

    def use_runner(self, runner) -> None:
        """Run the network with `runner` (frames -> heads, like TorchRunner) from now on."""
        self.runner = runner

    def _check_frames(self, frames) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise NoscopeError(f"frames must be uint8 (N, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
        return frames

    def _heads(self, batch: np.ndarray) -> list[torch.Tensor]:
        """uint8 RGB (B, H, W, 3) -> the raw [yolo] inputs, on self.device."""
        w, h = self.input_size
        if batch.shape[1:3] != (h, w):  # label_frames asks the decoder for this size: no resize then
            batch = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in batch])
        return [t.to(self.device) for t in self.runner(np.ascontiguousarray(batch))]

    def raw_predictions(self, frames: np.ndarray) -> np.ndarray:
        """All decoded rows, (N, R, 5+C) float32 in OpenCV's YOLO output layout, before any
        threshold: [cx, cy, w, h] as fractions of the frame, objectness, objectness * p(class)."""
        frames = self._check_frames(frames)
        w, h = self.input_size
        with torch.inference_mode():
            parts = [self.net.decode(self._heads(frames[i : i + self.batch_size]), w, h).cpu()
                     for i in range(0, len(frames), self.batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, 0, 5 + self.net.num_classes), np.float32)

    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, list[Detections]]:
        frames = self._check_frames(frames)
        n, fh, fw = frames.shape[:3]
        scores = np.zeros((n, len(self.class_names)), np.float32)
        detections: list[Detections] = []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                heads = self._heads(frames[start : start + self.batch_size])
                s, d = postprocess(self.net.yolo_layers, heads, self.input_size, (fw, fh),
                                   self.conf_threshold, self.nms_threshold)
                scores[start : start + len(s)] = s
                detections.extend(d)
        return scores, detections


def main(argv: list[str] | None = None) -> int:
    """python -m noscope.reference.darknet IMAGE... [--cfg C --weights W --names N]"""
    import argparse
    import sys

    from .weights import yolov3_tiny_files

    ap = argparse.ArgumentParser(prog="python -m noscope.reference.darknet", description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--cfg")
    ap.add_argument("--weights")
    ap.add_argument("--names")
    ap.add_argument("--threshold", type=float, default=0.3, help="print boxes at least this confident")
    args = ap.parse_args(argv)
    try:
        if args.cfg or args.weights:
            if not (args.cfg and args.weights):
                raise NoscopeError("pass both --cfg and --weights (and --names unless coco.names is beside the cfg)")
            cfg, weights, names = args.cfg, args.weights, Path(args.cfg).with_name("coco.names")
        else:
            cfg, weights, names = yolov3_tiny_files()
        ref = DarknetReference(cfg, weights, args.names or names)
        for path in args.images:
            bgr = cv2.imread(path)
            if bgr is None:
                raise NoscopeError(f"cannot read image {path}")
            _, (det,) = ref.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None])
            print(path)
            for box, score, k in zip(det.boxes, det.scores, det.classes):
                if score >= args.threshold:
                    x1, y1, x2, y2 = box
                    print(f"  {ref.class_names[k]:<14} {score:.3f}  ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f})")
    except NoscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
