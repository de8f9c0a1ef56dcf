"""Hide credentials in URLs before they reach MLflow, a log line or an error message.

    >>> redact("postgresql+psycopg2://optuna:s3cret@ctcae-postgres:5432/optuna")
    'postgresql+psycopg2://optuna:***@ctcae-postgres:5432/optuna'
    >>> redact("sqlite:///file:/tmp/o.db?uri=true&password=s3cret")
    'sqlite:///file:/tmp/o.db?uri=true&password=***'

Works on any text (a URL, a command line, an exception message): every ``scheme://user:pass@``
userinfo and every ``password=`` / ``pwd=`` / ``token=`` / ``secret=`` style query argument is
masked, wherever it stands. Imports nothing heavy: the MLflow launcher (mlflow/serve.py) and the
search layer both use it.
"""
from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host -> scheme://user:***@host (up to the netloc's last '@', as urlsplit reads it)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s?#]*:)[^\s/?#]*@")
# ?password=... / &pwd=... / ;token=... : names that end in a secret word (access_token, db_password, ...)
_QUERY = re.compile(
    r"(?P<head>[?&;](?:[A-Za-z0-9_.-]*[_.-])?(?:password|passwd|pwd|token|secret|secret_key|access_key|"
    r"api_key|apikey|auth|credential|credentials|signature|sig)=)[^&;#\s\"']*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the password of every URL and every secret query argument replaced by ``***``."""
    text = _USERINFO.sub(lambda m: m["head"] + MASK + "@", text)
    return _QUERY.sub(lambda m: m["head"] + MASK, text)
