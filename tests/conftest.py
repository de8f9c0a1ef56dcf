"""Shared fixtures: a real MLflow tracking server on loopback, free ports, the Ray test environment.

The MLflow server is a subprocess (`mlflow server`) with a SQLite backend and an artifact
directory in a temporary folder; it is waited for through its /health endpoint and killed, with
its process group, at teardown.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} came up")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up within {timeout} s")


def kill_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group we started (start_new_session=True), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


def ray_test_env(**extra: str) -> dict[str, str]:
    """Environment for Ray in tests: auth off, the repo importable, quiet progress."""
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


@pytest.fixture
def ray_env():
    """Builds the environment for Ray subprocesses: ``ray_env(KEY=VALUE, ...)``."""
    return ray_test_env


@pytest.fixture
def get_free_port():
    return free_port


SERVER_ROOTS: dict[str, Path] = {}  # a running mlflow_server's URI -> its folder (mlflow.db, artifacts/)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` on a free loopback port (SQLite backend); yields its URI.

    Its folder has the layout of ``mlflow/serve.py --data-dir`` (``mlflow.db``, ``artifacts/``),
    so a test can serve the same runs with the launcher: ``SERVER_ROOTS[uri]``."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # no background job runner: its seven huey workers poll the CPU for nothing in tests
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=180, proc=proc)
        SERVER_ROOTS[uri] = root
        yield uri
    finally:
        SERVER_ROOTS.pop(uri, None)
        kill_group(proc)
        log.close()


# A test that uses one of these fixtures starts a server (module fixtures: here and in
# tests/test_mlflow_launcher.py), so it is slow: `scripts/test.sh --fast` leaves it out.
SERVER_FIXTURES = frozenset({"mlflow_server", "servers"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
