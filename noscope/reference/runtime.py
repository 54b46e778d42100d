"""What runs a darknet reference's network: PyTorch, or the same network exported to ONNX and run
by ONNX Runtime or OpenVINO (the `reference.runtime` config key).

    runtime: auto         # CPU: onnxruntime, else openvino, else torch; CUDA: torch (fp16, channels_last)
    runtime: torch        # PyTorch (channels_last; fp16 on CUDA)
    runtime: onnxruntime  # pip install 'noscope[onnx]' (onnxruntime-gpu for its CUDA provider)
    runtime: openvino     # pip install 'noscope[openvino]' (CPU only)

The ONNX file is exported here, from the very module PyTorch runs (uint8 RGB frames in, raw
[yolo] outputs out: scaling and layout are inside the graph), and cached under
`<cache>/exported/`, keyed by the reference key (name, input size, weights), the precision and
the input handling (uint8 NHWC, any batch size). Nothing is downloaded. Decoding and NMS stay in
PyTorch for every runtime, so answers differ only by the network's float rounding (ONNX Runtime
and OpenVINO vs PyTorch on yolov3-tiny, storefront clip: <= 3e-6 on class scores). `auto` never fails: a runtime that is missing
or cannot export or load the model is skipped, and PyTorch runs it. Asked for by name, the same
problem is one NoscopeError line saying how to fix it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import logging
import warnings
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..errors import NoscopeError
from ..paths import cache_dir

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
# auto's order of preference per device type. On 2 CPU cores (yolov3-tiny 416x416, batches of 16,
# scripts/reference_speed.py) ONNX Runtime and OpenVINO in fp32 were within noise of each other and
# ~2x PyTorch channels_last; ONNX Runtime comes first as the usual install (the `onnx` extra). On
# CUDA nothing exported has been measured here, so auto keeps PyTorch's fp16 cuDNN path.
AUTO_ORDER = {"cpu": ("onnxruntime", "openvino")}
# what each runtime imports (exporting needs torch.onnx's dynamo exporter: onnx and onnxscript)
NEEDS = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}
EXTRA = {"onnxruntime": "pip install 'noscope[onnx]'", "openvino": "pip install 'noscope[openvino]'"}
EXPORT_FORMAT = 1  # part of the file name: bump when FramesToHeads or the export call changes the graph
DIGEST_CHARS = 10  # of the export's sha256, in the label cache's key (reference_runtime)
OPSET = 18


def check_name(runtime: str) -> str:
    name = str(runtime or "auto").strip().lower()
    if name not in RUNTIMES:
        raise NoscopeError(f"unknown reference runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    return name


def problem(name: str, device) -> str | None:
    """Why `name` cannot run on `device` here (with the fix), or None when it can."""
    missing = [m for m in NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        return (f"reference.runtime={name} needs {', '.join(missing)}, not installed here: {EXTRA[name]}, "
                "or set reference.runtime=auto")
    if name == "openvino" and device.type != "cpu":
        return "reference.runtime=openvino runs on the CPU only: use --set device=cpu, or reference.runtime=torch"
    if name == "onnxruntime" and device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return ("this onnxruntime has no CUDA provider: pip install onnxruntime-gpu in place of onnxruntime, "
                    "or set reference.runtime=torch")
    return None


def torch_only(runtime: str, what: str) -> str:
    """The runtime for a reference that only PyTorch runs (torchvision's): auto and torch are fine."""
    name = check_name(runtime)
    if name not in ("auto", "torch"):
        raise NoscopeError(f"reference.runtime={name} is only available for darknet references; {what} runs in "
                           "PyTorch: set reference.runtime=auto or torch")
    return "torch"


def attach(ref, runtime: str, key: str) -> None:
    """Make `ref` (a DarknetReference) run its network with `runtime` ("auto": the first of
    AUTO_ORDER that works here, else PyTorch). `key` is its reference_key."""
    name = check_name(runtime)
    if name == "torch":
        return
    if name != "auto":
        why = problem(name, ref.device)
        if why:
            raise NoscopeError(why)
        ref.use_runner(_runner(ref, name, key))
        return
    for candidate in AUTO_ORDER.get(ref.device.type, ()):
        if problem(candidate, ref.device) is not None:
            continue
        try:
            ref.use_runner(_runner(ref, candidate, key))
            return
        except Exception as e:  # auto falls back quietly (`-v` shows why)
            log.info("reference runtime %s not used: %s", candidate, e)


def _runner(ref, name: str, key: str):
    """The runner for `name`, from the cached export (made now if missing). The export is checked
    against the checksum recorded when it was written before every use (`verified_export`): a file
    damaged since, or without a record, is exported again with one warning line, never run. A
    checked file that does not load (another exporter's) is exported once more. The runner carries
    the export's digest (`export`), which the label cache's key names."""
    origin = export_origin(key, ref.precision, ref.input_size)
    fresh = not export_path(key, ref.precision).is_file()
    for attempt in range(2):
        try:
            path, model, digest = _checked_export(ref, key, origin, replace=attempt > 0)
        except OSError as e:
            raise NoscopeError(f"cannot write the exported reference under {cache_dir()} ({e.strerror or e}); set "
                               "NOSCOPE_CACHE to a writable folder, or reference.runtime=torch") from None
        try:
            runner = RUNNERS[name](path, model, ref.device)
            runner.export = digest[:DIGEST_CHARS]
            return runner
        except Exception as e:
            if fresh or attempt:
                raise NoscopeError(f"{name} cannot load the exported {path.name} ({_one_line(e)}); "
                                   "set reference.runtime=torch") from None


def _checked_export(ref, key: str, origin: dict, replace: bool) -> tuple[Path, bytes, str]:
    """(path, the export's bytes, their sha256): the cached export when it matches its record, else
    exported now (one warning when a file was there: it is not what was exported)."""
    path = export_path(key, ref.precision)
    if not replace:
        got = verified_export(path, origin)
        if got is not None:
            return path, *got
        if path.is_file():
            log.warning("the exported reference %s does not match the checksum recorded when it was exported "
                        "(damaged, or from an older noscope): exporting it again", path.name)
    path = exported_onnx(ref.frames_module(), ref.input_size, key, ref.precision, replace=True)
    got = verified_export(path, origin)
    if got is None:  # another process replaced it between our write and this read
        raise NoscopeError(f"the exported reference {path} changed while it was being checked; run again")
    return path, *got


def export_path(key: str, precision: str) -> Path:
    return cache_dir() / "exported" / f"{key}_{precision}_uint8-nhwc_any-batch_v{EXPORT_FORMAT}.onnx"


def record_path(path: Path) -> Path:
    """The record written beside an export: its checksum and what it was exported from."""
    return path.with_name(path.name + ".json")


def export_origin(key: str, precision: str, input_size) -> dict:
    """What an export is made from: the reference (its key names its weights), the precision, the
    input size and the exporter's version; a record saying otherwise is not this export's."""
    import torch

    return dict(reference=key, precision=precision, input_size=[int(x) for x in input_size], format=EXPORT_FORMAT,
                opset=OPSET, torch=torch.__version__)


def verified_export(path: Path, origin: dict) -> tuple[bytes, str] | None:
    """(the export's bytes, their sha256) when the file matches the checksum and the origin its
    record holds; None when it is missing, damaged, or made from something else. The bytes read are
    the bytes checked, so what runs is what was checked."""
    try:
        record = json.loads(record_path(path).read_text())
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    digest = hashlib.sha256(data).hexdigest()
    if not isinstance(record, dict) or record.get("sha256") != digest or record.get("origin") != origin:
        return None
    return data, digest


def exported_onnx(module, input_size: tuple[int, int], key: str, precision: str, replace: bool = False) -> Path:
    """The ONNX file of `module` (FramesToHeads), exported now unless cached, with its record (sha256
    and origin) beside it; both written atomically and under a lock, the record last, so parallel
    runs export it once and never read half a file."""
    from filelock import FileLock

    path = export_path(key, precision)
    if path.is_file() and record_path(path).is_file() and not replace:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if replace or not (path.is_file() and record_path(path).is_file()):
            data = _export_bytes(module, input_size)
            record_path(path).unlink(missing_ok=True)  # no record vouches for a file being replaced
            atomic_write_bytes(path, data)
            record = dict(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                          origin=export_origin(key, precision, input_size))
            atomic_write_bytes(record_path(path), json.dumps(record, indent=1).encode())
    return path


def _export_bytes(module, input_size: tuple[int, int]) -> bytes:
    """torch.onnx's exporter on a CPU copy of `module`, any batch size; its progress lines and
    warnings are kept off the console."""
    import torch

    w, h = input_size
    if any(p.device.type != "cpu" for p in module.parameters()):
        module = copy.deepcopy(module).cpu()  # a CUDA net exports the same graph from the CPU
    example = torch.zeros((2, h, w, 3), dtype=torch.uint8)  # batch 2: a dimension of 1 would be fixed
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), input_names=["frames"], dynamic_shapes={"frames": {0: batch}},
                                        dynamo=True, opset_version=OPSET, verbose=False)
            return program.model_proto.SerializeToString()
    except Exception as e:
        raise NoscopeError(f"exporting the reference to ONNX failed ({_one_line(e)}); set reference.runtime=torch") from None


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _threads() -> int:
    import torch

    return torch.get_num_threads()  # what PyTorch would use here (cores, or OMP_NUM_THREADS)


class OnnxRuntimeRunner:
    """ONNX Runtime: uint8 NHWC frames (numpy) -> raw heads (CPU tensors). CPU provider, or CUDA's."""

    name = "onnxruntime"

    def __init__(self, path: Path, data: bytes, device):
        """`data`: the export's bytes, as checked against its record (the session is built from them,
        not from the file read again)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = _threads(), 1
        opts.log_severity_level = 3  # errors only
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(data, opts, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, frames):
        import torch

        return [torch.from_numpy(out) for out in self.session.run(None, {self.input: frames})]


class OpenVinoRunner:
    """OpenVINO on the CPU, latency hint, in fp32: its default on CPUs with bf16 units is bf16,
    which moved yolov3-tiny's class scores by up to 0.7 (fp32: 4e-5)."""

    name = "openvino"

    def __init__(self, path: Path, data: bytes, device):
        """Compiled from the file at `path`, checked against its record just before (`data`)."""
        import openvino

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": _threads(), "INFERENCE_PRECISION_HINT": "f32"}
        self.model = openvino.Core().compile_model(str(path), "CPU", config)

    def __call__(self, frames):
        import torch

        out = self.model(frames)  # outputs are copies, not views of reused buffers
        return [torch.from_numpy(out[port]) for port in self.model.outputs]


RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner}
