"""One-shot GPU check: step time and memory of CAE, CAE++, CtCAE, then a short real training.

    python benchmarks/gpu_check.py                 # on a GPU machine: about 8 minutes
    python benchmarks/gpu_check.py --dry-run       # tiny sizes on the CPU (what the tests run)

1. Step time (median of ``--repeats`` after warm-up) and peak GPU memory of one training step of
   each variant at the paper's profile (``{cae,caepp,ctcae}_tetrominoes``), batch 64.
2. ``ctcae_tetrominoes`` trained through ``ctcae_core.train.fit`` for about ``--train-minutes``
   (it stops at the first evaluation past the budget), then evaluated on the test split: ARI-FG,
   ARI-FULL, MSE, phase spread and the steps reached; the last validation also gives ARI-FG of
   colour alone (every output phase at 0), which tells grouping by phase from grouping by colour.

Measured on an NVIDIA H200 (2026-12-04, benchmarks/README.md "On a GPU"): CtCAE 0.0256 s per
step, 655 MB; 10,500 steps in 5 minutes, test ARI-FG 0.704 with the phases still on the real line.

The last stdout line is one JSON object with the card's name; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import TINY, median_time, peak_rss_mb, tetromino_batch, training_step  # noqa: E402

VARIANTS = ("cae", "caepp", "ctcae")


class _Budget(Exception):
    pass


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step_figures(variant: str, device, batch_size: int, repeats: int, dry_run: bool) -> dict:
    import torch

    from ctcae_core.config import get_profile
    from ctcae_core.model import build_model

    cfg = get_profile(f"{variant}_tetrominoes")
    if dry_run:
        cfg = cfg.with_overrides(TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model, 32).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    images = tetromino_batch(batch_size)[0]["image"].to(device)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    train_step = training_step(model, opt, images, cfg, gen)

    def step() -> None:
        train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    med, _ = median_time(step, repeats, warmup=3)
    res = {"step_s": round(med, 5), "steps_per_s": round(1 / med, 2)}
    if device.type == "cuda":
        res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return res


def short_training(device, minutes: float, dry_run: bool, out_dir: Path) -> dict:
    from ctcae_core.config import get_profile
    from ctcae_core.evaluate import evaluate_checkpoint
    from ctcae_core.train import fit

    overrides = [f"train.device={device}", "train.steps=50000", "train.eval_every=500", "train.eval_images=320",
                 "data.n_train=20000"]
    if dry_run:
        overrides = TINY + [f"train.device={device}", "train.steps=6", "train.eval_every=3", "train.eval_images=16",
                            "train.batch_size=8", "data.n_train=200", "data.n_test=32"]
    cfg = get_profile("ctcae_tetrominoes").with_overrides(overrides)
    deadline = time.time() + 60 * minutes
    t0, last = time.time(), {}

    def report(metrics: dict, _ckpt) -> None:
        last.update(metrics)
        _log(f"step {metrics['step']}: val ARI-FG {metrics.get('val_ari_fg', math.nan):.3f} "
             f"(colour alone {metrics.get('val_ari_fg_colour', math.nan):.3f}), "
             f"MSE {metrics.get('val_mse', math.nan):.4f}, phase spread {metrics.get('val_phase_spread', math.nan):.3f}")
        if time.time() > deadline:
            raise _Budget

    try:
        fit(cfg, report, out_dir=out_dir, progress=False)
    except _Budget:
        pass
    wall = time.time() - t0
    test = evaluate_checkpoint(out_dir / "checkpoint_last.pt", split="test", device=str(device), max_images=320)
    return {"steps": int(last["step"]), "train_minutes": round(wall / 60, 2), "steps_per_s": round(last["steps_per_s"], 2),
            "val_ari_fg": last.get("val_ari_fg"), "val_ari_fg_colour": last.get("val_ari_fg_colour"),
            "val_phase_spread": last.get("val_phase_spread"), "val_mse": last.get("val_mse"),
            "test_ari_fg": test["ari_fg"], "test_ari_full": test["ari_full"], "test_mse": test["mse"],
            "test_phase_spread": test["phase_spread"]}


def _strict(x):
    """NaN / inf as null, so that the line is strict JSON."""
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, a few steps: checks the script, not the GPU")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--train-minutes", type=float, default=6.0)
    args = p.parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --dry-run --device cpu to check the script)")
    batch, repeats, minutes = args.batch_size, args.repeats, args.train_minutes
    if args.dry_run:
        batch, repeats, minutes = min(batch, 4), 2, 0.0
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch_size": batch, "dry_run": args.dry_run, "steps": {}}
    for v in VARIANTS:
        _log(f"timing {v} ...")
        result["steps"][v] = step_figures(v, device, batch, repeats, args.dry_run)
        _log(f"{v}: {result['steps'][v]}")
    _log(f"training ctcae_tetrominoes for about {minutes} min ...")
    with tempfile.TemporaryDirectory() as tmp:
        result["train"] = short_training(device, minutes, args.dry_run, Path(tmp))
    print(json.dumps(_strict(result), sort_keys=True, allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
