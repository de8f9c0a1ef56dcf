"""Learning curves until grouping: long single runs that checkpoint, resume, and report.

    python scripts/curves.py train ctcae_small_s0 ctcae_small_s1 --until 30000 --max-minutes 120
    python scripts/curves.py report

``train`` runs each named run of ``reports/curves/runs.yaml`` with ``ctcae_core.train.fit`` (no
Ray, no MLflow), one after the other, evaluating every ``eval_every`` steps; it resumes from the
run's last checkpoint, so the same command continues a curve across sessions. Each evaluation
appends one row (step, cumulative wall and CPU seconds, training and validation figures) to the
run's ``curve.csv``. ``--max-minutes`` stops cleanly after the first evaluation past the limit.

A fresh machine continues from the copies that ``report --snapshot`` commits under
``reports/curves/checkpoints/``. ``report`` gathers every run's ``curve.csv`` into
``reports/curves/curves.csv`` (a run with none on this machine keeps its committed rows), draws
``curves.png`` (validation ARI-FG, phase spread and MSE against steps, ARI-FG against CPU time)
and writes ``README.md`` with, per run, the first step and CPU time at which ARI-FG passes 0.3,
0.5 and 0.7, or the highest value reached.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = ROOT / "reports" / "curves"
RUNS_FILE = REPORT_DIR / "runs.yaml"
DEFAULT_RUN_ROOT = Path(os.environ.get("CTCAE_CURVES_DIR", Path.home() / ".cache" / "ctcae" / "curves"))
COLUMNS = ("run", "step", "wall_s", "cpu_s", "loss", "mse", "contrastive", "val_mse", "val_ari_fg", "val_ari_full", "val_phase_spread",
           "val_ari_fg_colour")  # val_ari_fg_colour: empty in rows evaluated before it was logged
THRESHOLDS = (0.3, 0.5, 0.7)
GAIN_THRESHOLD = 0.05  # grouping by phase: ARI-FG this far above colour alone (see phase_gain)


class _StopAfterCheckpoint(Exception):
    """Raised from the report callback (after the checkpoint is on disk) to end a run early."""


def load_runs(path: Path = RUNS_FILE) -> dict[str, dict[str, Any]]:
    """name -> {profile, seed, set: [overrides], ...}, defaults merged in."""
    spec = yaml.safe_load(path.read_text())
    defaults = spec.get("defaults", {})
    runs = {}
    for name, run in (spec.get("runs") or {}).items():
        merged = {**defaults, **run}
        merged["set"] = list(defaults.get("set", [])) + list(run.get("set", []))
        runs[name] = merged
    return runs


def run_config(name: str, run: dict[str, Any], until: int):
    from ctcae_core.config import get_profile

    overrides = list(run["set"]) + [
        f"train.steps={until}", f"train.seed={run.get('seed', 0)}", f"train.batch_size={run.get('batch_size', 32)}",
        f"train.lr={run.get('lr', 4e-4)}", f"train.eval_every={run.get('eval_every', 500)}",
        f"train.eval_images={run.get('eval_images', 320)}", f"train.device={run.get('device', 'cpu')}",
    ]
    return get_profile(run["profile"]).with_overrides(overrides + [f"name={name}"])


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def train_run(name: str, run: dict[str, Any], until: int, run_root: Path, deadline: float) -> int:
    """Train (or continue) one run to ``until`` steps; returns the step reached."""
    from ctcae_core.train import fit

    out = run_root / name
    ckpt = out / "checkpoint_last.pt"
    saved = REPORT_DIR / "checkpoints" / name
    if not ckpt.is_file() and (saved / "checkpoint_last.pt").is_file():
        # a fresh machine: continue from the copy committed with the report (see ``snapshot``)
        out.mkdir(parents=True, exist_ok=True)
        for f in ("checkpoint_last.pt", "curve.csv"):
            shutil.copyfile(saved / f, out / f)
    cfg = run_config(name, run, until)
    rows = _read_rows(out / "curve.csv")
    resume = ckpt if ckpt.is_file() else None
    done = 0
    if resume is not None:
        import torch

        done = int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"])
        rows = [r for r in rows if int(r["step"]) <= done]  # rows past the checkpoint are lost work
    if done >= until:
        print(f"{name}: already at step {done} >= {until}")
        return done
    wall0 = float(rows[-1]["wall_s"]) if rows else 0.0
    cpu0 = float(rows[-1]["cpu_s"]) if rows else 0.0
    t_wall, t_cpu = time.time(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)

    def report(metrics: dict[str, Any], _ckpt_dir: Any) -> None:
        row = {"run": name, "wall_s": round(wall0 + time.time() - t_wall, 1), "cpu_s": round(cpu0 + time.process_time() - t_cpu, 1)}
        row.update({k: metrics.get(k, "") for k in COLUMNS if k not in row})
        rows.append(row)
        _write_rows(out / "curve.csv", rows)
        print(f"{name} step {row['step']}: val ARI-FG {row['val_ari_fg']:.3f}, phase spread {row['val_phase_spread']:.4f}, "
              f"val MSE {row['val_mse']:.4f}, CPU {row['cpu_s'] / 3600:.2f} h", flush=True)
        if time.time() > deadline:
            raise _StopAfterCheckpoint

    try:
        summary = fit(cfg, report, out_dir=out, resume=resume, progress=False)
        return int(summary["step"])
    except _StopAfterCheckpoint:
        return int(rows[-1]["step"])


def first_crossing(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    for r in rows:
        if float(r["val_ari_fg"]) >= threshold:
            return r
    return None


def first_gain(rows: list[dict[str, Any]], threshold: float = GAIN_THRESHOLD) -> dict[str, Any] | None:
    """The first evaluation at which the phases add at least ``threshold`` to ARI-FG over colour
    alone: where grouping by phase starts, which ARI-FG's own crossings cannot tell from colour."""
    for r in rows:
        gain = phase_gain(r)
        if gain is not None and gain >= threshold:
            return r
    return None


def best_gain(rows: list[dict[str, Any]]) -> tuple[float, dict[str, Any]] | None:
    """The largest phase gain of a run and its row; None where no row has the colour control."""
    gains = [(g, r) for r in rows if (g := phase_gain(r)) is not None]
    return max(gains, key=lambda x: x[0]) if gains else None


def phase_gain(row: dict[str, Any]) -> float | None:
    """What the phases add to ARI-FG: ARI-FG minus ARI-FG of colour alone (every output phase at
    0, docs/model.md); None in rows evaluated before the control was logged."""
    colour = row.get("val_ari_fg_colour")
    return float(row["val_ari_fg"]) - float(colour) if colour not in (None, "") else None


def seed_groups(per_run: dict[str, list[dict[str, Any]]], value=lambda r: float(r["val_ari_fg"])) -> dict[str, dict[int, dict[int, float]]]:
    """Runs named ``<group>_s<seed>`` by group: {group: {seed: {step: value}}}, the value val
    ARI-FG unless given; rows whose value is None and seeds left without rows are dropped."""
    groups: dict[str, dict[int, dict[int, float]]] = {}
    for name, rows in per_run.items():
        group, _, seed = name.rpartition("_s")
        values = {int(r["step"]): v for r in rows if (v := value(r)) is not None}
        if group and seed.isdigit() and values:
            groups.setdefault(group, {})[int(seed)] = values
    return groups


def _mean_std(xs: list[float]) -> str:
    def f(x: float) -> str:
        return f"{round(x, 3) + 0.0:.3f}"  # + 0.0: a tiny negative mean prints 0.000, not -0.000

    return f"{f(statistics.mean(xs))} ± {f(statistics.stdev(xs))}" if len(xs) > 1 else f(xs[0])


def caepp_baseline(group: str) -> str | None:
    """The CAE++ group a CtCAE group is paired with: the same name with ``caepp`` for ``ctcae``
    and without the parts that set only the contrastive loss (``_w<weight>``, ``_t<temperature>``,
    which CAE++ has no use for): ``ctcae_small_pbias_w1e3`` -> ``caepp_small_pbias``."""
    if not group.startswith("ctcae_"):
        return None
    parts = [p for p in group[len("ctcae_"):].split("_") if not re.fullmatch(r"[wt]\d[\w.]*", p)]
    return "caepp_" + "_".join(parts)


def seeds_table(per_run: dict[str, list[dict[str, Any]]], steps: tuple[int, ...] = (500, 1000, 1500, 2000, 3000, 4500, 6000, 7500),
                value=lambda r: float(r["val_ari_fg"])) -> str:
    """Validation ARI-FG (or ``value`` of a row) over seeds at equal steps (mean ± sample std, the
    seeds that reached the step), for every group of two or more seeds; then CtCAE against CAE++
    seed by seed: a seed of both starts from the same weights and sees the same batches, so the
    difference is the contrastive loss's."""
    groups = {g: s for g, s in seed_groups(per_run, value).items() if len(s) > 1}
    lines = ["| runs | seeds | " + " | ".join(f"step {t}" for t in steps) + " |", "|" + "---|" * (2 + len(steps))]
    for g, seeds in groups.items():
        cells = []
        for t in steps:
            xs = [c[t] for c in seeds.values() if t in c]
            cells.append(f"{_mean_std(xs)} (n={len(xs)})" if xs else "–")
        lines.append(f"| {g}_s* | {','.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    for g, seeds in groups.items():
        base = caepp_baseline(g)
        if base is None or base not in groups:
            continue
        other = groups[base]
        cells = []
        for t in steps:
            diffs = [seeds[k][t] - other[k][t] for k in sorted(set(seeds) & set(other)) if t in seeds[k] and t in other[k]]
            cells.append(f"{_mean_std(diffs)}, {sum(d > 0 for d in diffs)} of {len(diffs)} > 0" if diffs else "–")
        lines.append(f"| {g} − {base}, same seed | {','.join(map(str, sorted(set(seeds) & set(other))))} | "
                     + " | ".join(cells) + " |")
        lines.append(f"| {g} − {base}, in stds | {','.join(map(str, sorted(set(seeds) | set(other))))} | "
                     + " | ".join(_gap_in_stds(seeds, other, t) for t in steps) + " |")
    return "\n".join(lines)


def _gap_in_stds(a: dict[int, dict[int, float]], b: dict[int, dict[int, float]], step: int) -> str:
    """The issue's test "A > B by more than one standard deviation", read two ways at one step:
    the gap of the means over the larger of the two groups' sample stds (unpaired), and the mean
    of the same-seed differences over their sample std (paired). ``–`` below two seeds."""
    xs, ys = [c[step] for c in a.values() if step in c], [c[step] for c in b.values() if step in c]
    diffs = [a[k][step] - b[k][step] for k in set(a) & set(b) if step in a[k] and step in b[k]]
    if len(xs) < 2 or len(ys) < 2:
        return "–"
    spread = max(statistics.stdev(xs), statistics.stdev(ys))
    unpaired = (statistics.mean(xs) - statistics.mean(ys)) / spread if spread > 0 else float("nan")

    def f(x: float) -> str:
        return f"{round(x, 1) + 0.0:+.1f}"  # + 0.0: -0.04 prints +0.0, not -0.0

    cell = f"{f(unpaired)} unpaired"
    if len(diffs) > 1 and statistics.stdev(diffs) > 0:
        cell += f", {f(statistics.mean(diffs) / statistics.stdev(diffs))} paired"
    return cell


def _with_colour(row: dict[str, Any]) -> str:
    """``ARI-FG (ARI-FG of colour alone)`` of one evaluation; ``–`` for the control in rows
    evaluated before it was logged."""
    def f(x: str) -> str:
        return f"{round(float(x), 3) + 0.0:.3f}"  # + 0.0: -0.0004 prints 0.000, not -0.000

    colour = row.get("val_ari_fg_colour") or ""
    return f"{f(row['val_ari_fg'])} ({f(colour)})" if colour != "" else f"{f(row['val_ari_fg'])} (–)"


def _gain_cells(rows: list[dict[str, Any]]) -> str:
    """The table's two phase-gain cells: first step past GAIN_THRESHOLD (CPU h), best gain (step)."""
    hit, best = first_gain(rows), best_gain(rows)
    first = f"{hit['step']} ({float(hit['cpu_s']) / 3600:.2f})" if hit else "–"
    return f"{first} | " + (f"{round(best[0], 3) + 0.0:+.3f} ({best[1]['step']})" if best else "–")


def _fill(text: str, tag: str, table: str) -> str:
    """Put ``table`` between ``<!-- tag -->`` and ``<!-- /tag -->`` (added at the end if missing)."""
    if f"<!-- {tag} -->" not in text:
        text += f"\n<!-- {tag} -->\n<!-- /{tag} -->\n"
    head, _, rest = text.partition(f"<!-- {tag} -->")
    _, _, tail = rest.partition(f"<!-- /{tag} -->")
    return f"{head}<!-- {tag} -->\n{table}\n<!-- /{tag} -->{tail}"


def write_report(run_root: Path, report_dir: Path = REPORT_DIR) -> Path:
    """curves.csv, curves.png and README.md's table from every run's curve.csv.

    A run without a ``curve.csv`` under ``run_root`` (trained on another machine, whose
    checkpoints are gone) keeps its rows from the committed ``curves.csv``, so that a report
    written on a fresh machine adds to the curves rather than dropping them."""
    runs = load_runs(report_dir / "runs.yaml")
    committed: dict[str, list[dict[str, Any]]] = {}
    for r in _read_rows(report_dir / "curves.csv"):
        committed.setdefault(r["run"], []).append(r)
    all_rows: list[dict[str, Any]] = []
    per_run: dict[str, list[dict[str, Any]]] = {}
    for name in runs:
        rows = _read_rows(run_root / name / "curve.csv") or committed.get(name, [])
        if rows:
            per_run[name] = rows
            all_rows += rows
    _write_rows(report_dir / "curves.csv", all_rows)
    _plot(per_run, report_dir / "curves.png")
    for name in per_run:
        if (run_root / name / "checkpoint_last.pt").is_file():
            render_panel(run_root / name / "checkpoint_last.pt", report_dir / "panels" / f"{name}.png")
    lines = ["| run | steps | CPU h | " + " | ".join(f"ARI-FG >= {t}: step (CPU h)" for t in THRESHOLDS)
             + " | best ARI-FG (step) | phase spread there | last phase spread | last ARI-FG (colour alone)"
             + f" | phases add >= {GAIN_THRESHOLD} over colour: step (CPU h) | most the phases add (step) |",
             "|" + "---|" * (9 + len(THRESHOLDS))]
    for name, rows in per_run.items():
        cells = []
        for t in THRESHOLDS:
            hit = first_crossing(rows, t)
            cells.append(f"{hit['step']} ({float(hit['cpu_s']) / 3600:.2f})" if hit else "–")
        best = max(rows, key=lambda r: float(r["val_ari_fg"]))
        last = rows[-1]
        lines.append(f"| {name} | {last['step']} | {float(last['cpu_s']) / 3600:.2f} | " + " | ".join(cells)
                     + f" | {float(best['val_ari_fg']):.3f} ({best['step']}) | {float(best['val_phase_spread']):.3f}"
                     + f" | {float(last['val_phase_spread']):.3f} | {_with_colour(last)} | {_gain_cells(rows)} |")
    table = "\n".join(lines)
    readme = report_dir / "README.md"
    text = readme.read_text() if readme.is_file() else "# Learning curves\n"
    text = _fill(_fill(text, "table", table), "seeds", seeds_table(per_run))
    readme.write_text(_fill(text, "seeds_gain", seeds_table(per_run, value=phase_gain)))
    return readme


def render_panel(checkpoint: Path, path: Path, n: int = 8) -> Path:
    """Input, reconstruction, phase map, true and predicted segments of the first ``n`` test images."""
    import torch

    from ctcae_core import viz
    from ctcae_core.config import ExperimentConfig
    from ctcae_core.data import open_dataset
    from ctcae_core.metrics import cluster_phases, count_label_clusters
    from ctcae_core.model import build_model

    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = ExperimentConfig.from_dict(payload["config"])
    model = build_model(cfg.model, cfg.data.resolution)
    model.load_state_dict(payload["model"])
    model.eval()
    d = cfg.data
    ds = open_dataset(d.dataset, "test", resolution=d.resolution, n_train=d.n_train, n_test=d.n_test, seed=d.data_seed,
                      cache_dir=d.cache_dir or None)
    batch = ds.get_batch(torch.arange(min(n, len(ds))))
    with torch.inference_mode():
        out = model(batch["image"])
        pred = cluster_phases(out.out_magnitude, out.out_phase, count_label_clusters(batch["labels"]),
                              generator=torch.Generator().manual_seed(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    return viz.save_panel(path, batch["image"], out.recon, out.out_magnitude, out.out_phase, batch["labels"], pred)


def _plot(per_run: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = (("step", "val_ari_fg", "validation ARI-FG"), ("cpu_s", "val_ari_fg", "validation ARI-FG"),
              ("step", "val_phase_spread", "output phase spread (rad)"), ("step", "val_mse", "validation MSE"))
    colours = {"cae": "tab:blue", "caepp": "tab:orange", "ctcae": "tab:green"}
    for ax, (x, y, label) in zip(axes.flat, panels):
        for name, rows in per_run.items():
            xs = [float(r[x]) / (3600 if x == "cpu_s" else 1) for r in rows]
            ys = [float(r[y]) for r in rows]
            variant, _, rest = name.partition("_")
            remedy = rest.split("_")[1] if rest.count("_") >= 2 else ""  # width_remedy_seed or width_seed
            style = ":" if not remedy else ("-" if "_small" in name else "--")
            ax.plot(xs, ys, style, marker="o", markersize=3, color=colours.get(variant), alpha=0.85, label=name)
        ax.set_xlabel("CPU hours (one thread)" if x == "cpu_s" else "training step")
        ax.set_ylabel(label)
        if y == "val_phase_spread":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("Tetrominoes: CAE (blue), CAE++ (orange), CtCAE (green); dotted: the paper's exact setting; "
                 "solid: a symmetry-breaking option, _small width; dashed: the same at half the paper's width")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/curves.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train or continue named runs of reports/curves/runs.yaml")
    tr.add_argument("runs", nargs="+", help="run names (see reports/curves/runs.yaml)")
    tr.add_argument("--until", type=int, default=30000, help="train each run to this step")
    tr.add_argument("--max-minutes", type=float, default=math.inf, help="stop after the first evaluation past this")
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--run-root", type=Path, default=DEFAULT_RUN_ROOT, help="checkpoints and curve.csv per run")
    rp = sub.add_parser("report", help="write reports/curves/{curves.csv,curves.png,README.md}")
    rp.add_argument("--run-root", type=Path, default=DEFAULT_RUN_ROOT)
    rp.add_argument("--snapshot", action="store_true",
                    help="also copy each run's last checkpoint and curve.csv to reports/curves/checkpoints/ "
                         "(committed, so that a fresh machine continues the curves)")
    args = parser.parse_args(argv)
    if args.cmd == "report":
        print(write_report(args.run_root))
        if args.snapshot:
            for name in load_runs():
                src = args.run_root / name
                if (src / "checkpoint_last.pt").is_file():
                    dst = REPORT_DIR / "checkpoints" / name
                    dst.mkdir(parents=True, exist_ok=True)
                    for f in ("checkpoint_last.pt", "curve.csv"):
                        shutil.copyfile(src / f, dst / f)
        return 0
    runs = load_runs()
    unknown = [n for n in args.runs if n not in runs]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; defined in {RUNS_FILE}: {sorted(runs)}")
    if args.until <= 0:
        parser.error("--until must be positive")
    import torch

    torch.set_num_threads(args.threads)
    deadline = time.time() + 60 * args.max_minutes
    for name in args.runs:
        if time.time() > deadline:
            break
        step = train_run(name, runs[name], args.until, args.run_root, deadline)
        print(f"{name}: at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
