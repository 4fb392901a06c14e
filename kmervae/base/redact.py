"""Keep credentials out of MLflow params, tags and printed lines.

Users put secrets in environment variables (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD,
RAY_AUTH_TOKEN...) and sometimes in URIs (https://user:password@host, s3://key:secret@bucket).
Anything kmervae logs or prints that could carry one passes through `redact`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

MASK = "***"
SECRET_NAME = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|AUTH)", re.IGNORECASE
)
URI_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.IGNORECASE)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would mask innocent text


def secret_values() -> list[str]:
    """Values of environment variables whose names look like credentials, longest first.

    The names are listed once and each value read with `get`: another thread may remove a
    variable meanwhile (MLflow's telemetry pops `_MLFLOW_TELEMETRY_SESSION_ID`), which made
    `os.environ.items()` raise KeyError and failed a sweep trial."""
    names = [k for k in list(os.environ) if SECRET_NAME.search(k)]
    values = {v for v in map(os.environ.get, names) if v is not None and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with URI passwords and the values of credential-like env vars replaced by ***."""
    text = URI_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def redact_params(params: Mapping[str, str]) -> dict[str, str]:
    """Params with credential-like keys masked and every value redacted."""
    return {k: MASK if SECRET_NAME.search(k.rsplit(".", 1)[-1]) else redact(str(v)) for k, v in params.items()}
