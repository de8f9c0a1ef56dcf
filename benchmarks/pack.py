"""Trials packed on one GPU: training steps per second of K processes sharing the device.

    python benchmarks/pack.py --profile ctcae_tetrominoes --packs 1 2 4 8             # on a GPU
    python benchmarks/pack.py --profile ctcae_tetrominoes_small --batch-size 32 --trial-steps 3000
    python benchmarks/pack.py --dry-run --device cpu                                    # the tests

A study packs trials on a GPU with a fractional ``resources.gpus_per_worker`` (0.5, 0.25, 0.125):
Ray then starts that many training processes on the one device, which time-slice it. For each
pack size K this starts K fresh processes, each with its model, optimiser and batch resident on
the device; they warm up, wait for one another, then all train for ``--seconds`` at once. One
JSON line per K (progress on stderr):

    aggregate_steps_per_s   sum over the K processes (what the GPU delivers)
    per_trial_steps_per_s   mean per process (how fast one trial runs)
    trials_per_gpu_hour     aggregate_steps_per_s * 3600 / trial_steps
    speedup                 aggregate_steps_per_s / that of K = 1
    gpu_mb_per_trial        the device memory in use with K trials (nvidia-smi, sampled mid-window) / K;
                            torch_peak_mb is torch's own peak allocation in one process (no CUDA context)

The last stdout line is the whole result as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, TINY, tetromino_batch, training_step  # noqa: E402

READY_TIMEOUT_S = 240.0


def _log(msg: str) -> None:
    print(f"[pack {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def child(args: argparse.Namespace) -> dict:
    """One trial's training loop: warm up, say ready, wait for the go file, train for the window."""
    import torch

    from ctcae_core.config import get_profile
    from ctcae_core.model import build_model

    torch.set_num_threads(args.threads)
    cfg = get_profile(args.profile)
    if args.dry_run:
        cfg = cfg.with_overrides(TINY)
    device = torch.device(args.device)
    torch.manual_seed(args.index)
    model = build_model(cfg.model, 32).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    images = tetromino_batch(args.batch_size)[0]["image"].to(device)
    gen = torch.Generator().manual_seed(args.index)

    step = training_step(model, opt, images, cfg, gen, args.precision)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    sync_dir = Path(args.sync_dir)
    (sync_dir / f"ready-{args.index}").touch()
    go = sync_dir / "go"
    deadline = time.time() + READY_TIMEOUT_S
    while not go.exists():
        if time.time() > deadline:
            raise SystemExit(f"pack child {args.index}: no go file in {sync_dir} after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.01)
    start = float(go.read_text())
    while time.time() < start:
        time.sleep(0.001)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        step()
        if n % 8 == 7:  # the queue stays a few steps deep, as in training; the window's end is exact
            sync()
        n += 1
    sync()
    elapsed = time.perf_counter() - t0
    res = {"index": args.index, "steps": n, "elapsed_s": round(elapsed, 4), "steps_per_s": n / elapsed}
    if device.type == "cuda":
        res["torch_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return res


def _gpu_used_mb(index: int) -> float | None:
    """Device memory in use on GPU ``index``, by nvidia-smi (None where there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(index)],
                             capture_output=True, text=True, timeout=20)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def run_pack(args: argparse.Namespace, k: int) -> dict:
    """Start k children, release them together, collect their step counts."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // k)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="ctcae-pack-") as sync_dir:
        procs = []
        for i in range(k):
            cmd = [sys.executable, __file__, "--child", "--index", str(i), "--sync-dir", sync_dir,
                   "--profile", args.profile, "--device", args.device, "--batch-size", str(args.batch_size),
                   "--precision", args.precision, "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                   "--threads", str(threads)] + (["--dry-run"] if args.dry_run else [])
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
        idle_mb = None
        deadline = time.time() + READY_TIMEOUT_S
        while sum((Path(sync_dir) / f"ready-{i}").exists() for i in range(k)) < k:
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or time.time() > deadline:
                for p in procs:
                    p.kill()
                err = failed[0].communicate()[1][-3000:] if failed else f"not ready after {READY_TIMEOUT_S:.0f} s"
                raise RuntimeError(f"pack of {k}: a child failed before the window:\n{err}")
            time.sleep(0.05)
        go_tmp = Path(sync_dir) / "go.tmp"
        go_tmp.write_text(repr(time.time() + 0.5))
        go_tmp.rename(Path(sync_dir) / "go")  # children never read a half-written start time
        time.sleep(0.5 + args.seconds / 2)
        used_mb = _gpu_used_mb(torch.device(args.device).index or 0) if args.device.startswith("cuda") else None
        results = []
        for p in procs:
            out, err = p.communicate(timeout=args.seconds * 10 + 120)
            if p.returncode != 0:
                raise RuntimeError(f"pack of {k}: a child failed:\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    rates = [r["steps_per_s"] for r in results]
    row = {"pack": k, "threads_per_trial": threads, "aggregate_steps_per_s": round(sum(rates), 3),
           "per_trial_steps_per_s": round(statistics.mean(rates), 3),
           "slowest_trial_steps_per_s": round(min(rates), 3),
           "trials_per_gpu_hour": round(sum(rates) * 3600 / args.trial_steps, 3),
           "steps": [r["steps"] for r in results]}
    if used_mb is not None:
        row["gpu_mb_per_trial"] = round(used_mb / k, 1)
        row["gpu_used_mb"] = used_mb
    peaks = [r["torch_peak_mb"] for r in results if "torch_peak_mb" in r]
    if peaks:
        row["torch_peak_mb"] = max(peaks)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/pack.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="ctcae_tetrominoes")
    p.add_argument("--device", default="cuda")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU to measure")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--seconds", type=float, default=8.0, help="the timed window, all trials at once")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--trial-steps", type=int, default=50000, help="steps of one trial, for trials per GPU-hour")
    p.add_argument("--dry-run", action="store_true", help="tiny model, short window: checks the script, not the GPU")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--sync-dir", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    if any(k < 1 for k in args.packs):
        p.error(f"--packs: {args.packs}; every pack size must be >= 1")
    if args.seconds <= 0 or args.trial_steps < 1:
        p.error("--seconds must be > 0 and --trial-steps >= 1")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (use --dry-run --device cpu to check the script)")
    if args.dry_run:
        args.seconds, args.warmup = min(args.seconds, 1.0), 1
    device = args.device
    result = {"device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "profile": args.profile, "batch_size": args.batch_size,
              "precision": args.precision, "seconds": args.seconds, "trial_steps": args.trial_steps,
              "dry_run": args.dry_run, "packs": []}
    base = None
    for k in args.packs:
        _log(f"{args.profile}: {k} trial(s) on one {device} ...")
        row = run_pack(args, k)
        base = base or (row["aggregate_steps_per_s"] if k == 1 else None)
        if base:
            row["speedup"] = round(row["aggregate_steps_per_s"] / base, 3)
        result["packs"].append(row)
        print(json.dumps({"profile": args.profile, **row}), flush=True)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
