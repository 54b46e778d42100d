"""The benchmarks' one protocol and the tools they share. Every benchmark in this folder imports it
(`import harness`: a script's own folder is first on its import path).

The protocol. Each case is a (clip, object) pair cut in time: a bundle is trained on the first 60%
of the clip (`--end 60%`, frames [0, c) by the product's own rule, `Video.segment`), and the
query answers the last 40% (`--start 60%`, frames [c, end)), which the bundle never saw, against
the reference on every frame of it. Errors are the query's final answers (after its check on the
video and any repair) against the reference's answers, frame by frame. Speed-ups are end to end
(decoding and every reference call, the check's included) against the reference on every frame
of the same part, timed in the same run, so that a busy machine slows both alike. A bundle
already trained with the same settings is reused (the product decides), so a second run of a
benchmark measures the same bundle. The update benchmark cuts in thirds instead (`thirds`):
train on the first, learn from a query of the second, answer the last.

A night is that unseen part looped into a long video, as a camera's night would be: the clip's
own packets from the keyframe at or before the cut, repeated with shifted timestamps (no
re-encoding: the codec is the clip's; `stream_loop`), or, where every looped frame must show
exactly an original picture, those frames re-encoded losslessly and repeated (`reencode_loop`).
Each looped frame maps back to the original frame it repeats (`Loop.original`; by picture,
`same_pictures`), so a night's answers are judged against the reference's answers on the
originals, and its speed-up is against the reference on every frame at the per-frame time
measured on the unseen part. A night is queried as a new video: nothing of it cached (`forget`).
`loops_for` loops until at least N frames or N seconds.

Measured in the same run, beside the query: the reference on every frame (decoding included),
decoding alone (`decode_only`: the decoder and the resize a pass uses and nothing else, the
ceiling of any pass), and what each benchmark adds.

The command runner (`cli`) runs `python -m noscope.cli` as a process of its own and returns its
output, wall time and peak memory; with `src` it runs another copy of the package instead (e.g.
`export_package(commit, DIR)`), so that one run can time today's code and a baseline side by
side (`import_copy` does the same within a process). A report (`Report`) is printed as markdown
and written as OUT.md and OUT.json, headed by the machine's facts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "videos"
CUT = "60%"  # train with --end CUT, answer the unseen rest with --start CUT
CUT_SHARE = 0.6

# The forward table's ten pairs (README, "Measured: train on the first 60%, answer the last 40%").
FORWARD = [
    ("storefront-cctv_people.mp4", "person"), ("urban-road-cctv_cars-buses-motorbikes.mp4", "bus"),
    ("highway-cctv_cars-trucks.avi", "car"), ("highway-cctv_cars-trucks.avi", "truck"),
    ("highway-curve_cars.mp4", "truck"), ("overhead-residential-street_cars.mp4", "car"),
    ("pets2009-s2l1_vtest_people.avi", "car"), ("intel_parking-lot-overhead_cars.mp4", "car"),
    ("pets2009-s2l1_vtest_people.avi", "person"), ("highway-curve_cars.mp4", "car"),
]


def _matches(spec: str, cases: list[tuple[str, str]], any_object: bool = False) -> list[tuple[str, str]]:
    prefix, colon, obj = spec.partition(":")
    if not colon or not prefix or not obj:
        raise ValueError(f"--cases {spec!r}: expected clip-prefix:object, e.g. storefront:person")
    clips = list(dict.fromkeys(c for c, _ in cases if c.startswith(prefix)))
    if any_object and not clips:  # any clip of the shared folder
        clips = sorted(p.name for p in VIDEOS.glob(f"{prefix}*") if p.is_file())
    if not clips:
        known = ", ".join(dict.fromkeys(c for c, _ in cases))
        raise ValueError(f"--cases {spec!r}: no clip starts with {prefix!r} (clips: {known})")
    if any_object:
        return [(clips[0], obj)]
    found = [(c, o) for c, o in cases if c in clips and o == obj]
    if not found:
        raise ValueError(f"--cases {spec!r}: no such case (cases: {', '.join(f'{c}:{o}' for c, o in cases)})")
    return found


def parse_cases(specs: list[str] | None, cases: list[tuple[str, str]], any_object: bool = False) -> list[tuple[str, str]]:
    """The (clip, object) pairs of `cases` that `--cases clip-prefix:object ...` names, in the order of
    `cases` (all of them when `specs` is empty). A prefix names every clip of `cases` it starts; a
    spec that names nothing is a ValueError, said in one line. With `any_object`, a spec names the
    first clip it starts (of `cases`, else of the shared videos' folder) and any object on it."""
    if not specs:
        return list(cases)
    named = [pair for spec in specs for pair in _matches(spec, cases, any_object)]
    order = {pair: i for i, pair in enumerate(cases)}
    return sorted(dict.fromkeys(named), key=lambda p: order.get(p, len(order)))


def read_args(ap, cases: list[tuple[str, str]]):
    """`ap.parse_args()`, its `--cases` (nargs="+") read into the (clip, object) pairs of `cases` it
    names (`parse_cases`); one that names nothing is a usage error, in one line."""
    args = ap.parse_args()
    try:
        args.cases = parse_cases(args.cases, cases)
    except ValueError as e:
        ap.error(str(e))
    return args


def pick(*specs: str, cases: list[tuple[str, str]] = FORWARD) -> list[tuple[str, str]]:
    """The pairs of `cases` that `specs` name, in the order of `specs` (for defining a case list)."""
    return [pair for spec in specs for pair in _matches(spec, cases)]


BENCH = pick("storefront:person", "urban-road:bus")  # scripts/bench.py: one clip a plan settles, one it cannot
# scripts/score_carry.py: the pairs whose first 60% has enough positive frames to train a CNN
CARRY = pick("storefront:person", "urban-road:bus", "highway-cctv:car", "highway-cctv:truck", "overhead:car",
             "highway-curve:truck")
# scripts/update_bench.py: the shared clips long enough to cut in three (at least 700 frames), with an
# object that shows on both sides of the cuts (../shared/README.md)
UPDATE = pick("storefront:person", "urban-road:bus", "pets2009:car", "highway-cctv:car", "overhead:car")


def unseen(video) -> tuple[int, int]:
    """The frames [start, end) a benchmark answers: the last 40% (`video`: a noscope Video)."""
    return video.segment(CUT, None)


def thirds(n: int) -> tuple[int, int]:
    """The update benchmark's cuts of n frames: [0, a) trains, [a, b) is learnt from, [b, n) answered."""
    return n // 3, 2 * n // 3


def fmt(x, digits: int = 3) -> str:
    """A measured number as the tables print it; "n/a" where there is none (None, NaN)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def set_flags(sets: list[str]) -> list[str]:
    """`--set` options as the command line takes them: ["--set", S, ...]."""
    return [x for s in sets for x in ("--set", s)]


def settings_of(flags: list[str]):
    """The typed settings the command line's `--set` flags (`set_flags`) give."""
    from noscope.config import load_config
    from noscope.settings import Settings

    return Settings.from_config(load_config(None, [s for s in flags if s != "--set"]))


def last_json(out: str) -> dict:
    """The last line of a command's output, read as JSON (`--json` prints one object a line)."""
    return json.loads(out.strip().splitlines()[-1])


# --- running the command line -----------------------------------------------------------------


@dataclass
class Ran:
    """One finished `noscope` process: its output (the error line, where it refused), wall seconds,
    peak resident memory."""

    out: str
    seconds: float
    peak_rss_mb: float
    refused: bool = False


def cli(*args, env: dict | None = None, src: Path | None = None, cwd: Path | None = None,
        refusal_ok: bool = False) -> Ran:
    """Run `python -m noscope.cli ARGS` in a process of its own (environment `env`, else this one's).
    With `src`, a folder holding another copy of the package (`src/noscope`), that copy runs: `src`
    comes first on PYTHONPATH and the working folder is not on the path. A failure ends the benchmark
    with the command and its stderr; with `refusal_ok`, a refusal (exit 1, one "noscope: error:" line)
    is returned instead, `refused` set and that line as the output."""
    cmd = [sys.executable, *(["-P"] if src else []), "-m", "noscope.cli", *map(str, args)]
    env = dict(os.environ if env is None else env)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(src).resolve()), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(p.pid, 0)  # wait4: the child's own peak memory
        except BaseException:
            p.kill()
            p.wait()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    rss = usage.ru_maxrss / 1024
    if refusal_ok and p.returncode == 1 and stderr.startswith("noscope: error:"):
        return Ran(stderr, seconds, rss, refused=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{stderr}")
    return Ran(stdout, seconds, rss)


def export_package(commit: str, dest: Path) -> Path:
    """The package as it was at `commit` (`git archive COMMIT noscope`), unpacked into `dest`: a
    `src` for `cli` or `import_copy`. -> dest."""
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "noscope"], capture_output=True)
    if tar.returncode != 0:
        sys.exit(f"git archive {commit} noscope: {tar.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar.stdout, check=True)
    return dest


def import_copy(src: Path, name: str = "noscope_baseline"):
    """Import the copy of the package in `src` (`src/noscope`) within this process as `name`, beside
    the `noscope` in use; its own modules import each other relatively, so they stay in the copy."""
    init = Path(src) / "noscope" / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"{src} holds no noscope/__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    return pkg


def workspace(work: Path) -> dict:
    """An environment whose noscope runs keep their label, frame and model caches in `work` (only the
    detector's weights and exports are shared with the real cache, so nothing another run labelled
    is learnt from), this package first on PYTHONPATH. This process's NOSCOPE_CACHE and NOSCOPE_MODELS
    are set to the same."""
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    real = Path(os.environ.get("NOSCOPE_CACHE", Path.home() / ".cache" / "noscope"))
    for sub in ("weights", "exported"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        if not (cache / sub).exists():
            (cache / sub).symlink_to(real.resolve() / sub, target_is_directory=True)
    env = dict(os.environ, NOSCOPE_CACHE=str(cache), NOSCOPE_MODELS=str(work / "models"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    os.environ.update(NOSCOPE_CACHE=env["NOSCOPE_CACHE"], NOSCOPE_MODELS=env["NOSCOPE_MODELS"])
    return env


def forget(video: Path) -> None:
    """Remove what the label and frame caches (of this process's NOSCOPE_CACHE) hold of `video`."""
    from noscope.paths import cache_dir
    from noscope.video import open_video

    h = open_video(video).hash
    shutil.rmtree(cache_dir() / "labels" / h, ignore_errors=True)
    for p in (cache_dir() / "frames").glob(f"{h}-*"):
        shutil.rmtree(p, ignore_errors=True)


# --- nights: loops and their frames --------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """A looped video: each part (first, end, times) repeats original frames [first, end) `times`
    times, one part after the other."""

    path: Path
    parts: tuple[tuple[int, int, int], ...]

    @property
    def first(self) -> int:
        return self.parts[0][0]

    @property
    def length(self) -> int:
        """Frames in one loop of the first part."""
        return self.parts[0][1] - self.parts[0][0]

    @property
    def loops(self) -> int:
        """Times the first part is repeated."""
        return self.parts[0][2]

    @property
    def frames(self) -> int:
        return sum((b - a) * k for a, b, k in self.parts)

    def original(self, looped) -> np.ndarray:
        """The original frame each looped frame number repeats, counted (-1 past the end)."""
        i = np.asarray(looped, dtype=np.int64)
        out = np.full(i.shape, -1, dtype=np.int64)
        at = 0
        for a, b, k in self.parts:
            inside = (i >= at) & (i < at + (b - a) * k)
            out[inside] = a + (i[inside] - at) % (b - a)
            at += (b - a) * k
        return out


def loops_for(length: int, fps: float = 0.0, min_frames: int = 0, min_seconds: float = 0.0,
              max_loops: int | None = None) -> int:
    """Times to repeat `length` frames for at least `min_frames` frames and `min_seconds` seconds at
    `fps` (at least once; at most `max_loops`)."""
    want = max(min_frames, math.ceil(min_seconds * fps))
    n = max(1, -(-want // length))
    return min(n, max_loops) if max_loops else n


def stream_loop(src: Path, dst: Path, at: float | str = 0.0, loops: int = 1, min_frames: int = 0,
                min_seconds: float = 0.0) -> Loop:
    """`src`'s own video packets from the keyframe at or before `at` (seconds, or a share of its
    frames such as "60%") to the end, repeated `loops` times or more (`loops_for`: `min_frames`,
    `min_seconds`), into `dst`: no re-encoding, timestamps shifted. Looped frame i repeats original
    frame first + i % length, counted by packets in presentation order; where decoded frames and
    packets do not line up (frames that do not decode, a loop's first frames decoded against the
    previous loop's pictures), `same_pictures` maps by content."""
    with av.open(str(src)) as inp:
        ist = inp.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe, p.duration) for p in inp.demux(ist) if p.size and p.pts is not None]
        pts = sorted(p[1] for p in packets)
        fps = float(ist.average_rate or ist.guessed_rate or 25)
        start_s = float(at[:-1]) / 100 * len(pts) / fps if isinstance(at, str) else at
        t0 = pts[0] + int(start_s / ist.time_base)
        keys = [i for i, p in enumerate(packets) if p[3] and p[1] <= t0]
        packets = packets[keys[-1] if keys else 0:]
        first = int(np.searchsorted(pts, packets[0][1]))
        length = len(pts) - first
        loops = max(loops, loops_for(length, fps, min_frames, min_seconds))
        low = min(p[1] for p in packets)
        span = max(p[1] for p in packets) + (packets[-1][4] or 1) - low
        with av.open(str(dst), "w") as out:
            ost = out.add_stream_from_template(ist)
            for k in range(loops):
                for data, p, d, key, dur in packets:
                    q = av.Packet(data)
                    q.pts, q.dts = p + k * span, d + k * span
                    q.is_keyframe, q.duration, q.time_base, q.stream = key, dur, ist.time_base, ost
                    out.mux(q)
    return Loop(dst, ((first, first + length, loops),))


def reencode_loop(src: Path, dst: Path, parts: list[tuple[int, int, int]]) -> Loop:
    """Each part (a, b, m): frames [a, b) of `src` looped until at least m frames, one part after the
    other, re-encoded losslessly (x264 qp 0: the same decoded pictures) into `dst`."""
    done = []
    with av.open(str(src)) as inp:
        ist = inp.streams.video[0]
        start, end = min(a for a, _, _ in parts), max(b for _, b, _ in parts)
        frames = {i: f for i, f in zip(range(end), inp.decode(ist)) if i >= start}
        rate = ist.average_rate or Fraction(25)
        with av.open(str(dst), "w") as out:
            st = out.add_stream("libx264", rate=rate)
            st.width, st.height, st.pix_fmt = frames[start].width, frames[start].height, "yuv420p"
            st.options = {"qp": "0", "preset": "ultrafast"}
            k = 0
            for a, b, m in parts:
                done.append((a, b, loops_for(b - a, min_frames=m)))
                for _ in range(done[-1][2]):
                    for f in (frames[i] for i in range(a, b)):
                        f.pts, f.time_base = k, 1 / Fraction(rate)
                        for p in st.encode(f):
                            out.mux(p)
                        k += 1
            for p in st.encode():
                out.mux(p)
    return Loop(dst, tuple(done))


def same_pictures(looped: Path, original: Path, first: int) -> dict[int, int]:
    """Looped frame -> the original frame (from `first` on) whose decoded picture it is, pixel for
    pixel. By content, not by counting: where a container's packets and decoded frames do not line
    up (an AVI with frames that do not decode, a loop's seam decoded against the previous loop's
    pictures), frames are left out rather than compared with the wrong original."""
    from noscope.video import open_video

    def pictures(video, start):
        for b in video.batches({"p": (96, 64)}, start=start, prefetch=0):
            yield from zip(b.indices.tolist(), (f.tobytes() for f in b.frames["p"]))

    seen = {}
    for n, pic in pictures(open_video(original), first):
        seen.setdefault(pic, n)
    return {i: seen[pic] for i, pic in pictures(open_video(looped), 0) if pic in seen}


def looped_pictures(src: Path, at: float | str, night: Loop, work: Path) -> dict[int, int]:
    """`same_pictures` of a long `stream_loop` night (made with the same `src` and `at`), without
    decoding the night: its loops are the same packets, so each middle loop decodes to the pictures
    the second loop of a four-loop copy does (the same frames before it), the first two and the last
    as that copy's own. Checked, not assumed: where the copy's second and third loops do not map
    alike, frame for frame, the night itself is decoded (`same_pictures`)."""
    if night.loops <= 4:
        return same_pictures(night.path, src, night.first)
    short = stream_loop(src, work / f"four-loops{night.path.suffix}", at=at, loops=4)
    m, n = same_pictures(short.path, src, short.first), short.length
    if short.length != night.length or any(m.get(n + j) != m.get(2 * n + j) for j in range(n)):
        return same_pictures(night.path, src, night.first)
    out = {}
    for k in range(night.loops):
        like = 0 if k == 0 else 1 if k < night.loops - 1 else 3  # the last loop decodes as the copy's last
        out.update({k * n + j: m[like * n + j] for j in range(n) if like * n + j in m})
    return out


def decode_only(video, start: int = 0, end: int | None = None, workers: int = 1, size: int | None = 50) -> tuple[int, float]:
    """Decode frames [start, end) of `video` (a noscope Video) as a pass does, resized to size x size
    by `workers` processes (size None: decoded and nothing else, not even a picture made), with
    nothing else: no prefetch thread, no model. -> (frames, seconds)."""
    from noscope import decode_pool

    sizes = {} if size is None else {"s": (size, size)}
    t = time.perf_counter()
    n = sum(len(b) for b in decode_pool.batches(video, sizes, start, end, batch_size=256, prefetch=0, workers=workers))
    return n, time.perf_counter() - t


# --- judging answers --------------------------------------------------------------------------


def query_answers(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A `noscope query --out FOLDER`'s answers for its (first) object: (frames, yes/no)."""
    rows = np.loadtxt(folder / "frames.csv", delimiter=",", skiprows=1, usecols=(0, 2), dtype=np.int64, ndmin=2)
    return rows[:, 0], rows[:, 1].astype(bool)


def error_rates(said: np.ndarray, truth: np.ndarray) -> tuple[float | None, float | None, int]:
    """(FPR, FNR, positives) of answers `said` against `truth`; a rate without frames of its kind is None."""
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    fpr = float(np.sum(said & ~truth) / n_neg) if n_neg else None
    fnr = float(np.sum(~said & truth) / n_pos) if n_pos else None
    return fpr, fnr, n_pos


class Referee:
    """The reference as the benchmarks' judge: its answers for an object on a video's frames, through
    the label cache, by the settings' reference and min score."""

    def __init__(self, settings):
        from noscope.prepare import open_reference

        self.ref, self.key = open_reference(settings.reference)
        self.min_score = settings.labels.min_score

    def answers(self, video: Path, frames, obj: str) -> tuple[np.ndarray, np.ndarray]:
        """(the frames answered, in frame order; the reference's yes/no on each)."""
        from noscope.labels import label_frames, object_truth
        from noscope.video import open_video

        got = label_frames(open_video(video), self.ref, self.key, np.asarray(frames, dtype=np.int64), quiet=True)
        return got.frames, object_truth(got.score_of(self.ref.class_index(obj)), self.min_score, 1)

    def agreement(self, looped: Path, expect: dict[int, bool], obj: str) -> float:
        """Share of the looped frames in `expect` that the reference answers as expected (as their originals)."""
        frames, said = self.answers(looped, sorted(expect), obj)
        return float(np.mean([expect[f] == s for f, s in zip(frames.tolist(), said)]))


# --- reports ------------------------------------------------------------------------------------


def machine() -> dict:
    """The facts a measurement depends on: when, where, how many cores and torch threads."""
    import torch

    return dict(date=datetime.now().astimezone().isoformat(timespec="seconds"), platform=platform.platform(),
                machine=platform.machine(), processor=platform.processor() or platform.machine(), cores=os.cpu_count(),
                python=platform.python_version(), torch=torch.__version__, torch_threads=torch.get_num_threads())


def machine_line(facts: dict) -> str:
    return (f"Machine: {facts['machine']}, {facts['cores']} cores, torch {facts['torch']} with {facts['torch_threads']} "
            f"threads, {facts['platform']}; measured {facts['date']}.")


def _write(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Report:
    """A benchmark's output: markdown on stdout, and with `out` OUT.md and OUT.json. The markdown is
    headed by the machine's facts (`machine_line`), taken when the report is made."""

    def __init__(self, out: Path | None):
        self.out = Path(out) if out else None
        self.machine = machine()

    def save(self, data) -> None:
        """OUT.json now (what is measured so far survives a later case's failure)."""
        if self.out:
            _write(self.out.with_suffix(".json"), json.dumps(data, indent=2))

    def write(self, md: str, data) -> str:
        """Print the report and write OUT.md and OUT.json. -> the markdown."""
        text = f"{machine_line(self.machine)}\n\n{md}"
        print(text)
        if self.out:
            _write(self.out.with_suffix(".md"), text + "\n")
            self.save(data)
        return text
