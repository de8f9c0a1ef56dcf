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
4. phase separability: inter- and intra-cluster distances of the phase clusters per variant;
5. learning curves (validation ARI-FG, phase spread and MSE against steps, mean +- std over seeds)
   and each variant's phase-map panel (its median-seed run's tested checkpoint).

Only FINISHED child runs enter the numbers; failed and killed (early-stopped, interrupted) runs
are counted and listed. The parts live in search/reporting/: reading the runs (runs.py), the
tables (tables.py), the importances (importances.py), Markdown and plots (render.py). The tag
names come from search/names.py, the metric names from ctcae_core/metric_names.py: the report
imports no Ray.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ctcae_core.cli import ArgumentParser, run_main
from search.names import default_tracking_uri
from search.reach import TrackingError, check_tracking_uri
from search.redact import redact
from search.reporting import render
from search.reporting.curves import CURVE_METRICS, curve_frame, curve_table, fetch_panels
from search.reporting.importances import BestValues, best_configuration, importances
from search.reporting.runs import SEED_KEYS, ReportError, StudyRuns, load_study_runs, runs_frame
from search.reporting.tables import add_variant_columns, paper_table, per_count_table, separability_table, variant_keys

STD_NOTE = "mean ± sample standard deviation over seeds (ddof=1); n = number of FINISHED runs (seeds) in the group"


def build_report(client: Any, sr: StudyRuns, out: Path, *, optuna_url: str | None = None, tracking_uri: str = "") -> str:
    """Write every table and plot into ``out`` and return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    df = runs_frame(sr)
    vkeys = variant_keys(sr, df)
    df = add_variant_columns(df, vkeys)
    fin = df[df["status"] == "FINISHED"] if not df.empty else df
    md = _overview(sr, df, vkeys, tracking_uri)
    md += _paper_section(fin, vkeys, out)
    md += _per_count_section(fin, vkeys, out)
    if sr.algorithm in ("tpe", "random"):
        md += _search_section(client, sr, fin, out, optuna_url)
    md += _separability_section(fin, vkeys, out)
    md += _curves_section(client, fin, out)
    if sr.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in sr.notes] + [""]
    df.to_csv(out / "runs.csv", index=False)
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    return text


def _overview(sr: StudyRuns, df: pd.DataFrame, vkeys: list[str], tracking_uri: str) -> list[str]:
    """The study, its runs by status (the unfinished ones listed), and what a variant is."""
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
    return md


def _paper_section(fin: pd.DataFrame, vkeys: list[str], out: Path) -> list[str]:
    pt = paper_table(fin, vkeys)
    pt.to_csv(out / "paper_table.csv", index=False)
    return ["## Test metrics per variant", "", f"Test split, best checkpoint of each run; {STD_NOTE}. "
            "ARI-FG, colour alone: the same clustering with every output phase set to 0 (docs/model.md); "
            "ARI-FG minus it is what the phases earn.", "", render.md_paper(pt), ""]


def _per_count_section(fin: pd.DataFrame, vkeys: list[str], out: Path) -> list[str]:
    pc = per_count_table(fin, vkeys)
    pc.to_csv(out / "per_object_count.csv", index=False)
    plot = render.plot_per_count(pc, out / "per_object_count.png")
    md = ["## ARI-FG per number of objects", "",
          "test_ari_fg_n<k>: the k-object test scenes, evaluated on their own where the study asked for it "
          f"(data.test_n_objects), else their share of the whole test split; {STD_NOTE}.", "",
          render.md_per_count(pc), ""]
    if plot:
        md += [f"![ARI-FG per object count]({plot.name})", ""]
    return md


def _search_section(client: Any, sr: StudyRuns, fin: pd.DataFrame, out: Path, optuna_url: str | None) -> list[str]:
    """TPE / random studies: the hyperparameter importances and the best configuration."""
    best_values = BestValues(client)
    imp, source = importances(client, sr, fin, optuna_url, best_values)
    imp.to_csv(out / "importances.csv", index=False)
    iplot = render.plot_importances(imp, out / "importances.png")
    md = ["## Hyperparameter importances", "", f"Optuna fANOVA importances (seed 0), {source}.", ""]
    if imp.empty:
        md.append("_Not computable (too few trials or no varying parameter)._")
    else:
        for obj, g in imp.groupby("objective", sort=False):
            md += [f"Objective `{obj}`:", "",
                   render.md_table(["parameter", "importance"], [[r["param"], f"{r['importance']:.3f}"] for r in g.to_dict("records")]), ""]
    if iplot:
        md += [f"![importances]({iplot.name})", ""]
    best = best_configuration(sr, fin, best_values)
    if best:
        (out / "best_config.json").write_text(json.dumps(best, indent=2, default=str))
        md += ["### Best configuration", "",
               f"Run `{best['run_name']}` (`{best['run_id']}`): best {best['objective']} = {best['value']:.4f}; test "
               + ", ".join(f"{k} = {float(v):.4g}" for k, v in best["test"].items() if v is not None and math.isfinite(float(v))), "",
               render.md_table(["parameter", "value"], [[k, v] for k, v in best["params"].items()]), ""]
    return md


def _curves_section(client: Any, fin: pd.DataFrame, out: Path) -> list[str]:
    """Validation curves over seeds, and each variant's phase-map panel."""
    ct = curve_table(curve_frame(client, fin)) if not fin.empty else curve_table(pd.DataFrame())
    ct.to_csv(out / "learning_curves.csv", index=False)
    plot = render.plot_curves(ct, CURVE_METRICS, out / "learning_curves.png")
    md = ["## Learning curves", "", f"Validation ARI-FG at each evaluation step; {STD_NOTE}.", "", render.md_curves(ct, "val_ari_fg"), "",
          "Output phase spread (rad; circular std of the output phase over pixels with |z| > 0.1, docs/model.md):", "",
          render.md_curves(ct, "val_phase_spread"), ""]
    if plot:
        md += [f"![learning curves]({plot.name})", ""]
    panels = fetch_panels(client, fin, out)
    if panels:
        md += ["## Phase maps", "",
               "Per variant, the run with the median test ARI-FG: rows are the input, the reconstruction, the output phase "
               "(hue) weighted by magnitude, the true segments and the predicted clusters, on the first test images.", ""]
        for p in panels:
            md += [f"**{p['dataset']}, {p['variant']}**: `{p['run_name']}` (seed {p['seed']}, tested checkpoint of step {p['step']}, "
                   f"test ARI-FG {float(p['test_ari_fg']):.3f})", "", f"![{p['variant']}]({p['file']})", ""]
    return md


def _separability_section(fin: pd.DataFrame, vkeys: list[str], out: Path) -> list[str]:
    st = separability_table(fin, vkeys)
    if not st.empty:
        st = st.sort_values(["dataset", "variant"], kind="stable").reset_index(drop=True)
    st.to_csv(out / "separability.csv", index=False)
    splot = render.plot_separability(st, out / "separability.png")
    md = ["## Phase separability", "",
          "Inter-cluster distance (between the phase clusters' centroids; higher = better separated) and intra-cluster "
          f"distance (points to their centroid; lower = tighter) of the k-means phase clusters on the test split; {STD_NOTE}.", "",
          render.md_separability(st), ""]
    if splot:
        md += [f"![phase separability]({splot.name})", ""]
    return md


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--study", required=True, help="study name (the `name` of its ablations/*.yaml, or run.py's --name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--out", help="output directory (default: reports/<study>)")
    p.add_argument("--parent-run", help="the parent run id, when several studies share the name (default: the latest)")
    p.add_argument("--optuna-storage", help="Optuna storage URL (default: the parent run's ctcae.optuna_storage tag)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command; an expected failure is one ``error:`` line and exit code 2 (ctcae_core/cli.py)."""
    from mlflow.exceptions import MlflowException

    return run_main(_main, argv, expected=(ReportError, TrackingError, MlflowException), clean=redact)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    check_tracking_uri(uri, existing=True)  # a dead server: a clear error within seconds, not minutes of retries
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    sr = load_study_runs(client, args.study, args.parent_run)
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
