"""Atomic file writes: a file is either its old self or the complete new one, never half written.

Checkpoints (``ctcae_core/checkpoint.py``) and dataset shards and manifests
(``ctcae_core/data/storage.py``) are written through :func:`atomic_path`. Training runs resume
from these files after a crash, and several processes may read a dataset cache while one writes.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
    finally:
        if tmp.exists():
            tmp.unlink()
