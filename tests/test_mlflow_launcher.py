"""The MLflow launcher (mlflow/serve.py), tested for real: no mocks, real servers on loopback.

Two servers start side by side (module fixture, ~20-40 s on a loaded machine):
- local mode: SQLite + local artifact folder, bound to 127.0.0.1; a run is logged through the
  REST API with MlflowClient (params, metrics, an artifact) and read back, also from disk;
- production mode with local storage: the basic-auth app and the Kubernetes Deployment's own
  ``MLFLOW_ALLOWED_HOSTS`` (read from k8s/base/mlflow-deployment.yaml), so the in-cluster Host
  header ``ctcae-mlflow:5000`` is accepted, others are refused, and requests need credentials.
The last test stops both with SIGTERM and checks that every process is gone and the ports are free.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "mlflow" / "serve.py"
DEPLOYMENT = ROOT / "k8s" / "base" / "mlflow-deployment.yaml"
START_TIMEOUT_S = 240.0  # ~20 s on an idle machine; generous for shared CI cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """No one listens on the port: a new server could bind it (SO_REUSEADDR, as servers do, so
    the closed connections' TIME_WAIT entries do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def descendants(pid: int) -> set[int]:
    """All live descendant pids of `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def http(url: str, host: str | None = None, auth: tuple[str, str] | None = None) -> int:
    """Status code of a GET."""
    req = urllib.request.Request(url)
    if host:
        req.add_header("Host", host)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


class Server:
    """One `python mlflow/serve.py` process and where it listens."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int, workdir: Path) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), *args], env=env, cwd=workdir,
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.pids: set[int] = set()

    def wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if http(self.url + "/health") == 200:
                    self.pids = {self.proc.pid} | descendants(self.proc.pid)
                    return
            except OSError:
                pass
            time.sleep(0.3)
        pytest.fail(f"{self.name} server not healthy in time:\n{self.log.read_text()[-3000:]}")

    def kill_group(self) -> None:
        """Last-resort cleanup of this server's own process group (only if a test failed)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CTCAE_MLFLOW"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def deployment_env() -> dict[str, str]:
    """Plain `value` env entries of the Kubernetes MLflow container."""
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    return {v["name"]: v["value"] for v in pod["containers"][0]["env"] if "value" in v}


ADMIN = ("admin", secrets.token_hex(12))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    work = tmp_path_factory.mktemp("mlflow-servers")
    local_port = free_port()
    local_args = ["--data-dir", str(work / "local"), "--port", str(local_port)]
    local = Server("local", local_args, base_env(), local_port, work)
    prod_port = free_port()
    prod_env = base_env() | {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{work / 'prod.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(work / "prod-artifacts"),
        "MLFLOW_ALLOWED_HOSTS": deployment_env()["MLFLOW_ALLOWED_HOSTS"],
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{work / 'auth.db'}",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(prod_port),
        "MLFLOW_WORKERS": "1",
    }
    prod = Server("production", ["--mode", "production"], prod_env, prod_port, work)
    started = {"local": local, "production": prod}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in started.values():
            server.wait_healthy(deadline)
        yield started
    finally:
        for server in started.values():
            server.kill_group()


def test_local_server_logs_and_reads_back_a_run(servers: dict[str, Server], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    server = servers["local"]
    client = MlflowClient(tracking_uri=server.url)
    exp_id = client.create_experiment("launcher-test")
    run = client.create_run(exp_id, tags={"mlflow.runName": "trial-0"})
    client.log_param(run.info.run_id, "model.decoder", "upsample")
    client.log_param(run.info.run_id, "contrastive.weight", "0.0001")
    for step, value in enumerate([0.5, 0.25, 0.125]):
        client.log_metric(run.info.run_id, "val_ari_fg", value, step=step)
    artifact = tmp_path / "config.json"
    artifact.write_text(json.dumps({"model": {"decoder": "upsample"}}))
    client.log_artifact(run.info.run_id, str(artifact), artifact_path="config")
    client.set_terminated(run.info.run_id)

    fresh = MlflowClient(tracking_uri=server.url)
    back = fresh.get_run(run.info.run_id)
    assert back.data.params == {"model.decoder": "upsample", "contrastive.weight": "0.0001"}
    assert back.data.metrics == {"val_ari_fg": 0.125}
    history = fresh.get_metric_history(run.info.run_id, "val_ari_fg")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.5), (1, 0.25), (2, 0.125)]
    assert back.info.status == "FINISHED"
    assert back.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert [f.path for f in fresh.list_artifacts(run.info.run_id, "config")] == ["config/config.json"]
    local_copy = fresh.download_artifacts(run.info.run_id, "config/config.json", str(tmp_path / "dl"))
    assert json.loads(Path(local_copy).read_text()) == {"model": {"decoder": "upsample"}}

    data_dir = Path(server.proc.args[server.proc.args.index("--data-dir") + 1])
    assert (data_dir / "mlflow.db").is_file()
    on_disk = list((data_dir / "artifacts").rglob("config.json"))
    assert len(on_disk) == 1 and json.loads(on_disk[0].read_text())["model"]["decoder"] == "upsample"


def _outside_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_local_server_is_loopback_only(servers: dict[str, Server], tmp_path: Path) -> None:
    server = servers["local"]
    assert "--host 127.0.0.1" in server.log.read_text()
    addr = _outside_address()
    if addr is not None:
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((addr, server.port))
    refused = subprocess.run([sys.executable, str(LAUNCHER), "--host", "0.0.0.0"], cwd=tmp_path,
                             capture_output=True, text=True, env=base_env(), timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "loopback only" in refused.stderr
    assert list(tmp_path.iterdir()) == []  # refused before creating anything


def test_production_server_needs_auth_and_accepts_the_service_host(servers: dict[str, Server]) -> None:
    server = servers["production"]
    log = server.log.read_text()
    assert "--app-name basic-auth" in log and "--allowed-hosts" in log
    api = server.url + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert http(server.url + "/health") == 200  # probes need no credentials
    assert http(api) == 401
    assert http(api, auth=(ADMIN[0], "wrong")) == 401
    assert http(api, auth=ADMIN) == 200
    # Host headers as the Ray pods (Service name) and a port-forward (localhost) send them:
    assert http(api, host="ctcae-mlflow:5000", auth=ADMIN) == 200
    assert http(api, host="ctcae-mlflow.ctcae.svc.cluster.local:5000", auth=ADMIN) == 200
    assert http(api, host="localhost:5000", auth=ADMIN) == 200
    assert http(api, host="evil.example.com", auth=ADMIN) == 403


def test_production_server_logs_a_run_with_credentials(
    servers: dict[str, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    client = MlflowClient(tracking_uri=servers["production"].url)
    exp_id = client.create_experiment("auth-test")
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "loss", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 1.5}


def _kubernetes_env(secret_values: dict[str, str]) -> dict[str, str]:
    """The Deployment's environment as Kubernetes would build it ($(VAR) expanded, Secrets faked)."""
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    env: dict[str, str] = {}
    for var in pod["containers"][0]["env"]:
        if "value" in var:
            value = var["value"]
            for name, resolved in env.items():
                value = value.replace(f"$({name})", resolved)
            env[var["name"]] = value
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_values[f"{ref['name']}/{ref['key']}"]
    return env


def test_production_command_from_the_kubernetes_environment(tmp_path: Path) -> None:
    password = "s3cr3t" + secrets.token_hex(4)
    fake = {
        "ctcae-postgres-mlflow/username": "mlflow", "ctcae-postgres-mlflow/password": password,
        "ctcae-postgres-mlflow-auth/username": "mlflow_auth", "ctcae-postgres-mlflow-auth/password": password,
        "ctcae-minio-mlflow/access-key": "mlflow", "ctcae-minio-mlflow/secret-key": password,
        "ctcae-mlflow-auth/flask-secret-key": password, "ctcae-mlflow-auth/admin-username": "admin",
        "ctcae-mlflow-auth/admin-password": password,
    }  # fmt: skip  (MLflow's own roles and MinIO user: never the Postgres superuser or the MinIO root)
    env = base_env() | _kubernetes_env(fake)
    out = subprocess.run([sys.executable, str(LAUNCHER), "--mode", "production", "--dry-run"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.split()
    flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert flag("--backend-store-uri") == "postgresql+psycopg2://mlflow:***@ctcae-postgres:5432/mlflow"
    assert flag("--artifacts-destination") == "s3://mlflow-artifacts"
    assert "--serve-artifacts" in cmd
    assert flag("--app-name") == "basic-auth"
    assert flag("--host") == "0.0.0.0" and flag("--port") == "5000" and flag("--workers") == "4"
    assert "ctcae-mlflow:*" in flag("--allowed-hosts").split(",")
    assert password not in out.stdout + out.stderr


def test_production_refuses_incomplete_environment(tmp_path: Path) -> None:
    env = base_env() | {"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://u:p@db:5432/mlflow",
                        "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket"}  # fmt: skip
    out = subprocess.run([sys.executable, str(LAUNCHER), "--mode", "production"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 2
    for name in ("MLFLOW_ALLOWED_HOSTS", "MLFLOW_AUTH_ADMIN_PASSWORD", "AWS_ACCESS_KEY_ID"):
        assert name in out.stderr


def test_servers_stop_cleanly_on_sigterm(servers: dict[str, Server]) -> None:
    """SIGTERM to the launcher's pid (it exec'd into `mlflow server`) ends every process and frees the port."""
    for server in servers.values():
        assert len(server.pids) >= 2, "expected mlflow + its uvicorn server processes"
        server.proc.send_signal(signal.SIGTERM)
    for server in servers.values():
        rc = server.proc.wait(timeout=30)
        assert rc in (0, -signal.SIGTERM), f"{server.name} exited {rc}:\n{server.log.read_text()[-2000:]}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (any(alive(p) for p in server.pids) or not port_is_free(server.port)):
            time.sleep(0.2)
        assert not [p for p in server.pids if alive(p)], f"{server.name}: processes left behind"
        assert port_is_free(server.port), f"{server.name}: port {server.port} still bound"
