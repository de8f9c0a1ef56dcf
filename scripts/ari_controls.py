"""How much of a checkpoint's ARI-FG do its phases earn? ARI-FG with the paper's features beside controls.

    python scripts/ari_controls.py CHECKPOINT [CHECKPOINT ...] [--split val] [--images 320]

The paper clusters per-pixel features (cos phi_c, sin phi_c) * clip(|z_c|, 0, 0.1) / 0.1 over
the channels c (``ctcae_core.metrics.phase_features``). On datasets whose objects differ in
colour, the magnitude weights alone tell objects apart: a reconstruction with the right colours
scores a high ARI-FG with every phase equal. Printed per checkpoint (mean ARI-FG over images):

* ``paper``: the evaluation's own features;
* ``magnitude_only``: the same features with every phase set to 0 (colour alone; every
  evaluation also logs it, as ``ari_fg_colour``);
* ``pixel_phase``: one phase per pixel, arg(sum_c z_c), as (cos, sin) with no magnitude weight.
  Colour still leaks into it through per-channel phase offsets, so it bounds the phases' share
  from above rather than measuring it.

A model groups by phase where ``paper`` clearly exceeds ``magnitude_only``; the phase maps
(``python -m ctcae_core.evaluate --pictures DIR``) and the phase spread are the direct evidence.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ctcae_core.checkpoint import load_checkpoint  # noqa: E402
from ctcae_core.data import open_split  # noqa: E402
from ctcae_core.metrics import ari_scores, colour_features, count_label_clusters, kmeans_batched, phase_features  # noqa: E402


def control_features(magnitude: torch.Tensor, phase: torch.Tensor) -> dict[str, torch.Tensor]:
    """(b, h*w, d) features of each control for (b, c, h, w) output magnitude and phase."""
    re, im = (magnitude * torch.cos(phase)).sum(1), (magnitude * torch.sin(phase)).sum(1)
    psi = torch.atan2(im, re)  # (b, h, w)
    return {
        "paper": phase_features(magnitude, phase),
        "magnitude_only": colour_features(magnitude),
        "pixel_phase": torch.stack((torch.cos(psi), torch.sin(psi)), -1).flatten(1, 2),
    }


def controls(checkpoint: str, split: str, images: int, batch_size: int = 64) -> dict[str, float]:
    model, cfg, _ = load_checkpoint(checkpoint)
    model.eval()
    ds = open_split(cfg.data, split, None)
    n = min(images, len(ds))
    scores: dict[str, list[torch.Tensor]] = {}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = ds.get_batch(torch.arange(start, min(start + batch_size, n)))
            out = model(batch["image"])
            labels = batch["labels"]
            k = count_label_clusters(labels)
            for name, feats in control_features(out.out_magnitude.float(), out.out_phase.float()).items():
                pred, _ = kmeans_batched(feats, k, n_init=10, generator=gen)
                ari = ari_scores(labels, pred.view_as(labels))["ari_fg"]
                scores.setdefault(name, []).append(ari[~ari.isnan()])
    return {name: round(torch.cat(v).mean().item(), 4) for name, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--images", type=int, default=320)
    args = p.parse_args(argv)
    for ck in args.checkpoints:
        print(json.dumps({"checkpoint": ck, "split": args.split, **controls(ck, args.split, args.images)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
