"""From a batch's raw [yolo] head outputs to what a Reference returns: each frame's best score
per class, and its boxes after NMS.

Everything is one batched tensor operation per [yolo] layer: class probabilities on the raw
layout, the per-class maximum over all cells, the score threshold *before* any box is decoded
(a frame has ~200k (cell, class) pairs and a few dozen above 0.1), then one NMS call for the
whole batch. Only building the per-frame Detections list is a Python loop.

Results equal decoding every row (YoloLayer.decode, OpenCV's layout) and thresholding those,
candidate order included, so ties in NMS resolve the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import batched_nms

from .base import Detections


def postprocess(layers, heads: list[torch.Tensor], net_size: tuple[int, int], frame_size: tuple[int, int],
                conf_threshold: float, nms_threshold: float) -> tuple[np.ndarray, list[Detections]]:
    """layers: the net's YoloLayers; heads: their raw inputs for B frames; sizes are (width, height).
    Returns (class scores float32 (B, C), one Detections per frame in frame pixels)."""
    probs = [m.class_probs(h) for m, h in zip(layers, heads)]  # (B, A, C, H, W) each
    scores = torch.stack([p.amax(dim=(1, 3, 4)) for p in probs]).amax(0)
    frame, cls, box, score = _candidates(layers, heads, probs, conf_threshold, net_size)
    dets = _nms(frame, cls, box, score, len(scores), probs[0].shape[2], frame_size, nms_threshold)
    return scores.cpu().numpy(), dets


def _candidates(layers, heads, probs, conf_threshold: float, net_size: tuple[int, int]):
    """Every (frame, cell, class) scoring >= conf_threshold: frame, class, box [cx, cy, w, h]
    (fractions of the frame) and score, in the order of rows (frame, cfg layer, cell y, x,
    anchor, class) as YoloLayer.decode lists them."""
    parts, offset = [], 0
    for m, raw, p in zip(layers, heads, probs):
        n, a, c, h, w = p.shape
        # objectness * p(class) <= objectness: only cells with objectness above the threshold
        # (a few dozen of ~40k) can hold a candidate, so the full-size test runs on those alone.
        # The slack covers a last-bit difference between this objectness and the one in probs.
        b, k, y, x = torch.nonzero(m.objectness(raw) >= conf_threshold * (1 - 1e-5), as_tuple=True)
        cell, cl = torch.nonzero(p[b, k, :, y, x] >= conf_threshold, as_tuple=True)
        b, k, y, x = b[cell], k[cell], y[cell], x[cell]
        row = offset + (y * w + x) * a + k
        parts.append((b, cl, m.boxes_at(raw, b, k, y, x, *net_size), p[b, k, cl, y, x], row))
        offset += a * h * w
    frame, cls, box, score, row = (torch.cat(t) for t in zip(*parts))
    order = torch.argsort((frame * offset + row) * probs[0].shape[2] + cls)
    return frame[order], cls[order], box[order], score[order]


def _nms(frame, cls, box, score, batch: int, num_classes: int, frame_size: tuple[int, int],
         nms_threshold: float) -> list[Detections]:
    """Per-frame, per-class NMS, as darknet does it, in one batched_nms call: the group id is
    frame * C + class, so boxes of different frames or classes never suppress each other."""
    if frame.numel() == 0:
        return [Detections.empty() for _ in range(batch)]
    fw, fh = frame_size
    scale = box.new_tensor([fw, fh, fw, fh])
    xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], 1) * scale
    xyxy = torch.minimum(xyxy.clamp_(min=0), scale)  # clip to the frame
    keep = batched_nms(xyxy, score, frame * num_classes + cls, nms_threshold)  # sorted by score
    frame, xyxy, score, cls = (t[keep].cpu().numpy() for t in (frame, xyxy, score, cls))
    by_frame = np.argsort(frame, kind="stable")  # score order kept within each frame
    cuts = np.cumsum(np.bincount(frame, minlength=batch))[:-1]
    pieces = (np.split(t[by_frame], cuts) for t in (xyxy, score, cls))
    return [Detections(bx.astype(np.float32), sc.astype(np.float32), cl.astype(np.int64)) for bx, sc, cl in zip(*pieces)]
