"""What a study looks like in the MLflow UI: trial run names, search tags, params, provenance, links.

Pure functions of the study and a trial's sampled values; search/tracking.py logs what they
return, search/run.py prints the links. Imports neither Ray nor MLflow.

* A trial's run name is its searched values and its seed, short and stable:
  ``decoder=upsample sigmoid=0 w=1e-4 T=0.07 seed=1``; inactive parameters (a ``when`` that does
  not hold) are left out. The same values again in one study get `` #2``, `` #3`` (tracking.py).
* The same assignment, with the values as logged params write them, as tags ``search.<short key>``:
  the UI's search box filters on them (``tags.search.decoder = 'upsample'``).
* Params: the searched keys the trial used plus a few key config values (search/names.py
  KEY_PARAMS), never a key that has no effect in this trial; the full config is an artifact.
"""
from __future__ import annotations

import getpass
import json
import os
from collections import Counter
from typing import Any, Iterable
from urllib.parse import quote, urlencode

from search.names import (
    KEY_PARAMS,
    TAG_GIT_COMMIT_MLFLOW,
    TAG_KIND,
    TAG_SEARCH_PREFIX,
    TAG_SOURCE_NAME,
    TAG_SOURCE_TYPE,
    TAG_USER,
)
from search.redact import redact

SEED_KEY = "train.seed"
# short labels where the last part of the dotted key says too little or too much
SHORT = {"model.out_sigmoid": "sigmoid", "model.out_conv": "conv", "contrastive.weight": "w",
         "contrastive.temperature": "T", "train.seed": "seed"}
DEFAULT_UI = "http://127.0.0.1:5000"  # python mlflow/serve.py


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """Dotted key -> its label in run names and ``search.`` tags: SHORT, else the last part of the
    key; the full key where two keys of the study would get the same label."""
    keys = list(dict.fromkeys(keys))
    label = {k: SHORT.get(k, k.rsplit(".", 1)[-1]) for k in keys}
    counts = Counter(label.values())
    return {k: (v if counts[v] == 1 else k) for k, v in label.items()}


def param_text(value: Any) -> str:
    """A value as an MLflow param (and a ``search.`` tag) holds it."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def short_value(value: Any) -> str:
    """A value as a run name shows it: booleans 0/1, floats in 3 significant digits (1e-4, 0.07)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            mantissa, exp = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(short_value(v) for v in value)
    return str(value)


def assignment(study: Any, overrides: dict[str, Any], config: Any) -> dict[str, Any]:
    """The trial's searched values that took effect (study order), then the seed."""
    out = {k: overrides[k] for k in study.keys if k in overrides}
    out.setdefault(SEED_KEY, config.train.seed)
    return out


def _labels(study: Any) -> dict[str, str]:
    return short_keys([*study.keys, SEED_KEY])


def trial_run_name(study: Any, overrides: dict[str, Any], config: Any) -> str:
    """``decoder=upsample sigmoid=0 w=1e-4 T=0.07 seed=1``: the trial's searched values and seed."""
    labels = _labels(study)
    return " ".join(f"{labels[k]}={short_value(v)}" for k, v in assignment(study, overrides, config).items())


def unique_name(name: str, taken: Iterable[str]) -> str:
    """``name``, or ``name #2``, ``#3``, ... when another run of the study already has it."""
    taken = set(taken)
    if name not in taken:
        return name
    i = 2
    while f"{name} #{i}" in taken:
        i += 1
    return f"{name} #{i}"


def search_tags(study: Any, overrides: dict[str, Any], config: Any) -> dict[str, str]:
    """``search.<label>`` -> value (as a param holds it) for each searched key that took effect and the seed."""
    labels = _labels(study)
    return {f"{TAG_SEARCH_PREFIX}{labels[k]}": param_text(v) for k, v in assignment(study, overrides, config).items()}


def inactive_keys(study: Any, overrides: dict[str, Any], config: Any) -> set[str]:
    """Config keys with no effect in this trial: searched keys whose ``when`` did not hold, and
    the contrastive loss's settings when its weight is 0."""
    out = {k for k in study.keys if k not in overrides}
    if not config.contrastive.enabled:
        out |= {k for k in config.flat() if k.startswith("contrastive.") and k != "contrastive.weight"}
    return out


def trial_params(study: Any, overrides: dict[str, Any], config: Any) -> dict[str, Any]:
    """The params a trial logs: the key config values and the searched keys, inactive ones left out."""
    flat = config.flat()
    skip = inactive_keys(study, overrides, config)
    keys = [*KEY_PARAMS, *(k for k in study.keys if k not in KEY_PARAMS)]
    return {k: flat[k] for k in keys if k in flat and k not in skip}


def user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def provenance_tags(commit: str, source: str = "search/run.py") -> dict[str, str]:
    """The tags MLflow's UI shows as Source, Created by and the git commit (every run of a study)."""
    return {TAG_SOURCE_NAME: source, TAG_SOURCE_TYPE: "LOCAL", TAG_USER: user(), TAG_GIT_COMMIT_MLFLOW: commit}


def ui_base(tracking_uri: str) -> tuple[str, bool]:
    """(the UI's address, whether it is the tracking server itself); a file or database store is
    browsed through ``python mlflow/serve.py --backend-store-uri ...`` on DEFAULT_UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return redact(tracking_uri).rstrip("/"), True
    return DEFAULT_UI, False


def runs_url(base: str, experiment_id: str, metric: str, mode: str) -> str:
    """The experiment's runs table in the model-training view, trials only (the parent run
    hidden), best objective first."""
    query = urlencode({
        "workflowType": "machine_learning",
        "searchFilter": f"tags.`{TAG_KIND}` = 'trial'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": "true" if mode == "min" else "false",
    }, quote_via=quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's Compare page of these runs (parallel coordinates, scatter, params side by side)."""
    query = urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])}, quote_via=quote)
    return f"{base}/#/compare-runs?{query}"

