"""Structured logs: one JSON object per line on stderr, secrets scrubbed as a last line of defence.

Code never passes secrets to the logger; `SecretScrubber` additionally replaces any configured
secret (webhook secrets, client secret, admin and replay keys) or bearer token that would appear
in a formatted line with `[redacted]`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
# A database URL's password: `scheme://user:PASSWORD@host/...` or `...?password=PASSWORD&...`.
_URL_PASSWORD = re.compile(r"(?P<pre>://[^:/@?#]+:)(?P<pw>[^@]+)(?=@)|(?P<qpre>[?&]password=)(?P<qpw>[^&#]*)")


def url_passwords(url: str) -> list[str]:
    """The passwords a database URL carries (in its user part or as a `password` parameter)."""
    return [m.group("pw") or m.group("qpw") for m in _URL_PASSWORD.finditer(url) if m.group("pw") or m.group("qpw")]


def mask_url(url: str) -> str:
    """The URL with its passwords replaced by `***`, fit to print."""
    return _URL_PASSWORD.sub(lambda m: (m.group("pre") or m.group("qpre")) + "***", url)


# What `json.dumps(out, default=str, separators=(",", ":"))` builds on every call, built once.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    """`2026-01-31T12:00:00`: the part of a line's time that the lines of one second share."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


class SecretScrubber(logging.Filter):
    """Redact known secret strings and bearer tokens from a record before it is formatted."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "[redacted]")
        return _BEARER.sub(r"\1 [redacted]", text)

    def found_in(self, text: str) -> bool:
        """Whether `scrub` would change anything in `text`."""
        return any(s in text for s in self.secrets) or _BEARER.search(text) is not None

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = message = record.getMessage()
        record.args = None
        fields = [k for k, v in record.__dict__.items() if k not in _STANDARD and isinstance(v, str)]
        # Most lines hold nothing to redact: one look at the message and fields joined by NUL
        # instead of a scrub of each. Whatever `scrub` would find in one of them is found in the
        # joined text too (NUL is neither a word character nor part of a token).
        if not self.found_in("\0".join([message, *(getattr(record, k) for k in fields)])):
            return True
        record.msg = self.scrub(message)
        for k in fields:
            setattr(record, k, self.scrub(getattr(record, k)))
        return True


def configure_logging(level: str = "INFO", *, secrets: Iterable[str] = ()) -> None:
    """Send every log line as JSON to stderr, scrubbed of `secrets`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretScrubber(secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def settings_secrets(settings: Any) -> list[str]:
    """Every secret string a Settings object holds."""
    out = [s.secret.decode("utf-8", "replace") for s in settings.webhook_secrets]
    out += [settings.cl_client_secret, *settings.replay_keys, *settings.admin_keys]
    out += url_passwords(settings.database_url)
    return [s for s in out if s]
