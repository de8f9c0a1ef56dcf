"""The two lower Ray layers of a study: the per-worker training function and the per-trial driver.

* ``train_worker`` runs on every Ray Train worker (DDP: gloo on CPU, NCCL on GPU; Ray Train
  initialises ``torch.distributed`` and ``ctcae_core.train.fit`` shards batches by rank and
  all-reduces metrics). Every rank calls ``ray.train.report`` after each evaluation; only rank 0
  attaches the checkpoint. After training, rank 0 evaluates the best reported checkpoint on the
  test split (overall and for each ``data.test_n_objects``), renders the phase/segmentation PNGs
  and reports them as the trial's last checkpoint together with ``test_*`` metrics.
* ``run_trial`` is the Tune function trainable: it builds and fits one ``TorchTrainer`` per trial
  (Ray 2.60 Train V2: ``Tuner(TorchTrainer(...))`` no longer works). ``TuneReportCallback``
  forwards rank 0's reports to Tune, where ASHA and the Optuna searcher see them. A worker that
  dies is restarted from its last checkpoint (``FailureConfig(max_failures)``); a trial restored
  by ``Tuner.restore`` reuses its Train run name, so Train V2 resumes from the stored checkpoints.

Nothing here imports MLflow: tracking happens in the driver process (search/tracking.py).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search.names import FINAL_KEY, NONFINITE_KEY, NONFINITE_MSG
from search.pictures import EvalPictures
from search.study import Study


@dataclass(frozen=True)
class TrialRuntime:
    """Study-wide values every trial needs (shipped once through ``tune.with_parameters``)."""

    study: Study
    train_storage: str  # where the per-trial Train runs keep checkpoints (shared storage on a cluster)
    metric: str  # checkpoint score: the (first) objective
    mode: str


# ----------------------------------------------------------------------------- per worker


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train per-worker function: ``ctcae_core.train.fit`` with Ray reporting."""
    import ray.train
    from ray.train import Checkpoint

    from ctcae_core import train as core_train
    from ctcae_core.config import ExperimentConfig

    worker_start_s = time.time() - loop_config["t0"]  # trial start -> this worker running (Ray start-up cost)
    cfg = ExperimentConfig.from_dict(loop_config["config"])
    metric, mode = loop_config["metric"], loop_config["mode"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if ctx.get_world_size() == 1:
        # One worker: train without DDP (no gradient all-reduce to pay for). Ray Train does not
        # tear down a one-worker process group itself, so this is safe.
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    work = Path(tempfile.mkdtemp(prefix=f"ctcae-r{rank}-"))  # worker-local scratch
    try:
        resume = _resume_file(ray.train.get_checkpoint(), work / "resume")

        pictures = EvalPictures(cfg)

        def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
            out = {k: v for k, v in metrics.items()}
            if checkpoint_dir is not None:  # rank 0: pictures of this evaluation travel in its checkpoint
                pictures(int(metrics["step"]), checkpoint_dir)
            ray.train.report(out, checkpoint=Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)

        t0 = time.perf_counter()
        try:
            core_train.fit(cfg, report=report, out_dir=work / "run", resume=resume, progress=False)
        except core_train.NonFiniteLossError as e:
            # Deterministic: a retry from the last checkpoint would diverge again. Every rank stops
            # together (fit all-reduces the check); the trial driver turns this into the trial's error.
            # The objective keys must be present in every result (Tune's strict metric check): NaN.
            # A checkpoint (rank 0) makes the report reach the trainer's Result, where run_trial sees it.
            metrics, marker = _nonfinite(e, loop_config["objectives"], work if rank == 0 else None)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(marker)) if marker else None)
            return
        train_s = time.perf_counter() - t0
        nodes = _node_ids(ctx.get_world_size())

        # Test evaluation of the best checkpoint (rank 0; the others wait in the final report).
        final: dict[str, Any] = {}
        artifacts = None
        if rank == 0:
            reported = ray.train.get_all_reported_checkpoints()
            final, artifacts = _test_best(cfg, reported, metric, mode, work, loop_config["objectives"])
            final["train_time_s"] = train_s
            final["worker_start_s"] = worker_start_s
            final["test_time_s"] = time.perf_counter() - t0 - train_s
            final["world_size"] = ctx.get_world_size()
            final["n_nodes"] = len(set(nodes))
        final[FINAL_KEY] = 1
        ray.train.report(final, checkpoint=Checkpoint.from_directory(str(artifacts)) if artifacts else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _nonfinite(error: Exception, objectives: list[str], work: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The report of a non-finite loss: NaN objectives (Tune checks every result for them), the
    marker key and the message; with ``work``, also a marker checkpoint directory holding the
    message (``error.txt``)."""
    metrics = {**{m: float("nan") for m in objectives}, NONFINITE_KEY: 1, NONFINITE_MSG: str(error)}
    marker = None
    if work is not None:
        marker = work / "nonfinite"
        marker.mkdir()
        (marker / "error.txt").write_text(str(error))
    return metrics, marker


def _resume_file(ckpt: Any, dest: Path) -> Path | None:
    """Model file to continue from: the last checkpoint of a restarted worker group or restored trial.

    The latest checkpoint can be the final artifacts (a trial interrupted after its test
    evaluation): then the newest reported checkpoint that holds a model is used.
    """
    import ray.train

    from ctcae_core.checkpoint import find_model_file

    if ckpt is None:
        return None
    local = Path(ckpt.to_directory(str(dest)))
    if any(local.glob("*.pt")):
        return find_model_file(local)
    models = [r for r in ray.train.get_all_reported_checkpoints() if "step" in r.metrics]
    if not models:
        return None
    newest = max(models, key=lambda r: r.metrics["step"])
    return find_model_file(Path(newest.checkpoint.to_directory(str(dest) + "_model")))


def _node_ids(world: int) -> list[str]:
    """The Ray node id of every rank (all ranks take part)."""
    import ray
    import torch.distributed as dist

    mine = ray.get_runtime_context().get_node_id()
    if world == 1 or not dist.is_initialized():
        return [mine]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return [str(x) for x in out]


def _test_best(
    cfg: Any, reported: list[Any], metric: str, mode: str, work: Path, objectives: list[str]
) -> tuple[dict[str, Any], Path]:
    """Evaluate the best reported checkpoint on the test split; write artifacts; return test metrics.

    The metrics: ``test_<metric>`` on the whole split and, for each ``data.test_n_objects`` count
    k evaluated on its own, ``test_<metric>_n<k>`` and ``test_count_n<k>`` (ctcae_core/metric_names.py).
    """
    from ctcae_core.checkpoint import find_model_file, load_checkpoint, resolve_device
    from ctcae_core.data import open_split
    from ctcae_core.evaluate import evaluate_checkpoint
    from ctcae_core.metric_names import flat_metrics

    sign = 1.0 if mode == "max" else -1.0
    scored = [r for r in reported if _finite(r.metrics.get(metric))]
    if not scored:
        raise RuntimeError(f"no reported checkpoint has a finite {metric!r}; nothing to test")
    best = max(scored, key=lambda r: (sign * float(r.metrics[metric]), r.metrics.get("step", 0)))
    model_file = find_model_file(Path(best.checkpoint.to_directory(str(work / "best_ckpt"))))
    model, best_cfg, _payload = load_checkpoint(model_file)
    seed = best_cfg.train.seed
    result = evaluate_checkpoint(model_file, by_n_objects=best_cfg.data.test_n_objects, seed=seed,
                                 precision=best_cfg.train.eval_precision)
    out: dict[str, Any] = flat_metrics(result, "test")
    step = int(best.metrics.get("step", 0))
    out["best_step"] = step
    for m in objectives:  # the objectives at the tested checkpoint: what Optuna is told
        out[m] = float(best.metrics[m]) if _finite(best.metrics.get(m)) else float("nan")
    for k, v in best.metrics.items():
        if k.startswith("val_") and _finite(v):
            out[f"best_{k}"] = float(v)

    art = work / "artifacts"
    (art / "pngs").mkdir(parents=True)
    (art / "resolved_config.yaml").write_text(yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    (art / "test_metrics.json").write_text(json.dumps({k: v for k, v in out.items()}, indent=2, sort_keys=True))
    device = resolve_device("auto")
    _render_pngs(model.to(device).eval(), open_split(best_cfg.data, "test"), art / "pngs", device, seed, step)
    return out, art


def _render_pngs(model: Any, dataset: Any, out: Path, device: Any, seed: int, step: int, n: int = 8) -> list[Path]:
    """Phase maps, segmentations and a summary panel of the first ``n`` test images (tested checkpoint)."""
    from ctcae_core.evaluate import write_pictures

    return write_pictures(model, dataset, out, device=device, seed=seed, step=step, n=n)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


# ----------------------------------------------------------------------------- per trial


def run_trial(config: dict[str, Any], runtime: TrialRuntime) -> None:
    """Tune function trainable: fit one TorchTrainer for this trial's config (or, with
    ``resources.in_process``, train right here: ``train_in_process``)."""
    t0 = time.time()
    study = runtime.study
    cfg = study.resolve(config)
    res = study.resources
    if res.in_process:
        train_in_process(cfg, runtime, t0)
        return

    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = res.gpus_per_worker > 0
    per_worker = res.per_worker()
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg.to_dict(), "metric": runtime.metric, "mode": runtime.mode,
                           "objectives": list(study.objective.metrics), "t0": t0},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=trial_id,  # stable across Tuner.restore: Train V2 resumes from this run's checkpoints
            storage_path=runtime.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=res.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=runtime.metric, checkpoint_score_order=runtime.mode
            ),
        ),
    )
    result = trainer.fit()
    metrics = result.metrics or {}
    if metrics.get(NONFINITE_KEY):
        from ctcae_core.train import NonFiniteLossError

        raise NonFiniteLossError(metrics.get(NONFINITE_MSG, "non-finite loss"))


# ----------------------------------------------------------------------------- in the trial process


@dataclass
class _Kept:
    """A reported evaluation kept for the test: its metrics and a local copy of its checkpoint
    (what ``_test_best`` reads of a Ray Train reported checkpoint)."""

    metrics: dict[str, Any]
    checkpoint: Any  # ray.tune.Checkpoint of a local directory


def train_in_process(cfg: Any, runtime: TrialRuntime, t0: float) -> None:
    """``resources.in_process``: the trial trains in this Tune trial process, one worker, no DDP.

    The same reports, pictures, test evaluation and final artifacts as ``train_worker``, sent
    straight to Tune with their checkpoints (the tracking callback finds them by the result's
    ``checkpoint_dir_name``). A retried trial (Tune's ``FailureConfig``, ``resources.max_failures``)
    or a restored study continues from the trial's last checkpoint; the test then takes the best of
    that checkpoint and the evaluations after it. A non-finite loss is reported once and fails the
    trial; a retry finds the marker checkpoint and fails again at once, without training.
    """
    import ray.tune
    import torch

    from ctcae_core import train as core_train
    from ctcae_core.checkpoint import find_model_file

    metric, mode, objectives = runtime.metric, runtime.mode, list(runtime.study.objective.metrics)
    sign = 1.0 if mode == "max" else -1.0
    work = Path(tempfile.mkdtemp(prefix="ctcae-trial-"))
    kept: list[_Kept] = []  # the best evaluation so far (one entry)

    def keep(metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        score = metrics.get(metric)
        if not _finite(score):
            return
        if kept and (sign * float(score), metrics["step"]) < (sign * float(kept[0].metrics[metric]), kept[0].metrics["step"]):
            return
        copy = work / f"best_{metrics['step']}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(checkpoint_dir, copy, copy_function=_link_or_copy)  # later writes replace, not modify, these files
        for old in kept:
            shutil.rmtree(old.checkpoint.path, ignore_errors=True)
        kept[:] = [_Kept(dict(metrics), ray.tune.Checkpoint.from_directory(str(copy)))]

    try:
        resume = None
        restored = ray.tune.get_checkpoint()
        if restored is not None:
            local = Path(restored.to_directory(str(work / "resume")))
            if (local / "error.txt").is_file():
                raise core_train.NonFiniteLossError((local / "error.txt").read_text())
            if any(local.glob("*.pt")):
                resume = find_model_file(local)
                history = torch.load(resume, map_location="cpu", weights_only=False).get("history") or []
                if history:
                    keep(dict(history[-1]), local)

        pictures = EvalPictures(cfg)

        def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
            checkpoint = None
            if checkpoint_dir is not None:
                pictures(int(metrics["step"]), checkpoint_dir)
                keep(metrics, checkpoint_dir)
                checkpoint = ray.tune.Checkpoint.from_directory(str(checkpoint_dir))
            ray.tune.report(dict(metrics), checkpoint=checkpoint)

        worker_start_s = time.time() - t0  # trial start -> training starts (imports, resume)
        t_fit = time.perf_counter()
        try:
            core_train.fit(cfg, report=report, out_dir=work / "run", resume=resume, progress=False)
        except core_train.NonFiniteLossError as e:
            metrics, marker = _nonfinite(e, objectives, work)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(marker)))
            raise
        train_s = time.perf_counter() - t_fit
        final, artifacts = _test_best(cfg, kept, metric, mode, work, objectives)
        final.update(train_time_s=train_s, worker_start_s=worker_start_s,
                     test_time_s=time.perf_counter() - t_fit - train_s, world_size=1, n_nodes=1)
        final[FINAL_KEY] = 1
        ray.tune.report(final, checkpoint=ray.tune.Checkpoint.from_directory(str(artifacts)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
