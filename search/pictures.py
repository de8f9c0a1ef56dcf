"""A trial's pictures over training: drawn by rank 0 at chosen evaluations, logged by the driver.

The training loop (``ctcae_core.train.fit``) calls ``report(metrics, checkpoint_dir)`` after each
evaluation. On rank 0, search/trainable.py passes that directory to ``EvalPictures``, which draws
the phase maps, segmentations and the summary panel of the first validation images
(``ctcae_core.evaluate.write_pictures``) into ``<checkpoint_dir>/pictures/``, so they travel to
the driver inside the reported checkpoint. There ``read_pictures`` finds them again and
search/tracking.py logs them as MLflow images (keys ``pictures/panel``, ``pictures/phase_maps``,
``pictures/segmentation``, with the evaluation's step), which the UI shows side by side across
trials and over steps, in a section of their own above the metric charts.

At most ``MAX_PICTURE_STEPS`` evaluations of a run are drawn (evenly spread, the last one
always), so a long run logs a bounded number of images. Imports neither Ray nor MLflow.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

PICTURES_DIR = "pictures"  # inside a reported checkpoint directory
IMAGE_SECTION = "pictures"  # MLflow image keys pictures/<name>: their own section, above the metric charts
MAX_PICTURE_STEPS = 8  # evaluations drawn per run
PICTURE_IMAGES = 8  # validation images per picture
_NAME = re.compile(r"(?P<key>[a-z_]+)_step(?P<step>\d+)\.png")


def picture_steps(steps: int, eval_every: int, limit: int = MAX_PICTURE_STEPS) -> frozenset[int]:
    """The evaluation steps that get pictures: all when there are at most ``limit``, else
    ``limit`` of them evenly spread, the first and the last included."""
    evals = sorted({*range(eval_every, steps + 1, eval_every), steps})
    if len(evals) <= limit:
        return frozenset(evals)
    return frozenset(evals[round(i * (len(evals) - 1) / (limit - 1))] for i in range(limit))


class EvalPictures:
    """Rank 0's pictures of an evaluation, written into the reported checkpoint directory."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg  # ctcae_core.config.ExperimentConfig
        self.steps = picture_steps(cfg.train.steps, cfg.train.eval_every)
        self._val: Any = None  # the validation split, opened on first use

    def __call__(self, step: int, checkpoint_dir: Path) -> list[Path]:
        from ctcae_core.checkpoint import find_model_file, load_checkpoint, resolve_device
        from ctcae_core.data import open_split
        from ctcae_core.evaluate import write_pictures

        out = Path(checkpoint_dir) / PICTURES_DIR
        shutil.rmtree(out, ignore_errors=True)  # the directory is reused: no picture of an earlier evaluation
        if step not in self.steps:
            return []
        device = resolve_device(self.cfg.train.device)
        model, cfg, _ = load_checkpoint(find_model_file(Path(checkpoint_dir)), map_location=device)
        if self._val is None:
            self._val = open_split(cfg.data, "val", cfg.data.train_n_objects or None)
        return write_pictures(model.to(device), self._val, out, device=device, seed=cfg.train.seed, step=step,
                              n=PICTURE_IMAGES)


def read_pictures(checkpoint: Any) -> list[tuple[str, int, bytes]]:
    """(key, step, PNG bytes) of the pictures in a reported checkpoint (a ``ray.tune.Checkpoint``
    or anything with ``filesystem`` and ``path``), sorted by key; [] when it has none. Reads
    only the pictures, not the model."""
    from pyarrow import fs as pafs

    base = f"{str(checkpoint.path).rstrip('/')}/{PICTURES_DIR}"
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    out = []
    for info in infos:
        m = _NAME.fullmatch(info.base_name)
        if info.type == pafs.FileType.File and m:
            with checkpoint.filesystem.open_input_stream(info.path) as f:
                out.append((m["key"], int(m["step"]), f.read()))
    return sorted(out)
