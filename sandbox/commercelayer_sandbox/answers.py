"""JSON:API answers: the media type, a document as a response, an `ApiError` as one, the
faults' server errors. A leaf shared by the request pipeline (`pipeline.py`) and the views (`api.py`)."""

from __future__ import annotations

from typing import Any

from flask import Response

from commercelayer_sandbox.errors import ApiError
from commercelayer_sandbox.sandbox import compact

API_JSON = "application/vnd.api+json"
_FAULT_CODES = {
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


def jsonapi(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(compact(doc), status, headers=headers, content_type=API_JSON)


def error_response(exc: ApiError) -> Response:
    return jsonapi(exc.document(), exc.status, exc.headers)


def fault_error(status: int) -> ApiError:
    return ApiError(
        status,
        _FAULT_CODES.get(status, "SERVER_ERROR"),
        "Server error",
        f"The server could not complete the request (sandbox fault: {status}).",
        meta={"sandbox_fault": True},
    )
