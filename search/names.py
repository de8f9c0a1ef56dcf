"""The names that cross process boundaries in a study: MLflow tags, trial result keys, the default
tracking URI.

The trial workers (search/trainable.py) write result keys that the driver (search/run.py,
search/results.py, search/tracking.py) reads; the driver writes MLflow tags that the readers
(search/report.py, search/evaluate.py) search for, later and in other processes. Each name is
defined here once. Importing this module imports neither Ray nor MLflow. The names of the metrics
themselves belong to the library: ctcae_core/metric_names.py.
"""
from __future__ import annotations

import os
from pathlib import Path

# --- MLflow tags (search/tracking.py writes them; search/report.py and search/evaluate.py read them)
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: a trial's run -> the study's parent run
TAG_GIT_COMMIT_MLFLOW = "mlflow.source.git.commit"
TAG_SOURCE_NAME = "mlflow.source.name"  # MLflow's own: the UI's "Source" column (parent and trials)
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_USER = "mlflow.user"  # MLflow's own: the UI's "Created by" column (parent and trials)
TAG_SEARCH_PREFIX = "search."  # child: search.<short key> = the trial's value, one tag per searched key and the seed
TAG_KIND = "ctcae.kind"  # "study" (parent run) | "trial" (child run)
TAG_STUDY = "ctcae.study"  # parent: the study name
TAG_STUDY_PATH = "ctcae.study_path"  # parent: the Ray experiment path, to find the run again on resume
TAG_TRIAL = "ctcae.trial_id"  # child: the Tune trial id
TAG_TRIAL_NAME = "ctcae.trial_name"  # child
TAG_SEARCHED = "ctcae.searched"  # child: JSON list of the config keys the trial sampled
TAG_REASON = "ctcae.end_reason"  # child: why a trial did not finish
TAG_STORAGE = "ctcae.storage"  # parent: the Ray experiment directory (checkpoints under train_runs/<trial>/)
TAG_OPTUNA = "ctcae.optuna_storage"  # parent: the Optuna storage URL (password redacted)
TAG_GIT_COMMIT = "ctcae.git_commit"  # parent
TAG_RAY_ADDRESS = "ctcae.ray_address"  # parent
TAG_SMOKE_TEST = "ctcae.smoke_test"  # parent: "True" for --smoke-test studies
BASE_CONFIG_ARTIFACT = "study/base_config.yaml"  # parent: the study's base config (a trial's value of a key it does not log)
TAG_SUMMARY_PREFIX = "ctcae.summary."  # parent: the study's figures (wall time, trial counts) as tags, off the charts

# --- the config keys every trial logs as MLflow params, besides its searched (and active) keys;
# search/reporting reads them back (seeds, dataset, the architecture toggles that name a model)
SEED_KEYS = ("train.seed", "data.data_seed")
DATASET_KEY = "data.dataset"
TRAIN_FILTER_KEY = "data.train_n_objects"
ARCH_KEYS = ("model.decoder", "model.out_conv", "model.out_sigmoid", "contrastive.weight")
KEY_PARAMS = (*ARCH_KEYS, *SEED_KEYS, DATASET_KEY, TRAIN_FILTER_KEY, "data.test_n_objects", "data.resolution",
              "train.steps", "train.batch_size", "train.lr")

# --- keys of the results a trial reports to Tune (besides the metrics)
FINAL_KEY = "test_done"  # 1 in the last result of a trial whose test evaluation ran
NONFINITE_KEY = "nonfinite_loss"  # 1 when training stopped on a NaN / infinite loss
NONFINITE_MSG = "nonfinite_error"  # ... and the error message


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
