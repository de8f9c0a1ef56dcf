"""The report's Markdown tables and PNG plots, drawn from the tables of search/reporting/tables.py."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


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
                 fmt(r.get("ari_fg_colour_mean", math.nan), r.get("ari_fg_colour_std", math.nan), "ari"),
                 fmt(r["ari_full_mean"], r["ari_full_std"], "ari"),
                 fmt(r["phase_spread_mean"], r["phase_spread_std"], "ari")] for r in g.to_dict("records")]
        headers = ["variant", "n", "MSE", "ARI-FG", "ARI-FG, colour alone", "ARI-FULL", "phase spread (rad)"]
        parts.append(f"**{ds}**\n\n" + md_table(headers, rows))
    return "\n\n".join(parts)


UNSEEN = "†"


def md_per_count(pc: pd.DataFrame) -> str:
    if pc.empty:
        return "_No per-object-count metrics (test_ari_fg_n<k>) in the FINISHED runs._"
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


def md_curves(ct: pd.DataFrame, metric: str = "val_ari_fg") -> str:
    """A Markdown table of one metric: a row per (dataset, variant), a column per step."""
    g = ct[ct["metric"] == metric]
    if g.empty:
        return "_No validation history logged._"
    steps = sorted(g["step"].unique())
    rows = []
    for (ds, variant), gv in g.groupby(["dataset", "variant"], sort=False):
        by = {int(r["step"]): r for r in gv.to_dict("records")}
        rows.append([ds, variant, str(int(gv["n"].max()))]
                    + [fmt(by[s]["mean"], by[s]["std"], "ari") if s in by else "" for s in steps])
    return md_table(["dataset", "variant", "n", *[str(s) for s in steps]], rows)


def plot_curves(ct: pd.DataFrame, metrics: tuple[tuple[str, str], ...], path: Path) -> Path | None:
    """A row of plots per dataset, one per (metric, label) against steps: mean +- std bands per variant."""
    if ct.empty:
        return None
    plt = _pyplot()
    datasets = sorted(ct["dataset"].unique())
    colors = {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(ct["variant"]))}
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(4.2 * len(metrics), 3.3 * len(datasets)), squeeze=False)
    for row, ds in zip(axes, datasets):
        for ax, (metric, label) in zip(row, metrics):
            g = ct[(ct["dataset"] == ds) & (ct["metric"] == metric)]
            for variant, gv in g.groupby("variant", sort=False):
                std = gv["std"].fillna(0)
                ax.plot(gv["step"], gv["mean"], marker="o", ms=3, color=colors[variant], label=f"{variant} (n={int(gv['n'].max())})")
                ax.fill_between(gv["step"], gv["mean"] - std, gv["mean"] + std, color=colors[variant], alpha=0.2)
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.set_title(f"{ds}: {label}", fontsize=9)
            if metric == "val_ari_fg":
                ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
            if not g.empty:
                ax.legend(fontsize=7)
    return _save_figure(plt, fig, path)
