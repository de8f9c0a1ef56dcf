"""No credential reaches MLflow, a log line or an error message (issue 14, point 1).

- `search.redact.redact` on the URL shapes the platform meets (Postgres with the password from a
  Secret, query-string passwords and tokens, several URLs in one message) and on text it must
  leave alone;
- a real study (the smoke study, one trial, real Ray) against a real MLflow server on loopback,
  with an Optuna storage URL that holds a password: SQLAlchemy's ``uri=true`` form of a SQLite
  URL passes unknown query arguments to SQLite, which ignores them, so the study really runs on
  ``...?uri=true&password=SECRET``. Every tag and param of every run, the experiment's tags and the
  process output are read back and searched for the secret.
"""
from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.redact import redact

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("postgresql+psycopg2://optuna:s3cr3t@ctcae-postgres:5432/optuna",
     "postgresql+psycopg2://optuna:***@ctcae-postgres:5432/optuna"),
    ("mysql://root:p@ss:w0rd@db/x", "mysql://root:***@db/x"),  # ':' inside the password
    ("redis://:s3cr3t@cache:6379/0", "redis://:***@cache:6379/0"),
    ("sqlite:///file:/tmp/o.db?uri=true&password=s3cr3t", "sqlite:///file:/tmp/o.db?uri=true&password=***"),
    ("postgresql://h/db?user=u&PWD=s3cr3t&sslmode=require", "postgresql://h/db?user=u&PWD=***&sslmode=require"),
    ("https://h/x?access_token=s3cr3t#frag", "https://h/x?access_token=***#frag"),
    ("s3://bucket/p?secret=s3cr3t;token=t0k", "s3://bucket/p?secret=***;token=***"),
    ("error: Optuna study 'a' already exists in postgresql://u:s3cr3t@h/optuna and mysql://v:s3cr3t2@h/m",
     "error: Optuna study 'a' already exists in postgresql://u:***@h/optuna and mysql://v:***@h/m"),
]
UNCHANGED = [
    "sqlite:////tmp/ray_results/optuna.db",
    "http://ctcae-mlflow:5000",
    "http://127.0.0.1:5000/api/2.0/mlflow/runs/get?run_id=abc",
    "postgresql://ctcae-postgres:5432/optuna",
    "/mnt/ray-storage/ctcae/arch",
    "model.decoder=upsample contrastive.weight=0.0001",
    "mongodb://h/db?authSource=admin",
]


@pytest.mark.parametrize("text,expected", CASES)
def test_redact_masks_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert "s3cr3t" not in redact(text) and "t0k" not in redact(text)
    assert redact(redact(text)) == redact(text)


@pytest.mark.parametrize("text", UNCHANGED)
def test_redact_keeps_text_without_secrets(text: str) -> None:
    assert redact(text) == text


def test_redact_module_imports_no_ray() -> None:
    """The MLflow launcher imports it: it must not pull in Ray (or anything heavy)."""
    code = "import sys, search.redact; assert not [m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'torch')]"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.slow
def test_no_secret_in_any_mlflow_tag_or_param(mlflow_server: str, tmp_path: Path) -> None:
    from conftest import ray_test_env

    secret = "pw" + secrets.token_hex(12)
    db = tmp_path / "optuna.db"
    url = f"sqlite:///file:{db}?uri=true&password={secret}"
    p = subprocess.run(
        [sys.executable, str(ROOT / "search" / "run.py"), "--space", str(ROOT / "ablations" / "smoke.yaml"),
         "--smoke-test", "--num-samples", "1", "--num-cpus", "2", "--tracking-uri", mlflow_server,
         "--storage", str(tmp_path / "ray"), "--optuna-storage", url, "--name", "redaction"],
        cwd=tmp_path, env=ray_test_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = p.stdout + p.stderr
    assert p.returncode == 0, output[-6000:]
    assert secret not in output

    # the password-holding URL is the storage the study really used
    trials = optuna.load_study(study_name="redaction", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    assert len(trials) == 1

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("redaction")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == 2  # the study's parent run and its one trial
    parent = next(r for r in runs if r.data.tags.get("ctcae.kind") == "study")
    assert parent.data.tags["ctcae.optuna_storage"] == redact(url) == url.replace(secret, "***")
    seen = [*exp.tags.items(), ("experiment name", exp.name)]
    for run in runs:
        full = client.get_run(run.info.run_id)  # read back one by one, not only from the search
        seen += [*full.data.tags.items(), *full.data.params.items(), ("run name", full.info.run_name)]
    assert len(seen) > 20
    leaks = [(k, v) for k, v in seen if secret in str(k) or secret in str(v)]
    assert leaks == []
