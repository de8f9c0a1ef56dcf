"""What ``train.precision`` does to the metrics of a trained model: the test split evaluated with
the model's forward in fp32 and under the precision's autocast (as training runs it), the
clustering and ARI in fp32 both times.

    python benchmarks/precision_ari.py --checkpoint reports/curves/checkpoints/ctcae_small_pbias_s1/checkpoint_last.pt

Prints one JSON line per checkpoint: the fp32 and low-precision metrics, their differences and
the seconds each evaluation took. This measures the forward's rounding at evaluation, not a
model trained in low precision.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("ari_fg", "ari_full", "mse", "phase_spread")


def compare(checkpoint: Path, precision: str, device: str) -> dict:
    import torch

    from ctcae_core.checkpoint import load_checkpoint
    from ctcae_core.data import open_split
    from ctcae_core.evaluate import evaluate

    model, cfg, _ = load_checkpoint(checkpoint)
    dev = torch.device(device)
    model = model.to(dev)
    ds = open_split(cfg.data, "test")
    out: dict = {"checkpoint": str(checkpoint), "precision": precision, "images": len(ds)}
    for name in ("fp32", precision):  # evaluate autocasts the forward only: k-means and ARI stay fp32
        t = time.perf_counter()
        res = evaluate(model, ds, device=dev, seed=cfg.train.seed, precision=name)
        out[f"{name}_s"] = round(time.perf_counter() - t, 1)
        out[name] = {k: round(res[k], 5) for k in KEYS}
    out["abs_diff"] = {k: round(abs(out[precision][k] - out["fp32"][k]), 5) for k in KEYS}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="checkpoint files (checkpoint_last.pt)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16"], help="fp16: CUDA only")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        p.error("--precision fp16 needs --device cuda (fp16 autocast is CUDA only)")
    missing = [str(c) for c in args.checkpoint if not c.is_file()]
    if missing:
        p.error(f"no such checkpoint file: {', '.join(missing)}")
    for c in args.checkpoint:
        print(json.dumps(compare(c, args.precision, args.device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
