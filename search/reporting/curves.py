"""A study's learning curves and phase-map panels: what a reader looks at before the tables.

Learning curves: the validation history (ARI-FG, phase spread, MSE at every evaluation step) of
each FINISHED run, read back from MLflow, as mean and sample std over the seeds of a variant.
Panels: the input / reconstruction / phase map / segmentation panel that each trial logs with its
tested checkpoint (artifact ``pngs/panel_step<k>.png``, search/trainable.py), of one run per
variant: the run whose test ARI-FG is the group's median (a typical seed, not the luckiest).
"""
from __future__ import annotations

import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

CURVE_METRICS = (("val_ari_fg", "validation ARI-FG"), ("val_phase_spread", "phase spread (rad)"), ("val_mse", "validation MSE"))
PANEL_DIR = "pngs"
_PANEL = re.compile(r"panel_step(\d+)\.png$")


def curve_frame(client: Any, fin: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, metric, step): the run's dataset, variant and seed, and the logged value."""
    rows = []
    for r in fin.to_dict("records"):
        for metric, _ in CURVE_METRICS:
            for m in client.get_metric_history(r["run_id"], metric):
                rows.append({"run_id": r["run_id"], "dataset": r["dataset"], "variant": r["variant"],
                             "seed": r.get("train.seed"), "metric": metric, "step": int(m.step), "value": float(m.value)})
    return pd.DataFrame(rows, columns=["run_id", "dataset", "variant", "seed", "metric", "step", "value"])


def curve_table(cf: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, variant, metric, step): n, mean and sample std (ddof=1) over the runs."""
    cols = ["dataset", "variant", "metric", "step", "n", "mean", "std"]
    if cf.empty:
        return pd.DataFrame(columns=cols)
    cf = cf[cf["value"].map(math.isfinite)]
    g = cf.groupby(["dataset", "variant", "metric", "step"], sort=False)["value"]
    out = pd.DataFrame({"n": g.size(), "mean": g.mean(), "std": g.std(ddof=1)}).reset_index()
    return out.sort_values(["dataset", "variant", "metric", "step"], kind="stable").reset_index(drop=True)[cols]


def median_runs(fin: pd.DataFrame, metric: str = "test_ari_fg") -> pd.DataFrame:
    """Per (dataset, variant): the run whose ``metric`` is the group's median (the lower one of two)."""
    if fin.empty or metric not in fin:
        return fin.iloc[0:0]
    picks = []
    for _, g in fin.groupby(["dataset", "variant"], sort=False):
        g = g[pd.to_numeric(g[metric], errors="coerce").notna()].sort_values(metric, kind="stable")
        if len(g):
            picks.append(g.iloc[(len(g) - 1) // 2])
    return pd.DataFrame(picks)


def fetch_panels(client: Any, fin: pd.DataFrame, out: Path) -> list[dict[str, Any]]:
    """Copy each variant's median run's last logged panel into ``out/panels/``; what was found."""
    found = []
    for r in median_runs(fin).to_dict("records"):
        try:
            arts = client.list_artifacts(r["run_id"], PANEL_DIR)
        except Exception:  # noqa: BLE001 - a store without artifacts for this run: no panel, noted below
            arts = []
        steps = {int(m.group(1)): a.path for a in arts if (m := _PANEL.search(a.path))}
        if not steps:
            continue
        step = max(steps)
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{r['dataset']}_{r['variant']}") + ".png"
        (out / "panels").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(r["run_id"], steps[step], tmp)
            shutil.copyfile(local, out / "panels" / name)
        found.append({"dataset": r["dataset"], "variant": r["variant"], "run_name": r["run_name"], "seed": r.get("train.seed"),
                      "step": step, "test_ari_fg": r.get("test_ari_fg"), "file": f"panels/{name}"})
    return found
