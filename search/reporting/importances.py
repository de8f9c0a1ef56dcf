"""Optuna's fANOVA hyperparameter importances and the best configuration of a TPE / random study.

From the study's Optuna storage when it can be opened (early-stopped trials included), else from
an in-memory Optuna study rebuilt from the FINISHED MLflow runs.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from search.names import BASE_CONFIG_ARTIFACT, TAG_OPTUNA, TAG_SEARCHED
from search.reporting.runs import StudyRuns, typed_param
from search.reporting.tables import TABLE_METRICS


class BestValues:
    """Per run: the best value of each objective over the run's history (what Optuna was told).

    One per report: each metric history is read from MLflow once, though both the importances
    and the best configuration ask for it.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._best: dict[tuple[str, str, str], float] = {}

    def of(self, fin: pd.DataFrame, objectives: list[tuple[str, str]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for run_id in fin["run_id"]:
            vals = []
            for metric, mode in objectives:
                key = (run_id, metric, mode)
                if key not in self._best:
                    hist = [m.value for m in self.client.get_metric_history(run_id, metric) if math.isfinite(m.value)]
                    self._best[key] = (max(hist) if mode == "max" else min(hist)) if hist else math.nan
                vals.append(self._best[key])
            out[run_id] = vals
        return out


def _study_distributions(client: Any, sr: StudyRuns) -> dict[str, Any]:
    """Optuna distributions from the study file logged to the parent run (``study/*.yaml``)."""
    import optuna.distributions as od

    from search.space import parse_study

    try:
        files = [f.path for f in client.list_artifacts(sr.parent.info.run_id, "study") if f.path.endswith((".yaml", ".yml"))]
        files = [f for f in files if f != BASE_CONFIG_ARTIFACT]
        if not files:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(sr.parent.info.run_id, files[0], tmp)
            study = parse_study(Path(local).read_text(), source=files[0])
    except Exception as e:  # noqa: BLE001 - fall back to distributions inferred from the values
        sr.notes.append(f"study file not readable from the parent run ({type(e).__name__}); distributions inferred from the runs")
        return {}
    dists: dict[str, Any] = {}
    for p in study.params:
        if p.kind in ("choice", "grid"):
            dists[p.key] = od.CategoricalDistribution(list(p.values))
        elif p.kind == "int":
            dists[p.key] = od.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        elif p.kind == "loguniform":
            dists[p.key] = od.FloatDistribution(float(p.low), float(p.high), log=True)
        else:
            dists[p.key] = od.FloatDistribution(float(p.low), float(p.high), step=p.step)
    return dists


def _infer_distribution(values: list[Any]) -> Any:
    import optuna.distributions as od

    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        lo, hi = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            return od.IntDistribution(int(lo), int(hi) if hi > lo else int(lo) + 1)
        log = lo > 0 and hi / lo > 100
        return od.FloatDistribution(float(lo), float(hi) if hi > lo else float(lo) + 1e-12, log=log)
    choices = []
    for v in values:
        if v not in choices:
            choices.append(v)
    return od.CategoricalDistribution(choices)
def _fits(dist: Any, value: Any) -> bool:
    """Whether ``value`` lies in ``dist``: a value outside it would make create_trial raise."""
    import optuna

    try:
        optuna.trial.create_trial(params={"p": value}, distributions={"p": dist}, value=0.0)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def study_from_runs(client: Any, sr: StudyRuns, fin: pd.DataFrame, best: BestValues) -> Any:
    """An in-memory Optuna study rebuilt from the FINISHED runs' params and objective values."""
    import optuna

    dists = _study_distributions(client, sr)
    values = best.of(fin, sr.objectives)
    per_run: dict[str, dict[str, Any]] = {}
    by_run = {r.info.run_id: r for r in sr.children}
    for run_id in fin["run_id"]:
        run = by_run[run_id]
        try:
            keys = json.loads(run.data.tags.get(TAG_SEARCHED, "[]")) or sr.searched
        except ValueError:
            keys = sr.searched
        per_run[run_id] = {k: typed_param(k, run.data.params.get(k)) for k in keys if not k.startswith("_") and k in run.data.params}
    all_keys = {k for d in per_run.values() for k in d}
    for k in all_keys:
        if k not in dists:
            dists[k] = _infer_distribution([d[k] for d in per_run.values() if k in d])
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in sr.objectives]
    study = optuna.create_study(directions=directions) if len(directions) > 1 else optuna.create_study(direction=directions[0])
    for run_id, params in per_run.items():
        vals = values[run_id]
        if not all(math.isfinite(v) for v in vals):
            continue
        params = {k: v for k, v in params.items() if k in dists and _fits(dists[k], v)}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params},
            **({"values": vals} if len(vals) > 1 else {"value": vals[0]}),
        ))
    return study


def open_optuna_study(sr: StudyRuns, url: str | None) -> Any | None:
    """The study the search layer stored (SQLite locally, any SQLAlchemy URL on a cluster), or None."""
    import optuna

    url = url or sr.parent.data.tags.get(TAG_OPTUNA)
    if not url:
        sr.notes.append("no Optuna storage recorded on the parent run (tag ctcae.optuna_storage)")
        return None
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        sr.notes.append(f"Optuna storage {url} not found on this machine")
        return None
    try:
        return optuna.load_study(study_name=sr.name, storage=url)
    except Exception as e:  # noqa: BLE001 - missing study / unreachable database: fall back to MLflow
        sr.notes.append(f"Optuna study {sr.name!r} not readable from {url} ({type(e).__name__}: {e})")
        return None


def importances(client: Any, sr: StudyRuns, fin: pd.DataFrame, optuna_url: str | None, best: BestValues) -> tuple[pd.DataFrame, str]:
    """Optuna's fANOVA importances per objective; returns (table, source description)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_optuna_study(sr, optuna_url)
    source = ""
    if study is not None:
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) >= 2:
            source = f"Optuna storage ({len(done)} COMPLETE Optuna trials, early-stopped ones included)"
        else:
            sr.notes.append(f"the Optuna study has {len(done)} complete trials; rebuilt from MLflow instead")
            study = None
    if study is None:
        if fin.empty:
            return pd.DataFrame(), "no FINISHED runs"
        study = study_from_runs(client, sr, fin, best)
        source = f"rebuilt from {len(study.trials)} FINISHED MLflow runs (objective: best value over each run's history)"
    rows = []
    for i, (metric, _mode) in enumerate(sr.objectives):
        target = None if len(sr.objectives) == 1 else (lambda t, i=i: t.values[i])
        try:
            imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), target=target)
        except (RuntimeError, ValueError) as e:
            sr.notes.append(f"importances for {metric} not computable: {e}")
            continue
        rows += [{"objective": metric, "param": k, "importance": float(v)} for k, v in imp.items()]
    return pd.DataFrame(rows), source


def best_configuration(sr: StudyRuns, fin: pd.DataFrame, best: BestValues) -> dict[str, Any] | None:
    """The FINISHED run with the best (first) objective, with its searched values and test metrics."""
    if fin.empty:
        return None
    metric, mode = sr.objectives[0]
    values = best.of(fin, sr.objectives[:1])
    scored = [(v[0], rid) for rid, v in values.items() if math.isfinite(v[0])]
    if not scored:
        return None
    value, run_id = (max if mode == "max" else min)(scored)
    row = fin.set_index("run_id").loc[run_id]
    params = {k: row.get(k) for k in sr.searched if k in row.index and not k.startswith("_")}
    tests = {m: row.get(m) for _, m in TABLE_METRICS if m in row.index}
    return {"run_id": run_id, "run_name": row.get("run_name"), "objective": metric, "mode": mode, "value": value,
            "params": params, "test": tests}
