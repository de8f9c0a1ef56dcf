"""``resources.in_process``: trials that train inside their Tune trial process (no Ray Train
worker group), with real Ray (num_cpus=2) and a real MLflow server:

* a finished trial logs what a Ray Train trial logs (histories, pictures, test metrics, PNGs and
  the resolved config), and a trial whose loss turns NaN fails alone, reported once although
  Tune may retry it;
* a trial process killed after its second checkpoint is retried by Tune from its last
  registered checkpoint, not from scratch.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from test_search_faults import _children, kill_one_during, run_study

pytestmark = pytest.mark.slow  # studies on real Ray and a real MLflow server

STUDY = """
name: inproc
base: {profile: tiny}
space:
  train.seed: {grid: [0, 1]}
  train.inject_nan_at: {grid: [5], when: {train.seed: 1}}
search: {algorithm: grid, max_concurrent: 1}
resources: {workers: 1, max_failures: 1, in_process: true}
"""

KILL_STUDY = """
name: killinproc
base: {profile: tiny, overrides: {train.steps: 80}}
space:
  train.seed: {choice: [0]}
search: {algorithm: tpe, num_samples: 1}
resources: {workers: 1, max_failures: 2, in_process: true}
"""


def test_in_process_trials_log_like_train_workers_and_fail_nan_once(mlflow_server: str, tmp_path: Path) -> None:
    p = run_study(STUDY, "inproc", mlflow_server, tmp_path)
    assert "RayTrainWorker" not in p.stdout + p.stderr  # no worker group was started

    client, parents, children = _children(mlflow_server, "inproc")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    by_seed = {int(c.data.params["train.seed"]): c for c in children}
    good, bad = by_seed[0], by_seed[1]
    assert good.info.status == "FINISHED", good.data.tags
    assert [m.step for m in client.get_metric_history(good.info.run_id, "val_mse")] == [10, 20]
    m = good.data.metrics
    assert {"test_ari_fg", "test_mse", "test_ari_fg_n3", "worker_start_s", "train_time_s"} <= set(m), sorted(m)
    assert good.data.tags["ctcae.world_size"] == "1" and int(good.data.tags["ctcae.best_step"]) in (10, 20)
    names = {a.path for a in client.list_artifacts(good.info.run_id)}
    assert {"resolved_config.yaml", "test_metrics.json", "pngs", "images"} <= names
    images = [a.path.split("/")[-1] for a in client.list_artifacts(good.info.run_id, "images")]
    logged = {(n.split("+")[0], int(n.split("+")[2])) for n in images if n.endswith(".png")}
    assert logged == {(f"pictures~{k}", s) for k in ("panel", "phase_maps", "segmentation") for s in (10, 20)}, images

    assert bad.info.status == "FAILED"
    reason = bad.data.tags["ctcae.end_reason"]
    assert reason.startswith("non-finite loss") and "step 5" in reason, reason
    assert [x.value for x in client.get_metric_history(bad.info.run_id, "nonfinite_loss")] == [1.0]

    table = pd.read_csv(tmp_path / "ray" / "inproc" / "results.csv")
    assert sorted(table["status"]) == ["failed", "finished"]
    finished = table[table["status"] == "finished"]
    assert (finished["overhead_s"] > 0).all() and (finished["worker_start_s"] >= 0).all()


def test_killed_in_process_trial_resumes_from_its_checkpoint(mlflow_server: str, tmp_path: Path) -> None:
    exp = tmp_path / "ray" / "killinproc"
    # ready: a second checkpoint on disk (the trial's report of it waited for Tune to register the first)
    out = kill_one_during(KILL_STUDY, "killinproc", mlflow_server, tmp_path,
                          lambda: any(exp.glob("*/checkpoint_00000[1-9]")), "ray::ImplicitFunc")  # the trial actor
    assert "ActorDiedError" in out and "from checkpoint: Checkpoint(" in out  # the trial died, Tune restored it
    client, _, children = _children(mlflow_server, "killinproc")
    assert len(children) == 1 and children[0].info.status == "FINISHED", children[0].data.tags
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "val_mse")]
    # retried from its last registered checkpoint, not from scratch: step 10 once, every step to the
    # end; the one evaluation in flight when it died (reported, its checkpoint not yet registered
    # by Tune) may come twice
    assert steps.count(10) == 1 and sorted(set(steps)) == list(range(10, 90, 10)) and steps[-1] == 80, steps
    assert len(steps) - len(set(steps)) <= 1 and steps == sorted(steps), steps
    assert "test_ari_fg" in children[0].data.metrics
