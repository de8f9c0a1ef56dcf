"""Faults, with real Ray (num_cpus=2) and a real MLflow server:

* a trial whose loss turns NaN (``train.inject_nan_at``) fails alone, is not retried, and its
  MLflow run ends FAILED with the reason, while the other trials finish;
* a study interrupted with SIGINT (Ctrl-C) after its first trial and continued with ``--resume``
  ends with exactly the planned trials, Optuna trials and MLflow runs, without re-running the
  trial that had finished.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # studies on real Ray and a real MLflow server

NAN_STUDY = """
name: nanstudy
base: {profile: tiny}
space:
  train.seed: {grid: [0, 1, 2]}
  train.inject_nan_at: {grid: [5], when: {train.seed: 1}}
search: {algorithm: grid, max_concurrent: 2}
resources: {workers: 1, max_failures: 2}
"""

RESUME_STUDY = """
name: resumable
base: {profile: tiny}
space:
  model.decoder: {choice: [upsample, transpose]}
  train.lr: {loguniform: [1e-4, 1e-3]}
search: {algorithm: tpe, num_samples: 3, max_concurrent: 1, seed: 7}
"""


def _cmd(study: Path, uri: str, storage: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "search" / "run.py"), "--space", str(study), "--num-cpus", "2",
            "--tracking-uri", uri, "--storage", str(storage), *extra]


def _children(uri: str, experiment: str) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags], [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def run_study(text: str, name: str, uri: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the study ``text`` (saved as ``tmp_path/name.yaml``) to its end; it must exit 0."""
    from conftest import ray_test_env

    study = tmp_path / f"{name}.yaml"
    study.write_text(text)
    p = subprocess.run(_cmd(study, uri, tmp_path / "ray"), cwd=tmp_path, env=ray_test_env(),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    return p


def signal_during(text: str, name: str, uri: str, tmp_path: Path, ready: Any, pick: Any, sig: int) -> tuple[int, str]:
    """Start the study ``text``; once ``ready()``, send ``sig`` to the process ``pick(proc)`` names;
    return the study's exit code and output."""
    from conftest import ray_test_env

    study = tmp_path / f"{name}.yaml"
    study.write_text(text)
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen(_cmd(study, uri, tmp_path / "ray"), cwd=tmp_path, env=ray_test_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(ready, 600, proc)
        os.kill(pick(proc), sig)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    return rc, (tmp_path / f"{name}.log").read_text()


def kill_one_during(text: str, name: str, uri: str, tmp_path: Path, ready: Any, title: str) -> str:
    """SIGKILL the study's one process whose command line contains ``title`` once ``ready()``;
    the study must still exit 0. Returns its output."""

    def pick(proc: subprocess.Popen) -> int:
        found = {p: c for p, c in _descendants(proc.pid).items() if title in c}
        assert len(found) == 1, found
        return next(iter(found))

    rc, out = signal_during(text, name, uri, tmp_path, ready, pick, signal.SIGKILL)
    assert rc == 0, out[-5000:]
    return out


def test_nan_trial_fails_alone(mlflow_server: str, tmp_path: Path) -> None:
    run_study(NAN_STUDY, "nanstudy", mlflow_server, tmp_path)

    client, parents, children = _children(mlflow_server, "nanstudy")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    by_seed = {int(c.data.params["train.seed"]): c for c in children}
    bad = by_seed[1]
    assert bad.data.params["train.inject_nan_at"] == "5"
    assert bad.info.status == "FAILED"
    reason = bad.data.tags["ctcae.end_reason"]
    assert reason.startswith("non-finite loss") and "step 5" in reason, reason
    for seed in (0, 2):
        good = by_seed[seed]
        assert good.info.status == "FINISHED", good.data.tags
        assert "train.inject_nan_at" not in good.data.params  # inactive (its `when` is false): not a param
        assert [m.step for m in client.get_metric_history(good.info.run_id, "val_mse")] == [10, 20]
        assert "test_ari_fg" in good.data.metrics

    ot = optuna.load_study(study_name="nanstudy", storage=f"sqlite:///{tmp_path / 'ray' / 'optuna.db'}")
    states = sorted(t.state.name for t in ot.get_trials(deepcopy=False))
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]

    table = pd.read_csv(tmp_path / "ray" / "nanstudy" / "results.csv")
    assert sorted(table["status"]) == ["failed", "finished", "finished"]
    # not retried although max_failures is 2: the NaN is deterministic, the failure is reported once
    assert [m.value for m in client.get_metric_history(bad.info.run_id, "nonfinite_loss")] == [1.0]


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"study exited early with {proc.returncode}")
        time.sleep(0.5)
    raise TimeoutError("condition not reached")


def test_interrupted_study_resumes_without_duplicates(mlflow_server: str, tmp_path: Path) -> None:
    from conftest import ray_test_env

    study = tmp_path / "resumable.yaml"  # written by signal_during; --resume runs it again
    storage = tmp_path / "ray"
    exp = storage / "resumable"
    times = exp / "trial_times.json"
    first_done: set[str] = set()

    def ctrl_c(proc: subprocess.Popen) -> int:  # the trials finished when Ctrl-C comes
        first_done.update(json.loads(times.read_text()))
        return proc.pid

    rc, out = signal_during(RESUME_STUDY, "resumable", mlflow_server, tmp_path,
                            lambda: times.exists() and len(json.loads(times.read_text() or "{}")) >= 1, ctrl_c, signal.SIGINT)
    assert rc == 130, out[-5000:]
    assert "--resume" in out

    client, parents, children = _children(mlflow_server, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert 1 <= len(children) < 3
    assert all(c.info.status != "RUNNING" for c in children)  # interrupted trials are marked KILLED

    p = subprocess.run(_cmd(study, mlflow_server, storage, "--resume"), cwd=tmp_path, env=ray_test_env(),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]

    client, parents, children = _children(mlflow_server, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent, continued
    assert len(children) == 3, [c.data.tags.get("ctcae.trial_id") for c in children]
    trial_ids = [c.data.tags["ctcae.trial_id"] for c in children]
    assert len(set(trial_ids)) == 3
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:
        if c.data.tags["ctcae.trial_id"] in first_done:  # finished before the interrupt: not re-run
            assert [m.step for m in client.get_metric_history(c.info.run_id, "val_mse")] == [10, 20]

    table = pd.read_csv(exp / "results.csv")
    assert len(table) == 3 and set(table["status"]) == {"finished"}
    assert first_done <= set(table["trial_id"].astype(str))

    ot = optuna.load_study(study_name="resumable", storage=f"sqlite:///{storage / 'optuna.db'}")
    trials = ot.get_trials(deepcopy=False)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


def test_fresh_run_of_existing_study_is_refused(mlflow_server: str, tmp_path: Path) -> None:
    """Re-running a study name without --resume would mix two studies: refused before any trial."""
    from conftest import ray_test_env

    study = tmp_path / "resumable.yaml"
    study.write_text(RESUME_STUDY)
    (tmp_path / "ray").mkdir()
    optuna.create_study(study_name="resumable", storage=f"sqlite:///{tmp_path / 'ray' / 'optuna.db'}")
    p = subprocess.run(_cmd(study, mlflow_server, tmp_path / "ray"), cwd=tmp_path, env=ray_test_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "already exists" in p.stderr and "--resume" in p.stderr


def test_unreachable_tracking_server_fails_fast(tmp_path: Path, get_free_port) -> None:
    from conftest import ray_test_env

    study = tmp_path / "resumable.yaml"
    study.write_text(RESUME_STUDY)
    t0 = time.time()
    p = subprocess.run(_cmd(study, f"http://127.0.0.1:{get_free_port()}", tmp_path / "ray"), cwd=tmp_path,
                       env=ray_test_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "not reachable" in p.stderr
    assert time.time() - t0 < 60 and not (tmp_path / "ray" / "resumable").exists()


KILL_STUDY = """
name: killworker
base: {profile: tiny, overrides: {train.steps: 80}}
space:
  train.seed: {choice: [0]}
search: {algorithm: tpe, num_samples: 1}
resources: {workers: 1, max_failures: 2}
"""


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live descendant of ``root``."""
    procs: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(d.name)] = (ppid, cmd)
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, (pp, _) in procs.items() if pp in frontier} - found
        found |= frontier
    return {p: procs[p][1] for p in found}


def test_killed_worker_resumes_from_last_checkpoint(mlflow_server: str, tmp_path: Path) -> None:
    """SIGKILL the Ray Train worker after its first checkpoint: Train restarts the worker group from
    that checkpoint (FailureConfig), so no evaluation step is reported twice and the trial finishes."""
    runs = tmp_path / "ray" / "killworker" / "train_runs"
    out = kill_one_during(KILL_STUDY, "killworker", mlflow_server, tmp_path,
                          lambda: any(runs.glob("*/checkpoint_*")), "RayTrainWorker")
    assert "[FailurePolicy] RETRY" in out  # the worker group was restarted ...
    client, _, children = _children(mlflow_server, "killworker")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "val_mse")]
    # ... from its checkpoint, not from scratch: every evaluation step once, in order, up to the end
    assert steps == sorted(set(steps)) and steps[-1] == 80 and steps[0] == 10, steps
