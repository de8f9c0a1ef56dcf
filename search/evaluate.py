"""Evaluate a trained trial on another dataset or other object counts, and log the result to its run.

``python search/evaluate.py --run RUN_ID --dataset SPEC [--n-objects 5 6] [--tracking-uri URI]``
``python search/evaluate.py --checkpoint FILE --dataset SPEC --n-objects 5 6 [--run RUN_ID]``

With ``--run`` alone, the trial's checkpoint is found where the study kept it: the parent run's
``ctcae.storage`` tag (the Ray experiment directory; ``--storage`` overrides the Ray storage root
when the results moved), ``train_runs/<ctcae.trial_id>/``, the reported checkpoint whose step is
the trial's tested (best) step. Results are logged to the run as metrics
``<prefix>_<metric>`` and ``<prefix>_<metric>_n<k>`` (prefix default: ``eval_<dataset>``, e.g.
``eval_multi_dsprites_2-6_ari_fg_n6``; ctcae_core/metric_names.py) at the checkpoint's step, and as the artifact
``eval/<prefix>.json``. With ``--checkpoint`` and no ``--run`` nothing is logged. The last line of
stdout is the result as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ctcae_core.cli import ArgumentParser, count, json_safe, run_main
from search.names import TAG_PARENT, TAG_STORAGE, TAG_STUDY, TAG_TRIAL, default_tracking_uri
from search.reach import TrackingError, check_tracking_uri
from search.redact import redact


class EvaluateError(RuntimeError):
    """The run or its checkpoint cannot be found."""


def metric_prefix(dataset: str) -> str:
    """``eval_<dataset>`` with characters MLflow metric names do not allow replaced by '_'."""
    name = Path(dataset).name if ("/" in dataset or os.sep in dataset) else dataset
    return "eval_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def _tested_step(client: Any, run_id: str) -> int | None:
    """The step of the checkpoint the study tested: test metrics are logged at it."""
    hist = client.get_metric_history(run_id, "test_ari_fg")
    return int(hist[-1].step) if hist else None


def find_checkpoint(client: Any, run_id: str, storage: str | None = None) -> tuple[Path, int | None]:
    """The model file of a trial run: its tested step's checkpoint, else the latest one."""
    from ctcae_core.checkpoint import MODEL_FILES, reported_step

    run = client.get_run(run_id)
    trial_id = run.data.tags.get(TAG_TRIAL)
    parent_id = run.data.tags.get(TAG_PARENT)
    if not trial_id or not parent_id:
        raise EvaluateError(f"run {run_id} is not a trial of a study (no {TAG_TRIAL} / {TAG_PARENT} tag); pass --checkpoint FILE")
    parent = client.get_run(parent_id)
    exp_dir = parent.data.tags.get(TAG_STORAGE, "")
    if storage:
        exp_dir = str(Path(storage) / parent.data.tags.get(TAG_STUDY, Path(exp_dir).name))
    if not exp_dir or "://" in exp_dir:
        raise EvaluateError(f"run {run_id}: the study's results are at {exp_dir or '(unknown)'}, not a local path; pass --storage DIR or --checkpoint FILE")
    root = Path(exp_dir) / "train_runs" / trial_id
    files = [p for name in MODEL_FILES for p in root.rglob(name)] if root.is_dir() else []
    if not files:
        raise EvaluateError(f"no checkpoint of trial {trial_id} under {root}; pass --storage DIR (the Ray storage root) or --checkpoint FILE")
    want = _tested_step(client, run_id)
    steps = {p: reported_step(p) for p in files}
    exact = [p for p, s in steps.items() if want is not None and s == want]
    if exact:
        return exact[0], want
    latest = max(files, key=lambda p: (steps[p] if steps[p] is not None else -1, p.stat().st_mtime))
    if want is not None:
        # Ray keeps only CheckpointConfig.num_to_keep checkpoints: the tested one may be gone.
        print(f"[ctcae] warning: the tested checkpoint (step {want}) of trial {trial_id} is not under {root} any more; "
              f"evaluating the latest kept one (step {steps[latest]})", file=sys.stderr)
    return latest, steps[latest]


def flatten(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a result as MLflow metrics: ``<prefix>_<k>`` and ``<prefix>_<k>_n<count>``."""
    from ctcae_core.metric_names import flat_metrics

    return {k: v for k, v in flat_metrics(result, prefix).items() if math.isfinite(v)}


def log_result(client: Any, run_id: str, result: dict[str, Any], prefix: str, step: int) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = [Metric(k, v, ts, step) for k, v in flatten(result, prefix).items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{prefix}.json"
        path.write_text(json.dumps(json_safe(result), indent=2, sort_keys=True))
        client.log_artifact(run_id, str(path), "eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", help="MLflow run id of a trial: finds its checkpoint and logs the result to it")
    p.add_argument("--checkpoint", help="model file (checkpoint*.pt); with --run, used instead of the stored one")
    p.add_argument("--dataset", help="dataset spec, e.g. multi_dsprites:2-6, clevr_like, or a directory (default: the training one)")
    p.add_argument("--n-objects", type=count(1), nargs="*", default=[], help="also evaluate each of these object counts on its own")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-images", type=count(1), help="evaluate at most this many images (per count)")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--storage", help="Ray storage root of the study, when its results moved (default: the parent run's tag)")
    p.add_argument("--prefix", help="metric name prefix (default: eval_<dataset>)")
    args = p.parse_args(argv)
    if not args.run and not args.checkpoint:
        p.error("give --run RUN_ID and/or --checkpoint FILE")
    return args


def main(argv: list[str] | None = None) -> int:
    """The command; an expected failure is one ``error:`` line and exit code 2 (ctcae_core/cli.py)."""
    from mlflow.exceptions import MlflowException

    return run_main(_main, argv, expected=(EvaluateError, TrackingError, MlflowException), clean=redact)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    client = None
    step: int | None = None
    if args.run:
        from mlflow.tracking import MlflowClient

        uri = args.tracking_uri or default_tracking_uri()
        check_tracking_uri(uri, existing=True)  # a dead server: a clear error within seconds
        client = MlflowClient(tracking_uri=uri)
        client.get_run(args.run)  # fail early on an unknown run
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise EvaluateError(f"--checkpoint {ckpt}: no such file; pass DIR/checkpoint_best.pt of a run, or --run RUN_ID")
        from ctcae_core.checkpoint import reported_step

        step = reported_step(ckpt)
    else:
        ckpt, step = find_checkpoint(client, args.run, args.storage)
    from ctcae_core.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(ckpt, args.dataset, n_objects=args.n_objects, split=args.split,
                                 batch_size=args.batch_size, device=args.device, max_images=args.max_images)
    if step is None:
        import torch

        step = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("step", 0))
    result["step"] = step
    prefix = args.prefix or metric_prefix(result["dataset"])
    if client is not None:
        log_result(client, args.run, result, prefix, step)
        print(f"[ctcae] logged {prefix}_* (step {step}) to run {args.run}", file=sys.stderr)
    print(json.dumps(json_safe(result), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
