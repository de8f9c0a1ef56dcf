"""Evaluation as the paper measures it: MSE, ARI-FG, ARI-FULL (overall and per object count).

The definitions are in docs/model.md; the names the numbers travel under in ctcae_core/metric_names.py.

``python -m ctcae_core.evaluate --checkpoint FILE --dataset SPEC [--n-objects 5 6] [--pictures DIR]``
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from ctcae_core import cli
from ctcae_core.checkpoint import load_checkpoint, resolve_device
from ctcae_core.cli import run_main
from ctcae_core.config import PRECISIONS
from ctcae_core.data import open_split
from ctcae_core.data.storage import DatasetError
from ctcae_core.metrics import MetricAccumulator, cluster_phases, count_label_clusters, evaluate_batch
from ctcae_core.precision import precision_context

Tensor = torch.Tensor


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    max_images: int | None = None,
    distributed: bool = False,
    precision: str = "fp32",
    colour: bool = True,
) -> dict[str, float]:
    """Evaluate ``model`` on the first ``max_images`` images of ``dataset``.

    ``precision`` (``train.precision``'s values) autocasts the model's forward only, as training
    runs it; k-means, ARI, MSE and phase spread are computed in fp32 either way. Without
    ``colour`` the colour-alone control is not clustered and ``ari_fg_colour`` is left out.

    With ``distributed`` (torch.distributed initialised), each rank evaluates a strided share of
    the images and the sums are all-reduced, so every rank returns the same numbers.
    K-means seeding uses a generator seeded with ``seed``: the result is deterministic.
    """
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    indices = torch.arange(n)
    if distributed:
        indices = indices[dist.get_rank() :: dist.get_world_size()]
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    autocast = precision_context(precision, device)  # refuses fp16 off CUDA before any forward
    generator = torch.Generator(device=device).manual_seed(seed)
    acc = MetricAccumulator()
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            batch = dataset.get_batch(indices[start : start + batch_size])
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            with autocast:
                out = net(images)
            metrics = evaluate_batch(
                images, out.recon, out.out_magnitude, out.out_phase, labels, batch["n_objects"], generator=generator,
                colour=colour,
            )
            acc.update(metrics)
    net.train(was_training)
    if distributed:
        state = acc.to_tensor().to(device)
        dist.all_reduce(state)
        acc = MetricAccumulator.from_tensor(state)
    result = acc.compute()
    if not colour:
        del result["ari_fg_colour"]
    return result


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | None = None,
    *,
    n_objects: Sequence[int] = (),
    by_n_objects: Sequence[int] | None = None,
    split: str = "test",
    batch_size: int = 64,
    device: str = "auto",
    max_images: int | None = None,
    seed: int = 0,
    pictures: str | Path | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Load a checkpoint and evaluate it on ``dataset`` (default: the one it was trained on).

    ``n_objects`` restricts the evaluation to scenes with these object counts (default: all).
    Each count of ``by_n_objects`` (default: ``n_objects``) is also evaluated on its own, in
    ``result["by_n_objects"][str(k)]`` (``{"n_images": 0}`` when the split has no such scene).
    ``seed`` seeds the k-means of the phase clustering. With ``pictures`` (a directory), the
    pictures of ``write_pictures`` are also drawn there, by the same model on the same split, and
    their paths listed in ``result["pictures"]``. ``precision`` as in ``evaluate`` (the pictures
    are drawn in fp32).
    """
    model, cfg, _ = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    model.to(dev)
    spec = dataset or cfg.data.dataset
    counts = list(n_objects) if by_n_objects is None else list(by_n_objects)

    def run(ds: Any) -> dict[str, float]:
        return evaluate(
            model, ds, batch_size=batch_size, device=dev, seed=seed, max_images=max_images, precision=precision
        )

    result: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": spec, "split": split, "precision": precision}
    ds = open_split(cfg.data, split, list(n_objects) or None, dataset=spec)
    if len(ds) == 0:  # the metrics of no image are NaN, which is not JSON
        only = f" with n_objects in {list(n_objects)}" if n_objects else ""
        raise DatasetError(f"dataset {spec}: the {split} split has no image{only}; choose another split or object count")
    result.update(run(ds))
    if pictures is not None:
        result["pictures"] = [str(p) for p in write_pictures(model, ds, pictures, device=dev, seed=seed)]
    if counts:
        result["by_n_objects"] = {}
        for k in counts:
            sub = open_split(cfg.data, split, int(k), dataset=spec)
            result["by_n_objects"][str(k)] = run(sub) if len(sub) else {"n_images": 0}
    return result


PICTURES = ("phase_maps", "segmentation", "panel")  # the files write_pictures writes, in this order


def write_pictures(
    model: torch.nn.Module,
    dataset: Any,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    step: int | None = None,
    n: int = 8,
) -> list[Path]:
    """Phase maps, segmentations and the summary panel of the first ``n`` images of ``dataset``.

    Writes ``phase_maps.png``, ``segmentation.png`` and ``panel.png`` into ``out`` (with
    ``_step<step>`` before ``.png`` when ``step`` is given); returns their paths in PICTURES
    order. The k-means of the predicted segmentation is seeded with ``seed``.
    """
    from ctcae_core import viz

    if len(dataset) == 0:
        raise DatasetError("no image to draw: the split is empty; choose another split or object count")
    device = torch.device(device)
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    batch = dataset.get_batch(torch.arange(min(n, len(dataset))))
    images = batch["image"].to(device)  # (b, c, h, w)
    labels = batch["labels"]  # (b, h, w)
    with torch.inference_mode():
        o = net(images)
        gen = torch.Generator(device=device).manual_seed(seed)
        pred = cluster_phases(o.out_magnitude, o.out_phase, count_label_clusters(labels.to(device)), generator=gen)
    net.train(was_training)
    cpu = lambda t: t.detach().cpu()  # noqa: E731
    mag, phase = cpu(o.out_magnitude), cpu(o.out_phase)
    out = Path(out)
    name = {k: out / (f"{k}_step{step}.png" if step is not None else f"{k}.png") for k in PICTURES}
    return [
        viz.save_phase_maps(name["phase_maps"], mag, phase, max_images=n),
        viz.save_segmentation(name["segmentation"], labels, cpu(pred), max_images=n),
        viz.save_panel(name["panel"], cpu(images), cpu(o.recon), mag, phase, labels, cpu(pred), max_images=n),
    ]


def main(argv: list[str] | None = None) -> int:
    """The command; an expected failure is one ``error:`` line and exit code 2 (ctcae_core/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m ctcae_core.evaluate",
        description="Evaluate a checkpoint: MSE, ARI-FG, ARI-FULL, ARI per object count (last line: JSON).",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint_best.pt / checkpoint_last.pt written by training")
    parser.add_argument("--dataset", default=None, help="generated dataset name or dataset directory (default: the training one)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--n-objects", type=cli.count(1), nargs="*", default=[], help="evaluate on these object counts only")
    parser.add_argument("--batch-size", type=cli.count(1), default=64)
    parser.add_argument("--max-images", type=cli.count(1), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="autocast of the model's forward (fp16: CUDA only); the metrics stay fp32")
    parser.add_argument("--pictures", metavar="DIR", default=None,
                        help="also write phase_maps.png, segmentation.png and panel.png of the first 8 images here")
    args = parser.parse_args(argv)
    if args.pictures is not None and Path(args.pictures).exists() and not Path(args.pictures).is_dir():
        raise cli.UserError(f"--pictures {args.pictures}: is a file, not a directory; choose another --pictures")
    result = evaluate_checkpoint(
        args.checkpoint, args.dataset, n_objects=args.n_objects, split=args.split,
        batch_size=args.batch_size, device=args.device, max_images=args.max_images, pictures=args.pictures,
        precision=args.precision,
    )
    print(json.dumps(cli.json_safe(result), sort_keys=True, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
