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

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ctcae_core.atomic import atomic_path
from ctcae_core.cli import UserError
from ctcae_core.config import DEVICE_PATTERN, ConfigError, ExperimentConfig
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
    """``train.device`` (or a command's ``--device``) as a torch device: "auto" is CUDA when there
    is one, else the CPU. A device this machine does not have is a ConfigError saying which exist."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"device {device!r}: not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: this machine has no usable CUDA device; use 'cpu' or 'auto'")
        n = torch.cuda.device_count()
        if ":" in device and int(device.split(":")[1]) >= n:
            raise ConfigError(f"device {device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}; use one of them")
    return torch.device(device)


class CheckpointError(UserError):
    """A file is missing, is not a checkpoint written by ``fit``, or is damaged."""


_PAYLOAD_KEYS = ("config", "model")  # what loading needs; resuming also reads the optimizer and sampler state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ComplexAutoEncoder, ExperimentConfig, dict]:
    """Rebuild the model from the config a checkpoint carries; returns (model, config, payload).

    ``path`` is a model file, a reported checkpoint directory (holding ``checkpoint.pt``) or a
    run directory (its ``checkpoint_last.pt``). Raises CheckpointError naming the file when it is
    missing, not a checkpoint (a bare state_dict included), truncated, or does not fit its config.
    """
    path = Path(path)
    if path.is_dir():
        inside = [path / name for name in MODEL_FILES if (path / name).is_file()]
        if not inside:
            raise CheckpointError(
                f"checkpoint {path}: a directory without {' / '.join(MODEL_FILES)}; pass the model file itself"
            )
        path = inside[0]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file; pass DIR/{BEST_FILE} or DIR/{LAST_FILE} of a training run")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a file it cannot read (pickle, zip, EOF, RuntimeError)
        raise CheckpointError(
            f"checkpoint {path}: not a readable PyTorch file, truncated or damaged ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); pass a checkpoint written by ctcae_core.train"
        ) from exc
    if not isinstance(payload, dict) or any(k not in payload for k in _PAYLOAD_KEYS):
        what = "a bare state_dict" if isinstance(payload, dict) else f"a {type(payload).__name__}"
        raise CheckpointError(
            f"checkpoint {path}: {what}, not a training checkpoint (it needs the keys {list(_PAYLOAD_KEYS)}); "
            f"pass DIR/{BEST_FILE} or DIR/{LAST_FILE} written by ctcae_core.train"
        )
    try:
        cfg = ExperimentConfig.from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: its config is invalid ({exc}); pass a checkpoint written by ctcae_core.train") from exc
    model = build_model(cfg.model, cfg.data.resolution)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the model its config describes ({str(exc).splitlines()[0]}); "
            f"pass a checkpoint written by ctcae_core.train"
        ) from exc
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
    save_last(out, payload)
    if improved or not (out / BEST_FILE).exists():
        _link(out / LAST_FILE, out / BEST_FILE)
    write_json(out / METRICS_FILE, summary)
    report_dir = out / REPORT_DIR
    report_dir.mkdir(exist_ok=True)
    _link(out / LAST_FILE, report_dir / REPORTED_FILE)
    write_json(report_dir / META_FILE, {"step": payload["step"], "is_best": improved}, indent=None)
    return report_dir


def save_last(out: Path, payload: dict[str, Any]) -> None:
    """Write ``checkpoint_last.pt`` alone (atomically): what an interrupted run resumes from."""
    try:
        with atomic_path(out / LAST_FILE) as tmp:
            torch.save(payload, tmp)
    except RuntimeError as exc:  # torch reports a failed write (a full disk) as a RuntimeError
        free = shutil.disk_usage(out).free
        code = errno.ENOSPC if free < (64 << 20) else errno.EIO
        raise OSError(code, f"{os.strerror(code)} ({free >> 20} MiB free)", str(out / LAST_FILE)) from exc


def _link(src: Path, dst: Path) -> None:
    """dst becomes the same file as src (a hard link; a copy where links are not possible)."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
