"""Reading a study back from MLflow: its parent run, its child runs, one table row per run."""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from search.names import (  # noqa: F401 - the key names are re-exported for search/reporting/tables.py
    ARCH_KEYS,
    BASE_CONFIG_ARTIFACT,
    DATASET_KEY,
    SEED_KEYS,
    TAG_KIND,
    TAG_PARENT,
    TAG_REASON,
    TAG_SEARCHED,
    TAG_STUDY,
    TAG_TRIAL,
    TRAIN_FILTER_KEY,
)
from search.runview import param_text


class ReportError(RuntimeError):
    """The study cannot be found or read."""


@dataclass
class StudyRuns:
    """A study's parent run and its child runs, as plain values."""

    name: str
    parent: Any  # mlflow.entities.Run
    children: list[Any]
    algorithm: str
    objectives: list[tuple[str, str]]  # (metric, mode)
    searched: list[str]  # union of the children's searched keys (file order where known)
    notes: list[str] = field(default_factory=list)
    # The study's base config as params spell it: the value of a key a trial does not log (an
    # inactive searched key, e.g. model.out_conv of an upsample trial, took the base value).
    base: dict[str, str] = field(default_factory=dict)


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def find_parent(client: Any, study: str, parent_run: str | None = None) -> Any:
    """The study's parent run (the most recent one when several studies share the name)."""
    if parent_run:
        return client.get_run(parent_run)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        raise ReportError("the tracking store has no experiments; pass the --tracking-uri the study ran with")
    runs = _search_all(client, exp_ids, f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'study'")
    if not runs:
        raise ReportError(f"no parent run with tag {TAG_STUDY}={study!r} in any experiment; run the study first "
                          "(python search/run.py --space ablations/....yaml) or check --tracking-uri")
    return max(runs, key=lambda r: r.info.start_time or 0)


def load_study_runs(client: Any, study: str, parent_run: str | None = None) -> StudyRuns:
    parent = find_parent(client, study, parent_run)
    children = _search_all(client, [parent.info.experiment_id], f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    children.sort(key=lambda r: r.info.start_time or 0)
    p = parent.data.params
    algorithm = p.get("algorithm", "")
    objectives: list[tuple[str, str]] = []
    for item in filter(None, p.get("objective", "val_ari_fg:max").split(",")):
        metric, _, mode = item.partition(":")
        objectives.append((metric, mode or "max"))
    searched: list[str] = [k for k in p.get("searched", "").split(",") if k]
    for r in children:
        try:
            keys = json.loads(r.data.tags.get(TAG_SEARCHED, "[]"))
        except ValueError:
            keys = []
        searched += [k for k in keys if k not in searched and not k.startswith("_")]
    name = parent.data.tags.get(TAG_STUDY, study)
    sr = StudyRuns(name, parent, children, algorithm, objectives, searched)
    sr.base = base_params(client, sr)
    return sr


def base_params(client: Any, sr: StudyRuns) -> dict[str, str]:
    """The parent's ``study/base_config.yaml`` flattened, values as logged params hold them.

    {} (and a note) when the parent has none, as for studies logged by other tools.
    """
    import yaml
    from mlflow.exceptions import MlflowException

    from ctcae_core.config import ConfigError, ExperimentConfig

    run_id = sr.parent.info.run_id
    try:
        if not any(f.path == BASE_CONFIG_ARTIFACT for f in client.list_artifacts(run_id, "study")):
            raise FileNotFoundError(BASE_CONFIG_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(run_id, BASE_CONFIG_ARTIFACT, tmp)).read_text()
        flat = ExperimentConfig.from_dict(yaml.safe_load(text)).flat()
    except (MlflowException, OSError, ConfigError, yaml.YAMLError) as e:
        sr.notes.append(f"the parent run has no readable {BASE_CONFIG_ARTIFACT} ({type(e).__name__}): a key a trial "
                        "did not log (an inactive searched key) is left empty, so variants may go unnamed")
        return {}
    return {k: param_text(v) for k, v in flat.items()}


def typed_param(key: str, text: str | None) -> Any:
    """A logged param (a string) back to its config type (bools, ints, floats, tuples)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):  # absent (pandas: NaN)
        return None
    if not isinstance(text, str):
        return text
    from ctcae_core.config import ConfigError, key_type

    try:
        tp = key_type(key)
    except ConfigError:
        return text
    try:
        if tp is bool:
            return text.strip().lower() in ("true", "1")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if getattr(tp, "__origin__", None) is tuple:
            return tuple(json.loads(text))
    except ValueError:
        return text
    return text


def runs_frame(sr: StudyRuns) -> pd.DataFrame:
    """One row per child run: id, status, reason, every param that matters, every final metric."""
    rows = []
    keys = set(sr.searched) | set(SEED_KEYS) | {DATASET_KEY, TRAIN_FILTER_KEY, "data.test_n_objects"} | set(ARCH_KEYS)
    for r in sr.children:
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "trial_id": r.data.tags.get(TAG_TRIAL, ""),
            "reason": r.data.tags.get(TAG_REASON, ""),
        }
        for k in sorted(keys):  # a key the trial did not log took the study's base value
            row[k] = r.data.params.get(k, sr.base.get(k))
        row.update(r.data.metrics)
        rows.append(row)
    return pd.DataFrame(rows)
