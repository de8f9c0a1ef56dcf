"""End to end: the smoke study with real Ray (num_cpus=2) against a real MLflow server on loopback.

Reads everything back from the real stores: MLflow through ``MlflowClient`` (one parent run, one
child per trial with params, metric histories and PNG artifacts), the Optuna storage (the trials
and their parameters), and the results table (CSV and Parquet).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from ctcae_core.config import get_profile
from search.space import load_study
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a study on real Ray and a real MLflow server
STUDY = ROOT / "ablations" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke_run(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from conftest import ray_test_env

    work = tmp_path_factory.mktemp("smoke")
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, str(ROOT / "search" / "run.py"), "--space", str(STUDY), "--smoke-test",
         "--num-cpus", "2", "--tracking-uri", mlflow_server, "--storage", str(work / "ray")],
        cwd=work, env=ray_test_env(), capture_output=True, text=True, timeout=900,
    )
    (work / "run.log").write_text(p.stdout + p.stderr)
    return {"proc": p, "work": work, "uri": mlflow_server, "wall": time.time() - t0}


def _runs(uri: str, experiment: str) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_study_completes(smoke_run: dict) -> None:
    p = smoke_run["proc"]
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    assert "[ctcae] study smoke:" in p.stdout
    print(f"smoke study wall time {smoke_run['wall']:.1f} s")


def test_mlflow_parent_and_children(smoke_run: dict) -> None:
    study = load_study(STUDY, smoke=True)
    client, parents, children = _runs(smoke_run["uri"], "smoke")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["ctcae.study"] == "smoke"
    assert len(tags["ctcae.git_commit"]) == 40 or tags["ctcae.git_commit"] == "unknown"
    assert ":" in tags["ctcae.ray_address"]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert arts == {"study/smoke.yaml", "study/base_config.yaml"}
    base_local = client.download_artifacts(parent.info.run_id, "study/base_config.yaml")
    import yaml

    assert yaml.safe_load(Path(base_local).read_text()) == study.base.to_dict()

    assert len(children) == study.search.num_samples == 4
    flat_keys = set(get_profile("tiny").flat())
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        params = child.data.params
        assert set(params) == flat_keys  # the full resolved config, flattened
        searched = json.loads(child.data.tags["ctcae.searched"])
        assert set(searched) <= set(study.keys) and "model.decoder" in searched
        # conditional parameter: the temperature is searched only when the loss is on
        assert ("contrastive.temperature" in searched) == (float(params["contrastive.weight"]) > 0)
        assert child.info.status in ("FINISHED", "KILLED"), child.data.tags
        hist = client.get_metric_history(child.info.run_id, "val_mse")
        steps = [m.step for m in hist]
        assert steps == sorted(set(steps)) and steps[0] == 10  # one value per evaluation, with its step
        if child.info.status == "KILLED":
            assert "early-stopped" in child.data.tags["ctcae.end_reason"]
            continue
        assert steps == [10, 20]
        m = child.data.metrics
        for k in ("test_ari_fg", "test_ari_full", "test_mse", "test_ari_fg_n3", "test_mse_n3", "test_count_n3"):
            assert k in m, sorted(m)  # _n3: data.test_n_objects [3], evaluated on its own
        assert m["test_count_n3"] > 0
        assert 0.0 <= m["test_mse"] < 1.0 and -1.0 <= m["test_ari_fg"] <= 1.0
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"resolved_config.yaml", "test_metrics.json", "pngs"} <= names
        pngs = [a.path for a in client.list_artifacts(child.info.run_id, "pngs")]
        assert any("phase_maps" in n for n in pngs) and any("segmentation" in n for n in pngs)
        local = client.download_artifacts(child.info.run_id, pngs[0])
        with Image.open(local) as im:
            assert im.format == "PNG" and im.size[0] >= 32 and im.size[1] >= 32
        test_json = json.loads(Path(client.download_artifacts(child.info.run_id, "test_metrics.json")).read_text())
        assert test_json["test_mse"] == pytest.approx(m["test_mse"])
    assert sum(c.info.status == "FINISHED" for c in children) >= 1


def test_optuna_storage_holds_the_trials(smoke_run: dict) -> None:
    storage = f"sqlite:///{smoke_run['work'] / 'ray' / 'optuna.db'}"
    ot = optuna.load_study(study_name="smoke", storage=storage)
    trials = ot.get_trials(deepcopy=False)
    assert len(trials) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    _, _, children = _runs(smoke_run["uri"], "smoke")
    mlflow_decoders = sorted(c.data.params["model.decoder"] for c in children)
    assert sorted(t.params["model.decoder"] for t in trials) == mlflow_decoders
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert 0.0 <= t.value <= 1.0  # val_ari_fg at the tested checkpoint


def test_results_table(smoke_run: dict) -> None:
    exp = smoke_run["work"] / "ray" / "smoke"
    csv = pd.read_csv(exp / "results.csv")
    pq = pd.read_parquet(exp / "results.parquet")
    assert len(csv) == len(pq) == 4
    assert set(csv["status"]) <= {"finished", "stopped"}
    assert list(csv["trial_id"]) == list(pq["trial_id"])
    finished = csv[csv["status"] == "finished"]
    assert finished["val_ari_fg"].notna().all() and finished["test_ari_fg"].notna().all()
    # best first
    vals = csv["val_ari_fg"].dropna().tolist()
    assert vals == sorted(vals, reverse=True)
    # per-trial overhead = trial wall time - training time, recorded for the closing note
    assert (finished["trial_time_s"] > finished["train_time_s"]).all()
    print("per-trial overhead (s):", finished["overhead_s"].round(1).tolist(),
          "train (s):", finished["train_time_s"].round(1).tolist())
