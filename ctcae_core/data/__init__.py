"""Datasets: procedural generators, Parquet storage, real-data import, loading.

`open_split(data_config, split, n_objects)` opens a config's split for training and evaluation;
`open_dataset(spec, split, ...)` opens any dataset.
The torch-based reader is imported lazily so the command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .storage import (
    GENERATED_NAMES,
    DatasetError,
    default_cache_dir,
    ensure_generated,
    generate_dataset,
    parse_n_objects,
    read_manifest,
)

if TYPE_CHECKING:  # pragma: no cover
    from .dataset import MultiObjectDataset, check_data, open_dataset, open_split, resolve_spec

_LAZY = {"MultiObjectDataset", "check_data", "open_dataset", "open_split", "resolve_spec"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GENERATED_NAMES",
    "DatasetError",
    "MultiObjectDataset",
    "check_data",
    "default_cache_dir",
    "ensure_generated",
    "generate_dataset",
    "open_dataset",
    "open_split",
    "parse_n_objects",
    "read_manifest",
    "resolve_spec",
]
