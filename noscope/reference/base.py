"""The one interface every reference detector implements.

Frames in (uint8 RGB, N x H x W x 3, already at the detector's input size when it has one),
out: for each frame the highest confidence of every class (N x num_classes), which is what
"is there a car in this frame?" is decided from, plus the boxes after NMS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a network runs, not to read this interface
    import torch


@dataclass
class Detections:
    """Boxes kept after NMS for one frame, in pixels of the frame that was passed in."""

    boxes: np.ndarray  # (K, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (K,) float32
    classes: np.ndarray  # (K,) int64, index into class_names

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


class Reference:
    """Base class. Subclasses set the attributes and implement `predict`."""

    name: str  # e.g. "yolov3-tiny", "fasterrcnn_resnet50_fpn"
    class_names: list[str]
    input_size: tuple[int, int] | None  # (width, height) frames must be resized to; None: any size
    device: "torch.device"
    batch_size: int = 16
    runtime: str = "torch"  # what runs the network: "torch", "onnxruntime", "openvino" (reference.runtime)

    @property
    def precision(self) -> str:
        """The arithmetic it runs in here: "fp32", "fp16" (weights in half precision) or
        "fp16-autocast". The label cache keys on it (noscope.reference.reference_runtime)."""
        return "fp32"

    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, list[Detections]]:
        """frames: uint8 (N, H, W, 3) RGB.

        Returns (class_scores, detections): class_scores is float32 (N, len(class_names)), the
        maximum confidence of each class over the frame (0 where the class is absent); detections
        is one Detections per frame (after NMS, scores >= the detector's box threshold).
        """
        raise NotImplementedError

    def class_index(self, name: str) -> int:
        from ..errors import NoscopeError

        try:
            return self.class_names.index(name)
        except ValueError:
            raise NoscopeError(
                f"unknown object class {name!r} for reference {self.name}; valid: {', '.join(self.class_names)}"
            ) from None
