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
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from search.names import KEY_PARAMS
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
    # the summary links to the trials in the model-training view and to MLflow's Compare page
    uri = smoke_run["uri"]
    assert f"[ctcae] MLflow, trials by val_ari_fg: {uri}/#/experiments/" in p.stdout
    assert "workflowType=machine_learning" in p.stdout
    assert f"[ctcae] MLflow, compare the 4 trials: {uri}/#/compare-runs?runs=" in p.stdout
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

    assert yaml.safe_load(Path(base_local).read_text()) == study.base.to_dict()

    # the study's figures are tags, not metrics: nothing of the parent joins the trials' charts
    assert parent.data.metrics == {} and int(tags["ctcae.summary.n_trials"]) == 4 and float(tags["ctcae.summary.wall_s"]) > 0

    assert len(children) == study.search.num_samples == 4
    assert len({c.info.run_name for c in children}) == 4  # unique within the study
    for child in children:
        ctags = child.data.tags
        assert ctags["mlflow.parentRunId"] == parent.info.run_id
        # provenance on every trial: the UI's Source, Created by and git commit
        assert ctags["mlflow.source.name"] == "search/run.py" and ctags["mlflow.user"]
        assert ctags["mlflow.source.git.commit"] == tags["ctcae.git_commit"]
        params = child.data.params
        searched = json.loads(ctags["ctcae.searched"])
        assert set(searched) <= set(study.keys) and "model.decoder" in searched
        # only the key config values and the searched keys that took effect are params
        assert set(params) == set(KEY_PARAMS) | set(searched), sorted(params)
        # conditional parameter: the temperature is searched (and a param) only when the loss is on
        on = float(params["contrastive.weight"]) > 0
        assert ("contrastive.temperature" in searched) == on == ("contrastive.temperature" in params)
        # the name is the searched values and the seed, the same values as tags search.<key>
        name = child.info.run_name.split(" #")[0]
        assert name.startswith(f"decoder={params['model.decoder']} sigmoid={int(params['model.out_sigmoid'] == 'True')} ")
        assert name.endswith(" seed=0") and (" T=" in name) == on
        assert ctags["search.decoder"] == params["model.decoder"] and ctags["search.seed"] == "0"
        assert ("search.T" in ctags) == on
        config = yaml.safe_load(Path(client.download_artifacts(child.info.run_id, "resolved_config.yaml")).read_text())
        assert config["model"]["decoder"] == params["model.decoder"]  # the full config is an artifact
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
        assert {"resolved_config.yaml", "test_metrics.json", "pngs", "images"} <= names
        assert "best_val_ari_fg" in m and "best_val_mse" not in m and "is_best" not in m  # the objective, not its companions
        # MLflow images: the three pictures at each evaluation with its step (search/pictures.py)
        images = [a.path.split("/")[-1] for a in client.list_artifacts(child.info.run_id, "images")]
        logged = {(n.split("+")[0], int(n.split("+")[2])) for n in images if n.endswith(".png")}  # key+step+N+...
        assert logged == {(f"pictures~{k}", s) for k in ("panel", "phase_maps", "segmentation") for s in (10, 20)}, images
        # the objective's curve once more in a section of its own; run facts as tags, not charts
        objective = client.get_metric_history(child.info.run_id, "objective/val_ari_fg")
        assert [(x.step, x.value) for x in objective] == [(x.step, x.value) for x in client.get_metric_history(child.info.run_id, "val_ari_fg")]
        assert "best_step" not in m and int(ctags["ctcae.best_step"]) in (10, 20) and ctags["ctcae.world_size"] == "1"
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


def _browser_or_skip():
    sys.path.insert(0, str(ROOT / "scripts"))
    from mlflow_ui import BrowserMissing, browser

    try:
        return browser((1400, 1500))  # tall enough that the trial page's picture cards are drawn
    except BrowserMissing as e:
        pytest.skip(f"no headless Chromium: {e}")


def test_mlflow_ui_in_chromium(smoke_run: dict) -> None:
    """mlflow/serve.py on the study's runs, opened in headless Chromium: the printed link shows
    the trials by name, a trial's page shows its MLflow images (what mlflow/README.md walks through)."""
    from conftest import SERVER_ROOTS, free_port, kill_group, wait_http

    from search.runview import runs_url

    drv = _browser_or_skip()  # puts scripts/ on sys.path
    from mlflow_ui import images_loaded, page_text, show_step, taller_picture_cards, wait_text, wait_until
    port = free_port()
    log = open(smoke_run["work"] / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, str(ROOT / "mlflow" / "serve.py"), "--data-dir", str(SERVER_ROOTS[smoke_run["uri"]]),
                              "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout=180, proc=serve)
        client, _, children = _runs(url, "smoke")
        exp_id = client.get_experiment_by_name("smoke").experiment_id
        names = [c.info.run_name for c in children]
        drv.get(runs_url(url, exp_id, "val_ari_fg", "max"))
        wait_text(drv, names)  # every trial, by its searched values
        assert "smoke" not in page_text(drv).split("Run Name", 1)[-1].split("matching runs")[0]  # no parent row
        trial = next(c for c in children if c.info.status == "FINISHED")
        drv.get(f"{url}/#/experiments/{exp_id}/runs/{trial.info.run_id}/model-metrics?workflowType=machine_learning")
        wait_text(drv, [trial.info.run_name, "pictures/panel"])
        assert wait_until(drv, taller_picture_cards, "the picture cards") == 1  # one row of three, made taller
        assert show_step(drv, 20) == 3  # the image cards open at step 0; the pictures are at 10 and 20
        n = wait_until(drv, lambda d: images_loaded(d) >= 3 and images_loaded(d), "the trial's three MLflow images")
        srcs = drv.execute_script("return Array.from(document.images).map(i => decodeURIComponent(i.src))")
        for key in ("panel", "phase_maps", "segmentation"):
            assert any(f"images/pictures~{key}+step+20+" in s for s in srcs), (key, srcs)
        assert n == 3, srcs
    finally:
        drv.quit()
        kill_group(serve)
        log.close()
