"""One exception tree for the whole service.

Every exception carries data (`status`, `retryable`, `detail`) so that the web layer maps it to
an HTTP answer in one place and the worker decides between retry and dead letter without
parsing messages. Details never contain secrets.
"""

from __future__ import annotations

import re


class WebhookAppError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    title: str = "Internal error"
    retryable: bool = False

    def __init_subclass__(cls, *, status: int | None = None, title: str | None = None, **kw: object) -> None:
        """`class NotFound(RequestRefused, status=404, title="Not found")`: a kind of error is its
        answer's status and title, so the refusals below read as the table they are."""
        super().__init_subclass__(**kw)
        if status is not None:
            cls.status = status
        if title is not None:
            cls.title = title

    def __init__(self, detail: str = "", **data: object) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.data = data

    def __str__(self) -> str:
        return self.detail


# --- configuration and policy -----------------------------------------------------------


class ConfigError(WebhookAppError):
    """A missing or malformed setting; raised at start, printed as one line."""

    title = "Invalid configuration"

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}", name=name)
        self.name = name


class PolicyError(WebhookAppError):
    """The policy file is invalid; names the rule and the field at fault."""

    title = "Invalid policy"

    def __init__(self, detail: str, *, rule: str | None = None, field: str | None = None) -> None:
        where = []
        if rule is not None:
            where.append(f"rule {rule!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + detail, rule=rule, field=field)
        self.rule = rule
        self.field = field


class PolicyModelError(PolicyError):
    """The policy names fields (or order topics) Commerce Layer's resources do not have.

    `problems` holds one line each (`order.gest: orders have no attribute "gest"; did you mean
    "guest"?`, with the file's line and the rule); the message is the first, counting the rest."""

    def __init__(self, problems: tuple[str, ...]) -> None:
        more = f" (and {len(problems) - 1} more: see `webhook-app policy check`)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)
        self.problems = problems


class UsageError(WebhookAppError):
    """A command was given something it cannot use (a missing file, an unnamed topic)."""

    title = "Usage error"


# --- HTTP requests refused (the intake, the admin API and page) -------------------------------


class RequestRefused(WebhookAppError):
    """An HTTP request was refused; `status` is the answer."""


class InvalidSignature(RequestRefused, status=401, title="Invalid signature"): ...


class SourceNotAllowed(RequestRefused):
    """A delivery from an address outside WEBHOOK_APP_ALLOWED_SOURCES (webhook_app/sources.py);
    `source` is for the log only (None: it could not be known), never for the answer."""

    status = 403
    title = "Forbidden"

    def __init__(self, detail: str, *, source: str | None) -> None:
        super().__init__(detail)
        self.source = source


class PayloadTooLarge(RequestRefused, status=413, title="Payload too large"): ...


class UnsupportedMediaType(RequestRefused, status=415, title="Unsupported media type"): ...


class InvalidPayload(RequestRefused, status=400, title="Invalid payload"): ...


class Unauthorized(RequestRefused, status=401, title="Unauthorized"): ...


class NotFound(RequestRefused, status=404, title="Not found"): ...


class Conflict(RequestRefused, status=409, title="Conflict"): ...


# --- storage ------------------------------------------------------------------------------


class StoreError(WebhookAppError):
    """The store failed; nothing was acknowledged."""

    status = 503
    title = "Storage unavailable"
    retryable = True


class StoreUnavailable(StoreError):
    """The database cannot be reached, is locked past the timeout, or the disk is full."""


class SchemaOutOfDate(StoreError):
    """The database schema is older than this code; run `webhook-app db upgrade`."""

    title = "Database schema out of date"


# --- Commerce Layer -----------------------------------------------------------------------


class NotSent(Exception):
    """A write to Commerce Layer was not sent: its `confirm` said, once the call's rate-limit slot
    had come, that the caller no longer holds what entitled it to write (its claims were taken
    over meanwhile). Nothing reached Commerce Layer."""


class CommerceLayerError(WebhookAppError):
    """A call to Commerce Layer failed.

    `answer_status`: the HTTP status Commerce Layer answered (None if no answer came); `status`,
    as on every error here, is what the service itself would answer.
    `retryable`: worth trying again later (429, 5xx, timeouts, connection errors).
    `uncertain`: the request may have been applied even though we saw no answer (read timeout,
    5xx after the body was sent); the next attempt must look before it writes again.
    `retry_after`: seconds Commerce Layer asked us to wait, if it said so.
    `errors`: Commerce Layer's `errors[]` as returned (title/detail/code), for the record.
    """

    title = "Commerce Layer call failed"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        uncertain: bool = False,
        retry_after: float | None = None,
        errors: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.answer_status = status
        self.retryable = retryable
        self.uncertain = uncertain
        self.retry_after = retry_after
        self.errors = errors or []


class RetryableCommerceLayerError(CommerceLayerError):
    def __init__(self, detail: str, **kw: object) -> None:
        kw.setdefault("retryable", True)
        super().__init__(detail, **kw)  # type: ignore[arg-type]


class PermanentCommerceLayerError(CommerceLayerError):
    def __init__(self, detail: str, **kw: object) -> None:
        kw["retryable"] = False
        super().__init__(detail, **kw)  # type: ignore[arg-type]


class CredentialsRefused(PermanentCommerceLayerError):
    """Commerce Layer refused the deployment's credentials: the token endpoint answered 4xx (not
    429), or the API answered 401 to a token just issued. Not an order's fault: the worker holds
    the jobs (not attempted, not charged an attempt) until the credentials work again.

    `fix`: the settings to check, as the operator would set them (`CL_CLIENT_SECRET`, ...).
    `by_api`: the API refused a fresh token (the token endpoint had accepted the credentials).
    """

    title = "Commerce Layer refused the credentials"

    def __init__(self, detail: str, *, fix: str, by_api: bool = False, **kw: object) -> None:
        super().__init__(detail, **kw)
        self.fix = fix
        self.by_api = by_api


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str, *, limit: int = 4000) -> str:
    """`text` from outside (an API's error detail, an exception's message) made storable anywhere:
    NUL (PostgreSQL text cannot hold it) and half surrogate pairs (not encodable as UTF-8, so
    SQLite's driver refuses them) become U+FFFD, and it is cut at `limit` characters."""
    return _UNSTORABLE.sub("\ufffd", text[:limit])
