"""Read a study back from MLflow and write the researcher's report.

``python search/report.py --study NAME [--tracking-uri URI] [--out DIR]``

Reads the study's parent run (tags ``ctcae.study`` = NAME, ``ctcae.kind`` = study) and its child
runs (tag ``mlflow.parentRunId``), and writes Markdown to stdout and, into ``--out`` (default
``reports/NAME``), ``report.md``, CSV tables and PNG plots, which are also logged to the parent run
under ``report/``:

1. the paper-style table: per dataset and variant (the searched keys other than the seed),
   test MSE, ARI-FG and ARI-FULL as mean +- sample std (ddof=1) over seeds, with n;
2. ARI-FG per object count (table, CSV, plot; one line per variant), object counts that the
   training filter ``data.train_n_objects`` excluded marked as unseen;
3. for TPE / random studies: Optuna's hyperparameter importances (fANOVA) from the study's
   Optuna storage, or, when that cannot be opened, from an in-memory Optuna study rebuilt from the
   MLflow runs; and the best configuration;
4. phase separability: inter- and intra-cluster distances of the phase clusters per variant.

Only FINISHED child runs enter the numbers; failed and killed (early-stopped, interrupted) runs
are counted and listed. The tag and metric names follow search/tracking.py and
search/trainable.py; they are repeated here so that the report does not import Ray.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python search/report.py` puts search/ first on sys.path: use the repo root instead (as run.py does).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

# Conventions of search/tracking.py (kept in sync by tests/test_report.py, which logs through it).
TAG_STUDY = "ctcae.study"
TAG_KIND = "ctcae.kind"
TAG_TRIAL = "ctcae.trial_id"
TAG_SEARCHED = "ctcae.searched"
TAG_REASON = "ctcae.end_reason"
TAG_OPTUNA = "ctcae.optuna_storage"
TAG_PARENT = "mlflow.parentRunId"

SEED_KEYS = ("train.seed", "data.data_seed")
DATASET_KEY = "data.dataset"
TRAIN_FILTER_KEY = "data.train_n_objects"
TABLE_METRICS = (("mse", "test_mse"), ("ari_fg", "test_ari_fg"), ("ari_full", "test_ari_full"), ("phase_spread", "test_phase_spread"))
SEP_METRICS = (("inter_cluster", "test_inter_cluster"), ("intra_cluster", "test_intra_cluster"))
# test_n<k>_ari_fg: evaluated on the k-object test scenes alone (data.test_n_objects);
# test_ari_fg_n<k>: the k-object share of the whole test split. The first wins when both exist.
PER_COUNT_SUBSET = re.compile(r"test_n(\d+)_ari_fg")
PER_COUNT_SHARE = re.compile(r"test_ari_fg_n(\d+)")
ARCH_KEYS = ("model.decoder", "model.out_conv", "model.out_sigmoid", "contrastive.weight")
STD_NOTE = "mean ± sample standard deviation over seeds (ddof=1); n = number of FINISHED runs (seeds) in the group"


class ReportError(RuntimeError):
    """The study cannot be found or read."""


def default_tracking_uri() -> str:
    """The same default as search/run.py: ``MLFLOW_TRACKING_URI``, else ./mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# ----------------------------------------------------------------------------- reading MLflow


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
        raise ReportError("the tracking store has no experiments")
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
    return StudyRuns(name, parent, children, algorithm, objectives, searched)


def typed_param(key: str, text: str | None) -> Any:
    """A logged param (a string) back to its config type (bools, ints, floats, tuples)."""
    if text is None:
        return None
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
        for k in sorted(keys):
            row[k] = r.data.params.get(k)
        row.update(r.data.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- grouping


def variant_name(params: dict[str, str | None]) -> str:
    """CAE / CAE++ / CtCAE when the architecture toggles match one of the paper's models, else ''."""
    dec = params.get("model.decoder")
    conv = typed_param("model.out_conv", params.get("model.out_conv"))
    sig = typed_param("model.out_sigmoid", params.get("model.out_sigmoid"))
    w = typed_param("contrastive.weight", params.get("contrastive.weight"))
    if dec is None or w is None:
        return ""
    if dec == "transpose" and conv and sig and w == 0:
        return "CAE"
    if dec == "upsample" and not conv and not sig:
        return "CtCAE" if w > 0 else "CAE++"
    return ""


def _short(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if str(v).strip().lower() in ("true", "false"):
        return str(v)
    return f"{x:.4g}"


def variant_keys(sr: StudyRuns, df: pd.DataFrame) -> list[str]:
    """Searched keys that define a variant: not the seed, not the dataset (grouped on its own)."""
    return [k for k in sr.searched if k not in SEED_KEYS and k != DATASET_KEY and k in df.columns]


def add_variant_columns(df: pd.DataFrame, vkeys: list[str]) -> pd.DataFrame:
    """Columns ``dataset``, ``model`` (CAE/CAE++/CtCAE or ''), ``variant`` (a readable label)."""
    df = df.copy()
    if df.empty:
        for c in ("dataset", "model", "variant"):
            df[c] = []
        return df
    df["dataset"] = df[DATASET_KEY].fillna("?") if DATASET_KEY in df else "?"
    df["model"] = [variant_name(row) for row in df.to_dict("records")]
    # keys that tell FINISHED variants apart (a failed run's odd value does not rename the others)
    basis = df[df["status"] == "FINISHED"] if (df["status"] == "FINISHED").any() else df
    varying = [k for k in vkeys if basis[k].astype(str).nunique(dropna=False) > 1]
    named = bool(varying) and set(varying) <= set(ARCH_KEYS) and (df["model"] != "").all()
    labels = []
    for row in df.to_dict("records"):
        if named:
            labels.append(row["model"])
        elif varying:
            labels.append(", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in varying))
        else:
            labels.append(row["model"] or "base")
    df["variant"] = labels
    return df


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    v = v[v.map(math.isfinite)]
    n = int(len(v))
    if n == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if n > 1 else math.nan, n


def _group_cols(vkeys: list[str]) -> list[str]:
    return ["dataset", "variant", *vkeys]


def paper_table(fin: pd.DataFrame, vkeys: list[str]) -> pd.DataFrame:
    """Per (dataset, variant): n and mean/std of test MSE, ARI-FG, ARI-FULL, phase spread (sample std, ddof=1)."""
    rows = []
    if fin.empty:
        return pd.DataFrame(rows)
    for key, g in fin.groupby(_group_cols(vkeys), sort=False, dropna=False):
        row = dict(zip(_group_cols(vkeys), key))
        row["model"] = g["model"].iloc[0]
        row["n"] = int(len(g))
        seeds = sorted({str(s) for s in g.get("train.seed", pd.Series(dtype=str)).dropna()})
        row["seeds"] = ",".join(seeds)
        for short, metric in TABLE_METRICS:
            mean, std, n = _mean_std(g[metric]) if metric in g else (math.nan, math.nan, 0)
            row[f"{short}_mean"], row[f"{short}_std"], row[f"{short}_n"] = mean, std, n
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["dataset", "ari_fg_mean"], ascending=[True, False], kind="stable").reset_index(drop=True)


def seen_counts(train_filter: str | None, counts: list[int]) -> dict[int, bool]:
    """Which object counts the training filter let through (the core's own filter parser)."""
    if not train_filter or not str(train_filter).strip():
        return {k: True for k in counts}
    import pyarrow as pa

    from ctcae_core.data import parse_n_objects

    expr = parse_n_objects(str(train_filter))
    table = pa.table({"n_objects": pa.array(counts, pa.int64())})
    kept = set(table.filter(expr).column("n_objects").to_pylist())
    return {k: k in kept for k in counts}


def per_count_values(row: dict[str, Any]) -> dict[int, float]:
    """ARI-FG per object count of one run (the per-count test subsets first)."""
    share: dict[int, float] = {}
    subset: dict[int, float] = {}
    for k, v in row.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            continue
        if m := PER_COUNT_SUBSET.fullmatch(k):
            subset[int(m.group(1))] = float(v)
        elif m := PER_COUNT_SHARE.fullmatch(k):
            share[int(m.group(1))] = float(v)
    return {**share, **subset}


def per_count_table(fin: pd.DataFrame, vkeys: list[str]) -> pd.DataFrame:
    """Long table: dataset, variant, n_objects, mean, std, n, seen_in_training, train_n_objects."""
    rows = []
    if fin.empty:
        return pd.DataFrame(rows)
    for key, g in fin.groupby(_group_cols(vkeys), sort=False, dropna=False):
        base = dict(zip(_group_cols(vkeys), key))
        raw = g[TRAIN_FILTER_KEY] if TRAIN_FILTER_KEY in g else pd.Series([""] * len(g))
        filters = sorted({x if isinstance(x, str) else "" for x in raw})
        train_filter = filters[0] if len(filters) == 1 else None
        values: dict[int, list[float]] = {}
        for row in g.to_dict("records"):
            for k, v in per_count_values(row).items():
                values.setdefault(k, []).append(v)
        counts = sorted(values)
        try:
            seen = seen_counts(train_filter, counts) if train_filter is not None else {k: True for k in counts}
        except ValueError:  # DatasetError: a filter this version cannot read; mark nothing
            seen = {k: True for k in counts}
        for k in counts:
            mean, std, n = _mean_std(pd.Series(values[k]))
            rows.append({**base, "model": g["model"].iloc[0], "train_n_objects": train_filter if train_filter is not None else "mixed",
                         "n_objects": k, "ari_fg_mean": mean, "ari_fg_std": std, "n": n, "seen_in_training": seen[k]})
    return pd.DataFrame(rows)


def separability_table(fin: pd.DataFrame, vkeys: list[str]) -> pd.DataFrame:
    """Per (dataset, variant): inter- and intra-cluster distances and their ratio, mean/std over seeds."""
    rows = []
    if fin.empty:
        return pd.DataFrame(rows)
    for key, g in fin.groupby(_group_cols(vkeys), sort=False, dropna=False):
        row = dict(zip(_group_cols(vkeys), key))
        row["model"] = g["model"].iloc[0]
        row["n"] = int(len(g))
        for short, metric in SEP_METRICS:
            row[f"{short}_mean"], row[f"{short}_std"], _ = _mean_std(g[metric]) if metric in g else (math.nan, math.nan, 0)
        if all(m in g for _, m in SEP_METRICS):
            ratio = pd.to_numeric(g[SEP_METRICS[0][1]], errors="coerce") / pd.to_numeric(g[SEP_METRICS[1][1]], errors="coerce")
            row["ratio_mean"], row["ratio_std"], _ = _mean_std(ratio)
        else:
            row["ratio_mean"] = row["ratio_std"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- importances


_BEST_CACHE: dict[tuple[str, str, str], float] = {}


def _objective_values(client: Any, fin: pd.DataFrame, objectives: list[tuple[str, str]]) -> dict[str, list[float]]:
    """Per run: the best value of each objective over its history (what Optuna was told)."""
    out: dict[str, list[float]] = {}
    for run_id in fin["run_id"]:
        vals = []
        for metric, mode in objectives:
            key = (run_id, metric, mode)
            if key not in _BEST_CACHE:
                hist = [m.value for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)]
                _BEST_CACHE[key] = (max(hist) if mode == "max" else min(hist)) if hist else math.nan
            vals.append(_BEST_CACHE[key])
        out[run_id] = vals
    return out


def _study_distributions(client: Any, sr: StudyRuns) -> dict[str, Any]:
    """Optuna distributions from the study file logged to the parent run (``study/*.yaml``)."""
    import optuna.distributions as od

    from search.space import parse_study

    try:
        files = [f.path for f in client.list_artifacts(sr.parent.info.run_id, "study") if f.path.endswith((".yaml", ".yml"))]
        files = [f for f in files if not f.endswith("base_config.yaml")]
        if not files:
            return {}
        import tempfile

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
    """Whether ``value`` lies in ``dist`` (a value outside it would make create_trial raise)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError, AttributeError):
        return False


def study_from_runs(client: Any, sr: StudyRuns, fin: pd.DataFrame) -> Any:
    """An in-memory Optuna study rebuilt from the FINISHED runs' params and objective values."""
    import optuna

    dists = _study_distributions(client, sr)
    values = _objective_values(client, fin, sr.objectives)
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


def importances(client: Any, sr: StudyRuns, fin: pd.DataFrame, optuna_url: str | None) -> tuple[pd.DataFrame, str]:
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
        study = study_from_runs(client, sr, fin)
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


def best_configuration(client: Any, sr: StudyRuns, fin: pd.DataFrame) -> dict[str, Any] | None:
    """The FINISHED run with the best (first) objective, with its searched values and test metrics."""
    if fin.empty:
        return None
    metric, mode = sr.objectives[0]
    values = _objective_values(client, fin, sr.objectives[:1])
    scored = [(v[0], rid) for rid, v in values.items() if math.isfinite(v[0])]
    if not scored:
        return None
    value, run_id = (max if mode == "max" else min)(scored)
    row = fin.set_index("run_id").loc[run_id]
    params = {k: row.get(k) for k in sr.searched if k in row.index and not k.startswith("_")}
    tests = {m: row.get(m) for _, m in TABLE_METRICS if m in row.index}
    return {"run_id": run_id, "run_name": row.get("run_name"), "objective": metric, "mode": mode, "value": value,
            "params": params, "test": tests}


# ----------------------------------------------------------------------------- formatting


def fmt(mean: float, std: float, metric: str) -> str:
    if not math.isfinite(mean):
        return "–"
    f = {"mse": "{:.2e}", "ari": "{:.3f}"}.get(metric, "{:.3g}")
    return f.format(mean) + (f" ± {f.format(std)}" if math.isfinite(std) else "")


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def md_paper(pt: pd.DataFrame) -> str:
    if pt.empty:
        return "_No FINISHED runs._"
    parts = []
    for ds, g in pt.groupby("dataset", sort=True):
        rows = [[r["variant"], r["n"], fmt(r["mse_mean"], r["mse_std"], "mse"), fmt(r["ari_fg_mean"], r["ari_fg_std"], "ari"),
                 fmt(r["ari_full_mean"], r["ari_full_std"], "ari"),
                 fmt(r["phase_spread_mean"], r["phase_spread_std"], "ari")] for r in g.to_dict("records")]
        parts.append(f"**{ds}**\n\n" + md_table(["variant", "n", "MSE", "ARI-FG", "ARI-FULL", "phase spread (rad)"], rows))
    return "\n\n".join(parts)


UNSEEN = "†"


def md_per_count(pc: pd.DataFrame) -> str:
    if pc.empty:
        return "_No per-object-count metrics (test_n<k>_ari_fg / test_ari_fg_n<k>) in the FINISHED runs._"
    parts = []
    for ds, g in pc.groupby("dataset", sort=True):
        counts = sorted(g["n_objects"].unique())
        unseen_all = {k for k in counts if (~g[g["n_objects"] == k]["seen_in_training"]).all()}
        headers = ["variant", "train n_objects"] + [f"{k}{UNSEEN}" if k in unseen_all else str(k) for k in counts]
        rows = []
        for variant, gv in g.groupby("variant", sort=False):
            cells = []
            for k in counts:
                r = gv[gv["n_objects"] == k]
                if r.empty:
                    cells.append("–")
                    continue
                r = r.iloc[0]
                mark = UNSEEN if (not r["seen_in_training"] and k not in unseen_all) else ""
                cells.append(fmt(r["ari_fg_mean"], r["ari_fg_std"], "ari") + mark)
            rows.append([variant, gv["train_n_objects"].iloc[0] or "all"] + cells)
        parts.append(f"**{ds}**\n\n" + md_table(headers, rows))
    text = "\n\n".join(parts)
    if not pc["seen_in_training"].all():
        text += f"\n\n{UNSEEN} object count not seen in training (excluded by data.train_n_objects)."
    return text


def md_separability(st: pd.DataFrame) -> str:
    if st.empty:
        return "_No FINISHED runs._"
    rows = [[r["dataset"], r["variant"], r["n"], fmt(r["inter_cluster_mean"], r["inter_cluster_std"], "d"),
             fmt(r["intra_cluster_mean"], r["intra_cluster_std"], "d"), fmt(r["ratio_mean"], r["ratio_std"], "d")]
            for r in st.to_dict("records")]
    return md_table(["dataset", "variant", "n", "inter-cluster", "intra-cluster", "inter / intra"], rows)


# ----------------------------------------------------------------------------- plots


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_count(pc: pd.DataFrame, path: Path) -> Path | None:
    if pc.empty:
        return None
    plt = _pyplot()

    datasets = sorted(pc["dataset"].unique())
    colors = {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(pc["variant"]))}  # one color per variant everywhere
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        g = pc[pc["dataset"] == ds]
        unseen = sorted(g[~g["seen_in_training"]]["n_objects"].unique())
        for k in unseen:
            ax.axvspan(k - 0.5, k + 0.5, color="0.9", zorder=0)
        for variant, gv in g.groupby("variant", sort=False):
            gv = gv.sort_values("n_objects")
            ax.errorbar(gv["n_objects"], gv["ari_fg_mean"], yerr=gv["ari_fg_std"].fillna(0), marker="o", capsize=3,
                        label=variant, color=colors[variant])
            un = gv[~gv["seen_in_training"]]  # hollow markers: counts not seen in training
            ax.scatter(un["n_objects"], un["ari_fg_mean"], s=90, facecolors="white", edgecolors=colors[variant], zorder=3)
        ax.set_title(f"{ds}" + ("  (shaded: not seen in training)" if unseen else ""), fontsize=9)
        ax.set_xlabel("objects in the scene")
        ax.set_ylabel("ARI-FG (test)")
        ax.set_xticks(sorted(g["n_objects"].unique()))
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    return _save_figure(plt, fig, path)


def plot_separability(st: pd.DataFrame, path: Path) -> Path | None:
    if st.empty:
        return None
    plt = _pyplot()
    import numpy as np

    datasets = sorted(st["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5.0, 1.2 * st["variant"].nunique() + 3) * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        g = st[st["dataset"] == ds]
        x = np.arange(len(g))
        ax.bar(x - 0.2, g["inter_cluster_mean"], 0.4, yerr=g["inter_cluster_std"].fillna(0), capsize=3, label="inter-cluster (higher: better separated)")
        ax.bar(x + 0.2, g["intra_cluster_mean"], 0.4, yerr=g["intra_cluster_std"].fillna(0), capsize=3, label="intra-cluster (lower: tighter)")
        ax.set_xticks(x)
        ax.set_xticklabels(g["variant"], rotation=20, ha="right", fontsize=7)
        ax.set_title(f"phase separability: {ds}", fontsize=9)
        ax.set_ylabel("distance (test, mean over images)")
        ax.legend(fontsize=7)
    return _save_figure(plt, fig, path)


def plot_importances(imp: pd.DataFrame, path: Path) -> Path | None:
    if imp.empty:
        return None
    plt = _pyplot()

    objectives = list(dict.fromkeys(imp["objective"]))
    fig, axes = plt.subplots(1, len(objectives), figsize=(6 * len(objectives), 0.4 * imp["param"].nunique() + 1.5), squeeze=False)
    for ax, obj in zip(axes[0], objectives):
        g = imp[imp["objective"] == obj].sort_values("importance")
        ax.barh(g["param"], g["importance"])
        ax.set_xlabel(f"importance for {obj} (fANOVA)")
    return _save_figure(plt, fig, path)


# ----------------------------------------------------------------------------- the report


def build_report(client: Any, sr: StudyRuns, out: Path, *, optuna_url: str | None = None, tracking_uri: str = "") -> str:
    """Write every table and plot into ``out`` and return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    df = runs_frame(sr)
    vkeys = variant_keys(sr, df)
    df = add_variant_columns(df, vkeys)
    fin = df[df["status"] == "FINISHED"] if not df.empty else df
    counts = df["status"].value_counts().to_dict() if not df.empty else {}

    md = [f"# Study report: {sr.name}", ""]
    md.append(f"Parent run `{sr.parent.info.run_id}` (experiment {sr.parent.info.experiment_id}, tracking `{tracking_uri}`), "
              f"algorithm `{sr.algorithm or '?'}`, objective {', '.join(f'{m} ({o})' for m, o in sr.objectives)}.")
    md.append("")
    status_text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"
    md.append(f"Child runs: {len(df)} ({status_text}). Only the {counts.get('FINISHED', 0)} FINISHED runs enter the tables; "
              "KILLED = early-stopped by the scheduler or interrupted, FAILED = the trial raised.")
    not_done = df[df["status"] != "FINISHED"] if not df.empty else df
    for r in not_done.to_dict("records"):
        md.append(f"- {r['status']}: `{r['run_name']}` ({r['variant']}, {r['dataset']}): {r['reason'] or 'no reason recorded'}")
    md.append("")
    md.append(f"Variants are grouped by the searched keys other than the seed ({', '.join(SEED_KEYS)}) and the dataset: "
              f"{', '.join(vkeys) or '(none: seeds only)'}.")
    md.append("")

    pt = paper_table(fin, vkeys)
    pt.to_csv(out / "paper_table.csv", index=False)
    md += ["## Test metrics per variant", "", f"Test split, best checkpoint of each run; {STD_NOTE}.", "", md_paper(pt), ""]

    pc = per_count_table(fin, vkeys)
    pc.to_csv(out / "per_object_count.csv", index=False)
    plot = plot_per_count(pc, out / "per_object_count.png")
    md += ["## ARI-FG per number of objects", "",
           "test_n<k>_ari_fg (evaluated on the k-object test scenes alone) where the study asked for it "
           f"(data.test_n_objects), else test_ari_fg_n<k> (the k-object share of the test split); {STD_NOTE}.", "",
           md_per_count(pc), ""]
    if plot:
        md += [f"![ARI-FG per object count]({plot.name})", ""]

    if sr.algorithm in ("tpe", "random"):
        imp, source = importances(client, sr, fin, optuna_url)
        imp.to_csv(out / "importances.csv", index=False)
        iplot = plot_importances(imp, out / "importances.png")
        md += ["## Hyperparameter importances", "", f"Optuna fANOVA importances (seed 0), {source}.", ""]
        if imp.empty:
            md.append("_Not computable (too few trials or no varying parameter)._")
        else:
            for obj, g in imp.groupby("objective", sort=False):
                md += [f"Objective `{obj}`:", "", md_table(["parameter", "importance"], [[r["param"], f"{r['importance']:.3f}"] for r in g.to_dict("records")]), ""]
        if iplot:
            md += [f"![importances]({iplot.name})", ""]
        best = best_configuration(client, sr, fin)
        if best:
            (out / "best_config.json").write_text(json.dumps(best, indent=2, default=str))
            md += ["### Best configuration", "",
                   f"Run `{best['run_name']}` (`{best['run_id']}`): best {best['objective']} = {best['value']:.4f}; test "
                   + ", ".join(f"{k} = {float(v):.4g}" for k, v in best["test"].items() if v is not None and math.isfinite(float(v))), "",
                   md_table(["parameter", "value"], [[k, v] for k, v in best["params"].items()]), ""]

    st = separability_table(fin, vkeys)
    if not st.empty:
        st = st.sort_values(["dataset", "variant"], kind="stable").reset_index(drop=True)
    st.to_csv(out / "separability.csv", index=False)
    splot = plot_separability(st, out / "separability.png")
    md += ["## Phase separability", "",
           "Inter-cluster distance (between the phase clusters' centroids; higher = better separated) and intra-cluster "
           f"distance (points to their centroid; lower = tighter) of the k-means phase clusters on the test split; {STD_NOTE}.", "",
           md_separability(st), ""]
    if splot:
        md += [f"![phase separability]({splot.name})", ""]

    if sr.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in sr.notes] + [""]
    df.to_csv(out / "runs.csv", index=False)
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--study", required=True, help="study name (the `name` of its ablations/*.yaml, or run.py's --name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--out", help="output directory (default: reports/<study>)")
    p.add_argument("--parent-run", help="the parent run id, when several studies share the name (default: the latest)")
    p.add_argument("--optuna-storage", help="Optuna storage URL (default: the parent run's ctcae.optuna_storage tag)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        sr = load_study_runs(client, args.study, args.parent_run)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("reports") / sr.name)
    text = build_report(client, sr, out, optuna_url=args.optuna_storage, tracking_uri=uri)
    if not args.no_log:
        client.log_artifacts(sr.parent.info.run_id, str(out), "report")
    print(text)
    print(f"\n[ctcae] report written to {out}" + ("" if args.no_log else f" and logged to run {sr.parent.info.run_id} under report/"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
