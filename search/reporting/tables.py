"""The report's tables: runs grouped into variants, mean and sample std over seeds.

Pure pandas on the frame of search/reporting/runs.py; no MLflow calls.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import pandas as pd

from ctcae_core.metric_names import per_count_values
from search.reporting.runs import ARCH_KEYS, DATASET_KEY, SEED_KEYS, TRAIN_FILTER_KEY, StudyRuns, typed_param

TABLE_METRICS = (("mse", "test_mse"), ("ari_fg", "test_ari_fg"), ("ari_full", "test_ari_full"), ("phase_spread", "test_phase_spread"),
                 ("ari_fg_colour", "test_ari_fg_colour"))
SEP_METRICS = (("inter_cluster", "test_inter_cluster"), ("intra_cluster", "test_intra_cluster"))


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


def _variant_groups(fin: pd.DataFrame, vkeys: list[str]) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """Per (dataset, variant, variant keys): those values by column name, and the group's runs."""
    cols = ["dataset", "variant", *vkeys]
    if fin.empty:
        return
    for key, g in fin.groupby(cols, sort=False, dropna=False):
        yield dict(zip(cols, key)), g


def paper_table(fin: pd.DataFrame, vkeys: list[str]) -> pd.DataFrame:
    """Per (dataset, variant): n and mean/std of test MSE, ARI-FG, ARI-FULL, phase spread and ARI-FG of
    colour alone (sample std, ddof=1; NaN for runs logged before that metric existed)."""
    if fin.empty:
        return pd.DataFrame()
    rows = []
    for row, g in _variant_groups(fin, vkeys):
        row.update(model=g["model"].iloc[0], n=int(len(g)))
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


def per_count_table(fin: pd.DataFrame, vkeys: list[str]) -> pd.DataFrame:
    """Long table: dataset, variant, n_objects, mean, std, n, seen_in_training, train_n_objects."""
    rows = []
    for base, g in _variant_groups(fin, vkeys):
        raw = g[TRAIN_FILTER_KEY] if TRAIN_FILTER_KEY in g else pd.Series([""] * len(g))
        filters = sorted({x if isinstance(x, str) else "" for x in raw})
        train_filter = filters[0] if len(filters) == 1 else None
        values: dict[int, list[float]] = {}
        for row in g.to_dict("records"):
            for k, v in per_count_values(row, "test", "ari_fg").items():
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
    for row, g in _variant_groups(fin, vkeys):
        row.update(model=g["model"].iloc[0], n=int(len(g)))
        for short, metric in SEP_METRICS:
            row[f"{short}_mean"], row[f"{short}_std"], _ = _mean_std(g[metric]) if metric in g else (math.nan, math.nan, 0)
        if all(m in g for _, m in SEP_METRICS):
            ratio = pd.to_numeric(g[SEP_METRICS[0][1]], errors="coerce") / pd.to_numeric(g[SEP_METRICS[1][1]], errors="coerce")
            row["ratio_mean"], row["ratio_std"], _ = _mean_std(ratio)
        else:
            row["ratio_mean"] = row["ratio_std"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)
