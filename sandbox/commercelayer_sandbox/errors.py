"""The sandbox's exceptions. `ApiError` carries Commerce Layer's error objects and becomes a
JSON:API `{"errors": [...]}` answer in one place (`api.py`); the others are raised while loading
scenarios, configuration and fault specs, and become 400 answers of the control API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def error_object(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    pointer: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One Commerce Layer error object; `status` is a string, as Commerce Layer sends it."""
    return {
        "title": title,
        "detail": detail,
        "code": code,
        "status": str(status),
        "source": {"pointer": pointer} if pointer else {},
        "meta": dict(meta or {}),
    }


class ApiError(Exception):
    """An error answer of the emulated API: an HTTP status and one or more error objects."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        pointer: str | None = None,
        meta: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.errors = [error_object(status, code, title, detail, pointer=pointer, meta=meta)]
        self.headers = dict(headers or {})

    @classmethod
    def many(cls, status: int, errors: Sequence[dict[str, Any]]) -> ApiError:
        """One answer carrying several error objects (e.g. every schema violation of a body)."""
        first = errors[0]
        exc = cls(status, first["code"], first["title"], first["detail"])
        exc.errors = list(errors)
        return exc

    def document(self) -> dict[str, Any]:
        return {"errors": self.errors}


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(
        404,
        "RECORD_NOT_FOUND",
        "Record not found",
        f"The requested resource was not found ({kind} {ident}).",
    )


def invalid(detail: str, *, pointer: str, error: str = "invalid", title: str | None = None) -> dict[str, Any]:
    """A 422 VALIDATION_ERROR object; `meta.error` names the rule, as Commerce Layer does."""
    name = pointer.rsplit("/", 1)[-1]
    return error_object(
        422,
        "VALIDATION_ERROR",
        title or f"{name} is invalid",
        detail,
        pointer=pointer,
        meta={"error": error},
    )


def validation_error(detail: str, *, pointer: str, error: str = "invalid", title: str | None = None) -> ApiError:
    return ApiError.many(422, [invalid(detail, pointer=pointer, error=error, title=title)])


class SandboxError(ValueError):
    """A bad scenario, configuration or fault spec; `path` says where (`orders[3].customer`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
