"""search/report.py against a real MLflow server on loopback, on studies whose runs the test logs
itself through search/tracking.py (the same adapter and conventions as search/run.py), with known
metrics. Oracles: Python's ``statistics`` (mean, sample stdev) and values chosen so that one
parameter alone decides the objective."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.space import parse_study

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]  # a real MLflow server

GRID_STUDY = """
name: {name}
base: {{profile: caepp_tetrominoes_small}}
data: {{train_n_objects: "<=4", test_n_objects: [3, 4, 5, 6]}}
space:
  data.dataset: {{grid: [tetrominoes, "multi_dsprites:2-6"]}}
  contrastive.weight: {{grid: [0.0, 1e-4]}}
  train.seed: {{grid: [0, 1, 2]}}
search: {{algorithm: grid}}
"""

TPE_STUDY = """
name: {name}
base: {{profile: ctcae_tetrominoes_small}}
space:
  contrastive.temperature: {{loguniform: [0.01, 0.5]}}
  contrastive.dec_top_k: {{int: [1, 20]}}
  model.decoder: {{choice: [upsample, transpose]}}
objective: {{metric: val_ari_fg, mode: max}}
search: {{algorithm: tpe, num_samples: 16}}
"""

# Known results of the grid study: (dataset, weight) -> ARI-FG of seeds 0, 1, 2 (and derived metrics).
ARI = {
    ("tetrominoes", 0.0): [0.61, 0.66, 0.74],
    ("tetrominoes", 1e-4): [0.80, 0.86, 0.83],
    ("multi_dsprites:2-6", 0.0): [0.40, 0.52, 0.49],
    ("multi_dsprites:2-6", 1e-4): [0.70, 0.64, 0.77],
}


def per_count(ari: float, k: int, seed: int) -> float:
    return ari - 0.07 * (k - 3) + 0.01 * seed


def log(tracker, run: str, by_step: dict[int, dict[str, float]]) -> None:
    """Metrics at several steps in one request (fewer round trips than one call per step)."""
    from mlflow.entities import Metric

    batch = [Metric(k, float(v), 0, step) for step, ms in by_step.items() for k, v in ms.items()]
    tracker.client.log_batch(run, metrics=batch)


def start_parent(tracker, study, tags: dict[str, str] | None = None) -> str:
    """What search/run.py logs on the parent run."""
    parent = tracker.start_parent(study.name, f"/tmp/ray_results/{study.name}", tags or {}, resume=False)
    tracker.log_text(parent, study.text, f"study/{study.name}.yaml")
    tracker.log_params(parent, {"profile": study.profile, "algorithm": study.search.algorithm,
                                "num_samples": study.search.num_samples, "searched": ",".join(study.keys),
                                "objective": ",".join(f"{m}:{o}" for m, o in zip(study.objective.metrics, study.objective.modes))})
    return parent


def start_child(tracker, study, parent: str, trial_id: str, point: dict) -> str:
    """What MlflowStudyCallback logs for a trial: the resolved config flattened, searched keys as a tag."""
    cfg = study.resolve(point)
    tags = {"ctcae.trial_name": trial_id, "ctcae.searched": json.dumps(sorted(point))}
    return tracker.start_child(parent, trial_id, f"{study.name}-{trial_id}", cfg.flat(), tags)


def _png(path: Path, value: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def tracking(mlflow_server):
    from search.tracking import Tracker

    return mlflow_server, Tracker


@pytest.fixture(scope="module")
def grid_study(tracking):
    uri, Tracker = tracking
    name = f"grid_{uuid.uuid4().hex[:6]}"
    study = parse_study(GRID_STUDY.format(name=name), source=f"{name}.yaml")
    tracker = Tracker(uri, name)
    parent = start_parent(tracker, study)
    for i, point in enumerate(study.grid_points()):
        run = start_child(tracker, study, parent, f"t{i:02d}", point)
        ds, w, seed = point["data.dataset"], point["contrastive.weight"], point["train.seed"]
        ari = ARI[(ds, w)][seed]
        m = {"val_ari_fg": ari - 0.05, "test_ari_fg": ari, "test_ari_full": ari / 2, "test_mse": 1e-3 * (1 + seed) * (2 - w * 1e4),
             "test_inter_cluster": ari / 10, "test_intra_cluster": 0.01 * (1 + seed)}
        if ds == "tetrominoes":  # logged as the trials log them: test_ari_fg_n<k>
            m["test_ari_fg_n3"] = per_count(ari, 3, seed)
        else:  # logged as studies before the single spelling did: test_n<k>_ari_fg (k evaluated alone) ...
            for k in [3, 4, 5, 6]:
                m[f"test_n{k}_ari_fg"] = per_count(ari, k, seed)
                m[f"test_ari_fg_n{k}"] = 0.0  # ... beside the share of the whole split, which must lose
        log(tracker, run, {250: {"val_ari_fg": ari - 0.2, "val_phase_spread": 0.1 * seed}, 500: m})
        if ds == "tetrominoes":  # the panel a trial logs with its tested checkpoint; its pixels name the run
            png = Path(tempfile.mkdtemp()) / "pngs"
            png.mkdir()
            _png(png / "panel_step500.png", seed)
            _png(png / "panel_step250.png", 9)
            tracker.log_artifacts(run, png.parent)
        tracker.end(run, "FINISHED")
    # Runs that must not count: a failed trial and an early-stopped one, with absurd metrics.
    for tid, status, reason in (("fail", "FAILED", "non-finite loss: step 7"), ("kill", "KILLED", "early-stopped by the scheduler at step 250")):
        run = start_child(tracker, study, parent, tid, {"data.dataset": "tetrominoes", "contrastive.weight": 1e-4, "train.seed": 3})
        tracker.log_metrics(run, {"test_ari_fg": 0.0, "test_mse": 1.0, "test_n3_ari_fg": 0.0}, 10)
        tracker.end(run, status, reason)
    tracker.end(parent, "FINISHED")
    return uri, name, parent, tracker


def test_grid_report(grid_study, tmp_path):
    uri, name, parent, tracker = grid_study
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, str(ROOT / "search" / "report.py"), "--study", name, "--tracking-uri", uri, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = proc.stdout

    # (1) paper-style table: 2 datasets x {CAE++, CtCAE}, 3 seeds each, failed/killed runs left out
    pt = pd.read_csv(out / "paper_table.csv")
    assert len(pt) == 4
    for (ds, w), vals in ARI.items():
        variant = "CtCAE" if w > 0 else "CAE++"
        row = pt[(pt["dataset"] == ds) & (pt["variant"] == variant)]
        assert len(row) == 1, (ds, variant, pt)
        row = row.iloc[0]
        assert row["n"] == 3 and row["ari_fg_n"] == 3
        assert row["ari_fg_mean"] == pytest.approx(statistics.mean(vals), abs=1e-9)
        assert row["ari_fg_std"] == pytest.approx(statistics.stdev(vals), abs=1e-9)  # sample std (ddof=1)
        assert row["ari_full_mean"] == pytest.approx(statistics.mean(v / 2 for v in vals), abs=1e-9)
        mses = [1e-3 * (1 + s) * (2 - w * 1e4) for s in range(3)]
        assert row["mse_mean"] == pytest.approx(statistics.mean(mses), rel=1e-9)
        assert row["mse_std"] == pytest.approx(statistics.stdev(mses), rel=1e-9)
    assert "ddof=1" in md and "1 FAILED" in md and "1 KILLED" in md and "non-finite loss" in md
    tet = pt[pt["dataset"] == "tetrominoes"]
    assert list(tet["variant"]) == ["CtCAE", "CAE++"]  # best ARI-FG first
    f = "{:.3f}"
    assert "| CtCAE | 3 |" in md and f"{f.format(statistics.mean(ARI[('tetrominoes', 1e-4)]))} ± {f.format(statistics.stdev(ARI[('tetrominoes', 1e-4)]))}" in md

    # (2) per object count (both spellings read), 5 and 6 unseen under train_n_objects "<=4"
    pc = pd.read_csv(out / "per_object_count.csv")
    md_rows = pc[pc["dataset"] == "multi_dsprites:2-6"]
    assert sorted(md_rows["n_objects"].unique()) == [3, 4, 5, 6]
    for _, r in md_rows.iterrows():
        w = 1e-4 if r["variant"] == "CtCAE" else 0.0
        vals = [per_count(a, int(r["n_objects"]), s) for s, a in enumerate(ARI[("multi_dsprites:2-6", w)])]
        assert r["ari_fg_mean"] == pytest.approx(statistics.mean(vals), abs=1e-9)
        assert r["ari_fg_std"] == pytest.approx(statistics.stdev(vals), abs=1e-9)
        assert bool(r["seen_in_training"]) == (r["n_objects"] <= 4)
        assert r["n"] == 3
    tet = pc[pc["dataset"] == "tetrominoes"]
    assert list(tet["n_objects"].unique()) == [3] and tet["seen_in_training"].all()
    for _, r in tet.iterrows():
        w = 1e-4 if r["variant"] == "CtCAE" else 0.0
        assert r["ari_fg_mean"] == pytest.approx(statistics.mean(per_count(a, 3, s) for s, a in enumerate(ARI[("tetrominoes", w)])), abs=1e-9)
    assert "| variant | train n_objects | 3 | 4 | 5† | 6† |" in md  # unseen counts marked in the header
    assert "4†" not in md and "| <=4 |" in md

    # (4) separability
    st = pd.read_csv(out / "separability.csv")
    row = st[(st["dataset"] == "tetrominoes") & (st["variant"] == "CAE++")].iloc[0]
    assert row["inter_cluster_mean"] == pytest.approx(statistics.mean(a / 10 for a in ARI[("tetrominoes", 0.0)]), abs=1e-9)
    assert row["intra_cluster_mean"] == pytest.approx(0.02, abs=1e-9)
    assert row["intra_cluster_std"] == pytest.approx(0.01, abs=1e-9)

    # (5) learning curves: mean/std over seeds per step; panels of the median-seed run per variant
    lc = pd.read_csv(out / "learning_curves.csv")
    for (ds, w), vals in ARI.items():
        variant = "CtCAE" if w > 0 else "CAE++"
        g = lc[(lc["dataset"] == ds) & (lc["variant"] == variant) & (lc["metric"] == "val_ari_fg")].set_index("step")
        assert list(g.index) == [250, 500] and (g["n"] == 3).all()
        assert g.loc[250, "mean"] == pytest.approx(statistics.mean(vals) - 0.2, abs=1e-9)
        assert g.loc[500, "std"] == pytest.approx(statistics.stdev(vals), abs=1e-9)
        spread = lc[(lc["dataset"] == ds) & (lc["variant"] == variant) & (lc["metric"] == "val_phase_spread")]
        assert spread["mean"].tolist() == pytest.approx([0.1])
    from PIL import Image

    for variant, w in (("CtCAE", 1e-4), ("CAE++", 0.0)):  # median of the three seeds' ARI-FG, the last step's panel
        median_seed = sorted(range(3), key=lambda s: ARI[("tetrominoes", w)][s])[1]
        pixels = np.asarray(Image.open(out / "panels" / f"tetrominoes_{variant}.png"))
        assert (pixels == median_seed).all(), variant
        assert f"seed {median_seed}, tested checkpoint of step 500" in md
    assert not list((out / "panels").glob("multi*"))  # no panel logged there: none claimed

    # no importances for a grid study; files written and logged to the parent run
    assert not (out / "importances.csv").exists()
    files = ["report.md", "paper_table.csv", "per_object_count.csv", "per_object_count.png", "separability.csv",
             "separability.png", "runs.csv", "learning_curves.csv", "learning_curves.png"]
    for fname in files:
        assert (out / fname).stat().st_size > 0, fname
    for png in ("per_object_count.png", "separability.png", "learning_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {Path(a.path).name for a in tracker.client.list_artifacts(parent, "report")}
    assert set(files) <= logged


PAPER_STUDY = """
name: {name}
base: {{profile: caepp_tetrominoes_small}}
space:
  model.decoder: {{grid: [transpose, upsample]}}
  model.out_conv: {{grid: [true], when: {{model.decoder: transpose}}}}
  model.out_sigmoid: {{grid: [true], when: {{model.decoder: transpose}}}}
  contrastive.weight: {{grid: [0.0, 1e-4], when: {{model.decoder: upsample}}}}
  train.seed: {{grid: [0, 1]}}
search: {{algorithm: grid}}
"""


def test_conditional_study_names_the_paper_variants(tracking, tmp_path):
    """The paper's grid (ablations/paper_small.yaml): a trial logs only the keys active in it
    (search/runview.py), so an upsample trial has no model.out_conv param and a CAE trial no
    contrastive.weight; the report takes their values from the parent's base config and names
    CAE, CAE++ and CtCAE (it crashed on the absent params before)."""
    import yaml

    from search.names import BASE_CONFIG_ARTIFACT
    from search.runview import trial_params

    uri, Tracker = tracking
    name = f"paper_{uuid.uuid4().hex[:6]}"
    study = parse_study(PAPER_STUDY.format(name=name), source=f"{name}.yaml")
    tracker = Tracker(uri, name)
    parent = start_parent(tracker, study)
    tracker.log_text(parent, yaml.safe_dump(study.base.to_dict(), sort_keys=False), BASE_CONFIG_ARTIFACT)
    expected: dict[str, list[float]] = {}
    for i, point in enumerate(study.grid_points()):
        values = {k: v for k, v in point.items() if not k.startswith("_")}
        cfg = study.resolve(point)
        params = trial_params(study, values, cfg)
        variant = "CAE" if cfg.model.decoder == "transpose" else ("CtCAE" if cfg.contrastive.weight > 0 else "CAE++")
        assert ("model.out_conv" in params) == (variant == "CAE") and ("contrastive.weight" in params) == (variant != "CAE")
        ari = {"CAE": 0.01, "CAE++": 0.6, "CtCAE": 0.7}[variant] + 0.05 * values["train.seed"]
        expected.setdefault(variant, []).append(ari)
        run = tracker.start_child(parent, f"t{i:02d}", f"{name}-{i}", params, {"ctcae.searched": json.dumps(sorted(values))})
        log(tracker, run, {250: {"val_ari_fg": ari, "test_ari_fg": ari, "test_mse": 0.01}})
        tracker.end(run, "FINISHED")
    tracker.end(parent, "FINISHED")
    assert sorted(expected) == ["CAE", "CAE++", "CtCAE"]

    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, str(ROOT / "search" / "report.py"), "--study", name, "--tracking-uri", uri, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pt = pd.read_csv(out / "paper_table.csv")
    assert list(pt["variant"]) == ["CtCAE", "CAE++", "CAE"]  # best ARI-FG first
    for variant, vals in expected.items():
        row = pt[pt["variant"] == variant].iloc[0]
        assert row["n"] == 2 and row["ari_fg_mean"] == pytest.approx(statistics.mean(vals), abs=1e-9)
    runs = pd.read_csv(out / "runs.csv")  # the base values filled in, as the trials used them
    assert set(runs.loc[runs["model"] != "CAE", "model.out_conv"].astype(str)) == {"False"}
    assert set(runs.loc[runs["model"] == "CAE", "contrastive.weight"].astype(float)) == {0.0}


def _log_tpe_children(tracker, study, parent: str, rng: np.random.Generator, n: int, score) -> dict[str, float]:
    """n FINISHED trials with random params; val_ari_fg's best over its history = score(params)."""
    best: dict[str, float] = {}
    for i in range(n):
        point = {"contrastive.temperature": float(np.exp(rng.uniform(np.log(0.01), np.log(0.5)))),
                 "contrastive.dec_top_k": int(rng.integers(1, 21)), "model.decoder": str(rng.choice(["upsample", "transpose"]))}
        run = start_child(tracker, study, parent, f"t{i:02d}", point)
        s = score(point)
        log(tracker, run, {250: {"val_ari_fg": s - 0.3}, 500: {"val_ari_fg": s, "test_ari_fg": s - 0.01, "test_mse": 0.01,
                                                               "test_ari_full": s / 2}, 750: {"val_ari_fg": s - 0.02}})
        tracker.end(run, "FINISHED")
        best[run] = s
    return best


def test_tpe_importances_from_mlflow_runs(tracking, tmp_path, capsys):
    """No Optuna storage: the report rebuilds an Optuna study from the FINISHED runs."""
    from search import report

    uri, Tracker = tracking
    name = f"tpe_{uuid.uuid4().hex[:6]}"
    study = parse_study(TPE_STUDY.format(name=name), source=f"{name}.yaml")
    tracker = Tracker(uri, name)
    parent = start_parent(tracker, study)
    # the objective depends on the temperature alone
    score = lambda p: 0.9 - 0.4 * abs(math.log10(p["contrastive.temperature"]) + 1.3)  # noqa: E731
    best = _log_tpe_children(tracker, study, parent, np.random.default_rng(0), 16, score)
    out = tmp_path / "rep"
    assert report.main(["--study", name, "--tracking-uri", uri, "--out", str(out)]) == 0
    md = capsys.readouterr().out
    imp = pd.read_csv(out / "importances.csv").sort_values("importance", ascending=False)
    assert imp.iloc[0]["param"] == "contrastive.temperature"
    assert imp.iloc[0]["importance"] > 0.6, imp
    assert imp["importance"].sum() == pytest.approx(1.0, abs=1e-6)
    assert "rebuilt from 16 FINISHED MLflow runs" in md
    cfg = json.loads((out / "best_config.json").read_text())
    assert cfg["run_id"] == max(best, key=best.get)
    assert cfg["value"] == pytest.approx(max(best.values()), abs=1e-9)
    assert (out / "importances.png").read_bytes()[:4] == b"\x89PNG"
    pt = pd.read_csv(out / "paper_table.csv")
    assert len(pt) == 16 and (pt["n"] == 1).all() and pt["ari_fg_std"].isna().all()  # one run per TPE config


def test_tpe_importances_from_optuna_storage(tracking, tmp_path, capsys):
    """The Optuna storage named on the parent run is used when it can be opened."""
    import optuna

    from search import report

    uri, Tracker = tracking
    name = f"tpe_store_{uuid.uuid4().hex[:6]}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = parse_study(TPE_STUDY.format(name=name), source=f"{name}.yaml")
    # In storage the objective depends on dec_top_k alone (the MLflow runs say temperature): which
    # parameter wins tells which source the report used.
    ostudy = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    ostudy.optimize(lambda t: (study.sample(t), -abs(t.params["contrastive.dec_top_k"] - 7) / 10)[1], n_trials=20)
    tracker = Tracker(uri, name)
    parent = start_parent(tracker, study, {"ctcae.optuna_storage": storage})
    score = lambda p: 0.9 - 0.4 * abs(math.log10(p["contrastive.temperature"]) + 1.3)  # noqa: E731
    _log_tpe_children(tracker, study, parent, np.random.default_rng(1), 3, score)
    out = tmp_path / "rep"
    assert report.main(["--study", name, "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    md = capsys.readouterr().out
    imp = pd.read_csv(out / "importances.csv").sort_values("importance", ascending=False)
    assert imp.iloc[0]["param"] == "contrastive.dec_top_k" and imp.iloc[0]["importance"] > 0.6, imp
    assert "Optuna storage (20 COMPLETE" in md
    assert not [a for a in tracker.client.list_artifacts(parent) if a.path == "report"]  # --no-log


def test_unknown_study_is_an_error(tracking, capsys):
    from search import report

    uri, _ = tracking
    assert report.main(["--study", f"nope_{uuid.uuid4().hex[:6]}", "--tracking-uri", uri]) == 2
    assert "no parent run" in capsys.readouterr().err


def test_evaluate_run_on_other_dataset_logs_to_the_run(tracking, tmp_path, monkeypatch, capsys):
    """search/evaluate.py --run: finds the trial's tested checkpoint in the study's Ray storage,
    evaluates it on another dataset and object counts, and logs the numbers to the run; they equal
    ctcae_core.evaluate.evaluate_checkpoint on the same file."""
    import shutil

    from ctcae_core.config import get_profile
    from ctcae_core.evaluate import evaluate_checkpoint
    from ctcae_core.train import fit

    monkeypatch.setenv("CTCAE_DATA_CACHE", str(tmp_path / "cache"))
    uri, Tracker = tracking
    name = f"ev_{uuid.uuid4().hex[:6]}"
    exp_dir = tmp_path / "ray_results" / name
    trial_dir = exp_dir / "train_runs" / "trial_a"
    reported = []

    def report(metrics, ckpt_dir):  # what Ray Train persists: one directory per reported checkpoint
        dst = trial_dir / f"checkpoint_{len(reported):06d}"
        shutil.copytree(ckpt_dir, dst)
        reported.append((metrics["step"], dst / "checkpoint.pt"))

    cfg = get_profile("tiny").with_overrides({"train.steps": 6, "train.eval_every": 3, "data.n_train": 120, "data.n_test": 32,
                                              "train.eval_images": 16})
    fit(cfg, report=report, out_dir=tmp_path / "run", progress=False)
    assert [s for s, _ in reported] == [3, 6]

    tracker = Tracker(uri, name)
    parent = tracker.start_parent(name, str(exp_dir), {"ctcae.storage": str(exp_dir)}, resume=False)
    run = tracker.start_child(parent, "trial_a", f"{name}-trial_a", cfg.flat(), {"ctcae.searched": "[]"})
    tracker.log_metrics(run, {"test_ari_fg": 0.5}, 3)  # the study tested the step-3 checkpoint
    tracker.end(run, "FINISHED")

    from search import evaluate as evaluate_cli

    # the entry point as a user calls it (cheap: --help needs neither torch nor mlflow) ...
    helped = subprocess.run([sys.executable, str(ROOT / "search" / "evaluate.py"), "--help"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert helped.returncode == 0 and "--n-objects" in helped.stdout
    # ... and its main() in this process (a second interpreter would re-import torch and mlflow)
    argv = ["--run", run, "--tracking-uri", uri, "--dataset", "multi_dsprites:2-6", "--n-objects", "5", "6",
            "--max-images", "12", "--device", "cpu"]
    assert evaluate_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "logged eval_multi_dsprites_2-6_*" in captured.err
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["step"] == 3 and printed["checkpoint"] == str(reported[0][1])

    expected = evaluate_checkpoint(reported[0][1], "multi_dsprites:2-6", n_objects=[5, 6], max_images=12, device="cpu")
    logged = tracker.client.get_run(run).data.metrics
    p = "eval_multi_dsprites_2-6"
    for k in ("mse", "ari_fg", "ari_full", "n_images"):
        assert logged[f"{p}_{k}"] == pytest.approx(expected[k], rel=1e-6, abs=1e-9), k
    for n in ("5", "6"):
        assert logged[f"{p}_ari_fg_n{n}"] == pytest.approx(expected["by_n_objects"][n]["ari_fg"], rel=1e-6, abs=1e-9)
        assert logged[f"{p}_mse_n{n}"] == pytest.approx(expected["by_n_objects"][n]["mse"], rel=1e-6, abs=1e-9)
        assert logged[f"{p}_count_n{n}"] == expected["by_n_objects"][n]["n_images"] > 0
    assert {m.step for m in tracker.client.get_metric_history(run, f"{p}_ari_fg")} == {3}
    assert [a.path for a in tracker.client.list_artifacts(run, "eval")] == [f"eval/{p}.json"]

    # a run that is not a trial of a study: a clear error, exit 2
    assert evaluate_cli.main(["--run", parent, "--tracking-uri", uri]) == 2
    assert "not a trial" in capsys.readouterr().err
