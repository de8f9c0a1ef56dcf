"""Atomic file writes: a file is either its old self or the complete new one, never half written.

Checkpoints (``ctcae_core/checkpoint.py``) and dataset shards and manifests
(``ctcae_core/data/storage.py``) are written through :func:`atomic_path`. Training runs resume
from these files after a crash, and several processes may read a dataset cache while one writes.
"""
from __future__ import annotations

import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")  # the names atomic_path writes under


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` in one rename.

    ``fsync`` flushes the file to disk before the rename (a power cut then cannot leave an empty
    file under the final name). If the body raises, the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write (a full disk) names no file
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> list[str]:
    """Delete the temporary files that a killed writer (SIGKILL, power cut) left in ``directory``.

    Only files named like :func:`atomic_path`'s temporaries whose writing process no longer runs;
    a directory is written by one command at a time (a live writer's files are left alone).
    Returns the names removed.
    """
    removed = []
    for p in Path(directory).iterdir():
        m = _TEMP.match(p.name)
        if m and p.is_file() and not p.is_symlink() and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed
