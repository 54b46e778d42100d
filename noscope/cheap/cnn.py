"""The small CNN kind of cheap model ("cnn"): tiny CNNs trained to mimic the reference detector on one video.

NoScope's key idea: for one fixed camera and one object class, a few-layer CNN on 50x50
frames reproduces the expensive reference detector's per-frame answer most of the time, at
a tiny fraction of the cost. A grid of such candidates is trained, and the optimizer keeps
whichever gives the cheapest cascade at the target accuracy.

    from noscope.cheap import cnn as sp

    m = sp.mean_frame(x_train)                                  # float32 (50, 50, 3)
    arch = sp.Arch.parse("c2f32d128s50")
    model, info = sp.train_candidate(arch, x_train, y_train, x_val, y_val, m, seed=0)
    print(info["val_auc"], info["epochs"], info["train_seconds"])
    p = sp.predict_scores(model, frames, m)                     # float32 (N,) in [0, 1]
    cost = sp.measure_cost(model, arch.size)                    # seconds per frame
    sp.save_model(model, arch, m, "bundle/specialized.pt")
    model, arch, m = sp.load_model("bundle/specialized.pt")
    scorer = sp.CNNModel(model, arch, m, "cpu")                 # the cheap-model interface (noscope.cheap.base)

Frames are always uint8 RGB (N, S, S, 3) as the video decoder produces them; the conversion
to the network's float input happens on the device (see `to_input`), so only bytes cross
the host/device bus. Models run in channels_last memory everywhere; on CUDA inference runs
under fp16 autocast (training under bf16), on CPU everything is plain float32.
"""

from __future__ import annotations

import dataclasses

import copy
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import atomic
from ..bundle_manifest import Candidate
from ..errors import NoscopeError
from .base import CheapModel, KindGrid, LoadContext, Mismatch, TrainingData
from .common import heldout_aucs, lacking_objects, median_seconds, plain, resolve_device, roc_auc

# Pixel deviations from the mean frame are divided by this: a car against the road is a
# deviation of tens to a hundred grey levels, so inputs land roughly in [-2, 2].
INPUT_SCALE = 64.0

# Marks a file written by save_model, so an unrelated torch checkpoint is refused clearly.
_BUNDLE_FORMAT = "noscope-specialized-v1"

# Training keeps the whole uint8 training set on the GPU when it is at most this big (the
# per-batch host->device copies would otherwise dominate for these tiny models).
_GPU_STAGE_BYTES = 2 << 30

_ARCH_RE = re.compile(r"c(\d+)f(\d+)d(\d+)s(\d+)")


# --------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Arch:
    """One point of the architecture grid.

    convs: 3x3 conv layers (2 or 4, in pairs; a 2x2 max-pool follows each pair),
    filters: channels of the first pair (doubled for the second), dense: width of the hidden
    fully connected layer, size: square input side in pixels.
    """

    convs: int
    filters: int
    dense: int
    size: int

    def __post_init__(self) -> None:
        if self.convs not in (2, 4):
            raise NoscopeError(f"specialized arch {self.name}: convs must be 2 or 4, not {self.convs}")
        if self.filters not in (16, 32, 64):
            raise NoscopeError(f"specialized arch {self.name}: filters must be 16, 32 or 64, not {self.filters}")
        if not 32 <= self.dense <= 256:
            raise NoscopeError(f"specialized arch {self.name}: dense must be in 32..256, not {self.dense}")
        # 50 and 64 are the sizes the grids use; anything from 16 up still pools to >= 4x4.
        if not 16 <= self.size <= 512:
            raise NoscopeError(f"specialized arch {self.name}: size must be in 16..512 (50 or 64 usual), not {self.size}")

    @property
    def name(self) -> str:
        return f"c{self.convs}f{self.filters}d{self.dense}s{self.size}"

    @staticmethod
    def parse(name: str) -> "Arch":
        """'c2f32d128s50' -> Arch(convs=2, filters=32, dense=128, size=50)."""
        m = _ARCH_RE.fullmatch(str(name).strip().lower())
        if not m:
            raise NoscopeError(f"cannot read specialized arch {name!r}: expected e.g. c2f32d128s50 (convs, filters, dense, size)")
        return Arch(*(int(g) for g in m.groups()))

    def __str__(self) -> str:
        return self.name


def default_grid(size: int = 50) -> list[Arch]:
    """NoScope's search space: {2, 4} convs x {16, 32, 64} filters x {32, 64, 128, 256} dense.

    24 candidates, ordered roughly cheapest first (conv work dominates the cost).
    """
    return [Arch(c, f, d, size) for c in (2, 4) for f in (16, 32, 64) for d in (32, 64, 128, 256)]


def small_grid(size: int = 50) -> list[Arch]:
    """Three cheap, different candidates, for tests and quick runs."""
    return [Arch(2, 16, 32, size), Arch(2, 32, 64, size), Arch(4, 16, 64, size)]


def resolve_grid(grid) -> list[Arch]:
    """train.grid: "default", "small", or a list of names like c2f32d128s50."""
    if grid == "default":
        return default_grid()
    if grid == "small":
        return small_grid()
    if isinstance(grid, list):
        return [Arch.parse(n) for n in grid]
    raise NoscopeError(f"unknown train.grid {grid!r}: use default, small, or a list like [c2f32d128s50]")


# --------------------------------------------------------------------------- the network


class SpecializedCNN(nn.Module):
    """[conv3x3-ReLU] x2 -> maxpool (-> dropout), again with 2x the filters if convs=4, dense, 1 logit
    per object.

    Input: float (N, 3, S, S), already mean-subtracted and scaled (see `to_input`).
    Output: (N,) logits of "the object is present", or (N, outputs) for several objects (one
    network, one pass, one logit per object: the features are shared, only the last layer is not).

    No BatchNorm (NoScope had none either): the inputs are already normalised, and with few
    training steps BN's running statistics lag behind the weights, which made validation
    scores erratic in the first epochs (AUC 0.7 where the plain net reached 1.0). The head
    flattens instead of global pooling because the camera is fixed: *where* something changed
    (road vs. sky) is most of the signal.
    """

    def __init__(self, arch: Arch, outputs: int = 1):
        super().__init__()
        if outputs < 1:
            raise NoscopeError(f"a specialized model needs at least one output, got {outputs}")
        self.arch = arch
        self.outputs = outputs
        layers: list[nn.Module] = []
        cin, side = 3, arch.size
        for pair in range(arch.convs // 2):
            cout = arch.filters * (2**pair)
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
            # Dropout after each pool as in NoScope's nets: on a real clip with ~1000 training
            # frames these overfit within 2 epochs, and it bought ~0.01-0.04 held-out AUC.
            layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
            side //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, arch.dense),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),  # the flattened layer holds most weights; this is where it overfits
            nn.Linear(arch.dense, outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return out.squeeze(1) if self.outputs == 1 else out


# --------------------------------------------------------------------------- helpers


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def mean_frame(frames: np.ndarray) -> np.ndarray:
    """Per-pixel mean of uint8 frames (N, S, S, 3) -> float32 (S, S, 3).

    Subtracting it (as NoScope does) removes the static scene, so the CNN's inputs are mostly
    "what is different from usual here".
    """
    frames = _check_frames(frames)
    if len(frames) == 0:
        raise NoscopeError("cannot compute a mean frame from zero frames")
    # float64 accumulation: summing ~1e5 values of up to 255 in float32 loses low bits.
    return frames.mean(axis=0, dtype=np.float64).astype(np.float32)


def _check_frames(frames: np.ndarray, size: int | None = None) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
        raise NoscopeError(f"frames must be uint8 (N, S, S, 3) RGB, got {frames.dtype} {frames.shape}")
    if size is not None and frames.shape[1] != size:
        raise NoscopeError(f"frames are {frames.shape[1]}x{frames.shape[2]} but the specialized model expects {size}x{size}")
    return frames


def _check_mean(mean: np.ndarray, size: int) -> np.ndarray:
    mean = np.asarray(mean, dtype=np.float32)
    if mean.shape != (size, size, 3):
        raise NoscopeError(f"mean frame must be ({size}, {size}, 3), got {mean.shape}")
    return mean


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing `arr`'s memory, or a copy when it is read-only or strided.

    Frames often come from read-only memory maps (the frame cache); torch cannot share those
    without a warning, and nothing here would write to them anyway.
    """
    if arr.flags.writeable and arr.flags.c_contiguous:
        return torch.from_numpy(arr)
    return torch.from_numpy(np.array(arr, order="C", copy=True))


def to_input(frames_u8: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) on the device -> float (N, 3, S, S) network input, on the device.

    The permuted NHWC tensor already has channels_last strides, so no copy is made: both
    cuDNN and oneDNN (CPU) run these small convs faster in that layout (about 1.7x on CPU).
    """
    x = (frames_u8.float() - mean) / INPUT_SCALE
    return x.permute(0, 3, 1, 2)


def _prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    return model.to(device).to(memory_format=torch.channels_last)


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """(n,) for one object, (n, K) for K objects (one column each)."""
    y = np.asarray(y)
    if y.shape[:1] != (n,) or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] < 1):
        raise NoscopeError(f"{what} labels must have shape ({n},) or ({n}, objects), got {y.shape}")
    y = y.astype(np.float32)
    if not np.all(np.isfinite(y)) or y.min(initial=0) < 0 or y.max(initial=0) > 1:
        raise NoscopeError(f"{what} labels must be booleans or scores in [0, 1]")
    return y


# --------------------------------------------------------------------------- training


# Long: the signature and the docstring; the body is the epoch loop with early stopping.
def train_candidate(
    arch: Arch,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    mean_frame: np.ndarray,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    patience: int = 3,
    brightness_jitter: float = 8.0,
    augment: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[SpecializedCNN, dict]:
    """Train one candidate to predict the reference's label from the frame.

    Labels are bools or soft scores in [0, 1], shape (N,) for one object or (N, K) for K objects
    (one model with K outputs). Loss: BCE-with-logits with pos_weight = negatives/positives per
    object, so a rare object is not ignored (calibration does not matter: the
    optimizer picks thresholds on held-out scores). Adam; after each epoch the validation loss
    is computed and the best state is kept; training stops after `patience` epochs without
    improvement. brightness_jitter adds a random per-frame offset of up to that many grey
    levels (the camera is fixed, so that is the main nuisance: sun, clouds, auto exposure).
    `augment` adds that many passes per epoch over randomly altered copies of the training
    frames (see `augment_frames`): what a fixed camera does over hours, so the model's *scores*
    on later footage stay where the optimizer's thresholds expect them, not only its ranking.

    Deterministic on CPU for a fixed seed (and thread count): all randomness comes from a
    forked torch RNG seeded here, so the caller's global RNG state is left untouched.

    Returns (model in eval mode on `device`, info) with info keys: arch, epochs, best_epoch,
    val_loss, val_auc, train_loss, pos_weight, n_train, n_val, train_seconds, device.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    say = log or (lambda msg: None)
    x_train, y_tr, x_val, y_va, mean = _training_inputs(arch, x_train, y_train, x_val, y_val, mean_frame, epochs, batch_size)
    outputs = 1 if y_tr.ndim == 1 else y_tr.shape[1]
    pos_weight = _pos_weights(y_tr, arch.name, say)
    cuda = dev.type == "cuda"
    fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)  # shuffling and jitter, on the CPU
        fit = _Fit.make(arch, outputs, pos_weight, lr, mean, x_train, y_tr, x_val, y_va, dev)
        best = dict(loss=math.inf, state=None, epoch=0, scores=None)
        epochs_run, train_loss, stale, val_loss, val_scores = 0, float("nan"), 0, math.inf, None
        for epoch in range(1, epochs + 1):
            train_loss = train_one_epoch(fit, gen, batch_size, brightness_jitter, augment)
            val_loss, val_scores = evaluate(fit)
            epochs_run = epoch
            improved = val_loss < best["loss"] - 1e-4
            say(f"{arch.name} epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}{' *' if improved else ''}")
            if improved:
                best, stale = dict(loss=val_loss, state=copy.deepcopy(fit.model.state_dict()), epoch=epoch,
                                   scores=val_scores), 0
            else:
                stale += 1
                if stale >= patience:
                    break
        if best["state"] is None:  # the validation loss was never finite: keep the last state
            best = dict(loss=val_loss, state=None, epoch=epochs_run, scores=val_scores)
        else:
            fit.model.load_state_dict(best["state"])
        fit.model.eval()
    scores = best["scores"]
    info = {
        "arch": arch.name,
        "epochs": epochs_run,
        "best_epoch": best["epoch"],
        "val_loss": float(best["loss"]),
        "val_auc": roc_auc(scores, y_va) if outputs == 1 else [roc_auc(a, b) for a, b in zip(scores.T, y_va.T)],
        "train_loss": float(train_loss),
        "pos_weight": pos_weight,
        "n_train": len(x_train),
        "n_val": len(x_val),
        "train_seconds": time.perf_counter() - t0,
        "device": str(dev),
    }
    return fit.model, info


def _training_inputs(arch, x_train, y_train, x_val, y_val, mean_frame, epochs, batch_size):
    """The checked arrays of train_candidate: (x_train, y_train, x_val, y_val, mean)."""
    x_train = _check_frames(x_train, arch.size)
    x_val = _check_frames(x_val, arch.size)
    y_tr = _labels(y_train, len(x_train), "training")
    y_va = _labels(y_val, len(x_val), "validation")
    if len(x_train) == 0 or len(x_val) == 0:
        raise NoscopeError(
            f"training {arch.name} needs frames for both training and validation "
            f"(got {len(x_train)} and {len(x_val)}); label more of the video"
        )
    mean = _check_mean(mean_frame, arch.size)
    if epochs < 1 or batch_size < 1:
        raise NoscopeError(f"epochs and batch_size must be >= 1 (got {epochs}, {batch_size})")
    if y_tr.ndim != y_va.ndim or y_tr.shape[1:] != y_va.shape[1:]:
        raise NoscopeError(f"training and validation labels disagree on the objects: {y_tr.shape} vs {y_va.shape}")
    return x_train, y_tr, x_val, y_va, mean


def _pos_weights(y: np.ndarray, name: str, say) -> float | list[float]:
    """negatives / positives per object (one float for one object), for the loss."""
    weights = []
    for col in (y,) if y.ndim == 1 else y.T:
        pos, neg = float(col.sum()), float((1.0 - col).sum())
        # Clamped so a handful of positives in a huge set cannot blow the loss scale up.
        weights.append(1.0 if pos == 0 or neg == 0 else float(np.clip(neg / pos, 0.05, 20.0)))
        if pos == 0 or neg == 0:
            say(f"{name}: training labels are all {'negative' if pos == 0 else 'positive'}; the model will be useless")
    return weights[0] if y.ndim == 1 else weights


@dataclass
class _Fit:
    """One training run's model, optimiser, loss and data, on the training device."""

    model: SpecializedCNN
    opt: torch.optim.Optimizer
    loss_fn: nn.Module
    mean: torch.Tensor
    xt: torch.Tensor  # uint8 training frames (on the device when they fit, else on the CPU)
    yt: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    dev: torch.device
    amp_dtype: torch.dtype | None  # bf16 on CUDA: no loss scaling needed, the simple fast mixed precision

    @classmethod
    def make(cls, arch, outputs, pos_weight, lr, mean, x_train, y_tr, x_val, y_va, dev) -> "_Fit":
        cuda = dev.type == "cuda"
        model = _prepare_model(SpecializedCNN(arch, outputs), dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=dev))  # one per output
        # uint8 on the GPU when it fits (tiny model: copies would dominate); else copied per batch.
        stage_all = cuda and x_train.nbytes + x_val.nbytes <= _GPU_STAGE_BYTES
        xt, xv = _tensor(x_train), _tensor(x_val)
        if stage_all:
            xt, xv = xt.to(dev), xv.to(dev)
        amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
        return cls(model, opt, loss_fn, _tensor(mean).to(dev), xt, torch.from_numpy(y_tr).to(dev), xv,
                   torch.from_numpy(y_va).to(dev), dev, amp)

    def frames(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x[idx.to(x.device)].to(self.dev, non_blocking=True)

    def autocast(self):
        return torch.autocast(self.dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def train_one_epoch(fit: _Fit, gen: torch.Generator, batch_size: int, brightness_jitter: float, augment: int) -> float:
    """One epoch: pass 0 over the frames as they are, passes 1..augment over altered copies.
    Returns the mean training loss."""
    fit.model.train()
    passes = [(p, torch.randperm(len(fit.xt), generator=gen)) for p in range(1 + max(0, int(augment)))]
    running = torch.zeros((), device=fit.dev)  # summed on the device: no sync per step
    for p, s, idx in ((p, s, perm[s : s + batch_size]) for p, perm in passes for s in range(0, len(perm), batch_size)):
        frames = fit.frames(fit.xt, idx)
        x = to_input(frames if p == 0 else augment_frames(frames, gen), fit.mean)
        if brightness_jitter > 0:
            shift = (torch.rand(len(idx), 1, 1, 1, generator=gen) * 2 - 1) * (brightness_jitter / INPUT_SCALE)
            x = x + shift.to(fit.dev)
        with fit.autocast():
            loss = fit.loss_fn(fit.model(x).float(), fit.yt[idx.to(fit.dev)])
        fit.opt.zero_grad(set_to_none=True)
        loss.backward()
        fit.opt.step()
        running += loss.detach() * len(idx)
    return float(running) / sum(len(perm) for _, perm in passes)


def evaluate(fit: _Fit) -> tuple[float, np.ndarray]:
    """(mean validation loss, validation scores) of the model as it is now."""
    fit.model.eval()
    total, out = 0.0, []
    with torch.inference_mode(), fit.autocast():
        for s in range(0, len(fit.xv), 1024):
            idx = torch.arange(s, min(s + 1024, len(fit.xv)))
            logits = fit.model(to_input(fit.frames(fit.xv, idx), fit.mean)).float()
            total += float(fit.loss_fn(logits, fit.yv[idx.to(fit.dev)]) * len(idx))
            out.append(torch.sigmoid(logits).cpu().numpy())
    return total / len(fit.xv), np.concatenate(out)


def augment_frames(frames_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Randomly altered copies of uint8 frames (N, S, S, 3) -> float (N, S, S, 3) in grey levels.

    What changes over hours in front of a fixed camera, and what does not: the camera shakes or
    drifts a few pixels and zooms a little (shift up to 4 px at 50 px, scale 0.95-1.05), exposure and
    white balance move (contrast 0.75-1.25, gain 0.85-1.15 per channel), the sensor is noisy (up to
    4 grey levels) and focus or compression softens the picture (a 3x3 blur on a quarter of them).
    All randomness comes from `gen` (CPU), so training stays deterministic.
    """
    n, size, dev = len(frames_u8), frames_u8.shape[1], frames_u8.device

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, *shape, generator=gen)).to(dev)

    x = frames_u8.float().permute(0, 3, 1, 2)  # (N, 3, S, S)
    theta = torch.zeros(n, 2, 3, device=dev)
    scale = uniform(0.95, 1.05)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = uniform(-1, 1, 2) * (8.0 / size)  # 4 px of a 50 px frame, in [-1, 1] units
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - centre) * uniform(0.75, 1.25, 1, 1, 1) + centre
    x = x * uniform(0.85, 1.15, 3, 1, 1)
    blur = uniform(0, 1, 1, 1, 1) < 0.25
    kernel = torch.full((3, 1, 3, 3), 1 / 9, device=dev)
    soft = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = torch.where(blur, soft, x)
    x = x + torch.randn(x.shape, generator=gen).to(dev) * uniform(0, 4, 1, 1, 1)
    return x.clamp(0, 255).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- inference


def predict_scores(
    model: SpecializedCNN,
    frames: np.ndarray,
    mean_frame: np.ndarray,
    device: str | torch.device | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Probability that each frame contains the object: uint8 (N, S, S, 3) -> float32 (N,), or
    (N, K) for a model with K outputs (one column per object).

    device None: wherever the model already is (else the model is moved there). Only the
    uint8 bytes are copied to the device. Runs under fp16 autocast on CUDA.
    """
    size = model.arch.size
    frames = _check_frames(frames, size)
    mean = _check_mean(mean_frame, size)
    dev = _model_device(model) if device is None else resolve_device(device)
    model = _prepare_model(model, dev).eval()
    mean_t = _tensor(mean).to(dev)
    cuda = dev.type == "cuda"
    out = np.empty((len(frames),) if model.outputs == 1 else (len(frames), model.outputs), dtype=np.float32)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        for s in range(0, len(frames), batch_size):
            batch = _tensor(frames[s : s + batch_size]).to(dev)
            logits = model(to_input(batch, mean_t))
            out[s : s + len(batch)] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def measure_cost(
    model: SpecializedCNN,
    size: int,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    repeats: int = 5,
) -> float:
    """Seconds per frame of inference at `batch_size`, uint8->float normalisation included.

    The uint8 batch already sits on the device (decoding and the copy are charged to the
    video reader, the same for every cascade). Two warm-up batches first (cuDNN autotuning,
    allocator, lazy init); the median of `repeats` timed batches is returned. batch_size None:
    4096 on CUDA (what predict_scores uses), 64 on CPU (larger only makes measuring slow).
    """
    dev = _model_device(model) if device is None else resolve_device(device)
    cuda = dev.type == "cuda"
    bs = batch_size or (4096 if cuda else 64)
    model = _prepare_model(model, dev).eval()
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (bs, size, size, 3), dtype=torch.uint8, generator=gen).to(dev)
    mean_t = torch.full((size, size, 3), 128.0, device=dev)

    def once() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            torch.sigmoid(model(to_input(batch, mean_t)).float())
        if cuda:
            torch.cuda.synchronize(dev)

    return median_seconds(once, repeats) / bs


# --------------------------------------------------------------------------- bundles


def save_model(model: SpecializedCNN, arch: Arch, mean_frame: np.ndarray, path: str | Path) -> None:
    """Write weights + arch name + mean frame (+ the number of outputs, if several) to `path`, atomically.

    Only tensors, strings and dicts are stored, so `load_model` can use weights_only loading.
    A temp file in the same directory is fsynced then renamed over `path`: a crash leaves the
    old bundle or the new one, never half of one.
    """
    path = Path(path)
    mean = _check_mean(mean_frame, arch.size)
    payload = {
        "format": _BUNDLE_FORMAT,
        "arch": arch.name,
        "mean_frame": torch.from_numpy(mean.copy()),
        # clone: a CPU model's tensors would otherwise be saved with their shared storages' views
        "state_dict": {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()},
    }
    if model.outputs != 1:  # one-output files stay exactly as they always were
        payload["outputs"] = int(model.outputs)
    atomic.atomic_write(path, lambda f: torch.save(payload, f))


def _read_payload(path: Path, mmap: bool = False) -> dict:
    """A model file's contents, tensors only (weights_only: a crafted file cannot run code);
    with `mmap` the tensors' data is mapped, not read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise NoscopeError(f"specialized model {path} not found; train one first") from None
    except Exception as e:  # untrusted bytes: whatever the unpickler or zip reader raises, it is a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NoscopeError(f"refusing to load {path}: not a plain-tensor noscope model bundle ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != _BUNDLE_FORMAT:
        raise NoscopeError(f"{path} is not a noscope specialized model bundle (format {_BUNDLE_FORMAT} expected)")
    return payload


def _damaged(path: Path, e: Exception) -> NoscopeError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return NoscopeError(f"{path} is a damaged specialized model bundle: {first[:200]}")


def _payload_arch(payload: dict) -> tuple[Arch, int]:
    arch = Arch.parse(payload["arch"])
    outputs = payload.get("outputs", 1)
    if isinstance(outputs, bool) or not isinstance(outputs, int) or not 1 <= outputs <= 1000:
        raise ValueError(f"bad number of outputs {outputs!r}")
    return arch, outputs


def model_arch(path: str | Path) -> tuple[Arch, int]:
    """The architecture and number of outputs a model file holds, checked against its tensors'
    shapes without reading their data (memory-mapped; the expected shapes come from a model on
    torch's "meta" device), so a bundle can check every model it names when it is loaded."""
    path = Path(path)
    payload = _read_payload(path, mmap=True)
    try:
        arch, outputs = _payload_arch(payload)
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in SpecializedCNN(arch, outputs).state_dict().items()}
        got = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
        if got != want:
            raise ValueError(f"its tensors are not those of a {arch.name} model")
        if tuple(payload["mean_frame"].shape) != (arch.size, arch.size, 3):
            raise ValueError(f"its mean frame is not {arch.size}x{arch.size}x3")
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as e:
        raise _damaged(path, e) from None
    return arch, outputs


def load_model(path: str | Path, device: str | torch.device | None = None) -> tuple[SpecializedCNN, Arch, np.ndarray]:
    """Read a bundle written by save_model -> (model in eval mode on device, arch, mean frame).

    Bundles are untrusted files: weights_only loading refuses anything but tensors and plain
    containers, so a crafted file cannot run code when unpickled.
    """
    path = Path(path)
    dev = resolve_device(device)
    payload = _read_payload(path)
    try:
        arch, outputs = _payload_arch(payload)
        mean = payload["mean_frame"].numpy().astype(np.float32)
        _check_mean(mean, arch.size)
        model = SpecializedCNN(arch, outputs)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as e:
        raise _damaged(path, e) from None
    return _prepare_model(model, dev).eval(), arch, mean


# --------------------------------------------------------------------------- the kind


class CNNModel(CheapModel):
    """A trained small CNN as a cheap model (noscope.cheap.base): square frames in, one score per
    object out. It keeps no features and cannot be refitted: a query's check moves its thresholds,
    an update gives it new held-out scores."""

    kind = "cnn"

    def __init__(self, model: SpecializedCNN, arch: Arch, mean: np.ndarray, device, name: str | None = None):
        self.model, self.arch, self.mean, self.device = model, arch, mean, device
        self.name = self.base = name or arch.name

    @property
    def size(self) -> tuple[int, int]:
        return self.arch.size, self.arch.size

    def score(self, frames: np.ndarray) -> np.ndarray:
        p = predict_scores(self.model, frames, self.mean, device=self.device)
        return p.reshape(len(p), -1)

    def measure_cost(self) -> float:
        return measure_cost(self.model, self.arch.size, device=self.device)

    def save(self, path: Path) -> None:
        save_model(self.model, self.arch, self.mean, path)

    @classmethod
    def sizes(cls, settings) -> list[int]:
        return sorted({a.size for a in resolve_grid(settings.grid)})

    @classmethod
    def train_grid(cls, data: TrainingData) -> KindGrid:
        """Train (or resume from data.work) every CNN of train.grid on the training frames, score it on
        the held-out frames, time it. An object with too few training frames of one answer gets no
        trusted output (several objects: the others still do; one object: no CNN at all, the cascade
        uses skip, difference detectors and the reference)."""
        grid = train_grid(resolve_grid(data.settings.grid), data.small, data.truth, data.parts, data.objects, data.work,
                          data.key, data.settings, data.seed, data.device, data.say)
        # a CNN's frames are converted to RGB at its size for it alone (the pass reads the luma plane)
        for i, c in enumerate(grid.candidates):
            z = int(c.spec["size"])
            cost = grid.costs[c.name] = float(grid.costs[c.name] + data.conversion_cost((z, z)))
            grid.candidates[i] = dataclasses.replace(c, cost_s=cost)
        return grid

    @classmethod
    def check(cls, path: Path, candidate: Candidate, outputs: int) -> None:
        _check_arch(*model_arch(path), candidate, outputs)

    @classmethod
    def load(cls, path: Path, candidate: Candidate, ctx: LoadContext) -> "CNNModel":
        model, arch, mean = load_model(path, device=ctx.device)
        _check_arch(arch, model.outputs, candidate, ctx.outputs)
        return cls(model, arch, mean, ctx.device, candidate.name)


def _check_arch(arch: Arch, outputs: int, candidate: Candidate, want: int) -> None:
    """The file's architecture is the one the candidate's name says, with one output per object."""
    if arch.name != candidate.name or arch.size != int(candidate.spec["size"]) or outputs != want:
        raise Mismatch(f"holds a {arch.name} model with {outputs} output(s), not the {candidate.name} with {want}")


def train_grid(archs: list[Arch], small: dict[int, np.ndarray], truth: np.ndarray, parts, objects: list[str],
               work: Path, key: str, train, seed: int, device, say) -> KindGrid:
    """Train (or resume from `work`) every candidate of the grid on the training frames, score it on
    the held-out frames, time it (CNNModel.train_grid). `parts` (split.SampleSplit) has the masks
    train, val, heldout; `train` is the training settings (settings.TrainSettings)."""
    lacking = lacking_objects(truth.reshape(len(truth), -1)[parts.train], objects)
    multi = len(objects) > 1
    if len(lacking) == len(objects):
        say(f"warning: too few {lacking[objects[0]]} training frames{' of any object' if multi else ''} for a "
            f"specialized model; the cascade will use frame skip, difference detectors and the reference only")
        archs = []
    for o, kind in lacking.items():
        # Several objects: the model is still trained for the others; this object's output is
        # never trusted (no held-out AUC), so the reference answers it wherever the model runs.
        if archs:
            say(f"warning: too few {kind} training frames of {o}; its model output will not be used")
    out = KindGrid()
    for i, arch in enumerate(archs):
        x = small[arch.size]
        model, mean, info = _trained(arch, x, truth, parts, work / f"{arch.name}-{key}.pt", train, seed, device)
        p = predict_scores(model, x[parts.heldout], mean, device=device)
        cost = measure_cost(model, arch.size, device=device)
        out.heldout_scores[arch.name], out.costs[arch.name] = p, cost
        # Several objects: the worst-learnt trusted output's (the guard is applied per object).
        auc, aucs = heldout_aucs(p, truth.reshape(len(truth), -1)[parts.heldout], objects, lacking)
        per = f" ({', '.join(f'{o} ' + ('unused' if a is None else f'{a:.3f}') for o, a in aucs.items())})" if multi else ""
        say(f"[{i + 1}/{len(archs)}] {arch.name}: held-out AUC {auc:.3f}{per}, {cost * 1e6:.1f} us/frame")
        out.candidates.append(Candidate(arch.name, f"models/{arch.name}.pt", spec=dict(size=arch.size), cost_s=float(cost),
                                        heldout_auc=float(auc), train={k: plain(v) for k, v in info.items()},
                                        heldout_aucs=aucs if multi else None))  # None: never offered for that object
    return out


def _trained(arch, x, truth, parts, path: Path, train, seed: int, device):
    """(model, mean frame, info): the one saved at `path` by an interrupted run, or a new one saved there."""
    if path.is_file():
        model, _, mean = load_model(path, device=device)
        return model, mean, {"resumed": True}
    mean = mean_frame(x[parts.train])
    model, info = train_candidate(
        arch, x[parts.train], truth[parts.train], x[parts.val], truth[parts.val], mean, epochs=train.epochs,
        batch_size=train.batch_size, lr=train.lr, patience=train.patience, augment=train.augment, seed=seed,
        device=device,
    )
    save_model(model, arch, mean, path)
    return model, mean, info
