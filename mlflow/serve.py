#!/usr/bin/env python
"""Start the MLflow tracking server with the platform's local or production settings.

Run it as a script, never import it (this folder has no ``__init__.py`` on purpose: a package
named ``mlflow`` here would shadow the real one):

    python mlflow/serve.py                      # local: SQLite + ./mlflow-data/, 127.0.0.1:5000
    python mlflow/serve.py --port 5001 --data-dir /tmp/mlf
    python mlflow/serve.py --mode production    # settings from the environment (Kubernetes)
    python mlflow/serve.py --mode production --dry-run   # print the command, start nothing

Local mode: SQLite backend ``<data-dir>/mlflow.db``, artifacts proxied by the server into
``<data-dir>/artifacts``, bound to loopback only, one worker, no authentication.

Production mode reads (all required unless a default is given):

    MLFLOW_BACKEND_STORE_URI       postgresql+psycopg2://USER:PASS@HOST:5432/mlflow
    MLFLOW_ARTIFACTS_DESTINATION   s3://BUCKET[/prefix]   (proxied: clients need no S3 keys)
    MLFLOW_S3_ENDPOINT_URL         http://minio:9000 for MinIO / other S3-compatible stores
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the artifact store's credentials
    MLFLOW_ALLOWED_HOSTS           comma-separated Host headers, e.g. the Service name
    MLFLOW_CORS_ALLOWED_ORIGINS    optional
    MLFLOW_WORKERS                 default 4 (uvicorn worker processes)
    MLFLOW_HOST / MLFLOW_PORT      default 0.0.0.0 / 5000
    MLFLOW_AUTH_DATABASE_URI       users/permissions database of the basic-auth app
    MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD
    CTCAE_MLFLOW_CREATE_BUCKET     "1" (default) creates the artifact bucket when it is missing

and runs the ``basic-auth`` app. The auth settings template ``mlflow/basic_auth.ini`` holds no
secret: this launcher writes a private (0600) copy with ``database_uri`` filled in from the
environment and points ``MLFLOW_AUTH_CONFIG_PATH`` at it.

Why ``--workers`` and not gunicorn: with mlflow 3.x the default server is uvicorn, and the
``--allowed-hosts`` protection only exists there (``--gunicorn-opts`` refuses it).

The launcher replaces itself with ``mlflow server`` (exec), so SIGTERM from Kubernetes or a test
reaches MLflow directly, which forwards it to its workers and exits. It also turns off MLflow's
job-execution runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` unless set): the platform runs
no server-side GenAI jobs, and with mlflow 3.17 that runner starts seven ``huey`` consumer
processes that survive the server's SIGTERM.
"""

from __future__ import annotations

import argparse
import configparser
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
AUTH_TEMPLATE = HERE / "basic_auth.ini"
# The repository root, for the one redaction helper (search/redact.py imports nothing heavy). This
# folder stays a plain directory: the real `mlflow` package still wins any `import mlflow`.
sys.path.insert(0, str(HERE.parent))
from search.redact import redact  # noqa: E402

PRODUCTION_REQUIRED = (
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_ALLOWED_HOSTS",
    "MLFLOW_AUTH_DATABASE_URI",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
)


class LauncherError(RuntimeError):
    """A setting is missing or inconsistent; the message says which."""


@dataclass
class ServerSettings:
    """Everything `mlflow server` is started with."""

    backend_store_uri: str
    artifacts_destination: str
    host: str
    port: int
    workers: int
    allowed_hosts: str = ""
    cors_allowed_origins: str = ""
    app_name: str = ""  # "" or "basic-auth"

    def command(self, mlflow_exe: list[str]) -> list[str]:
        """The full ``mlflow server`` command line."""
        cmd = [
            *mlflow_exe,
            "server",
            "--backend-store-uri", self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination", self.artifacts_destination,
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        if self.cors_allowed_origins:
            cmd += ["--cors-allowed-origins", self.cors_allowed_origins]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        return cmd


def local_settings(
    data_dir: Path, host: str, port: int, workers: int, backend_store_uri: str = ""
) -> ServerSettings:
    """SQLite backend and a local artifact folder under `data_dir`, bound to loopback only.

    Creates nothing: `main` makes the folders just before starting the server.
    """
    data_dir = data_dir.expanduser().resolve()
    if backend_store_uri and not backend_store_uri.startswith("sqlite:///"):
        raise LauncherError(
            f"--backend-store-uri {redact(backend_store_uri)}: local mode serves a SQLite file; "
            "give sqlite:///PATH, or use --mode production for a database server"
        )
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise LauncherError(
            f"local mode binds to loopback only (got --host {host}); use --mode production "
            "to serve other machines (it adds authentication and allowed hosts)"
        )
    return ServerSettings(
        backend_store_uri=backend_store_uri or f"sqlite:///{data_dir / 'mlflow.db'}",
        artifacts_destination=str(data_dir / "artifacts"),
        host=host,
        port=port,
        workers=workers,
    )


def _s3_bucket(destination: str) -> str | None:
    parts = urlsplit(destination)
    return parts.netloc if parts.scheme == "s3" else None


def write_auth_config(database_uri: str, directory: Path | None = None) -> Path:
    """Fill `database_uri` into the basic-auth template and write a private copy (mode 0600)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(AUTH_TEMPLATE)
    if not parser.has_section("mlflow"):
        raise LauncherError(f"{AUTH_TEMPLATE} has no [mlflow] section; restore the file from the repository")
    parser["mlflow"]["database_uri"] = database_uri
    fd, name = tempfile.mkstemp(prefix="mlflow-basic-auth-", suffix=".ini", dir=directory)
    with os.fdopen(fd, "w") as f:  # mkstemp creates the file with mode 0600
        parser.write(f)
    return Path(name)


def production_settings(env: dict[str, str]) -> ServerSettings:
    """Settings from the environment (see the module docstring); raises LauncherError if incomplete.

    The basic-auth settings file is written later, by `prepare_auth`, only when really starting.
    """
    missing = [k for k in PRODUCTION_REQUIRED if not env.get(k)]
    destination = env.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if _s3_bucket(destination):
        missing += [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
    if missing:
        raise LauncherError(
            "production mode needs these environment variables: " + ", ".join(missing)
            + "; set them (see the docstring of mlflow/serve.py and k8s/)"
        )
    backend = env["MLFLOW_BACKEND_STORE_URI"]
    if urlsplit(backend).scheme.split("+")[0] not in ("postgresql", "mysql", "mssql", "sqlite"):
        raise LauncherError(
            f"MLFLOW_BACKEND_STORE_URI {redact(backend)}: not a database URI; "
            "give postgresql://, mysql://, mssql:// or sqlite:///"
        )
    return ServerSettings(
        backend_store_uri=backend,
        artifacts_destination=destination,
        host=env.get("MLFLOW_HOST", "0.0.0.0"),
        port=_env_int(env, "MLFLOW_PORT", 5000, 1, 65535),
        workers=_env_int(env, "MLFLOW_WORKERS", 4, 1, 64),
        allowed_hosts=env["MLFLOW_ALLOWED_HOSTS"],
        cors_allowed_origins=env.get("MLFLOW_CORS_ALLOWED_ORIGINS", ""),
        app_name="basic-auth",
    )


def ensure_bucket(destination: str, env: dict[str, str]) -> None:
    """Create the S3 bucket of `destination` if it does not exist (MinIO starts empty)."""
    bucket = _s3_bucket(destination)
    if bucket is None:
        return
    import boto3  # only needed in production; part of the deployment image
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = env.get("MLFLOW_S3_ENDPOINT_URL") or None
    # Bounded: an unreachable object store is an error within seconds, not minutes of retries.
    bounded = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
    client = boto3.client("s3", endpoint_url=endpoint, config=bounded)
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
            client.create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        raise LauncherError(
            f"artifact bucket {bucket} at {endpoint or 'AWS S3'}: {exc}; check MLFLOW_S3_ENDPOINT_URL and the "
            "credentials, or set CTCAE_MLFLOW_CREATE_BUCKET=0"
        ) from exc
        print(f"[serve.py] created artifact bucket {bucket}", file=sys.stderr)


def mlflow_executable() -> list[str]:
    """The installed ``mlflow`` CLI beside this interpreter (never ``-m mlflow`` from this folder)."""
    beside = Path(sys.executable).parent / "mlflow"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlflow")
    if found is None:
        raise LauncherError("the mlflow command is not installed in this environment; install it (bash scripts/setup.sh)")
    return [found]


def _env_int(env: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    text = env.get(key, "") or str(default)
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise LauncherError(f"{key}={text!r}: not an integer in [{lo}, {hi}]; fix it or unset it (default {default})")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse in the platform's error format (ctcae_core/cli.py): one ``error:`` line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mlflow/serve.py", description="Start the MLflow tracking server (local or production).")
    parser.add_argument("--mode", choices=("local", "production"),
                        default=os.environ.get("CTCAE_MLFLOW_MODE", "local"))
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CTCAE_MLFLOW_DIR", "mlflow-data")),
                        help="local mode: where mlflow.db and artifacts/ live")
    parser.add_argument("--backend-store-uri", default="",
                        help="local mode: a SQLite URI to serve instead of <data-dir>/mlflow.db")
    parser.add_argument("--host", default="127.0.0.1", help="local mode: loopback address to bind")
    parser.add_argument("--port", type=_int_in(1, 65535), default=5000, help="local mode port")
    parser.add_argument("--workers", type=_int_in(1, 64), default=1, help="local mode worker processes")
    parser.add_argument("--dry-run", action="store_true", help="print the command (passwords hidden) and exit")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of any error")
    return parser  # fmt: skip


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {value}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """The command's error boundary: a setting or OS error is one line and exit code 2; --debug
    (or CTCAE_DEBUG=1) shows the traceback. (The same contract as ctcae_core/cli.py, which a
    deployment script does not import.)"""
    args = build_parser().parse_args(argv)
    try:
        return _serve(args)
    except (LauncherError, OSError) as exc:
        if args.debug or os.environ.get("CTCAE_DEBUG", "") not in ("", "0"):
            raise
        if isinstance(exc, OSError) and exc.filename:
            message = f"{exc.filename}: {exc.strerror or type(exc).__name__}; check the path and its permissions"
        else:
            message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.mode == "local":
        settings = local_settings(
            args.data_dir, args.host, args.port, args.workers, args.backend_store_uri
        )
    else:
        settings = production_settings(env)
    cmd = settings.command(mlflow_executable())
    if args.dry_run:
        print(redact(shlex.join(cmd)))
        return 0
    print("[serve.py] " + redact(shlex.join(cmd)), file=sys.stderr, flush=True)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if args.mode == "local":
        Path(settings.artifacts_destination).mkdir(parents=True, exist_ok=True)
    else:
        auth_ini = write_auth_config(env["MLFLOW_AUTH_DATABASE_URI"])
        os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)
        if env.get("CTCAE_MLFLOW_CREATE_BUCKET", "1") == "1":
            ensure_bucket(settings.artifacts_destination, env)
    os.execv(cmd[0], cmd)  # replaces this process: signals go straight to mlflow
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
