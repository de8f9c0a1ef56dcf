"""Distributed on one machine: a real two-node Ray cluster on loopback (``ray start --head``, then
``ray start --address`` for a second node, one CPU each) and a study run with ``--address`` whose
trials use 2 Ray Train workers each (DDP over gloo), one on each node.

Teardown stops only this cluster's processes: every process whose command line names the
cluster's private temp dir (and their children) is signalled by pid; a machine-wide
``ray stop --force`` would also kill other Ray instances running beside this test.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a two-node Ray cluster and a real MLflow server
RAY = str(Path(sys.executable).parent / "ray")

CLUSTER_STUDY = """
name: cluster
base: {profile: tiny}
space:
  train.seed: {grid: [0, 1]}
  contrastive.weight: {grid: [1e-4]}
search: {algorithm: grid, max_concurrent: 1}
resources: {workers: 2, cpus_per_worker: 1, max_failures: 1}
"""


def _cluster_pids(temp: str) -> list[int]:
    """Processes whose command line names ``temp``, and all their descendants."""
    procs: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(d.name)] = (ppid, cmd)
    roots = {pid for pid, (_, cmd) in procs.items() if temp in cmd and pid != os.getpid()}
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return sorted(found)


def _stop_cluster(temp: str) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = _cluster_pids(temp)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and _cluster_pids(temp):
            time.sleep(0.5)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_node_cluster(get_free_port):
    from conftest import ray_test_env

    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    env = ray_test_env()
    port = get_free_port()

    def node_ports() -> list[str]:  # two nodes on one host must not share any agent port
        return [f"--node-manager-port={get_free_port()}", f"--object-manager-port={get_free_port()}",
                f"--dashboard-agent-listen-port={get_free_port()}", f"--dashboard-agent-grpc-port={get_free_port()}",
                f"--runtime-env-agent-port={get_free_port()}", f"--metrics-export-port={get_free_port()}"]

    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]

    def start_head() -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                               f"--temp-dir={temp}", *common, *node_ports()],
                              env=env, capture_output=True, text=True, timeout=240)

    try:
        head = start_head()
        if head.returncode != 0:
            # `ray start` gives a raylet a fixed 30 s to register with the GCS, which a busy 2-core
            # machine occasionally misses: clear the half-started node and try once more.
            _stop_cluster(temp)
            os.makedirs(temp)
            port = get_free_port()
            head = start_head()
        assert head.returncode == 0, head.stdout + head.stderr
        worker = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common, *node_ports()],
                                env=env, capture_output=True, text=True, timeout=240)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        yield f"127.0.0.1:{port}"
    finally:
        _stop_cluster(temp)


def test_study_on_two_node_cluster_with_two_train_workers(two_node_cluster: str, mlflow_server: str, tmp_path: Path) -> None:
    import ray

    from conftest import ray_test_env

    # both nodes joined, one CPU each
    ray.init(address=two_node_cluster)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2 and ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()

    study = tmp_path / "cluster.yaml"
    study.write_text(CLUSTER_STUDY)
    p = subprocess.run(
        [sys.executable, str(ROOT / "search" / "run.py"), "--space", str(study), "--address", two_node_cluster,
         "--tracking-uri", mlflow_server, "--storage", str(tmp_path / "ray")],
        cwd=tmp_path, env=ray_test_env(), capture_output=True, text=True, timeout=900,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    port = two_node_cluster.rsplit(":", 1)[1]
    assert f":{port}, MLflow" in p.stdout  # joined the cluster (GCS port) rather than starting a local Ray

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["ctcae.ray_address"].endswith(f":{port}")
    assert len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags
        m = c.data.metrics
        assert float(c.data.tags["ctcae.world_size"]) == 2  # DDP across two Ray Train workers ...
        assert float(c.data.tags["ctcae.n_nodes"]) == 2  # ... placed on the two nodes (run facts are tags)
        assert "test_ari_fg" in m
        # metrics are all-reduced across the workers: one history, one value per evaluation
        assert [x.step for x in client.get_metric_history(c.info.run_id, "val_mse")] == [10, 20]
