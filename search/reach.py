"""Is the tracking store usable? Checked first by every client (run.py, report.py, evaluate.py).

No Ray and no MLflow here, so ``search/report.py`` stays Ray-free. A dead server is an error
within seconds (``check_tracking_uri``), and the MLflow client's own waits are capped
(``bound_http_waits``) instead of its default minutes of retries.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from search.redact import redact


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used."""


def check_tracking_uri(uri: str, timeout: float = 5.0, *, existing: bool = False) -> None:
    """Fail fast (before any training) if the tracking server is unreachable or the store unusable.

    ``existing``: for clients that only read (report, evaluate), a SQLite store must already exist
    (MLflow would otherwise create an empty one and report that the study is not there). Also
    bounds the MLflow client's own HTTP waits (``bound_http_waits``).
    """
    bound_http_waits()
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow server {redact(uri)} answered {resp.status} on /health; check that the URI points at an MLflow server")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is not reachable ({redact(str(e))}); start it (see mlflow/) "
                "or pass --tracking-uri / MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise TrackingError(f"tracking store {redact(uri)}: directory {db.parent} does not exist; create it or fix --tracking-uri")
        if existing and not db.is_file():
            raise TrackingError(f"tracking store {redact(uri)}: no such file; pass the --tracking-uri the study ran with")
    elif uri.startswith("file:") or "://" not in uri:
        raise TrackingError(f"tracking URI {redact(uri)!r}: a file store, which MLflow deprecated; use sqlite:///PATH or a server URL")


def bound_http_waits(timeout_s: int = 15, retries: int = 1) -> None:
    """Cap the MLflow client's HTTP timeout and retries (by default it waits minutes on a dead
    server); an explicit MLFLOW_HTTP_REQUEST_* setting wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
