"""Data pipeline benchmark: generation time, open/decode time, get_batch throughput.

    python benchmarks/data.py [--dataset tetrominoes] [--n 60000] [--resolution 32] [--batch-size 64]

Prints one JSON line, e.g. {"images_per_s": ..., "generate_60k_tetrominoes_s": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ctcae_core.data import generate_dataset, open_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="tetrominoes", choices=["tetrominoes", "multi_dsprites", "clevr_like"])
    p.add_argument("--n", type=int, default=60000, help="train split size to generate")
    p.add_argument("--n-test", type=int, default=320)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="how long to time get_batch")
    p.add_argument("--dir", default=None, help="dataset directory to reuse/write (default: a temp dir)")
    args = p.parse_args()

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.dir) if args.dir else Path(tmp) / args.dataset
        t0, c0 = time.perf_counter(), time.process_time()
        generate_dataset(args.dataset, out, n_train=args.n, n_test=args.n_test, seed=0)
        gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        ds = open_dataset(out, "train", args.resolution)
        open_s, open_cpu = time.perf_counter() - t0, time.process_time() - c0

        g = torch.Generator().manual_seed(0)
        n_img = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            idx = torch.randint(len(ds), (args.batch_size,), generator=g)
            b = ds.get_batch(idx)
            n_img += b["image"].shape[0]
        loop_s = time.perf_counter() - t0

    n_k = f"{args.n // 1000}k" if args.n % 1000 == 0 else str(args.n)
    print(
        json.dumps(
            {
                "images_per_s": round(n_img / loop_s, 1),
                f"generate_{n_k}_{args.dataset}_s": round(gen_s, 2),
                "generate_cpu_s": round(gen_cpu, 2),
                "generated_images_per_s": round((args.n + args.n_test) / gen_s, 1),
                "open_decode_s": round(open_s, 2),
                "open_decode_cpu_s": round(open_cpu, 2),
                "open_images_per_s": round(len(ds) / open_s, 1),
                "train_images": len(ds),
                "resolution": args.resolution,
                "batch_size": args.batch_size,
                "torch_threads": torch.get_num_threads(),
                "load_average_1m": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
