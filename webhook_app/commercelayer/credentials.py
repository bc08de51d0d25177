"""Whether Commerce Layer accepts this deployment's credentials, as the worker last found.

A refused credential (`CredentialsRefused`: the token endpoint's 4xx, or the API's 401 to a token
just issued) is the deployment's fault, not an order's. While the credentials are refused the worker
attempts no job (the job that met the refusal goes back uncounted), says so in ONE error line naming
the settings to fix, writes the state where the web side's `/readyz` and the metrics read it
(`service_status`, name `commercelayer_credentials`: the web and the worker may be on different
hosts), and asks Commerce Layer again with backoff, at most `MAX_RECHECK_SECONDS` apart. When the
credentials are accepted again (the secret was rotated back, or the organization re-enabled the
client), the held jobs run by themselves; a restart with the right secret is accepted at start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

from webhook_app.errors import CommerceLayerError, CredentialsRefused, StoreError

log = logging.getLogger(__name__)

NAME = "commercelayer_credentials"  # the `service_status` row
OK, REFUSED, UNKNOWN = "ok", "refused", "unknown"
MAX_RECHECK_SECONDS = 60.0

__all__ = ["NAME", "OK", "REFUSED", "UNKNOWN", "CredentialsGate", "CredentialsRefused"]


class StatusWriter(Protocol):
    """What the gate needs of the store (`Store.set_status`)."""

    def set_status(self, name: str, state: str, *, reason: str | None, source: str | None, now: float) -> Any: ...


class Checker(Protocol):
    """What the gate needs of the client (`CommerceLayerClient.check_credentials`)."""

    def check_credentials(self, *, api: bool = False) -> None: ...


def status_name(organization: str = "") -> str:
    """The `service_status` row of an organization's credentials (agency mode: one each)."""
    return f"{NAME}:{organization}" if organization else NAME


# What an organization's table calls the settings a refusal names (docs/howto/agency.md).
ORGANIZATION_KEYS = {
    "CL_CLIENT_ID": "client_id",
    "CL_CLIENT_SECRET": "the variable client_secret_env names",
    "CL_SCOPE": "scope",
    "CL_AUTH_URL": "auth_url",
    "CL_API_BASE": "api_base",
}


class CredentialsGate:
    """The worker's view of the credentials: `holding()` before each claim, `refused()` when a job
    met a refusal, `check_at_start()` once. One thread (the worker's loop) uses it."""

    def __init__(
        self,
        *,
        client: Checker,
        store: StatusWriter,
        source: str,
        clock: Callable[[], float],
        delay: Callable[[int], float],
        auth_url: str = "",
        name: str = NAME,
        organization: str = "",
    ) -> None:
        self.name = name  # the `service_status` row: status_name(organization) in agency mode
        self.organization = organization  # agency mode: the line names its keys, not the CL_* variables
        self.client = client
        self.store = store
        self.source = source
        self.clock = clock
        self.delay = delay  # seconds before re-check number n (the worker's backoff helper)
        self.auth_url = auth_url
        self.state = UNKNOWN
        self.reason: str | None = None
        self._by_api = False  # refused by the API, not the token endpoint: re-check with a read
        self._rechecks = 0
        self._next_check = math.inf  # UNKNOWN re-checks only after a start check that could not ask
        self._unsaved = False

    # --- what the worker asks ------------------------------------------------------------------
    def check_at_start(self) -> str:
        """One token request, said in one line either way; Commerce Layer unreachable is not
        "refused" (the worker runs on, and asks again with backoff). The state found."""
        try:
            self.client.check_credentials()
        except CredentialsRefused as exc:
            self.refused(exc)
            return self.state
        except CommerceLayerError as exc:
            self._rechecks = 1
            self._next_check = self.clock() + self.delay(1)
            log.warning(
                f"could not ask Commerce Layer whether it accepts the credentials ({exc}; token endpoint"
                f" {self.auth_url}, set by CL_AUTH_URL): running on, asking again shortly",
                extra={"worker": self.source},
            )
            return self.state
        self._accepted("Commerce Layer credentials accepted")
        return self.state

    def holding(self) -> bool:
        """True while the credentials are refused (attempt no job). When a re-check is due, asks
        Commerce Layer (once) and resumes if it accepts them."""
        if self._unsaved:
            self._save()
        if self.clock() < self._next_check:
            return self.state == REFUSED
        try:
            self.client.check_credentials(api=self._by_api)
        except CredentialsRefused as exc:
            self.refused(exc)  # still refused: no new line, the next re-check later
            return True
        except CommerceLayerError:
            self._schedule()
            return self.state == REFUSED
        self._accepted(
            "Commerce Layer accepted the credentials again: held jobs resume"
            if self.state == REFUSED
            else "Commerce Layer credentials accepted"
        )
        return False

    def refused(self, exc: CredentialsRefused) -> None:
        """A refusal, met by a job or by a check: hold the jobs; one error line when it starts."""
        first = self.state != REFUSED
        self.state, self.reason, self._by_api = REFUSED, self._named(str(exc)), exc.by_api
        if first:
            self._rechecks = 0
            log.error(
                f"{self.reason}; jobs are held (not attempted, not dead-lettered) until Commerce Layer accepts them,"
                f" asked again at most every {MAX_RECHECK_SECONDS:g} s",
                extra={"worker": self.source, "status": exc.answer_status},
            )
        self._schedule()
        self._save()

    # --- inside --------------------------------------------------------------------------------
    def _named(self, text: str) -> str:
        """In agency mode, the organization's keys in WEBHOOK_APP_ORGANIZATIONS for the CL_* names."""
        if not self.organization:
            return text
        for variable, key in ORGANIZATION_KEYS.items():
            text = text.replace(variable, key)
        return f"{text} (organization {self.organization}'s table in WEBHOOK_APP_ORGANIZATIONS)"

    def _accepted(self, line: str) -> None:
        self.state, self.reason, self._by_api = OK, None, False
        self._rechecks, self._next_check = 0, math.inf
        log.info(line, extra={"worker": self.source})
        self._save()

    def _schedule(self) -> None:
        self._rechecks += 1
        self._next_check = self.clock() + min(MAX_RECHECK_SECONDS, self.delay(self._rechecks))

    def _save(self) -> None:
        """Write the state for the web side; if the store is away, again at the next `holding()`."""
        if self.state == UNKNOWN:
            self._unsaved = False
            return
        try:
            self.store.set_status(self.name, self.state, reason=self.reason, source=self.source, now=self.clock())
            self._unsaved = False
        except StoreError as exc:
            self._unsaved = True
            log.warning("credentials state not recorded", extra={"error": str(exc), "worker": self.source})
