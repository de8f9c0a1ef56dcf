"""Run a study: ``python search/run.py --space ablations/arch.yaml``.

The top Ray layer: a ``Tuner`` over the per-trial driver (search/trainable.py) with Optuna as the
searcher (TPE, random or grid, stored in SQLite or any SQLAlchemy URL, one study per study name),
ASHA as the optional scheduler (budget in training steps), and an MLflow parent run per study
with one child run per trial (search/tracking.py). Ctrl-C leaves a study that ``--resume``
completes. At the end a table of the best trials is printed and written as CSV and Parquet next
to the Ray results.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ctcae_core.cli import ArgumentParser, count, run_main
from search.names import (
    BASE_CONFIG_ARTIFACT,
    TAG_GIT_COMMIT,
    TAG_SUMMARY_PREFIX,
    TAG_OPTUNA,
    TAG_RAY_ADDRESS,
    TAG_SMOKE_TEST,
    TAG_STORAGE,
    default_tracking_uri,
)
from search.redact import redact
from search.space import STUDY_NAME, StudyError, load_study
from search.study import Study
from search.reach import TrackingError, check_tracking_uri

ROOT = Path(__file__).resolve().parents[1]  # the checkout: its git commit, and the trials' PYTHONPATH

EXIT_INTERRUPTED = 130
TRAIN_ENV_DEFAULTS = {
    # the Train controller notices a finished (or dead) worker group within 0.5 s instead of 2 s
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # a busy machine can take more than the default 60 s to start a worker group
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
}


def trial_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment variables every trial's Train controller and workers get.

    Ray workers run in their own working directories, so a relative ``CTCAE_DATA_CACHE`` is made
    absolute here; otherwise each trial would generate its datasets again in its own folder.
    """
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))}
    for key, value in TRAIN_ENV_DEFAULTS.items():
        env[key] = environ.get(key, value)
    if environ.get("CTCAE_DATA_CACHE"):
        env["CTCAE_DATA_CACHE"] = str(Path(environ["CTCAE_DATA_CACHE"]).expanduser().absolute())
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", required=True, help="study file (ablations/*.yaml)")
    p.add_argument("--name", help="study name (default: the file's `name`, else its stem)")
    p.add_argument("--num-samples", type=count(1), help="number of trials (overrides search.num_samples)")
    p.add_argument("--max-concurrent", type=count(1), help="concurrent trials (overrides search.max_concurrent)")
    p.add_argument("--address", help="join a running Ray cluster ('auto' or host:port); default: start a local one")
    p.add_argument("--num-cpus", type=count(1), help="CPUs of the local Ray instance (ignored with --address)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the study name)")
    p.add_argument("--storage", help="where Ray keeps results (shared storage on a cluster; default ./ray_results)")
    p.add_argument(
        "--optuna-storage",
        help="SQLAlchemy URL of the Optuna storage (default: $CTCAE_OPTUNA_STORAGE or sqlite:///<storage>/optuna.db)",
    )
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    resume.add_argument("--resume-if-exists", action="store_true",
                        help="resume the study if it exists, start it otherwise (re-submitted cluster jobs)")
    p.add_argument("--smoke-test", action="store_true", help="tiny model, few steps, at most 4 trials")
    p.add_argument("--top", type=count(1), default=10, help="rows of the final table to print (default 10)")
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> Study:
    """The validated study with command-line overrides applied (raises StudyError)."""
    from dataclasses import replace

    study = load_study(args.space, smoke=args.smoke_test)
    search = study.search
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise StudyError(f"--num-samples: got {args.num_samples}; give an integer >= 1")
        if search.algorithm == "grid" and args.num_samples > len(study.grid_points()):
            raise StudyError(f"--num-samples: {args.num_samples} exceeds the {len(study.grid_points())} grid points; give at most that")
        search = replace(search, num_samples=args.num_samples)
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            raise StudyError(f"--max-concurrent: got {args.max_concurrent}; give an integer >= 1")
        search = replace(search, max_concurrent=args.max_concurrent)
    if args.name is not None and not STUDY_NAME.fullmatch(args.name):
        raise StudyError(f"--name {args.name!r}: not a valid study name; use letters, digits, '_', '-', '.'")
    name = args.name or study.name
    return replace(study, name=name, search=search)


def optuna_storage_url(args: argparse.Namespace, storage: str) -> str:
    url = args.optuna_storage or os.environ.get("CTCAE_OPTUNA_STORAGE")
    if url:
        return url
    if "://" in storage:
        raise StudyError("--storage is a URI, where no Optuna SQLite file can live; give the Optuna storage with --optuna-storage or CTCAE_OPTUNA_STORAGE")
    return f"sqlite:///{Path(storage) / 'optuna.db'}"


def build_searcher(study: Study, url: str) -> Any:
    """OptunaSearch over the study's define-by-run space, stored at ``url`` under the study name."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    obj = study.objective
    return OptunaSearch(
        space=study.sample,
        metric=list(obj.metrics) if obj.multi else obj.metric,
        mode=list(obj.modes) if obj.multi else obj.mode,
        sampler=study.optuna_sampler(),
        study_name=study.name,
        storage=optuna.storages.RDBStorage(url),
    )


def build_scheduler(study: Study) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = study.scheduler
    if s.type == "none":
        return FIFOScheduler()
    # stop_last_trials=False: a trial that reaches max_t finishes normally (and gets its test evaluation)
    return ASHAScheduler(
        time_attr="step",
        metric=s.metric,
        mode=s.mode,
        # rungs lie below the budget: a trial that trains to max_t is never cut at its last evaluation
        max_t=max(s.max_t - 1, s.grace_period),
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        stop_last_trials=False,
    )


def optuna_study_exists(url: str, name: str) -> bool:
    import optuna

    try:
        return name in {s.study_name for s in optuna.study.get_all_study_summaries(optuna.storages.RDBStorage(url))}
    except Exception:  # noqa: BLE001 - a new storage has no tables yet
        return False


def should_resume(args: argparse.Namespace, name: str, exp_path: str, optuna_url: str, restorable: bool,
                  optuna_exists: Callable[[], bool]) -> bool:
    """Resume (True) or start (False) the study; raises StudyError when neither is safe.

    ``--resume`` needs the Ray experiment at `exp_path`; a plain run refuses to overwrite one (or an
    Optuna study of the same name); ``--resume-if-exists`` resumes when the experiment exists and
    starts otherwise, so a re-submitted cluster job continues its study instead of failing.
    """
    if args.resume and not restorable:
        raise StudyError(f"--resume: no study {name!r} to resume at {exp_path}; drop --resume to start it, or check --storage and --name")
    if args.resume or (args.resume_if_exists and restorable):
        return True
    if restorable:
        raise StudyError(f"study {name!r} already exists at {exp_path}; pass --resume or another --name")
    if optuna_exists():
        advice = (f"its Ray experiment {exp_path} is gone, so it cannot be resumed; pass another --name"
                  if args.resume_if_exists else "pass --resume or another --name")
        raise StudyError(f"Optuna study {name!r} already exists in {redact(optuna_url)}; {advice}")
    return False


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps its state (local paths or URIs)."""

    storage: str  # the Ray storage root
    experiment: str  # the study's Ray experiment: <storage>/<name>
    trial_times: str  # trial wall times (results.TrialClock)
    optuna: str  # the Optuna storage URL


def study_paths(args: argparse.Namespace, study: Study) -> StudyPaths:
    """The study's Ray storage (created when local), experiment directory and Optuna storage."""
    storage = args.storage or str(Path.cwd() / "ray_results")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    exp_path = f"{storage.rstrip('/')}/{study.name}"
    return StudyPaths(storage, exp_path, f"{exp_path}/trial_times.json", optuna_storage_url(args, storage))


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the study of ``args.space``; returns the exit code."""
    t_start = time.time()
    study = configure(args)
    check_local_resources(args, study)
    uri = args.tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    paths = study_paths(args, study)

    from ray import tune

    args.resume = should_resume(args, study.name, paths.experiment, paths.optuna, tune.Tuner.can_restore(paths.experiment),
                                lambda: optuna_study_exists(paths.optuna, study.name))
    address = start_ray(args)
    tracker, parent = open_parent_run(args, study, uri, paths, address)
    print(f"[ctcae] study {study.name}: {study.search.num_samples} trials ({study.search.algorithm}), "
          f"Ray {address}, MLflow {redact(uri)} (parent run {parent}), results {redact(paths.experiment)}", flush=True)
    results = build_tuner(args, study, uri, parent, paths).fit()
    return finish(args, study, results, tracker, parent, paths, t_start)


def check_local_resources(args: argparse.Namespace, study: Study) -> None:
    """A local Ray that cannot place one trial's workers waits for ever: refuse before it starts."""
    if args.address:
        return
    r = study.resources
    if r.gpus_per_worker > 0:
        import torch

        have = torch.cuda.device_count()
        if have < r.gpus_per_worker * r.workers:
            raise StudyError(
                f"{study.path}: resources: {r.workers} worker(s) x gpus_per_worker {r.gpus_per_worker:g}, but this "
                f"machine has {have} GPU(s); set resources.gpus_per_worker: 0, or pass --address of a cluster with GPUs"
            )
    cpus = args.num_cpus or os.cpu_count() or 1
    if r.cpus_per_worker * r.workers > cpus:
        raise StudyError(
            f"{study.path}: resources: {r.workers} worker(s) x cpus_per_worker {r.cpus_per_worker:g} exceed the {cpus} "
            f"CPUs of the local Ray; lower them, raise --num-cpus, or pass --address of a cluster"
        )


def start_ray(args: argparse.Namespace) -> str:
    """Join the cluster at ``--address`` or start a local Ray; returns its GCS address."""
    import ray

    runtime_env = {"env_vars": trial_env(os.environ)}
    if args.address:
        ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, runtime_env=runtime_env)
    return ray.get_runtime_context().gcs_address


def open_parent_run(args: argparse.Namespace, study: Study, uri: str, paths: StudyPaths, address: str) -> tuple[Any, str]:
    """The study's MLflow parent run (the existing one on resume); a new one gets the study file,
    the base config and the study's parameters. Returns (tracker, parent run id)."""
    from search.runview import provenance_tags
    from search.tracking import Tracker, git_commit

    tracker = Tracker(uri, args.experiment or study.name)
    commit = git_commit(ROOT)
    parent = tracker.start_parent(
        study.name,
        paths.experiment,
        {**provenance_tags(commit), TAG_GIT_COMMIT: commit, TAG_RAY_ADDRESS: address,
         TAG_STORAGE: redact(paths.experiment), TAG_OPTUNA: redact(paths.optuna), TAG_SMOKE_TEST: str(study.smoke)},
        resume=args.resume,
    )
    if not args.resume:
        import yaml

        tracker.log_text(parent, study.text, f"study/{Path(study.path).name}")
        tracker.log_text(parent, yaml.safe_dump(study.base.to_dict(), sort_keys=False), BASE_CONFIG_ARTIFACT)
        tracker.log_params(parent, {"profile": study.profile, "algorithm": study.search.algorithm,
                                    "num_samples": study.search.num_samples, "searched": ",".join(study.keys),
                                    "objective": ",".join(f"{m}:{o}" for m, o in zip(study.objective.metrics, study.objective.modes))})
    return tracker, parent


def build_tuner(args: argparse.Namespace, study: Study, uri: str, parent: str, paths: StudyPaths) -> Any:
    """The Tuner over the per-trial driver: restored from the experiment on resume, else new."""
    from ray import tune

    from search.results import TrialClock
    from search.runview import provenance_tags
    from search.tracking import MlflowStudyCallback, git_commit
    from search.trainable import TrialRuntime, run_trial

    runtime = TrialRuntime(study=study, train_storage=f"{paths.experiment}/train_runs", metric=study.objective.metric,
                           mode=study.objective.mode)
    res = study.resources
    if res.in_process:  # the trial process trains: it holds the worker's resources itself
        held = res.per_worker()
    else:
        # The trial driver only waits on its TorchTrainer: it holds no CPU, the workers do (a token
        # byte of memory, because Tune refuses an all-zero resource request).
        held = {"CPU": 0, "memory": 1}
    trainable = tune.with_resources(tune.with_parameters(run_trial, runtime=runtime), held)
    if args.resume:
        return tune.Tuner.restore(paths.experiment, trainable, resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(study, paths.optuna),
            scheduler=build_scheduler(study),
            num_samples=study.search.num_samples,
            max_concurrent_trials=study.search.max_concurrent,
            # Reuse the trial driver process (and its imports) for the next trial; not with a
            # scheduler: an early-stopped driver is still blocked in TorchTrainer.fit(), and
            # Tune would fail the next trial when it cannot reset that actor.
            reuse_actors=study.scheduler.type == "none",
        ),
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=paths.storage,
            callbacks=[MlflowStudyCallback(uri, args.experiment or study.name, parent, study, provenance_tags(git_commit(ROOT))),
                       TrialClock(paths.trial_times)],
            # Train retries its workers; an in-process trial is retried by Tune, from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=res.max_failures if res.in_process else 0),
            # in-process trials keep their last two checkpoints in Tune (the test's best is kept by the trial)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2) if res.in_process else None,
        ),
    )


def finish(args: argparse.Namespace, study: Study, results: Any, tracker: Any, parent: str, paths: StudyPaths, t_start: float) -> int:
    """The results table, the study's summary on the parent run, and its end: FINISHED when every
    trial ran, else KILLED with the command that resumes it (exit code 130)."""
    from search.results import format_table, read_trial_times, results_table, trial_status, write_table

    trials = results._experiment_analysis.trials
    statuses = [trial_status(t) for t in trials]
    complete = len(trials) >= study.search.num_samples and "interrupted" not in statuses

    df = results_table(trials, study, read_trial_times(paths.trial_times) if "://" not in paths.trial_times else {})
    if "://" not in paths.experiment:
        csv, parquet = write_table(df, Path(paths.experiment))
        print(f"[ctcae] results table: {csv} and {parquet}")
    print(format_table(df, args.top))
    wall = time.time() - t_start
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(f"[ctcae] study {study.name}: {counts}, wall time {wall:.1f} s", flush=True)
    if "overhead_s" in df and df["overhead_s"].notna().any():
        o = df["overhead_s"].dropna()
        parts = [f"{name} {df[col].dropna().mean():.1f} s" for col, name in
                 (("worker_start_s", "worker start"), ("test_time_s", "test evaluation"))
                 if col in df and df[col].notna().any()]
        print(f"[ctcae] per-trial overhead (trial wall time - training time): mean {o.mean():.1f} s, "
              f"min {o.min():.1f} s, max {o.max():.1f} s over {len(o)} trials"
              + (f"; of it, mean {', '.join(parts)}" if parts else ""), flush=True)
    # the study's figures as tags: metrics of the parent run would join every trial chart
    summary = {"wall_s": f"{wall:.1f}", "n_trials": len(trials), **{f"n_{k}": v for k, v in counts.items()}}
    for k, v in summary.items():
        tracker.client.set_tag(parent, f"{TAG_SUMMARY_PREFIX}{k}", str(v))
    print_links(study, tracker, parent)
    if complete:
        tracker.end(parent, "FINISHED")
        return 0
    tracker.end(parent, "KILLED", f"interrupted after {len(trials)} trials; continue with --resume")
    print(f"[ctcae] study interrupted; continue with: python search/run.py --space {args.space} --resume"
          + (f" --name {study.name}" if args.name else ""), flush=True)
    return EXIT_INTERRUPTED


def print_links(study: Study, tracker: Any, parent: str) -> None:
    """Where to look at the study in the MLflow UI: its trials ranked by the objective, and
    MLflow's Compare page of its trials."""
    from search.names import TAG_PARENT
    from search.runview import compare_url, runs_url, ui_base

    base, served = ui_base(tracker.uri)
    children = tracker.client.search_runs([tracker.experiment_id], f"tags.`{TAG_PARENT}` = '{parent}'", max_results=1000)
    ids = [r.info.run_id for r in sorted(children, key=lambda r: r.info.start_time or 0)]
    obj = study.objective
    if not served:
        print(f"[ctcae] browse the runs: python mlflow/serve.py --backend-store-uri {redact(tracker.uri)}  (then open the links)")
    print(f"[ctcae] MLflow, trials by {obj.metric}: {runs_url(base, tracker.experiment_id, obj.metric, obj.mode)}")
    if ids:
        print(f"[ctcae] MLflow, compare the {len(ids)} trials: {compare_url(base, tracker.experiment_id, ids)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """The command; an expected failure is one ``error:`` line and exit code 2 (ctcae_core/cli.py)."""
    return run_main(lambda a: run(parse_args(a)), argv, expected=(StudyError, TrackingError), clean=redact)


if __name__ == "__main__":
    sys.exit(main())
