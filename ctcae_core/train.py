"""The training loop: ``fit(config, report=...)`` and ``python -m ctcae_core.train``.

It knows nothing of Ray or MLflow: after each evaluation it calls ``report(metrics,
checkpoint_dir)``. Under an initialised ``torch.distributed`` process group (as Ray Train sets
up) it trains with DDP: each rank takes its share of every global batch, metrics are all-reduced,
and only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ctcae_core.config import ConfigError, ExperimentConfig, get_profile, load_config_file
from ctcae_core.contrastive import contrastive_loss
from ctcae_core.evaluate import evaluate
from ctcae_core.model import ComplexAutoEncoder, build_model

Report = Callable[[dict[str, Any], "Path | None"], None]
BEST_METRIC = "val_ari_fg"  # higher is better; the paper's main metric


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops here."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {device!r} asked for but CUDA is not available")
    return torch.device(device)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_link(src: Path, dst: Path) -> None:
    """dst becomes the same file as src (a hard link; a copy where links are not possible)."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ComplexAutoEncoder, ExperimentConfig, dict]:
    """Rebuild the model from the config a checkpoint carries; returns (model, config, payload)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    cfg = ExperimentConfig.from_dict(payload["config"])
    model = build_model(cfg.model, cfg.data.resolution)
    model.load_state_dict(payload["model"])
    return model, cfg, payload


def open_splits(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """(train, val) datasets of a config, the object-count filter applied to both."""
    from ctcae_core.data import open_dataset

    d = cfg.data
    kwargs = dict(
        resolution=d.resolution, n_objects=d.train_n_objects or None, n_train=d.n_train, n_test=d.n_test,
        seed=d.data_seed, cache_dir=d.cache_dir or None,
    )
    return open_dataset(d.dataset, "train", **kwargs), open_dataset(d.dataset, "val", **kwargs)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Global batch of a step: epochs are seeded permutations, so any step is reproducible alone."""
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[j * batch_size : (j + 1) * batch_size]


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def fit(
    config: ExperimentConfig,
    report: Report | None = None,
    *,
    out_dir: str | Path,
    resume: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``config``; evaluate every ``train.eval_every`` steps and at the end.

    Writes ``out_dir/checkpoint_last.pt``, ``checkpoint_best.pt`` (best val ARI-FG) and
    ``metrics.json`` on rank 0. ``resume`` (a checkpoint file or a directory holding
    ``checkpoint.pt``) continues at the saved step with the saved optimizer and sampler state.
    Returns the summary that ``metrics.json`` holds.
    """
    tc = config.train
    distributed = _is_dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = resolve_device(tc.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(json.dumps(config.to_dict(), indent=2), out / "config.json")

    torch.manual_seed(tc.seed)
    model = build_model(config.model, config.data.resolution).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    pair_gen = torch.Generator().manual_seed(tc.seed + 1)
    start_step, best, history = 0, -math.inf, []
    if resume is not None:
        _, saved_cfg, payload = load_checkpoint(resume, map_location=device)
        if saved_cfg.model != config.model:
            raise ConfigError(f"resume {resume}: its model config differs from this run's: {saved_cfg.model} vs {config.model}")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        pair_gen.set_state(payload["pair_generator"])
        start_step, best, history = payload["step"], payload["best"], payload["history"]
    net: torch.nn.Module = model
    if distributed:
        # Without a loss on the output phases the last layer's phase bias gets no gradient.
        phases_in_loss = config.contrastive.enabled and config.contrastive.layers in ("both", "decoder")
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=not phases_in_loss
        )

    train_ds, val_ds = open_splits(config)
    if len(train_ds) < tc.batch_size:
        raise ConfigError(f"train.batch_size {tc.batch_size} exceeds the {len(train_ds)} training images of {config.data.dataset}")
    cc = config.contrastive
    bar = tqdm(total=tc.steps, initial=start_step, desc=config.name, disable=not progress or rank != 0, dynamic_ncols=True)
    running: dict[str, float] = {}
    t_start, summary = time.time(), {}
    for step in range(start_step, tc.steps):
        idx = batch_indices(len(train_ds), tc.batch_size, step, tc.seed)[rank::world]
        batch = train_ds.get_batch(idx)
        images = batch["image"].to(device, non_blocking=True)  # (b, c, h, w)
        outputs = net(images)
        mse = F.mse_loss(outputs.recon, images)
        loss = mse
        closs = torch.zeros((), device=device)
        if cc.enabled:
            closs = contrastive_loss(
                outputs.enc_magnitude, outputs.enc_phase, outputs.out_magnitude, outputs.out_phase, cc, pair_gen
            )
            loss = mse + cc.weight * closs
        if step == tc.inject_nan_at:
            loss = loss * float("nan")
        finite = torch.isfinite(loss.detach()).float()
        if distributed:  # every rank must stop together, or the others hang in the next all-reduce
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            bar.close()
            raise NonFiniteLossError(
                f"{config.name}: non-finite loss at step {step} (loss={loss.item()}, mse={mse.item()}, "
                f"contrastive={closs.item()}); lower train.lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in (("loss", loss), ("mse", mse), ("contrastive", closs)):
            running[key] = running.get(key, 0.0) + float(value.detach())
        running["n"] = running.get("n", 0) + 1
        done = step + 1
        bar.update(1)
        if done % tc.log_every == 0:
            bar.set_postfix(loss=f"{running['loss'] / running['n']:.4g}")
        if done % tc.eval_every == 0 or done == tc.steps:
            val = evaluate(
                net, val_ds, batch_size=tc.batch_size, device=device, seed=tc.seed,
                max_images=tc.eval_images, distributed=distributed,
            )
            metrics: dict[str, Any] = {"step": done}
            n = max(running.pop("n", 1), 1)
            metrics.update({k: v / n for k, v in running.items()})
            if distributed:
                t = torch.tensor([metrics[k] for k in ("loss", "mse", "contrastive")], dtype=torch.float64, device=device)
                dist.all_reduce(t)
                metrics.update(dict(zip(("loss", "mse", "contrastive"), (t / world).tolist())))
            running = {}
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics["steps_per_s"] = (done - start_step) / max(time.time() - t_start, 1e-9)
            history.append(metrics)
            improved = metrics.get(BEST_METRIC, -math.inf) > best
            if improved:
                best = metrics[BEST_METRIC]
            ckpt_dir = None
            if rank == 0:
                payload = {
                    "config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "pair_generator": pair_gen.get_state(), "step": done, "best": best, "history": history,
                }
                _atomic_save(payload, out / "checkpoint_last.pt")
                if improved or not (out / "checkpoint_best.pt").exists():
                    _atomic_link(out / "checkpoint_last.pt", out / "checkpoint_best.pt")
                summary = {"name": config.name, "step": done, "best_" + BEST_METRIC: best, "last": metrics, "history": history}
                _atomic_write_text(json.dumps(summary, indent=2), out / "metrics.json")
                # What a tracker persists: the last checkpoint, marked best when it is.
                ckpt_dir = out / "report_checkpoint"
                ckpt_dir.mkdir(exist_ok=True)
                _atomic_link(out / "checkpoint_last.pt", ckpt_dir / "checkpoint.pt")
                _atomic_write_text(json.dumps({"step": done, "is_best": improved}), ckpt_dir / "meta.json")
            if report is not None:
                metrics["is_best"] = improved
                report(dict(metrics), ckpt_dir)
    bar.close()
    if not summary:
        summary = {"name": config.name, "step": tc.steps, "best_" + BEST_METRIC: best, "history": history}
    return summary


def build_config(profile: str | None, config_file: str | None, overrides: list[str], steps: int | None) -> ExperimentConfig:
    if (profile is None) == (config_file is None):
        raise ConfigError("give exactly one of --profile NAME or --config FILE")
    cfg = get_profile(profile) if profile else load_config_file(config_file)
    if steps is not None:
        overrides = list(overrides) + [f"train.steps={steps}"]
    return cfg.with_overrides(overrides) if overrides else cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctcae_core.train",
        description="Train one CAE / CAE++ / CtCAE configuration (no Ray, no MLflow). Last line: JSON summary.",
    )
    parser.add_argument("--profile", help="named profile, e.g. ctcae_tetrominoes_small (see --list-profiles)")
    parser.add_argument("--config", help="a resolved config file (YAML or JSON) instead of a profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set model.decoder=transpose (repeatable)")
    parser.add_argument("--steps", type=int, help="shortcut for --set train.steps=N")
    parser.add_argument("--out", help="output directory (checkpoints, metrics.json)")
    parser.add_argument("--resume", help="checkpoint to continue from (e.g. DIR/checkpoint_last.pt)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--list-profiles", action="store_true", help="print the profile names and exit")
    args = parser.parse_args(argv)
    if args.list_profiles:
        from ctcae_core.config import list_profiles

        print(json.dumps(list_profiles()))
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    try:
        cfg = build_config(args.profile, args.config, args.overrides, args.steps)
    except ConfigError as e:
        parser.error(str(e))
    summary = fit(cfg, out_dir=args.out, resume=args.resume, progress=not args.no_progress)
    last = summary.get("last", {})
    print(json.dumps({"out": args.out, "step": summary["step"], "best_val_ari_fg": summary.get("best_" + BEST_METRIC),
                      **{k: v for k, v in last.items() if not isinstance(v, (dict, list))}}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
