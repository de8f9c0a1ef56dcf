"""Decoder pair mining plus contrastive loss (forward and backward), time and extra memory.

Inputs are the decoder output of the paper's CtCAE at batch 64, 32x32 (3 channels): the maps come
from a real forward pass on generated Tetrominoes, made in one process and saved; a fresh process
loads only the maps and measures. Prints one JSON line {"pairs_loss_s": .., "peak_mb": ..} where
peak_mb is the rise of that process's peak RSS over its RSS before the first call.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import current_rss_mb, median_time, peak_rss_mb, run_child, tetromino_batch  # noqa: E402


def make_maps(args: argparse.Namespace) -> dict:
    import torch

    from ctcae_core.config import get_profile
    from ctcae_core.model import build_model

    cfg = get_profile("ctcae_tetrominoes")
    torch.manual_seed(0)
    batch, _ = tetromino_batch(args.batch_size)
    with torch.no_grad():
        out = build_model(cfg.model, 32)(batch["image"])
    torch.save({"magnitude": out.out_magnitude.clone(), "phase": out.out_phase.clone()}, args.maps)
    return {"maps": args.maps}


def child(args: argparse.Namespace) -> dict:
    import torch

    from ctcae_core.config import get_profile
    from ctcae_core.contrastive import mine_pairs, soft_target_infonce, to_patches

    cc = get_profile("ctcae_tetrominoes").contrastive
    maps = torch.load(args.maps)
    mag = maps["magnitude"]
    phase = maps["phase"].requires_grad_(True)
    gen = torch.Generator().manual_seed(0)

    def run(mag=mag, phase=phase) -> None:
        pairs = mine_pairs(to_patches(mag, cc.dec_patch), cc.dec_anchors, cc.dec_positives, cc.dec_top_k,
                           cc.dec_negatives, cc.dec_bottom_m, gen)
        loss = soft_target_infonce(to_patches(phase, cc.dec_patch), pairs, cc.temperature)
        loss.backward()
        phase.grad = None

    run(mag[:2], phase[:2].detach().requires_grad_(True))  # loads what the first call would (BLAS, numpy sort)
    before = current_rss_mb()
    run()  # the first call counts for memory; the timed calls follow
    med, times = median_time(run, args.repeats, warmup=0)
    return {"pairs_loss_s": round(med, 4), "peak_mb": round(max(peak_rss_mb() - before, 0.0), 1),
            "times": [round(t, 4) for t in times], "n_positions": int(mag.shape[-1] * mag.shape[-2]),
            "anchors": cc.dec_anchors, "negatives": cc.dec_negatives, "bottom_m": cc.dec_bottom_m}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--make-maps", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--maps", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(make_maps(args) if args.make_maps else child(args)))
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        maps = str(Path(tmp) / "maps.pt")
        common = ["--batch-size", str(args.batch_size), "--maps", maps]
        run_child(__file__, ["--make-maps", *common])
        print(json.dumps(run_child(__file__, [*common, "--repeats", str(args.repeats)])))


if __name__ == "__main__":
    main()
