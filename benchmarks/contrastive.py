"""Decoder pair mining plus contrastive loss (forward and backward), time and extra memory.

Inputs are the decoder output of the paper's CtCAE at batch 64, 32x32 (3 channels): the maps come
from a real forward pass on generated Tetrominoes. Prints one JSON line {"pairs_loss_s": .., "peak_mb": ..}
where peak_mb is the rise of the process's peak RSS during the measured calls.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import current_rss_mb, median_time, peak_rss_mb, run_child, tetromino_batch  # noqa: E402


def child(args: argparse.Namespace) -> dict:
    import torch

    from ctcae_core.config import get_profile
    from ctcae_core.contrastive import mine_pairs, soft_target_infonce, to_patches
    from ctcae_core.model import build_model

    cfg = get_profile("ctcae_tetrominoes")
    cc = cfg.contrastive
    torch.manual_seed(0)
    batch, _ = tetromino_batch(args.batch_size)
    with torch.no_grad():
        out = build_model(cfg.model, 32)(batch["image"])
    mag = out.out_magnitude.clone()
    phase = out.out_phase.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        pairs = mine_pairs(to_patches(mag, cc.dec_patch), cc.dec_anchors, cc.dec_positives, cc.dec_top_k,
                           cc.dec_negatives, cc.dec_bottom_m, gen)
        loss = soft_target_infonce(to_patches(phase, cc.dec_patch), pairs, cc.temperature)
        loss.backward()
        phase.grad = None

    run()  # warm-up (allocator, numpy sort tables)
    before = max(current_rss_mb(), peak_rss_mb())
    med, times = median_time(run, args.repeats, warmup=0)
    return {"pairs_loss_s": round(med, 4), "peak_mb": round(max(peak_rss_mb() - before, 0.0), 1),
            "times": [round(t, 4) for t in times], "n_positions": int(mag.shape[-1] * mag.shape[-2]),
            "anchors": cc.dec_anchors, "negatives": cc.dec_negatives, "bottom_m": cc.dec_bottom_m}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(json.dumps(run_child(__file__, ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)])))


if __name__ == "__main__":
    main()
