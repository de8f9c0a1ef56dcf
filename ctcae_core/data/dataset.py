"""In-memory torch Dataset over a stored split, `open_dataset`, and `open_split` (a config's split)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .storage import (
    DEFAULT_N_TEST,
    DEFAULT_N_TRAIN,
    GENERATED_NAMES,
    DatasetError,
    ensure_generated,
    generator_module,
    n_val_for,
    read_manifest,
    read_split,
)

if TYPE_CHECKING:  # pragma: no cover
    from ctcae_core.config import DataConfig


class MultiObjectDataset(Dataset):
    """A decoded split held in memory.

    images: (n, 3, h, w) uint8; labels: (n, h, w) int8 (0 background, -1 overlap,
    1..K objects); n_objects: (n,) int64; index: (n,) int64 row id in the stored split.
    Items and batches are converted to float32 / int64 on access.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        n_objects: torch.Tensor,
        index: torch.Tensor,
        *,
        name: str,
        split: str,
        manifest: dict,
        path: Path,
    ) -> None:
        self.images = images  # (n, 3, h, w) uint8
        self.labels = labels  # (n, h, w) int8
        self.n_objects = n_objects  # (n,) int64
        self.index = index  # (n,) int64
        self.name = name
        self.split = split
        self.manifest = manifest
        self.path = path

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i].float().div_(255.0),  # (3, h, w)
            "labels": self.labels[i].long(),  # (h, w)
            "n_objects": int(self.n_objects[i]),
        }

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: str | torch.device) -> "MultiObjectDataset":
        """This split with its tensors on ``device`` (images stay uint8, 3 bytes a pixel); batches
        are then gathered and converted there, with no host-to-device copy per step."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return MultiObjectDataset(
            self.images.to(device), self.labels.to(device), self.n_objects.to(device), self.index.to(device),
            name=self.name, split=self.split, manifest=self.manifest, path=self.path,
        )

    def get_batch(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> dict:
        """Stacked items: image (b, 3, h, w) float32, labels (b, h, w) int64, n_objects (b,) int64,
        on the dataset's device."""
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.images.device)
        return {
            "image": self.images.index_select(0, idx).float().div_(255.0),
            "labels": self.labels.index_select(0, idx).long(),
            "n_objects": self.n_objects.index_select(0, idx),
        }

    def counts(self) -> dict[int, int]:
        """Images per object count."""
        v, c = torch.unique(self.n_objects, return_counts=True)
        return {int(a): int(b) for a, b in zip(v, c)}


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """1-D resampling matrix (n_out, n_in).

    Integer downscale factors average whole blocks (area); other factors use torch's
    antialiased bilinear weights, read off by resizing the unit vectors. Resizing an
    image is then two small matmuls, which is separable and equal to the 2-D filter.
    """
    if n_in % n_out == 0 and n_in >= n_out:
        f = n_in // n_out
        return torch.kron(torch.eye(n_out), torch.full((1, f), 1.0 / f))
    eye = torch.eye(n_in).reshape(n_in, 1, 1, n_in)
    y = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False, antialias=True)
    return y.reshape(n_in, n_out).T.contiguous()


def resize_images(images: np.ndarray, size: tuple[int, int], chunk: int = 512) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, H, W) uint8.

    Integer downscale factors use area averaging (exact box filter, e.g. 192 -> 96 or
    32, 64 -> 32); other sizes bilinear with antialiasing (35 -> 32). A size equal to
    the stored one returns the stored pixels.
    """
    n, h, w, _ = images.shape
    out = torch.empty((n, 3, size[0], size[1]), dtype=torch.uint8)
    src = torch.from_numpy(images).permute(0, 3, 1, 2)  # (n, 3, h, w) view
    if (h, w) == tuple(size):
        for s in range(0, n, chunk):
            out[s : s + chunk] = src[s : s + chunk]
        return out
    rows = resize_matrix(h, size[0])  # (H, h)
    cols_t = resize_matrix(w, size[1]).T.contiguous()  # (w, W)
    nhwc = torch.from_numpy(images)
    for s in range(0, n, chunk):
        x = nhwc[s : s + chunk]
        b = x.shape[0]
        # two large GEMMs instead of many tiny batched ones
        x = x.permute(1, 0, 3, 2).reshape(h, b * 3 * w).float()  # (h, b*3*w)
        x = torch.mm(rows, x).reshape(size[0] * b * 3, w)  # (H*b*3, w)
        x = torch.mm(x, cols_t).reshape(size[0], b, 3, size[1])  # (H, b, 3, W)
        out[s : s + chunk] = x.permute(1, 2, 0, 3).round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) int8 -> (n, H, W) int8 by nearest neighbour at pixel centres."""
    n, h, w = labels.shape
    lab = torch.from_numpy(labels)
    if (h, w) == tuple(size):
        return lab.clone()
    rows = torch.clamp(((torch.arange(size[0]) + 0.5) * h / size[0]).floor().long(), max=h - 1)
    cols = torch.clamp(((torch.arange(size[1]) + 0.5) * w / size[1]).floor().long(), max=w - 1)
    return lab.index_select(1, rows).index_select(2, cols).contiguous()


_RANGE_SPEC = re.compile(r"^(?P<name>[a-z_0-9]+)(?::(?P<lo>\d+)-(?P<hi>\d+))?$")


def resolve_spec(
    spec: str | Path,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Path:
    """Dataset directory for `spec`: a generated dataset's name (optionally with an
    object-count range, "multi_dsprites:2-6"), generated and cached on first use, or
    a path to a dataset directory."""
    s = str(spec)
    generated = _generated(s)
    if generated is not None:
        name, rng = generated
        return ensure_generated(
            name,
            n_train=DEFAULT_N_TRAIN if n_train is None else int(n_train),
            n_test=DEFAULT_N_TEST if n_test is None else int(n_test),
            seed=int(seed),
            n_objects=rng,
            cache_dir=cache_dir or None,
        )
    path = Path(s).expanduser()
    if path.is_dir():
        return path
    match = _RANGE_SPEC.match(s)
    if match and match.group("name") in ("clevr6", "clevr_with_masks"):
        raise DatasetError(
            f"dataset {s!r}: real CLEVR cannot be generated; import it with "
            f"`python -m ctcae_core.data import-emorl|import-tfrecord FILE --name clevr6 --out DIR` and pass DIR "
            f"(or use the generated 'clevr_like')"
        )
    raise DatasetError(
        f"dataset {s!r}: not a generated dataset name nor an existing directory; "
        f"use one of {list(GENERATED_NAMES)} or a directory written by ctcae_core.data"
    )


def _generated(s: str) -> tuple[str, tuple[int, int] | None] | None:
    """(name, object-count range) when ``s`` names a generated dataset rather than a directory."""
    match = _RANGE_SPEC.match(s)
    if match and match.group("name") in GENERATED_NAMES and not Path(s).exists():
        return match.group("name"), (int(match.group("lo")), int(match.group("hi"))) if match.group("lo") else None
    return None


def check_data(data: "DataConfig", batch_size: int | None = None) -> None:
    """Refuse a data config that can never work, without generating or decoding any image.

    The dataset must be a generated name (with a valid object-count range) or a dataset
    directory with a manifest; ``batch_size`` (train.batch_size) must not exceed its train split.
    Used before any trial starts (search/space.py); training checks again on the opened split.
    """
    s = str(data.dataset)
    generated = _generated(s)
    if generated is not None:
        name, rng = generated
        mod = generator_module(name)
        lo, hi = rng or mod.DEFAULT_OBJECTS
        if not 1 <= lo <= hi <= mod.MAX_OBJECTS:
            raise DatasetError(f"data.dataset {s!r}: object-count range {lo}-{hi}; need 1 <= lo <= hi <= {mod.MAX_OBJECTS}")
        n_train = data.n_train - n_val_for(data.n_train)
    else:
        directory = resolve_spec(s)  # a directory, or the DatasetError that says what is wrong
        n_train = int(read_manifest(directory)["splits"].get("train", {}).get("n", 0))
    if batch_size is not None and batch_size > n_train:
        raise DatasetError(
            f"train.batch_size {batch_size} exceeds the {n_train} training images of data.dataset {s!r}; "
            f"lower train.batch_size or use a larger dataset"
        )


def open_dataset(
    spec: str | Path,
    split: str,
    resolution: int | tuple[int, int] | None = None,
    n_objects: object = None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> MultiObjectDataset:
    """Open one split of a dataset, decoded and resized into memory.

    spec: generated name ("tetrominoes", "multi_dsprites", "clevr_like", optionally
    "name:lo-hi" for the generated object-count range) or a dataset directory.
    split: "train", "val" (the held-out 5 % of the train stream) or "test".
    resolution: output size (int or (h, w)); None or the stored size keeps stored pixels.
    n_objects: filter, e.g. None, 5, [5, 6], "<=4", "5,6", "1-4".
    n_train / n_test / seed: size and seed of a generated dataset (ignored for directories).
    """
    path = resolve_spec(spec, n_train=n_train, n_test=n_test, seed=seed, cache_dir=cache_dir)
    images, labels, n_obj, index, manifest = read_split(path, split, n_objects)
    if resolution is None:
        size = (int(manifest["height"]), int(manifest["width"]))
    elif isinstance(resolution, (int, np.integer)):
        size = (int(resolution), int(resolution))
    else:
        size = (int(resolution[0]), int(resolution[1]))
    if size[0] <= 0 or size[1] <= 0:
        raise DatasetError(f"resolution {resolution!r}: not a size; give a positive number of pixels")
    return MultiObjectDataset(
        resize_images(images, size),
        resize_labels(labels, size),
        torch.from_numpy(n_obj),
        torch.from_numpy(index),
        name=str(manifest.get("name", spec)),
        split=split,
        manifest=manifest,
        path=path,
    )


def open_split(data: DataConfig, split: str, n_objects: object = None, *, dataset: str | Path | None = None) -> MultiObjectDataset:
    """One split of the dataset that ``data`` (a ``DataConfig``) describes, at its resolution.

    n_objects: the object-count filter (see `open_dataset`). dataset: another dataset spec to
    open with the same sizes, seed and cache (evaluating on a dataset the model was not trained on).
    """
    return open_dataset(
        dataset or data.dataset, split, data.resolution, n_objects,
        n_train=data.n_train, n_test=data.n_test, seed=data.data_seed, cache_dir=data.cache_dir or None,
    )
