"""Evaluation throughput (forward, phase clustering, ARI) and agreement with scikit-learn.

Default: the paper's CtCAE at 32x32 on generated Tetrominoes test images, untrained unless
--checkpoint is given (throughput does not depend on the weights; the ARI agreement is more
telling on a trained model). ``--precision bf16`` times the forward under bf16 autocast, as
``train.eval_precision: bf16`` runs it. Prints one JSON line {"images_per_s": .., "ari_fg_abs_diff_vs_sklearn": ..}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import run_child, tetromino_batch  # noqa: E402


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from ctcae_core.config import get_profile
    from ctcae_core.evaluate import evaluate
    from ctcae_core.metrics import ari_scores, cluster_phases, cluster_phases_sklearn, count_label_clusters
    from ctcae_core.model import build_model
    from ctcae_core.checkpoint import load_checkpoint

    torch.manual_seed(0)
    if args.checkpoint:
        model, cfg, _ = load_checkpoint(args.checkpoint)
    else:
        cfg = get_profile(args.profile)
        model = build_model(cfg.model, 32)
    model.eval()
    _, ds = tetromino_batch(args.n_images)
    torch.set_num_threads(args.threads)
    evaluate(model, ds, batch_size=args.batch_size, max_images=args.batch_size, precision=args.precision)  # warm-up
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        res = evaluate(model, ds, batch_size=args.batch_size, max_images=args.n_images, precision=args.precision)
        times.append(time.perf_counter() - t)
    per_s = args.n_images / float(np.median(times))
    roof = _forward_roofline(model, ds.get_batch(torch.arange(args.batch_size))["image"], args) if args.roofline else {}
    # Agreement: the same phase features clustered by our batched k-means and by sklearn's KMeans.
    ours, ref = [], []
    with torch.inference_mode():
        for start in range(0, args.n_agree, args.batch_size):
            b = ds.get_batch(torch.arange(start, min(start + args.batch_size, args.n_agree)))
            out = model(b["image"])
            k = count_label_clusters(b["labels"])
            p1 = cluster_phases(out.out_magnitude, out.out_phase, k, generator=torch.Generator().manual_seed(0))
            p2 = cluster_phases_sklearn(out.out_magnitude, out.out_phase, k, seed=0)
            ours.append(ari_scores(b["labels"], p1)["ari_fg"])
            ref.append(ari_scores(b["labels"], p2)["ari_fg"])
    ours_t, ref_t = torch.cat(ours), torch.cat(ref)
    ok = ~(torch.isnan(ours_t) | torch.isnan(ref_t))
    return {
        "images_per_s": round(per_s, 1), "ari_fg_abs_diff_vs_sklearn": round(abs(float(ours_t[ok].mean() - ref_t[ok].mean())), 4),
        "ari_fg_ours": round(float(ours_t[ok].mean()), 4), "ari_fg_sklearn": round(float(ref_t[ok].mean()), 4),
        "eval_ari_fg": round(res["ari_fg"], 4), "n_images": args.n_images, "n_agree": args.n_agree,
        "model": cfg.name, "trained": bool(args.checkpoint), "times": [round(t, 3) for t in times],
        "precision": args.precision, "threads": args.threads, **roof,
    }


def _forward_roofline(model, images, args: argparse.Namespace) -> dict:
    """The forward's share of evaluation against what this CPU's convolutions can do.

    ``forward_gflop``: the model's forward FLOPs on one batch (torch's FLOP counter: convs and
    matmuls, 2 per multiply-add); ``forward_s``: its median time under ``--precision``;
    ``conv_peak_gflop_s``: the rate of one large 3x3 conv of the model's widest layer, in the same
    precision, layout and threads, as a practical ceiling; ``images_per_s_forward_at_peak``: the
    evaluation rate if the forward alone ran at that ceiling and everything else were free.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.common import median_time
    from ctcae_core.model import memory_layout
    from ctcae_core.precision import precision_context

    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            model(images)
        gflop = fc.get_total_flops() / 1e9
        with precision_context(args.precision, torch.device("cpu")):
            fwd, _ = median_time(lambda: model(images), args.repeats)
            c = max(m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            x, w = torch.rand(3 * images.shape[0], c, 16, 16), torch.rand(c, c, 3, 3)
            x = x.contiguous(memory_format=memory_layout(x))  # the layout the model runs in
            conv, _ = median_time(lambda: torch.nn.functional.conv2d(x, w, padding=1), args.repeats)
    conv_gflop = 2 * x.shape[0] * c * c * 9 * 16 * 16 / 1e9
    peak = conv_gflop / conv
    # Four significant digits, not fixed decimals: a few-ms forward of a small model rounded to
    # 0.1 ms was off by 1%, and the printed ratios with it.
    return {"forward_gflop": _sig(gflop), "forward_s": _sig(fwd), "forward_gflop_s": _sig(gflop / fwd),
            "conv_peak_gflop_s": _sig(peak), "images_per_s_forward_at_peak": _sig(images.shape[0] * peak / gflop)}


def _sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", default="ctcae_tetrominoes")
    p.add_argument("--checkpoint", default="")
    p.add_argument("--n-images", type=int, default=320)
    p.add_argument("--n-agree", type=int, default=128, help="images compared against scikit-learn")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--roofline", action="store_true",
                   help="also time the forward alone and one large conv: how near the forward runs to this CPU's conv rate")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="the forward's autocast, as train.eval_precision (k-means and ARI stay fp32)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(json.dumps(run_child(__file__, sys.argv[1:])))


if __name__ == "__main__":
    main()
