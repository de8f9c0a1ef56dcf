"""Parquet dataset layout: shards, manifest, atomic writes, generation cache.

A dataset directory holds ``{split}-{chunk:05d}.parquet`` shards (split in train,
val, test), one row per image, and a ``manifest.json`` written last. Every file is
written under a temporary name and renamed, so a killed writer leaves either
complete shards or files that are not named like shards; a directory without a
manifest is incomplete and is refused by the reader.

The manifest records each shard's sha256, size and row count ("checksums"). Opening a split
checks its shards' sizes every time and their hashes once per file version (cached by size and
mtime, in memory and under the data cache's ``verified/``); ``python -m ctcae_core.data info
--verify DIR`` rehashes everything. A mismatch or a missing shard is an error naming the shard
and the command that regenerates the directory. A manifest written before checksums existed is
accepted with a warning (only the shards' presence is checked). ``--overwrite`` replaces only a
directory this project wrote (``check_replaceable``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..atomic import atomic_path, pid_alive, remove_stale_temporaries
from .base import SceneBatch, chunk_rng

FORMAT = "ctcae-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.05
MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A dataset directory or input file is missing, incomplete or malformed."""


def n_val_for(n_train: int) -> int:
    """Size of the validation hold-out carved from a train split of `n_train` images."""
    return int(math.ceil(VAL_FRACTION * n_train)) if n_train >= 2 else 0


# ---------------------------------------------------------------- atomic files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and an atomic rename."""
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_bytes(data)


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write the manifest last, with the sha256, size and row count of every shard it lists."""
    directory = Path(directory)
    manifest = {**manifest, "checksums": {name: shard_record(directory / name) for name in listed_shards(manifest)}}
    atomic_write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------- integrity
def listed_shards(manifest: dict) -> list[str]:
    """Every shard file name the manifest's splits list."""
    return [name for s in SPLITS for name in manifest.get("splits", {}).get(s, {}).get("shards", [])]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_record(path: Path) -> dict:
    """What the manifest records of one shard: sha256, size in bytes, row count."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "rows": pq.ParquetFile(path).metadata.num_rows}


def regenerate_hint(directory: Path, manifest: dict) -> str:
    """The command that rebuilds a dataset directory from its source."""
    d = shlex.quote(str(directory))
    if manifest.get("kind") == "generated" and isinstance(manifest.get("generator"), dict):
        g = manifest["generator"]
        lo, hi = g.get("n_objects", ["MIN", "MAX"])
        return (
            f"python -m ctcae_core.data generate {g.get('name')} --n {g.get('n_train')} --n-test {g.get('n_test')} "
            f"--seed {g.get('seed')} --n-objects {lo} {hi} --out {d} --overwrite"
        )
    src = manifest.get("source") or {}
    cmd = "import-tfrecord" if src.get("format") == "tfrecord" else "import-emorl"
    return f"python -m ctcae_core.data {cmd} {shlex.quote(str(src.get('file', 'FILE')))} --name {manifest.get('name')} --out {d} --overwrite"


_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process


def _hash_cache_file(path: Path) -> Path:
    return default_cache_dir() / "verified" / (hashlib.sha1(str(path.resolve()).encode()).hexdigest() + ".json")


def _cached_sha256(path: Path, st: os.stat_result) -> str:
    """sha256 of a shard, computed once per (path, size, mtime) and cached in memory and on disk."""
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return _verified[key]
    cache = _hash_cache_file(path)
    try:
        entry = json.loads(cache.read_text())
        if [entry["path"], entry["bytes"], entry["mtime_ns"]] == list(key):
            _verified[key] = entry["sha256"]
            return entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    _verified[key] = digest
    try:  # a cache that cannot be written only costs a hash next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, json.dumps({"path": key[0], "bytes": key[1], "mtime_ns": key[2], "sha256": digest}).encode())
    except OSError:
        pass
    return digest


_warned_unchecked: set[str] = set()


def verify_shards(directory: Path, manifest: dict, shards: list[str] | None = None, *, full: bool = False) -> int:
    """Check the listed shards (default: all) against the manifest; returns how many were hashed.

    Cheap by default: the size every time, the sha256 once per file version (cached by size and
    mtime). ``full`` rehashes every shard and reads its row count. A manifest written before
    checksums existed (no "checksums" key) is accepted with a warning: only presence is checked.
    """
    directory = Path(directory)
    names = listed_shards(manifest) if shards is None else shards
    sums = manifest.get("checksums")
    hint = regenerate_hint(directory, manifest)
    for name in names:
        if not (directory / name).is_file():
            raise DatasetError(f"{directory / name}: shard listed in {directory / MANIFEST} is missing; regenerate: {hint}")
    if sums is None:
        if str(directory) not in _warned_unchecked:
            _warned_unchecked.add(str(directory))
            warnings.warn(
                f"{directory / MANIFEST}: written before shard checksums existed; corruption cannot be detected "
                f"(regenerate to add them: {hint})", stacklevel=2,
            )
        return 0
    for name in names:
        path, rec = directory / name, sums.get(name)
        if rec is None:
            raise DatasetError(f"{path}: listed in {directory / MANIFEST} without a checksum; regenerate: {hint}")
        st = path.stat()
        if st.st_size != rec["bytes"]:
            raise DatasetError(f"{path}: {st.st_size} bytes, the manifest says {rec['bytes']} (damaged); regenerate: {hint}")
        digest = sha256_file(path) if full else _cached_sha256(path, st)
        if digest != rec["sha256"]:
            raise DatasetError(f"{path}: sha256 does not match the manifest (damaged); regenerate: {hint}")
        if full:
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise DatasetError(f"{path}: not a readable Parquet file ({exc}); regenerate: {hint}") from exc
            if rows != rec["rows"]:
                raise DatasetError(f"{path}: {rows} rows, the manifest says {rec['rows']}; regenerate: {hint}")
    return len(names)


# ---------------------------------------------------------------- what --overwrite may replace
# generate's spec, a staging directory's marker, atomic_path's temporaries
_OUR_HIDDEN = re.compile(r"^\.(spec\.json|ctcae-staging\.json|.*\.tmp-\d+-[0-9a-f]{8})$")
_SHARD = re.compile(r"^(train|val|test)-\d{5}\.parquet$")


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace ``out_dir`` unless it is absent, empty, or a dataset directory this project wrote.

    A project directory is recognised by its manifest (only the manifest and the shards it lists,
    plus our temporary files) or, after an interrupted ``generate``, by ``.spec.json`` and shards.
    Anything else in it might be the user's, so nothing is deleted.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: is a file, not a dataset directory; choose another --out")
    names = {p.name for p in out_dir.iterdir()}
    if not names:
        return
    ours = {n for n in names if _OUR_HIDDEN.match(n)}
    if MANIFEST in names:
        try:
            manifest = read_manifest(out_dir)
        except DatasetError as exc:
            raise DatasetError(f"{out_dir}: not replaced, its manifest is not this project's ({exc}); choose another --out") from None
        ours |= {MANIFEST, *listed_shards(manifest)}
    elif ".spec.json" in names:
        ours |= {n for n in names if _SHARD.match(n)}
    foreign = sorted(names - ours)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DatasetError(
            f"{out_dir}: not replaced, it holds files this project did not write ({shown}); "
            f"choose a new or empty --out, or move those files away"
        )


def read_manifest(directory: Path) -> dict:
    """The manifest of a complete dataset directory, or a DatasetError saying why not."""
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise DatasetError(f"{directory}: is a file, not a dataset directory; pass the directory written by ctcae_core.data")
        raise DatasetError(f"{directory}: no such dataset directory; check the path, or create it with ctcae_core.data generate/import-*")
    path = directory / MANIFEST
    if not path.exists():
        shards = sorted(p.name for p in directory.glob("*.parquet"))
        raise DatasetError(
            f"{directory}: incomplete dataset, no {MANIFEST} "
            f"({len(shards)} finished shards: generation or import was interrupted); rerun that command"
        )
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc}); regenerate the dataset directory") from exc
    if not isinstance(m, dict):
        raise DatasetError(f"{path}: holds a JSON {type(m).__name__}, not a manifest; pass a directory written by ctcae_core.data")
    if m.get("format") != FORMAT:
        raise DatasetError(f"{path}: key 'format' is {m.get('format')!r}, not {FORMAT!r}; pass a directory written by ctcae_core.data")
    missing = [k for k in ("name", "kind", "height", "width", "resolution", "splits", "counts") if k not in m]
    if missing or not isinstance(m["splits"], dict):
        raise DatasetError(f"{path}: a damaged manifest (missing or malformed {missing or ['splits']}); regenerate the dataset")
    return m


# ---------------------------------------------------------------- shards
def _list_column(arr: np.ndarray, counts: np.ndarray) -> pa.Array:
    """Per-object factor array (n, k, ...) -> list<...> column keeping the first count rows."""
    n = arr.shape[0]
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(counts)
    keep = np.arange(arr.shape[1])[None, :] < counts[:, None]  # (n, k)
    values = arr[keep]  # (sum counts, ...)
    if values.ndim > 1:
        inner = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    else:
        inner = pa.array(values)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def batch_to_table(batch: SceneBatch, index: np.ndarray) -> pa.Table:
    """One row per image: index, n_objects, image/label bytes, factor columns."""
    n, h, w, _ = batch.images.shape
    img = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w * 3), n, [None, pa.py_buffer(np.ascontiguousarray(batch.images).tobytes())]
    )
    lab = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w), n, [None, pa.py_buffer(np.ascontiguousarray(batch.labels.astype(np.int8)).tobytes())]
    )
    cols: dict[str, pa.Array] = {
        "index": pa.array(index.astype(np.int64)),
        "n_objects": pa.array(batch.n_objects.astype(np.int16)),
        "image": img,
        "labels": lab,
    }
    counts = batch.n_objects.astype(np.int64)
    for key, val in sorted(batch.factors.items()):
        if val.ndim == 1:
            cols[f"factor_{key}"] = pa.array(val)
        else:
            cols[f"factor_{key}"] = _list_column(val, np.minimum(counts, val.shape[1]))
    return pa.table(cols)


def write_shard(path: Path, table: pa.Table) -> None:
    """Write a Parquet shard under a temporary name, then rename it into place."""
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, min(table.num_rows, 4096)))


def shard_name(split: str, chunk: int) -> str:
    return f"{split}-{chunk:05d}.parquet"


def count_table(n_objects: np.ndarray) -> dict[str, int]:
    vals, cnt = np.unique(np.asarray(n_objects), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, cnt)}


def merge_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


# ---------------------------------------------------------------- generation
def generator_module(name: str):
    """The generator module registered under `name`."""
    from . import clevr_like, dsprites, tetrominoes

    registry = {m.NAME: m for m in (tetrominoes, dsprites, clevr_like)}
    if name not in registry:
        raise DatasetError(f"unknown generated dataset {name!r}; use one of {sorted(registry)}")
    return registry[name]


GENERATED_NAMES = ("tetrominoes", "multi_dsprites", "clevr_like")
DEFAULT_N_TRAIN = 60000
DEFAULT_N_TEST = 320


def generate_dataset(
    name: str,
    out_dir: Path,
    *,
    n_train: int,
    n_test: int,
    seed: int = 0,
    n_objects: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> dict:
    """Generate a dataset into `out_dir` (shards first, manifest last) and return its manifest.

    Train images come from RNG stream 0 and test images from stream 1, chunk by chunk,
    so the bytes depend only on (name, version, seed, n_objects) and the image index,
    never on `workers`. The last ceil(5 %) of the train stream is stored as the val
    split. Shards already finished by an interrupted run with the same spec are kept.
    """
    mod = generator_module(name)
    rng_objects = tuple(int(v) for v in (n_objects or mod.DEFAULT_OBJECTS))
    lo, hi = rng_objects
    if not 1 <= lo <= hi <= mod.MAX_OBJECTS:
        raise DatasetError(f"n_objects ({lo}, {hi}): out of range for {name}; give 1 <= MIN <= MAX <= {mod.MAX_OBJECTS}")
    if n_train < 2 or n_test < 1:
        raise DatasetError(f"{name}: n_train={n_train}, n_test={n_test}; give n_train >= 2 (train + val) and n_test >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": name,
        "version": mod.VERSION,
        "seed": int(seed),
        "n_objects": list(rng_objects),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "chunk": mod.CHUNK,
    }
    spec_path = out_dir / ".spec.json"
    check_replaceable(out_dir)  # before anything is deleted: a directory holding the user's files is refused
    remove_stale_temporaries(out_dir)  # half-written shards of a killed run
    resume = spec_path.exists() and json.loads(spec_path.read_text()) == spec
    if not resume:
        (out_dir / MANIFEST).unlink(missing_ok=True)
        for old in list(out_dir.glob("*.parquet")):
            old.unlink()
        atomic_write_bytes(spec_path, json.dumps(spec, sort_keys=True).encode())
    n_val = n_val_for(n_train)
    tasks = [
        (name, str(out_dir), int(seed), stream, chunk, total, n_train - n_val, rng_objects)
        for stream, total in ((0, int(n_train)), (1, int(n_test)))
        for chunk in range(int(math.ceil(total / mod.CHUNK)))
    ]
    splits: dict[str, dict] = {s: {"n": 0, "counts": {}, "shards": []} for s in SPLITS}
    if workers > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may hold torch / Ray threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = pool.map(_generate_chunk, tasks)
            done = []
            for res in results:
                done.append(res)
                if progress is not None:
                    progress(sum(len(v) for _, v in res))
    else:
        done = []
        for task in tasks:
            res = _generate_chunk(task)
            done.append(res)
            if progress is not None:
                progress(sum(len(v) for _, v in res))
    for res in done:
        for shard, n_obj in res:
            _account(splits[shard.split("-")[0]], shard, n_obj)
    h = w = mod.SIZE
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": "generated",
        "height": h,
        "width": w,
        "resolution": [h, w],
        "generator": {**spec, "module": mod.__name__},
        "seed": int(seed),
        "generator_version": mod.VERSION,
        "splits": splits,
        "counts": merge_counts(merge_counts(splits["train"]["counts"], splits["val"]["counts"]), splits["test"]["counts"]),
        "created_unix": int(time.time()),
    }
    write_manifest(out_dir, manifest)
    spec_path.unlink(missing_ok=True)
    return manifest


def _generate_chunk(task: tuple) -> list[tuple[str, np.ndarray]]:
    """Generate and write one chunk (skipped when its shards exist); [(shard, n_objects)]."""
    name, out_dir, seed, stream, chunk, total, n_fit, rng_objects = task
    mod = generator_module(name)
    start = chunk * mod.CHUNK
    stop = min(total, start + mod.CHUNK)
    index = np.arange(start, stop)
    if stream == 0:
        parts = [("train", index < n_fit), ("val", index >= n_fit)]
    else:
        parts = [("test", np.ones(index.size, dtype=bool))]
    parts = [(s, m) for s, m in parts if m.any()]
    paths = [Path(out_dir) / shard_name(s, chunk) for s, _ in parts]
    if all(p.exists() for p in paths):  # finished by an interrupted run of the same spec
        return [(p.name, pq.read_table(p, columns=["n_objects"]).column("n_objects").to_numpy()) for p in paths]
    batch = mod.generate(stop - start, chunk_rng(seed, stream, chunk), rng_objects)
    out = []
    for (_, m), p in zip(parts, paths):
        sub = batch.take(np.nonzero(m)[0])
        write_shard(p, batch_to_table(sub, index[m]))
        out.append((p.name, sub.n_objects))
    return out


def _account(entry: dict, shard: str, n_objects: np.ndarray) -> None:
    entry["n"] += int(len(n_objects))
    entry["counts"] = merge_counts(entry["counts"], count_table(n_objects))
    entry["shards"].append(shard)


def default_cache_dir() -> Path:
    env = os.environ.get("CTCAE_DATA_CACHE", "")
    return Path(env) if env else Path.home() / ".cache" / "ctcae"


def cache_key(name: str, *, n_train: int, n_test: int, seed: int, n_objects: tuple[int, int] | None) -> str:
    mod = generator_module(name)
    lo, hi = n_objects or mod.DEFAULT_OBJECTS
    return f"{name}-v{mod.VERSION}-seed{seed}-obj{lo}_{hi}-train{n_train}-test{n_test}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (released by the OS if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_generated(
    name: str,
    *,
    n_train: int,
    n_test: int,
    seed: int = 0,
    n_objects: tuple[int, int] | None = None,
    cache_dir: Path | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Directory of the cached dataset for this spec, generating it on first use.

    Processes that ask for the same spec at once serialise on a lock file: one
    generates, the others wait and then read the finished directory.
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(name, n_train=n_train, n_test=n_test, seed=seed, n_objects=n_objects)
    target = root / "generated" / key
    if (target / MANIFEST).exists():
        return target
    with file_lock(root / "generated" / f".{key}.lock"):
        if not (target / MANIFEST).exists():
            generate_dataset(name, target, n_train=n_train, n_test=n_test, seed=seed, n_objects=n_objects, progress=progress)
    return target


# ---------------------------------------------------------------- imported datasets
STAGING_MARKER = ".ctcae-staging.json"  # inside a staging directory: who writes it, for what


def _staging_names(out_dir: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(out_dir.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}$")


def remove_stale_staging(out_dir: Path) -> list[str]:
    """Clear what a killed import or ``generate --overwrite`` left beside ``out_dir``.

    A staging directory ``.NAME.tmp-PID-XXXXXXXX`` whose marker names this machine, ``NAME`` and a
    process that no longer runs is deleted. A ``.NAME.old-PID-XXXXXXXX`` (the previous dataset,
    moved aside for the instant of the swap) of a dead process goes back to ``NAME`` when ``NAME``
    is missing, else it is deleted if it is a directory this project wrote. Nothing else is
    touched: another name, no marker, another machine or a live process. Returns the names removed
    or restored.
    """
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    pattern, done = _staging_names(out_dir), []
    for p in sorted(out_dir.parent.iterdir()):
        m = pattern.match(p.name)
        if not m or not p.is_dir() or p.is_symlink() or pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "tmp":
            try:
                marker = json.loads((p / STAGING_MARKER).read_text())
            except (OSError, ValueError):
                continue
            if marker.get("host") != socket.gethostname() or marker.get("target") != out_dir.name:
                continue
            shutil.rmtree(p, ignore_errors=True)
        elif not out_dir.exists():
            os.replace(p, out_dir)
        else:
            try:
                check_replaceable(p)
            except DatasetError:
                continue
            shutil.rmtree(p, ignore_errors=True)
        done.append(p.name)
    return done


@contextlib.contextmanager
def staging_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling of `out_dir`, renamed to it on success, removed on failure.

    A killed run's staging directory is cleared first (``remove_stale_staging``).
    """
    out_dir = Path(out_dir)
    remove_stale_staging(out_dir)
    if out_dir.exists() and not overwrite:
        raise DatasetError(f"{out_dir}: already exists; pass --overwrite to replace it, or choose another --out")
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "target": out_dir.name}
    with atomic_path(tmp / STAGING_MARKER) as part:  # whole or absent: a kill mid-write leaves no empty marker
        part.write_text(json.dumps(marker))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if out_dir.exists():
        check_replaceable(out_dir)  # again: something may have been added while we wrote
        os.replace(out_dir, old)
    (tmp / STAGING_MARKER).unlink()
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading
def parse_n_objects(spec: object) -> pc.Expression | None:
    """Filter on n_objects: None, an int, a sequence of ints, or a string such as
    "<=4", ">=5", "<3", "5", "5,6", "1-4" ("" means no filter)."""
    field = pc.field("n_objects")
    if spec is None:
        return None
    if isinstance(spec, (bool, np.bool_)):
        raise DatasetError(f"n_objects filter {spec!r}: a boolean; give an int, a list of ints or a string like '<=4'")
    if isinstance(spec, (int, np.integer)):
        return field == int(spec)
    if isinstance(spec, (list, tuple, set, frozenset, np.ndarray)):
        vals = sorted({int(v) for v in spec})
        if not vals:
            return None
        return field.isin(vals)
    if isinstance(spec, str):
        s = spec.replace(" ", "")
        if s == "":
            return None
        try:
            for op in ("<=", ">=", "==", "<", ">"):
                if s.startswith(op):
                    v = int(s[len(op) :])
                    return {"<=": field <= v, ">=": field >= v, "==": field == v, "<": field < v, ">": field > v}[op]
            if "," in s:
                return field.isin(sorted({int(v) for v in s.split(",") if v}))
            if "-" in s[1:]:
                a, b = s.split("-", 1)
                return (field >= int(a)) & (field <= int(b))
            return field == int(s)
        except ValueError:
            pass
    raise DatasetError(
        f"n_objects filter {spec!r}: not understood; give an int, a list of ints or a string like '<=4', '>=5', '5', '5,6', '1-4'"
    )


def read_split(
    directory: Path, split: str, n_objects: object = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Decode one split: images (n, h, w, 3) uint8, labels (n, h, w) int8,
    n_objects (n,) int64, index (n,) int64, manifest."""
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: not a split; use one of {list(SPLITS)}")
    directory = Path(directory)
    m = read_manifest(directory)
    files = [directory / f for f in m["splits"].get(split, {}).get("shards", [])]
    h, w = int(m["height"]), int(m["width"])
    verify_shards(directory, m, [f.name for f in files])
    expr = parse_n_objects(n_objects)
    if not files:
        return (np.zeros((0, h, w, 3), np.uint8), np.zeros((0, h, w), np.int8), np.zeros(0, np.int64), np.zeros(0, np.int64), m)
    ds = pads.dataset([str(f) for f in files], format="parquet")
    table = ds.to_table(columns=["index", "n_objects", "image", "labels"], filter=expr)
    order = np.argsort(table.column("index").to_numpy(), kind="stable")
    if not np.all(order[:-1] < order[1:]):
        table = table.take(pa.array(order))
    n = table.num_rows
    images = _fixed_binary_to_numpy(table.column("image"), h * w * 3).reshape(n, h, w, 3)
    labels = _fixed_binary_to_numpy(table.column("labels"), h * w).view(np.int8).reshape(n, h, w)
    n_obj = table.column("n_objects").to_numpy().astype(np.int64)
    index = table.column("index").to_numpy().astype(np.int64)
    return images, labels, n_obj, index, m


def _fixed_binary_to_numpy(col: pa.ChunkedArray, width: int) -> np.ndarray:
    """FixedSizeBinary column -> (n * width,) uint8 without per-row Python work."""
    parts = []
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        buf = chunk.buffers()[1]
        arr = np.frombuffer(buf, dtype=np.uint8, count=(chunk.offset + len(chunk)) * width)
        parts.append(arr[chunk.offset * width :])
    if not parts:
        return np.zeros(0, dtype=np.uint8)
    return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
