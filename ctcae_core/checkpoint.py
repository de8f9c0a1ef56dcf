"""A training run's files: their names, the checkpoint payload, saving and loading.

``train.fit(config, out_dir=DIR)`` writes, on rank 0 (every file atomically, see
``ctcae_core/atomic.py``)::

    DIR/config.json                  the resolved config, at the start
    DIR/checkpoint_last.pt           the payload below, after every evaluation
    DIR/checkpoint_best.pt           the same file as the last one whose val_ari_fg improved (a hard link)
    DIR/metrics.json                 the summary that fit returns
    DIR/report_checkpoint/checkpoint.pt + meta.json
                                     what fit hands to its ``report`` callback: the last
                                     checkpoint, and {"step", "is_best"}

The payload is a dict: ``config`` (``ExperimentConfig.to_dict()``), ``model`` and ``optimizer``
state dicts, ``pair_generator`` (the contrastive pair sampler's generator state), ``step``,
``best`` (best val_ari_fg so far) and ``history`` (the metrics of every evaluation). A checkpoint
carries its config, so loading rebuilds the model from it alone.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ctcae_core.atomic import atomic_path
from ctcae_core.config import ConfigError, ExperimentConfig
from ctcae_core.model import ComplexAutoEncoder, build_model

CONFIG_FILE = "config.json"
LAST_FILE = "checkpoint_last.pt"
BEST_FILE = "checkpoint_best.pt"
METRICS_FILE = "metrics.json"
REPORT_DIR = "report_checkpoint"
REPORTED_FILE = "checkpoint.pt"  # the model file of a reported checkpoint directory
META_FILE = "meta.json"  # beside REPORTED_FILE: {"step": ..., "is_best": ...}
MODEL_FILES = (LAST_FILE, REPORTED_FILE, BEST_FILE)  # every name a model file is written under


def resolve_device(device: str) -> torch.device:
    """``train.device`` as a torch device: "auto" is CUDA when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {device!r} asked for but CUDA is not available")
    return torch.device(device)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ComplexAutoEncoder, ExperimentConfig, dict]:
    """Rebuild the model from the config a checkpoint carries; returns (model, config, payload).

    ``path`` is a model file or a reported checkpoint directory (holding ``checkpoint.pt``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORTED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    cfg = ExperimentConfig.from_dict(payload["config"])
    model = build_model(cfg.model, cfg.data.resolution)
    model.load_state_dict(payload["model"])
    return model, cfg, payload


def find_model_file(directory: Path) -> Path:
    """The model file inside a checkpoint directory (a reported one, or a run's ``out_dir``)."""
    for name in MODEL_FILES:
        if (directory / name).is_file():
            return directory / name
    files = sorted(directory.glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"no *.pt model file in checkpoint directory {directory}")
    return files[0]


def reported_step(model_file: Path) -> int | None:
    """The step of a reported checkpoint, from the ``meta.json`` beside it (None if it has none)."""
    meta = model_file.parent / META_FILE
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text())["step"])
        except (ValueError, KeyError):
            return None
    return None


def write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def save_checkpoint(out: Path, payload: dict[str, Any], summary: dict[str, Any], *, improved: bool) -> Path:
    """Write one evaluation's files into a run directory; returns the reported checkpoint directory.

    ``checkpoint_last.pt`` always; ``checkpoint_best.pt`` when ``improved`` (or when there is none
    yet); ``metrics.json`` (``summary``); ``report_checkpoint/`` with the last checkpoint, marked
    best when it is.
    """
    with atomic_path(out / LAST_FILE) as tmp:
        torch.save(payload, tmp)
    if improved or not (out / BEST_FILE).exists():
        _link(out / LAST_FILE, out / BEST_FILE)
    write_json(out / METRICS_FILE, summary)
    report_dir = out / REPORT_DIR
    report_dir.mkdir(exist_ok=True)
    _link(out / LAST_FILE, report_dir / REPORTED_FILE)
    write_json(report_dir / META_FILE, {"step": payload["step"], "is_best": improved}, indent=None)
    return report_dir


def _link(src: Path, dst: Path) -> None:
    """dst becomes the same file as src (a hard link; a copy where links are not possible)."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
