"""The one MLflow adapter: a parent run per study, a child run per trial.

All MLflow calls of the platform go through this module, and they all happen in the study's driver
process (the Tune callback below): Ray Train's rank 0 reports metrics through Tune
(``TuneReportCallback`` forwards rank 0's report), so the training workers never import or call
MLflow, and "only rank 0 logs" holds by construction.

Runs are found again by tags, so a resumed study reuses its parent run and the child runs of
trials that already started instead of creating duplicates:
``ctcae.study`` + ``ctcae.study_path`` on the parent, ``ctcae.trial_id`` on children.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search.names import (
    FINAL_KEY,
    TAG_KIND,
    TAG_PARENT,
    TAG_REASON,
    TAG_SEARCHED,
    TAG_STUDY,
    TAG_STUDY_PATH,
    TAG_TRIAL,
    TAG_TRIAL_NAME,
)
from search.redact import redact
from search import runview

# Tune's auto-filled result keys: not metrics of the model.
_TUNE_KEYS = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "hostname", "node_ip",
    "time_since_restore", "iterations_since_restore", "timesteps_total", "episodes_total", "done",
    "checkpoint_dir_name", "should_checkpoint", "date", "experiment_tag", "trial_id", "timesteps_since_restore",
}


def git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode == 0 and len(sha) == 40:
            return sha
    except (OSError, subprocess.SubprocessError):
        pass
    # no git (the container image): the commit the image was built from (k8s/Dockerfile's build arg)
    sha = os.environ.get("CTCAE_GIT_COMMIT", "")
    return sha if re.fullmatch(r"[0-9a-f]{40}", sha) else "unknown"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return float(v)
    return None


class Tracker:
    """Thin wrapper over ``MlflowClient`` for the study's runs."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment_name = experiment
        self.client = _client(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)

    def _find(self, filter_string: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000)

    # --------------------------------------------------------------- parent
    def find_parent(self, study: str, study_path: str) -> str | None:
        runs = self._find(f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'study'")
        runs = [r for r in runs if r.data.tags.get(TAG_STUDY_PATH) == study_path]
        return runs[0].info.run_id if runs else None

    def start_parent(self, study: str, study_path: str, tags: dict[str, str], *, resume: bool) -> str:
        """The study's parent run: the existing one when resuming, else a new one."""
        run_id = self.find_parent(study, study_path) if resume else None
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            for k, v in tags.items():
                self.client.set_tag(run_id, k, v)
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=study,
            tags={**tags, TAG_STUDY: study, TAG_STUDY_PATH: study_path, TAG_KIND: "study"},
        )
        return run.info.run_id

    # --------------------------------------------------------------- children
    def find_child(self, parent_id: str, trial_id: str) -> str | None:
        runs = self._find(f"tags.`{TAG_TRIAL}` = '{trial_id}' and tags.`{TAG_PARENT}` = '{parent_id}'")
        return runs[0].info.run_id if runs else None

    def start_child(self, parent_id: str, trial_id: str, name: str, params: dict[str, Any], tags: dict[str, str],
                    config_yaml: str = "") -> str:
        """The trial's child run (reused if the trial was started before, e.g. before an interrupt).

        A new run is named ``name``, or ``name #2``, ... when a run of this study has that name;
        ``config_yaml`` (the full resolved config) becomes its artifact ``resolved_config.yaml``.
        """
        run_id = self.find_child(parent_id, trial_id)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        taken = [r.info.run_name for r in self._find(f"tags.`{TAG_PARENT}` = '{parent_id}'")]
        run = self.client.create_run(
            self.experiment_id,
            run_name=runview.unique_name(name, taken),
            tags={**tags, TAG_PARENT: parent_id, TAG_TRIAL: trial_id, TAG_KIND: "trial"},
        )
        run_id = run.info.run_id
        self.log_params(run_id, params)
        if config_yaml:
            self.log_text(run_id, config_yaml, "resolved_config.yaml")
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, runview.param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, int(step or 0)) for k, raw in metrics.items() if (v := _num(raw)) is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_images(self, run_id: str, pictures: list[tuple[str, int, bytes]]) -> None:
        """(key, step, PNG bytes) as MLflow images: the UI's image grids and Compare show them by step."""
        import io

        from PIL import Image

        from search.pictures import IMAGE_SECTION

        for key, step, png in pictures:
            with Image.open(io.BytesIO(png)) as im:
                self.client.log_image(run_id, im.convert("RGB"), key=f"{IMAGE_SECTION}/{key}", step=step)

    def end(self, run_id: str, status: str, reason: str | None = None) -> None:
        """End a run: FINISHED, FAILED or KILLED, with the reason as a tag."""
        if reason:
            self.client.set_tag(run_id, TAG_REASON, redact(reason)[:4900])
        self.client.set_terminated(run_id, status=status)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status


_OFF_CHARTS = {"is_best"}  # result keys that are not worth a chart of their own
_RUN_FACTS = ("best_step", "world_size", "n_nodes")  # one number per trial: tags ctcae.<key>, not single-point charts
OBJECTIVE_SECTION = "objective"


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """The model metrics of a Tune result (Tune's bookkeeping keys and non-numbers dropped)."""
    out = {}
    for k, v in result.items():
        if k in _TUNE_KEYS or k == "step" or k.startswith("config"):
            continue
        if (x := _num(v)) is not None:
            out[k] = x
    return out


class MlflowStudyCallback(Callback):
    """Tune callback in the driver process: one child run per trial, with its lifecycle.

    Pickled with the experiment state (Tuner.restore brings it back), so it keeps only plain
    values; the MLflow client is recreated lazily.
    """

    def __init__(self, uri: str, experiment: str, parent_id: str, study: Any, provenance: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.parent_id = parent_id
        self.study = study  # search.study.Study: resolves a trial's full config for its params
        self.provenance = dict(provenance or {})  # source, user, git commit: on every trial (runview.provenance_tags)
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._ended: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tracker"] = None
        state["_runs"] = {}
        state["_ended"] = set()
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment)
        return self._tracker

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            import yaml

            study, values = self.study, trial.config
            cfg = study.resolve(values)
            tags = {**getattr(self, "provenance", {}), **runview.search_tags(study, values, cfg), TAG_TRIAL_NAME: str(trial),
                    TAG_SEARCHED: json.dumps(sorted(k for k in values if not k.startswith("_")))}
            self._runs[trial.trial_id] = self.tracker.start_child(
                self.parent_id, trial.trial_id, runview.trial_run_name(study, values, cfg),
                runview.trial_params(study, values, cfg), tags, yaml.safe_dump(cfg.to_dict(), sort_keys=False),
            )
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        self._ended.discard(trial.trial_id)
        if self.tracker.status(run_id) != "RUNNING":
            self.tracker.client.update_run(run_id, status="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(FINAL_KEY):
            return  # the final test summary is logged at completion
        metrics = {k: v for k, v in metrics_of(result).items() if k not in _OFF_CHARTS}
        # The objectives first: MLflow lists a run's metrics in the order they were first logged
        # (the run page's table, Compare's first metric axis). Their curves once more as
        # objective/<metric>: the chart view sorts a section's charts by name but shows sections
        # named by a key's prefix above "Model metrics", so these open the trials' charts.
        objectives = {m: metrics[m] for m in self.study.objective.metrics if m in metrics}
        metrics = {**objectives, **metrics, **{f"{OBJECTIVE_SECTION}/{m}": v for m, v in objectives.items()}}
        self.tracker.log_metrics(self._run_id(trial), metrics, result.get("step"))
        checkpoint = reported_checkpoint(trial, result)
        if checkpoint is not None:
            self._log_pictures(trial, checkpoint)

    def _log_pictures(self, trial: Any, checkpoint: Any) -> None:
        """An evaluation's pictures (search/pictures.py) as MLflow images of the trial's run."""
        from search.pictures import read_pictures

        try:
            pictures = read_pictures(checkpoint)
            if pictures:
                self.tracker.log_images(self._run_id(trial), pictures)
        except Exception as e:  # noqa: BLE001 - pictures are a view; a lost one must not fail the study
            print(f"[ctcae] trial {trial.trial_id}: pictures of {redact(str(checkpoint.path))} not logged: {e}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        last = trial.last_result or {}
        if last.get(FINAL_KEY):
            self._log_final(run_id, trial, last)
            self.tracker.end(run_id, "FINISHED")
        else:
            step = last.get("step", "?")
            self.tracker.end(run_id, "KILLED", f"early-stopped by the scheduler at step {step}")
        self._ended.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        self.tracker.end(run_id, "FAILED", failure_reason(trial))
        self._ended.add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:
            if trial.trial_id in self._runs and trial.trial_id not in self._ended:
                run_id = self._runs[trial.trial_id]
                if self.tracker.status(run_id) == "RUNNING":
                    self.tracker.end(run_id, "KILLED", "interrupted; continue with search/run.py --resume")

    def _log_final(self, run_id: str, trial: Any, last: dict[str, Any]) -> None:
        # test metrics, the objectives' values at the tested checkpoint (best_val_<objective>) and
        # timings; the bare objective keys and the other best_val_* repeat values of the history
        keep_best = {f"best_{m}" for m in self.study.objective.metrics}
        test = {k: v for k, v in metrics_of(last).items()
                if (not k.startswith(("val_", "best_val_")) and k != FINAL_KEY) or k in keep_best}
        best_step = int(last.get("best_step", 0))
        for k in _RUN_FACTS:
            if k in test:
                self.tracker.client.set_tag(run_id, f"ctcae.{k}", str(int(test.pop(k))))
        self.tracker.log_metrics(run_id, test, best_step)
        checkpoint = reported_checkpoint(trial, last)  # the final report's: config, test metrics, PNGs
        if checkpoint is not None:
            with tempfile.TemporaryDirectory() as tmp:
                local = checkpoint.to_directory(tmp)
                self.tracker.log_artifacts(run_id, local)


def reported_checkpoint(trial: Any, result: dict[str, Any]) -> Any:
    """The checkpoint reported with a trial's result, or None: rank 0's Ray Train checkpoint
    (``checkpoint_path``, from TuneReportCallback) or, for a trial that trains in its own process
    (``resources.in_process``), the Tune checkpoint named by ``checkpoint_dir_name``."""
    from ray.train import Checkpoint

    if result.get("checkpoint_path"):
        return Checkpoint(result["checkpoint_path"])
    name = result.get("checkpoint_dir_name")
    if name:
        storage = trial.storage
        return Checkpoint(f"{storage.trial_fs_path}/{name}", filesystem=storage.storage_filesystem)
    return None


def failure_reason(trial: Any) -> str:
    """A one-paragraph reason from a failed Tune trial's error."""
    text = ""
    try:
        err = trial.get_error()
        text = str(err) if err is not None else ""
    except Exception:  # noqa: BLE001 - best effort: the error file may be gone
        pass
    if not text and trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text()
    found = re.findall(r"NonFiniteLossError: (.+)", text)
    if found:
        return f"non-finite loss: {found[-1].strip()}"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-3:]) if lines else "trial failed"
