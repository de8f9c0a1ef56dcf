"""The training loop: ``fit(config, report=...)`` and ``python -m ctcae_core.train``.

It knows nothing of Ray or MLflow: after each evaluation it calls ``report(metrics,
checkpoint_dir)``. Under an initialised ``torch.distributed`` process group (as Ray Train sets
up) it trains with DDP: each rank takes its share of every global batch, metrics are all-reduced,
and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ctcae_core import cli
from ctcae_core.checkpoint import (
    CONFIG_FILE, LAST_FILE, METRICS_FILE, MODEL_FILES, load_checkpoint, resolve_device, save_checkpoint, save_last, write_json,
)
from ctcae_core.config import ConfigError, ExperimentConfig, get_profile, load_config_file
from ctcae_core.contrastive import contrastive_loss
from ctcae_core.data import open_split
from ctcae_core.evaluate import evaluate
from ctcae_core.cli import run_main
from ctcae_core.metric_names import BEST_METRIC, TRAIN_LOSSES
from ctcae_core.model import ComplexAutoEncoder, build_model
from ctcae_core.precision import precision_context

Report = Callable[[dict[str, Any], "Path | None"], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops here."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during ``fit``: it stopped after a whole step and saved the last checkpoint."""


@contextlib.contextmanager
def _stop_after_step(enabled: bool):
    """Turn the first SIGINT into a flag that the loop reads after each step (a second one stops at
    once). Only in the main thread of a single process: DDP ranks must stop together."""
    flag = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT) or signal.default_int_handler

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def open_splits(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """(train, val) datasets of a config, the object-count filter applied to both."""
    n_objects = cfg.data.train_n_objects or None
    return open_split(cfg.data, "train", n_objects), open_split(cfg.data, "val", n_objects)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Global batch of a step: epochs are seeded permutations, so any step is reproducible alone."""
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[j * batch_size : (j + 1) * batch_size]


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class _Run:
    """What one call of ``fit`` carries from step to step."""

    config: ExperimentConfig
    out: Path
    device: torch.device
    distributed: bool  # under an initialised torch.distributed process group
    rank: int
    world: int
    model: ComplexAutoEncoder
    net: torch.nn.Module  # the model, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    pair_gen: torch.Generator  # the contrastive loss's pair sampler
    start_step: int = 0
    best: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    scaler: Any = None  # torch.amp.GradScaler under train.precision fp16 (CUDA), else None


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
    ``metrics.json`` on rank 0 (ctcae_core/checkpoint.py). ``resume`` (a checkpoint file or a
    directory holding ``checkpoint.pt``) continues at the saved step with the saved optimizer and
    sampler state. Returns the summary that ``metrics.json`` holds.
    """
    tc = config.train
    # Everything that can be refused is checked before the run directory is written.
    resolve_device(tc.device)  # before any dataset is generated
    train_ds, val_ds = open_splits(config)
    if len(train_ds) < tc.batch_size:
        raise ConfigError(
            f"train.batch_size {tc.batch_size} exceeds the {len(train_ds)} training images of {config.data.dataset}; "
            f"lower train.batch_size or use a larger dataset"
        )
    if len(val_ds) == 0:
        raise ConfigError(
            f"data.dataset {config.data.dataset}: the val split is empty (with this object-count filter); "
            f"widen data.train_n_objects or use a larger dataset"
        )
    with _stop_after_step(not _is_dist()) as stop:  # from here on, Ctrl-C stops after a whole step
        run = _start(config, Path(out_dir), resume)
        if tc.data_on_device:
            train_ds, val_ds = train_ds.to(run.device), val_ds.to(run.device)
        bar = tqdm(total=tc.steps, initial=run.start_step, desc=config.name, disable=not progress or run.rank != 0,
                   dynamic_ncols=True)
        summary = _loop(run, train_ds, val_ds, report, bar, stop)
    bar.close()
    return summary or _summary(run, tc.steps)


def _loop(run: _Run, train_ds: Any, val_ds: Any, report: Report | None, bar: Any, stop: threading.Event) -> dict[str, Any]:
    """The steps from ``run.start_step`` on; returns the summary of the last evaluation."""
    tc = run.config.train
    running: dict[str, float] = {}
    t_start, summary = time.time(), {}
    saved = run.start_step
    for step in range(run.start_step, tc.steps):
        try:
            losses = _train_step(run, train_ds, step)
        except NonFiniteLossError:
            bar.close()
            raise
        for key, value in losses.items():
            running[key] = running.get(key, 0.0) + value
        running["n"] = running.get("n", 0) + 1
        done = step + 1
        bar.update(1)
        if done % tc.log_every == 0:
            bar.set_postfix(loss=f"{running['loss'] / running['n']:.4g}")
        if done % tc.eval_every == 0 or done == tc.steps:
            metrics = _evaluate(run, val_ds, running, done, t_start)
            running = {}
            improved = metrics.get(BEST_METRIC, -math.inf) > run.best
            if improved:
                run.best = metrics[BEST_METRIC]
            ckpt_dir = None
            if run.rank == 0:
                summary = _summary(run, done, last=metrics)
                ckpt_dir = save_checkpoint(run.out, _payload(run, done), summary, improved=improved)
                saved = done
            if report is not None:
                metrics["is_best"] = improved  # the history entry too: later checkpoints save it with the mark
                report(dict(metrics), ckpt_dir)
        if stop.is_set():
            bar.close()
            if done != saved:
                save_last(run.out, _payload(run, done))
            last = run.out / LAST_FILE
            raise TrainingInterrupted(
                f"{run.config.name}: stopped by Ctrl-C after step {done} of {tc.steps}, checkpoint {last}; "
                f"continue with --resume {last}"
            )
    return summary


def _start(config: ExperimentConfig, out: Path, resume: str | Path | None) -> _Run:
    """Place this process (rank, device), write config.json, build or restore the model and optimizer."""
    tc = config.train
    distributed = _is_dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = resolve_device(tc.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    saved = load_checkpoint(resume, map_location=device) if resume is not None else None
    if saved is not None:
        saved_cfg = saved[1]
        if saved_cfg.data.resolution != config.data.resolution:
            raise ConfigError(
                f"resume {resume}: trained at data.resolution={saved_cfg.data.resolution}, this run asks for "
                f"data.resolution={config.data.resolution}; resume at {saved_cfg.data.resolution} or start a new run"
            )
        if saved_cfg.model != config.model:
            raise ConfigError(
                f"resume {resume}: its model config differs from this run's ({_diff(saved_cfg, config, 'model.')}); "
                f"resume with the checkpoint's model settings or start a new run"
            )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, config.to_dict())

    torch.manual_seed(tc.seed)
    model = build_model(config.model, config.data.resolution).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    pair_gen = torch.Generator().manual_seed(tc.seed + 1)
    run = _Run(config, out, device, distributed, rank, world, model, model, optimizer, pair_gen)
    precision_context(tc.precision, device)  # refuses fp16 off CUDA before any step
    precision_context(tc.eval_precision, device)
    if tc.precision == "fp16":
        run.scaler = torch.amp.GradScaler(device.type)
    if saved is not None:
        payload = saved[2]
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        pair_gen.set_state(payload["pair_generator"])
        run.start_step, run.best, run.history = payload["step"], payload["best"], payload["history"]
    if distributed:
        # Without a loss on the output phases the last layer's phase bias gets no gradient.
        phases_in_loss = config.contrastive.enabled and config.contrastive.layers in ("both", "decoder")
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=not phases_in_loss
        )
    return run


def _train_step(run: _Run, train_ds: Any, step: int) -> dict[str, float]:
    """One optimizer step on this rank's share of the step's global batch; returns its losses."""
    tc, cc, device = run.config.train, run.config.contrastive, run.device
    idx = batch_indices(len(train_ds), tc.batch_size, step, tc.seed)[run.rank :: run.world]
    batch = train_ds.get_batch(idx)
    images = batch["image"].to(device, non_blocking=True)  # (b, c, h, w)
    with precision_context(tc.precision, device):
        outputs = run.net(images)
    mse = F.mse_loss(outputs.recon.float(), images)
    loss = mse
    closs = torch.zeros((), device=device)
    if cc.enabled:
        closs = contrastive_loss(
            outputs.enc_magnitude, outputs.enc_phase, outputs.out_magnitude, outputs.out_phase, cc, run.pair_gen
        )
        loss = mse + cc.weight * closs
    if step == tc.inject_nan_at:
        loss = loss * float("nan")
    finite = torch.isfinite(loss.detach()).float()
    if run.distributed:  # every rank must stop together, or the others hang in the next all-reduce
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1:
        raise NonFiniteLossError(
            f"{run.config.name}: non-finite loss at step {step} (loss={loss.item()}, mse={mse.item()}, "
            f"contrastive={closs.item()}); lower train.lr or check the data"
        )
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    return {"loss": float(loss.detach()), "mse": float(mse.detach()), "contrastive": float(closs.detach())}


def _evaluate(run: _Run, val_ds: Any, running: dict[str, float], done: int, t_start: float) -> dict[str, Any]:
    """The metrics of the evaluation after ``done`` steps, appended to the run's history.

    The running losses since the last evaluation (averaged over ranks), ``val_*`` on the
    validation images, and the training speed since this call of fit began.
    """
    tc = run.config.train
    val = evaluate(
        run.net, val_ds, batch_size=tc.batch_size, device=run.device, seed=tc.seed,
        max_images=tc.eval_images, distributed=run.distributed, precision=tc.eval_precision, colour=tc.eval_colour,
    )
    metrics: dict[str, Any] = {"step": done}
    n = max(running.pop("n", 1), 1)
    metrics.update({k: v / n for k, v in running.items()})
    if run.distributed:
        t = torch.tensor([metrics[k] for k in TRAIN_LOSSES], dtype=torch.float64, device=run.device)
        dist.all_reduce(t)
        metrics.update(dict(zip(TRAIN_LOSSES, (t / run.world).tolist())))
    metrics.update({f"val_{k}": v for k, v in val.items()})
    metrics["steps_per_s"] = (done - run.start_step) / max(time.time() - t_start, 1e-9)
    run.history.append(metrics)
    return metrics


def _payload(run: _Run, done: int) -> dict[str, Any]:
    """The checkpoint payload (its format: ctcae_core/checkpoint.py)."""
    return {
        "config": run.config.to_dict(), "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "pair_generator": run.pair_gen.get_state(), "step": done, "best": run.best, "history": run.history,
    }


def _summary(run: _Run, step: int, last: dict[str, Any] | None = None) -> dict[str, Any]:
    """What metrics.json holds and fit returns (``last``: the latest evaluation's metrics)."""
    summary: dict[str, Any] = {"name": run.config.name, "step": step, "best_" + BEST_METRIC: run.best}
    if last is not None:
        summary["last"] = last
    summary["history"] = run.history
    return summary


def build_config(profile: str | None, config_file: str | None, overrides: list[str], steps: int | None) -> ExperimentConfig:
    if (profile is None) == (config_file is None):
        raise ConfigError(f"--profile and --config: got {'both' if profile else 'neither'}; give exactly one of --profile NAME or --config FILE")
    cfg = get_profile(profile) if profile else load_config_file(config_file)
    if steps is not None:
        overrides = list(overrides) + [f"train.steps={steps}"]
    return cfg.with_overrides(overrides) if overrides else cfg


def main(argv: list[str] | None = None) -> int:
    """The command; an expected failure is one ``error:`` line and exit code 2 (ctcae_core/cli.py)."""
    return run_main(_main, argv, expected=(NonFiniteLossError,))


def _main(argv: list[str] | None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m ctcae_core.train",
        description="Train one CAE / CAE++ / CtCAE configuration (no Ray, no MLflow). Last line: JSON summary.",
    )
    parser.add_argument("--profile", help="named profile, e.g. ctcae_tetrominoes_small (see --list-profiles)")
    parser.add_argument("--config", help="a resolved config file (YAML or JSON) instead of a profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set model.decoder=transpose (repeatable)")
    parser.add_argument("--steps", type=cli.count(1), help="shortcut for --set train.steps=N")
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
    cfg = build_config(args.profile, args.config, args.overrides, args.steps)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise cli.UserError(f"--out {out}: is a file, not a directory; choose another --out")
    if args.resume is not None and not Path(args.resume).exists():
        raise cli.UserError(f"--resume {args.resume}: no such file; pass DIR/checkpoint_last.pt of an earlier run")
    earlier = [n for n in (*MODEL_FILES, METRICS_FILE, CONFIG_FILE) if (out / n).exists()] if out.is_dir() else []
    if earlier and args.resume is None:  # its checkpoints would be overwritten
        raise cli.UserError(
            f"--out {out}: holds an earlier run ({', '.join(earlier)}); continue it with --resume {out / LAST_FILE}, "
            f"or choose another --out"
        )
    new_dir = not out.exists()
    try:
        summary = fit(cfg, out_dir=out, resume=args.resume, progress=not args.no_progress)
    except BaseException:
        _remove_if_unused(out, new_dir)
        raise
    last = summary.get("last", {})
    print(json.dumps({"out": args.out, "step": summary["step"], "best_val_ari_fg": summary.get("best_" + BEST_METRIC),
                      **{k: v for k, v in last.items() if not isinstance(v, (dict, list))}}, sort_keys=True))
    return 0


def _diff(saved: ExperimentConfig, config: ExperimentConfig, prefix: str) -> str:
    """The keys under ``prefix`` whose values differ: ``model.decoder=upsample (now transpose)``."""
    old, new = saved.flat(), config.flat()
    keys = [k for k in old if k.startswith(prefix) and old[k] != new.get(k)]
    return ", ".join(f"{k}={old[k]} (now {new.get(k)})" for k in keys)


def _remove_if_unused(out: Path, new_dir: bool) -> None:
    """After a failed run: remove the directory it created unless a checkpoint made it worth keeping."""
    if new_dir and out.is_dir() and not any((out / name).exists() for name in MODEL_FILES):
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
