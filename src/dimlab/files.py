"""Files that are never half-written: write beside the destination, then rename over it.

A rename within one filesystem is atomic, so a reader (or a resumed run) sees the old file or the new one, never a
truncated one, even when the writer is killed mid-write. Every dimlab writer of checkpoints, shards, manifests,
summaries and statistics goes through :func:`atomic_write`. A writer killed with SIGKILL leaves its hidden
temporary file behind; :func:`remove_stale_temporaries` removes those of writers that are gone.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

#: Part of every temporary file's name (``.<name>.tmp-<pid>-<token>``), so unfinished files can be recognised.
TEMP_MARKER = ".tmp-"


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh, unique temporary path in the folder of ``path`` (hidden, with :data:`TEMP_MARKER` in its name)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends normally, rename it onto ``path``.

    ``mode`` is ``"wb"`` or ``"w"``. The parent folder is created. ``fsync=True`` flushes the data to the disk
    before the rename (checkpoints). The temporary file is removed when the block raises, and the block may
    close the file itself (a tar writer does). Inside the block, ``handle.name`` is the temporary path, so a
    writer can checksum what it wrote before it is published.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "x" + mode[1:]) as handle:
            yield handle
            if not handle.closed:
                handle.flush()
                if fsync:
                    os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _writer_pid(temporary: Path) -> int | None:
    """The pid in a :func:`temporary_path` name (``.<name>.tmp-<pid>-<token>``), None for other names."""
    pid = temporary.name.rpartition(TEMP_MARKER)[2].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Remove the :func:`atomic_write` temporaries of files matching ``pattern`` in ``folder`` whose writer process
    no longer runs on this machine; return what was removed.

    A temporary whose pid is alive here is kept: it may be a write in progress (or, on a shared filesystem, a
    file of another machine whose pid happens to be in use here, which costs only disk space).
    """
    removed = []
    for temporary in sorted(Path(folder).glob(f".{pattern}{TEMP_MARKER}*")):
        pid = _writer_pid(temporary)
        if pid is None or _is_running(pid):
            continue
        temporary.unlink(missing_ok=True)
        removed.append(temporary)
    return removed
