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


def tetromino_batch(batch_size: int, resolution: int = 32, seed: int = 0):
    """A batch of generated Tetrominoes images and labels (generated once into the data cache)."""
    from ctcae_core.data import open_dataset

    ds = open_dataset("tetrominoes", "test", resolution=resolution, n_train=1000, n_test=max(320, batch_size), seed=seed)
    import torch

    return ds.get_batch(torch.arange(batch_size)), ds
