"""The study's results table: one row per trial, the config differences and the metrics that matter."""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from search.names import FINAL_KEY
from search.study import Study


def trial_status(trial: Any) -> str:
    """finished / stopped (scheduler) / failed / interrupted, from a Tune trial."""
    last = trial.last_result or {}
    if trial.status == "ERROR":
        return "failed"
    if trial.status == "TERMINATED":
        return "finished" if last.get(FINAL_KEY) else "stopped"
    return "interrupted"


class TrialClock(Callback):
    """Wall time of each trial as the study's driver sees it (start to completion), kept in
    ``trial_times.json`` in the experiment directory so that a resumed study still has it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._start: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start[trial.trial_id] = time.time()

    def _done(self, trial: Any) -> None:
        t0 = self._start.pop(trial.trial_id, None)
        if t0 is None or "://" in self.path:
            return
        p = Path(self.path)
        times = json.loads(p.read_text()) if p.exists() else {}
        times[trial.trial_id] = time.time() - t0
        p.write_text(json.dumps(times, indent=1))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trial)


def read_trial_times(path: str | Path) -> dict[str, float]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def results_table(trials: list[Any], study: Study, wall_times: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per trial, best first: searched values that differ across trials, then metrics."""
    rows: list[dict[str, Any]] = []
    wall_times = wall_times or {}
    for t in trials:
        last = t.last_result or {}
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": trial_status(t)}
        for k in study.keys:
            row[k] = t.config.get(k, study.base.flat().get(k))
        for m in study.objective.metrics:
            row[m] = _objective_value(t, m, study)
        for k, v in sorted(last.items()):
            if k.startswith("test_") and k != FINAL_KEY and _num(v):
                row[k] = float(v)
        row["best_step"] = last.get("best_step")
        for k in ("worker_start_s", "train_time_s", "test_time_s"):
            row[k] = last.get(k)
        row["trial_time_s"] = wall_times.get(t.trial_id, last.get("time_total_s"))
        if _num(row["train_time_s"]) and _num(row["trial_time_s"]):
            # everything that is not training: Ray start-up of the trial, test evaluation, teardown
            row["overhead_s"] = float(row["trial_time_s"]) - float(row["train_time_s"])
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # column order: identity, searched values, objective, test metrics, timings
    timing = ["best_step", "worker_start_s", "train_time_s", "test_time_s", "trial_time_s", "overhead_s"]
    head = ["trial_id", "status", *study.keys, *study.objective.metrics]
    tests = sorted(c for c in df.columns if c.startswith("test_") and c not in head + timing)
    df = df[[c for c in head + tests + timing if c in df.columns]]
    # keep only searched columns whose values differ between trials (the config differences)
    same = [k for k in study.keys if k in df and df[k].astype(str).nunique(dropna=False) <= 1 and len(df) > 1]
    df = df.drop(columns=same)
    m, mode = study.objective.metric, study.objective.mode
    df = df.sort_values(m, ascending=(mode == "min"), na_position="last", kind="stable").reset_index(drop=True)
    return df


def _objective_value(trial: Any, metric: str, study: Study) -> float | None:
    """The objective at the tested checkpoint; for stopped trials the best value reported."""
    last = trial.last_result or {}
    if last.get(FINAL_KEY) and _num(last.get(metric)):
        return float(last[metric])
    try:
        df = trial.metric_analysis.get(metric)
        if df:
            return float(df["max" if dict(zip(study.objective.metrics, study.objective.modes))[metric] == "max" else "min"])
    except Exception:  # noqa: BLE001 - no history for this trial
        pass
    v = last.get(metric)
    return float(v) if _num(v) else None


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def write_table(df: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """results.csv and results.parquet next to the Ray results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, parquet = out_dir / "results.csv", out_dir / "results.parquet"
    df.to_csv(csv, index=False)
    # mixed-type searched columns (e.g. None and floats) go to Parquet as strings
    pq = df.copy()
    for c in pq.columns:
        if pq[c].dtype == object:
            pq[c] = pq[c].map(lambda v: None if v is None else str(v))
    pq.to_parquet(parquet, index=False)
    return csv, parquet


def format_table(df: pd.DataFrame, top: int = 10) -> str:
    """The best ``top`` trials: config differences, objective, main test metrics, timings."""
    if df.empty:
        return "(no trials)"
    keep = ("test_ari_fg", "test_ari_fg_colour", "test_ari_full", "test_mse")  # colour: what ARI-FG scores without the phases
    per_count = re.compile(r"test_ari_(fg|full)_n\d+")  # per object count (ctcae_core/metric_names.py)
    cols = [c for c in df.columns if not c.startswith("test_") or c in keep or per_count.fullmatch(c)]
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        return df[cols].head(top).to_string(index=False)
