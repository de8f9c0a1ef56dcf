"""Time of one training step and peak RSS, per variant, each in a fresh process.

Defaults are the paper's settings: batch 64, 32x32 Tetrominoes, the paper's architecture.
Prints one JSON line: {"cae": {"step_s": .., "peak_rss_mb": ..}, "caepp": {...}, "ctcae": {...}, ...}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import median_time, peak_rss_mb, run_child, tetromino_batch, training_step  # noqa: E402


def child(args: argparse.Namespace) -> dict:
    import torch

    from ctcae_core.config import get_profile
    from ctcae_core.model import build_model

    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = get_profile(f"{args.variant}_tetrominoes{args.suffix}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, 32).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    batch, _ = tetromino_batch(args.batch_size)
    images = batch["image"].to(device)  # resident on the device, as a study's batches are
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    gen = torch.Generator().manual_seed(0)

    train_step = training_step(model, opt, images, cfg, gen, args.precision, scaler)

    def step() -> None:
        train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    med, times = median_time(step, args.repeats, warmup=1)
    res = {"step_s": round(med, 4), "times": [round(t, 4) for t in times], "peak_rss_mb": round(peak_rss_mb(), 1),
           "threads": torch.get_num_threads(), "profile": cfg.name,
           "precision": args.precision}
    if device.type == "cpu":  # the layer's fused C kernels (CTCAE_FUSED=0: the ATen path)
        from ctcae_core import fused

        res["fused_kernels"] = fused.enabled() and fused.library() is not None
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name()
        res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variants", nargs="+", default=["cae", "caepp", "ctcae"])
    p.add_argument("--suffix", default="", help="profile suffix, e.g. _small")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="train.precision (fp16: CUDA only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    out = {}
    for v in args.variants:
        out[v] = run_child(__file__, ["--variant", v, "--suffix", args.suffix, "--batch-size", str(args.batch_size),
                                      "--repeats", str(args.repeats), "--device", args.device,
                                      "--precision", args.precision, "--threads", str(args.threads)])
        print(f"{v}: {out[v]}", file=sys.stderr, flush=True)
    if "ctcae" in out and "caepp" in out:
        out["ctcae_over_caepp"] = round(out["ctcae"]["step_s"] / out["caepp"]["step_s"], 3)
    out["settings"] = {"batch_size": args.batch_size, "resolution": 32, "suffix": args.suffix, "device": args.device,
                       "precision": args.precision, "threads": args.threads}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
