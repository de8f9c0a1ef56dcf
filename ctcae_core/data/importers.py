"""Import real multi-object datasets into the Parquet layout.

Sources: EMORL h5 files (a group per split holding ``imgs`` (N, H, W, 3) uint8 and
``masks`` (N, K, H, W, 1) 0/255, background first) and DeepMind's
multi_object_datasets TFRecords (GZIP), read without TensorFlow. Imports are staged
in a temporary directory that is renamed into place only when complete, so bad input
leaves nothing behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .base import SceneBatch
from .clevr_like import CROP_COLS, CROP_ROWS
from .storage import (
    FORMAT,
    FORMAT_VERSION,
    SPLITS,
    DatasetError,
    batch_to_table,
    count_table,
    merge_counts,
    n_val_for,
    shard_name,
    staging_dir,
    write_manifest,
    write_shard,
)
from .tfrecord import TFRecordError, parse_example, read_records

SHARD_ROWS = 5000

# name -> (height, width, mask entities incl. background, mask layout in the record)
TFRECORD_LAYOUTS: dict[str, tuple[int, int, int, str]] = {
    "tetrominoes": (35, 35, 4, "khw"),
    "multi_dsprites": (64, 64, 6, "hwk"),  # colored_on_grayscale: masks stored (H, W, K, 1)
    "clevr_with_masks": (240, 320, 11, "khw"),
    "clevr6": (240, 320, 11, "khw"),
}
MAX_OBJECTS = {"clevr6": 6}  # CLEVR6 = CLEVR scenes with at most 6 objects (full frame)
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _is_clevr(name: str, h: int, w: int) -> bool:
    return name.startswith("clevr") and (h, w) == (240, 320)


def masks_to_labels(
    masks: np.ndarray, *, source: str, key: str = "masks", first_index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Entity masks (n, K, h, w) 0/255, background first -> labels (n, h, w) int8 and n_objects (n,).

    Non-empty object masks are numbered 1..n in entity order; pixels covered by more
    than one object mask get -1; pixels covered only by the background mask get 0.
    """
    if masks.dtype != np.uint8:
        raise DatasetError(f"{source}: key '{key}': expected uint8 masks with values 0/255, got dtype {masks.dtype}; give EMORL-format masks")
    vals = np.unique(masks)
    if not np.isin(vals, [0, 255]).all():
        raise DatasetError(f"{source}: key '{key}': expected mask values 0/255, found {vals[:8].tolist()}; give EMORL-format masks")
    on = masks > 0  # (n, K, h, w)
    uncovered = ~on.any(axis=1)  # (n, h, w)
    if uncovered.any():
        bad = int(np.nonzero(uncovered.any(axis=(1, 2)))[0][0]) + first_index
        raise DatasetError(
            f"{source}: key '{key}': image {bad}: masks leave {int(uncovered[bad - first_index].sum())} pixels "
            f"uncovered; expected background + object masks covering every pixel of the image"
        )
    obj = on[:, 1:]  # (n, K-1, h, w)
    present = obj.any(axis=(2, 3))  # (n, K-1)
    ids = np.cumsum(present, axis=1).astype(np.int8)  # compact id per entity
    cover = obj.sum(axis=1)  # (n, h, w)
    which = np.argmax(obj, axis=1)  # (n, h, w) first covering entity
    lab = np.take_along_axis(ids, which.reshape(which.shape[0], -1), axis=1).reshape(which.shape)
    labels = np.where(cover == 1, lab, np.where(cover > 1, -1, 0)).astype(np.int8)
    return labels, present.sum(axis=1).astype(np.int64)


def convert(
    images: np.ndarray, masks: np.ndarray, *, name: str, source: str, first_index: int
) -> tuple[SceneBatch, np.ndarray]:
    """Validate and convert a block of real images and masks.

    images: (n, h, w, 3) uint8; masks: (n, K, h, w) uint8. Returns the batch (cropped
    and recounted for CLEVR) and a keep mask (n,) for the CLEVR6 object-count filter.
    """
    n, h, w = images.shape[:3]
    keep = np.ones(n, dtype=bool)
    limit = MAX_OBJECTS.get(name)
    if limit is not None:
        full_count = (masks[:, 1:] > 0).any(axis=(2, 3)).sum(axis=1)
        keep = full_count <= limit
    if _is_clevr(name, h, w):
        images = images[:, CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]]
        masks = masks[:, :, CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]]
    labels, n_obj = masks_to_labels(masks, source=source, first_index=first_index)
    batch = SceneBatch(
        np.ascontiguousarray(images),
        labels,
        n_obj,
        {"source_index": np.arange(first_index, first_index + n, dtype=np.int64)},
    )
    return batch, keep


class _SplitWriter:
    """Accumulates rows of one split and writes fixed-size shards."""

    def __init__(self, directory: Path, split: str) -> None:
        self.directory = directory
        self.split = split
        self.pending: list[SceneBatch] = []
        self.rows = 0
        self.next_index = 0
        self.info: dict = {"n": 0, "counts": {}, "shards": []}

    def add(self, batch: SceneBatch) -> None:
        if len(batch):
            self.pending.append(batch)
            self.rows += len(batch)
        while self.rows >= SHARD_ROWS:
            self._flush(SHARD_ROWS)

    def close(self) -> dict:
        if self.rows:
            self._flush(self.rows)
        return self.info

    def _flush(self, n: int) -> None:
        merged = _concat(self.pending)
        out, rest = merged.take(slice(0, n)), merged.take(slice(n, None))
        self.pending = [rest] if len(rest) else []
        self.rows = len(rest)
        name = shard_name(self.split, len(self.info["shards"]))
        write_shard(self.directory / name, batch_to_table(out, np.arange(self.next_index, self.next_index + n)))
        self.next_index += n
        self.info["n"] += n
        self.info["counts"] = merge_counts(self.info["counts"], count_table(out.n_objects))
        self.info["shards"].append(name)


def _concat(batches: list[SceneBatch]) -> SceneBatch:
    if len(batches) == 1:
        return batches[0]
    return SceneBatch(
        np.concatenate([b.images for b in batches]),
        np.concatenate([b.labels for b in batches]),
        np.concatenate([b.n_objects for b in batches]),
        {k: np.concatenate([b.factors[k] for b in batches]) for k in batches[0].factors},
    )


def _manifest(name: str, h: int, w: int, splits: dict, source: dict) -> dict:
    counts: dict[str, int] = {}
    for s in SPLITS:
        counts = merge_counts(counts, splits[s]["counts"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": "imported",
        "height": h,
        "width": w,
        "resolution": [h, w],
        "source": source,
        "seed": None,
        "generator_version": None,
        "splits": splits,
        "counts": counts,
        "created_unix": int(time.time()),
    }


# ---------------------------------------------------------------- EMORL h5
def import_emorl(
    file: str | Path,
    *,
    name: str,
    out: str | Path,
    overwrite: bool = False,
    block: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Import an EMORL h5 file (groups train / val / test) into `out`; returns the manifest."""
    import h5py

    file = Path(file)
    if not file.is_file():
        raise DatasetError(f"{file}: no such file; check the path of the h5 file")
    try:
        h5 = h5py.File(file, "r")
    except OSError as exc:
        raise DatasetError(f"{file}: not a readable HDF5 file ({exc}); give an EMORL .h5 file (or use import-tfrecord)") from exc
    with h5:
        groups = {}
        for g in h5.keys():
            split = _SPLIT_ALIASES.get(g.lower())
            if split is not None and isinstance(h5[g], h5py.Group):
                groups[split] = g
        if "train" not in groups and "test" not in groups:
            raise DatasetError(
                f"{file}: expected groups 'train' and/or 'test' (optionally 'val'), each with 'imgs' and 'masks'; "
                f"found keys {sorted(h5.keys())}; give an EMORL h5 file"
            )
        shapes = {}
        for split, g in groups.items():
            for key in ("imgs", "masks"):
                if key not in h5[g]:
                    raise DatasetError(
                        f"{file}: group '{g}' has no key '{key}'; "
                        f"expected 'imgs' (N, H, W, 3) and 'masks' (N, K, H, W, 1)"
                    )
            imgs, masks = h5[g]["imgs"], h5[g]["masks"]
            if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
                raise DatasetError(f"{file}: key '{g}/imgs': expected uint8 (N, H, W, 3), got {imgs.dtype} {imgs.shape}; give an EMORL h5 file")
            mshape = masks.shape
            if masks.ndim == 5 and mshape[-1] == 1:
                mshape = mshape[:-1]
            if len(mshape) != 4 or mshape[0] != imgs.shape[0] or tuple(mshape[2:]) != tuple(imgs.shape[1:3]) or mshape[1] < 2:
                raise DatasetError(
                    f"{file}: key '{g}/masks': expected (N, K, H, W, 1) = ({imgs.shape[0]}, K>=2, "
                    f"{imgs.shape[1]}, {imgs.shape[2]}, 1) to match '{g}/imgs' {imgs.shape}, got {masks.shape}; give an EMORL h5 file"
                )
            shapes[split] = imgs.shape
        hw = {tuple(s[1:3]) for s in shapes.values()}
        if len(hw) != 1:
            raise DatasetError(f"{file}: splits have different image sizes {sorted(hw)}; give a file whose splits share one image size")
        h, w = hw.pop()
        with staging_dir(Path(out), overwrite=overwrite) as tmp:
            writers = {s: _SplitWriter(tmp, s) for s in SPLITS}
            for split, g in groups.items():
                imgs, masks = h5[g]["imgs"], h5[g]["masks"]
                n = imgs.shape[0]
                hold_out = n_val_for(n) if split == "train" and "val" not in groups else 0
                for s in range(0, n, block):
                    e = min(n, s + block)
                    m = np.asarray(masks[s:e])
                    m = m.reshape(m.shape[:4]) if m.ndim == 5 else m
                    batch, keep = convert(np.asarray(imgs[s:e]), m, name=name, source=f"{file}:{g}", first_index=s)
                    idx = np.arange(s, e)
                    if hold_out:
                        to_val = idx >= n - hold_out
                        writers["train"].add(batch.take(np.nonzero(keep & ~to_val)[0]))
                        writers["val"].add(batch.take(np.nonzero(keep & to_val)[0]))
                    else:
                        writers[split].add(batch.take(np.nonzero(keep)[0]))
                    if progress is not None:
                        progress(e - s)
            splits = {s: wr.close() for s, wr in writers.items()}
            oh, ow = (CROP_ROWS[1] - CROP_ROWS[0], CROP_COLS[1] - CROP_COLS[0]) if _is_clevr(name, h, w) else (h, w)
            source = {
                "format": "emorl-h5",
                "file": str(file.resolve()),
                "groups": groups,
                "crop": [CROP_ROWS[0], CROP_ROWS[1], CROP_COLS[0], CROP_COLS[1]] if _is_clevr(name, h, w) else None,
                "max_objects": MAX_OBJECTS.get(name),
                "val": "group" if "val" in groups else "last 5% of train",
            }
            manifest = _manifest(name, oh, ow, splits, source)
            write_manifest(tmp, manifest)
    return manifest


# ---------------------------------------------------------------- TFRecord
def _decode_record(data: bytes, layout: tuple[int, int, int, str], file: Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    h, w, k, order = layout
    try:
        ex = parse_example(data)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{file}: record {i}: not a tf.train.Example ({exc}); give a multi_object_datasets TFRecord file") from exc
    for key in ("image", "mask"):
        if key not in ex:
            raise DatasetError(f"{file}: record {i}: no feature '{key}' (found {sorted(ex)}); check --name: it sets the record layout")
    img, mask = ex["image"], ex["mask"]
    if img.dtype != np.uint8 or img.size != h * w * 3:
        raise DatasetError(f"{file}: record {i}: feature 'image': expected {h}x{w}x3 = {h * w * 3} bytes, got {img.size}; check --name: it sets the record layout")
    if mask.dtype != np.uint8 or mask.size != k * h * w:
        raise DatasetError(
            f"{file}: record {i}: feature 'mask': expected {k}x{h}x{w}x1 = {k * h * w} bytes "
            f"(K={k} entities for this dataset), got {mask.size}; check --name: it sets the record layout"
        )
    img = img.reshape(h, w, 3)
    mask = mask.reshape(k, h, w) if order == "khw" else mask.reshape(h, w, k).transpose(2, 0, 1)
    return img, mask


def import_tfrecord(
    file: str | Path,
    *,
    name: str,
    out: str | Path,
    n_test: int = 320,
    limit: int | None = None,
    overwrite: bool = False,
    block: int = 256,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Import a multi_object_datasets TFRecord file into `out`; returns the manifest.

    The first `n_test` records form the test split, the rest the train split, whose
    last ceil(5 %) is held out as val. `limit` reads only the first records.
    """
    file = Path(file)
    if name not in TFRECORD_LAYOUTS:
        raise DatasetError(f"--name {name!r}: not a known record layout; use one of {sorted(TFRECORD_LAYOUTS)}")
    layout = TFRECORD_LAYOUTS[name]
    try:
        total = sum(1 for _ in read_records(file, verify=False))  # CRCs are checked in the import pass
    except TFRecordError as exc:
        raise DatasetError(str(exc)) from exc
    if limit is not None:
        total = min(total, int(limit))
    if total <= n_test:
        raise DatasetError(f"{file}: {total} records, not more than n_test={n_test} (the test split); lower --n-test or raise --limit")
    n_train = total - n_test
    n_val = n_val_for(n_train)
    h, w = layout[:2]
    with staging_dir(Path(out), overwrite=overwrite) as tmp:
        writers = {s: _SplitWriter(tmp, s) for s in SPLITS}
        imgs: list[np.ndarray] = []
        msks: list[np.ndarray] = []

        def flush(first: int) -> None:
            batch, keep = convert(np.stack(imgs), np.stack(msks), name=name, source=str(file), first_index=first)
            idx = np.arange(first, first + len(imgs))
            split = np.where(idx < n_test, 0, np.where(idx < total - n_val, 1, 2))
            for sid, s in enumerate(("test", "train", "val")):
                writers[s].add(batch.take(np.nonzero(keep & (split == sid))[0]))
            if progress is not None:
                progress(len(imgs))
            imgs.clear()
            msks.clear()

        first = 0
        try:
            for i, data in enumerate(_take(read_records(file), total)):
                img, mask = _decode_record(data, layout, file, i)
                imgs.append(img)
                msks.append(mask)
                if len(imgs) == block:
                    flush(first)
                    first = i + 1
            if imgs:
                flush(first)
        except TFRecordError as exc:
            raise DatasetError(str(exc)) from exc
        splits = {s: wr.close() for s, wr in writers.items()}
        clevr = _is_clevr(name, h, w)
        oh, ow = (CROP_ROWS[1] - CROP_ROWS[0], CROP_COLS[1] - CROP_COLS[0]) if clevr else (h, w)
        source = {
            "format": "tfrecord",
            "file": str(file.resolve()),
            "records": total,
            "layout": {"height": h, "width": w, "entities": layout[2], "mask_order": layout[3]},
            "crop": [CROP_ROWS[0], CROP_ROWS[1], CROP_COLS[0], CROP_COLS[1]] if clevr else None,
            "max_objects": MAX_OBJECTS.get(name),
            "test": f"first {n_test} records",
            "val": "last 5% of train",
        }
        manifest = _manifest(name, oh, ow, splits, source)
        write_manifest(tmp, manifest)
    return manifest


def _take(it: Iterator[bytes], n: int) -> Iterator[bytes]:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


def write_tfrecord_sample(
    path: str | Path, images: np.ndarray, masks: np.ndarray, *, mask_order: str = "khw"
) -> None:
    """Write real samples as a GZIP TFRecord in multi_object_datasets' layout.

    images: (n, h, w, 3) uint8; masks: (n, K, h, w, 1) or (n, K, h, w) uint8.
    """
    from .tfrecord import encode_example, write_records

    recs = []
    for img, m in zip(images, masks):
        m = m.reshape(m.shape[:3])
        if mask_order == "hwk":
            m = m.transpose(1, 2, 0)
        recs.append(encode_example({"image": np.ascontiguousarray(img), "mask": np.ascontiguousarray(m)}))
    write_records(path, recs, compress=True)


