"""Small-file writes that a crash cannot leave half done.

The CNI installer, the node daemon's ADD journal and release queue, and the
SR-IOV driver's VF records all keep small files that must be either complete
or absent after a crash. The functions here are the two ways they write them:
replacing a whole file through a renamed temporary file, and writing to a file
opened with the caller's flags (append, exclusive create), both optionally
flushed to disk before they return.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries to disk, so that a rename or unlink in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: str, mode: int, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` through a temporary file in the same directory.

    A reader sees either the old file or the complete new one, never a part.
    With ``sync``, the file and the rename are on disk when this returns;
    without it they survive the death of the process but not a power loss.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if sync:
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if sync:
        fsync_directory(path.parent)


def write_synced(path: Path, data: bytes, flags: int, mode: int = 0o600) -> None:
    """Open ``path`` for writing with ``flags`` added, write ``data`` and fsync it.

    ``flags`` decides how the write lands: ``os.O_APPEND | os.O_CREAT`` appends,
    ``os.O_CREAT | os.O_EXCL`` creates the file or raises ``FileExistsError``.
    """
    fd = os.open(path, os.O_WRONLY | flags, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
