"""Write files so that a reader sees the old file or the whole new one, never half of one; and a
result folder written by one process at a time.

    atomic_write(path, lambda f: np.save(f, array))
    atomic_write_bytes(path, b"...")
    save_npz(path, features=z, targets=y)
    with hold_folder(out): ...                      # a second process gets one NoscopeError

A temp file in the same directory is written, fsynced, made world-readable (caches and
bundles are shared between users), renamed over the target, and the directory fsynced.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import NoscopeError

LOCK_NAME = ".noscope-writing"  # in a result folder while a run writes it (holds the writer's pid)
_held: dict[str, int] = {}  # folders this process holds, and how deep


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def save_npz(path: str | Path, **arrays) -> None:
    """np.savez of `arrays` to `path`, all or nothing."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class FolderBusy(NoscopeError):
    """Another process holds the folder (`hold_folder`): its pid, for a message in the caller's words."""

    def __init__(self, folder: Path, pid: str):
        super().__init__(f"{folder} is being written by another noscope run (pid {pid}); wait for it to finish, or "
                         "give another --out")
        self.folder, self.pid = folder, pid


@contextmanager
def hold_folder(folder: str | Path) -> Iterator[None]:
    """Run the block as the only process writing `folder` (made if absent): a lock file in it
    (LOCK_NAME), locked with flock while the block runs and removed after; the kernel drops the
    lock of a killed process. Another process holding it: one NoscopeError naming its pid.
    Re-entrant within a process (a batch's run holds the folder its query then writes)."""
    folder = Path(folder).absolute()
    key = str(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    made = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _lock(path, folder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        path.unlink(missing_ok=True)
        os.close(fd)
        if made:  # a run that failed before writing anything leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                pass


def _lock(path: Path, folder: Path) -> int:
    """An open descriptor of `path`, locked; the file a finishing holder removed is tried again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FolderBusy(folder, pid) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
