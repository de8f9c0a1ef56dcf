"""Helpers shared by the benchmarks: fresh child processes, peak RSS, medians, a data batch."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
# --dry-run sizes: the paper's structure at tiny widths and pair counts (checks scripts, not speed)
TINY = ["model.enc_channels=[8,8,16,16,16]", "model.linear_dim=16", "contrastive.dec_anchors=20",
        "contrastive.dec_negatives=20", "contrastive.dec_bottom_m=100"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def run_child(script: str, args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``script --child ARGS`` in a fresh interpreter; its last stdout line is JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def training_step(model, opt, images, cfg, gen, precision: str = "fp32", scaler=None) -> Callable[[], None]:
    """One training step as train.py takes it, on a batch resident where ``images`` is: forward
    under ``precision``'s autocast, MSE plus the weighted contrastive loss, backward, Adam. It does
    not synchronise a GPU: the caller times it and syncs."""
    import torch.nn.functional as F

    from ctcae_core.contrastive import contrastive_loss
    from ctcae_core.precision import precision_context

    device = images.device

    def step() -> None:
        with precision_context(precision, device):
            out = model(images)
        loss = F.mse_loss(out.recon.float(), images)
        if cfg.contrastive.enabled:
            loss = loss + cfg.contrastive.weight * contrastive_loss(
                out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase, cfg.contrastive, gen)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def tetromino_batch(batch_size: int, resolution: int = 32, seed: int = 0):
    """A batch of generated Tetrominoes images and labels (generated once into the data cache)."""
    from ctcae_core.data import open_dataset

    ds = open_dataset("tetrominoes", "test", resolution=resolution, n_train=1000, n_test=max(320, batch_size), seed=seed)
    import torch

    return ds.get_batch(torch.arange(batch_size)), ds
