"""A bundle's versions on disk: keeping the current one, making a new one the bundle, restoring
the bundle after an update stopped part-way.

    archive_top(root, parent)        # NAME/ kept as NAME/versions/N before an update writes anything
    publish(root, root / "versions" / "3")     # NAME/ becomes a copy of version 3
    restore_lost(root, say)          # NAME/ lost its bundle.yaml mid-publish: the newest good version again

`NAME/` is always a whole bundle (the newest good version) or, for the moment a publish takes, a
folder without bundle.yaml; `NAME/versions/N/` holds every version, each a whole bundle
(noscope.bundle: where they live, `NAME@N`). `noscope train --update` (noscope.update) writes
versions; a query finding NAME/ without bundle.yaml restores it here before loading it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import bundle as B
from .atomic import FolderBusy, hold_folder
from .errors import NoscopeError


def archive_top(root: Path, parent: B.TrainedBundle) -> None:
    """Keep the bundle at `root` as a version before anything replaces it: a bundle as trained (never
    updated, or retrained since) becomes the next version number."""
    kept = B.versions(root)
    top = (root / "bundle.yaml").read_bytes()
    same = [k for k in kept if (root / B.VERSIONS / str(k) / "bundle.yaml").read_bytes() == top]
    if same:  # kept already (the newest good version, or the bundle as trained after an update set aside)
        parent.renumber(same[-1])
        return
    n = 1 if not kept else max(kept) + 1
    tmp = root / B.VERSIONS / f".tmp-{n}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in list(parent.manifest.files) + ["bundle.yaml"]:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, tmp / rel)
    B.listed_files(tmp)  # the copy reads back, every file matching its checksum
    os.replace(tmp, root / B.VERSIONS / str(n))
    if n != parent.version:
        parent.renumber(n)  # what the update records as its parent


def publish(root: Path, version: Path) -> None:
    """Make `root` a copy of `version`: bundle.yaml goes first (no manifest vouches for a mix of old and
    new files), the version's files are copied, files it does not have are removed, bundle.yaml last."""
    files = B.listed_files(version)
    (root / "bundle.yaml").unlink(missing_ok=True)
    keep = set(files) | {"bundle.yaml"}
    for p in sorted(root.rglob("*"), reverse=True):
        rel = p.relative_to(root)
        if rel.parts[0] in (B.VERSIONS, "work") or p.name.startswith(".") or rel.as_posix() in keep:
            continue
        if p.is_file():
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        B.atomic_write_bytes(root / rel, (version / rel).read_bytes())
    B.atomic_write_bytes(root / "bundle.yaml", (version / "bundle.yaml").read_bytes())


def status_of(path: Path) -> str:
    """"good" or "aside": what a kept version's own lineage entry says (a version as trained: good)."""
    try:
        return str((B.recorded(path, "lineage") or [{}])[-1].get("status", "good"))
    except (NoscopeError, AttributeError, TypeError, KeyError, IndexError):
        return "aside"


def newest_good(root: Path) -> int | None:
    """The newest kept version whose lineage says good, or None."""
    good = [n for n in B.versions(root) if status_of(root / B.VERSIONS / str(n)) == "good"]
    return good[-1] if good else None


def restore_top(root: Path, say) -> None:
    """A publish that stopped part-way leaves `root` without bundle.yaml: make it the newest good version
    again (the caller holds the bundle's lock)."""
    if (root / "bundle.yaml").is_file():
        return
    n = newest_good(root)
    if n is not None:
        say(f"{root} had no bundle.yaml (an update stopped while replacing it): restoring version {n}")
        publish(root, root / B.VERSIONS / str(n))


def restore_lost(root: Path, say) -> None:
    """Before a bundle is loaded: where NAME/ has no bundle.yaml but keeps versions (an update stopped
    while publishing), restore the newest good one under the bundle's lock; while an update holds the
    lock, one line says so (NAME/ is mid-publish)."""
    if (root / "bundle.yaml").is_file() or newest_good(root) is None:
        return
    try:
        with hold_folder(root):
            restore_top(root, say)
    except FolderBusy as e:
        raise NoscopeError(f"bundle {root} is being updated by another noscope run (pid {e.pid}): try again when it is "
                           f"done, or name a kept version ({B.bundle_label(root)}@{newest_good(root)})") from None
