"""`webhook-app doctor`: every check an operator needs before going live, read-only.

Each check says what it looked at and, when it fails, how to fix it. A check that could not be
made (its prerequisite failed) is a failure too, never a silent pass: "OK" means checked. Nothing
here writes to Commerce Layer or to the database.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from webhook_app.errors import ConfigError, WebhookAppError

if TYPE_CHECKING:
    from webhook_app.commercelayer.client import CommerceLayerClient
    from webhook_app.config import Settings
    from webhook_app.policy import Policy
    from webhook_app.store import Store

# A worker polls every WEBHOOK_APP_POLL_INTERVAL (0.1 s) and records that at most every few
# seconds; one that has not been seen for this long is not running.
WORKER_STALE_SECONDS = 60.0


@dataclass(frozen=True)
class Check:
    """One line of the report: ok, what was found, and the fix when not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "\u2713" if self.ok else "\u2717"
        text = f"{mark} {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} (fix: {self.fix})"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _not_checked(name: str, because: str) -> Check:
    return Check(name, False, f"not checked: {because}")


@dataclass
class Doctor:
    """Runs the checks in order; later checks use what earlier ones built."""

    callback_url: str
    load_settings: Callable[[], Settings]
    open_store: Callable[[Settings], Store]
    load_policy: Callable[[Settings], Policy]
    make_client: Callable[[Settings], CommerceLayerClient]
    now: Callable[[], float]
    #: where the webhook secrets are set (agency mode: the organization's own variable)
    secrets_name: str = "CL_WEBHOOK_SECRETS"

    def run(self) -> Iterator[Check]:
        try:
            settings = self.load_settings()
        except WebhookAppError as exc:
            if isinstance(exc, ConfigError) and exc.name == "--org":  # agency mode: an argument, not a variable
                yield Check("organization", False, str(exc), "pass --org SLUG: doctor checks one organization")
                return
            yield Check("settings", False, str(exc), "correct the variable named above")
            for name in ("database", "webhook secrets", "policy", "credentials", "webhooks", "worker"):
                yield _not_checked(name, "the settings are not valid")
            return
        yield Check("settings", True, f"valid (mode {settings.mode})")
        store = None
        try:
            store = self.open_store(settings)
            yield Check("database", True, f"reachable, schema version {store.schema_version()}")
        except WebhookAppError as exc:
            yield Check("database", False, str(exc), _database_fix(settings))
        try:
            yield _secrets_check(settings, self.secrets_name)
            policy = None
            try:
                policy = self.load_policy(settings)
                if policy.acts():
                    yield Check("policy", True, f"{settings.policy_path}: {len(policy.rules)} rules, valid")
                else:
                    never = "; ".join(policy.never_acting()) or "no rule saves or reuses"
                    yield Check(
                        "policy",
                        False,
                        f"{settings.policy_path}: valid, but it can never save or reuse a payment source ({never})",
                        "give it a rule that can act: `webhook-app policy check FILE` names why each cannot",
                    )
            except WebhookAppError as exc:
                yield Check("policy", False, str(exc), "run `webhook-app policy check FILE` and correct it")
            yield from self._commerce_layer(settings, policy)
            if store is None:
                yield _not_checked("worker", "the database is not reachable")
            else:
                yield _worker_check(store, now=self.now())
            yield callback_check(self.callback_url)
        finally:
            if store is not None:
                store.close()

    def _commerce_layer(self, settings: Settings, policy: Policy | None) -> Iterator[Check]:
        if not settings.has_credentials:
            yield Check(
                "credentials",
                False,
                "no Commerce Layer credentials",
                "set CL_CLIENT_ID, CL_CLIENT_SECRET and CL_API_BASE (integration credentials)",
            )
            yield _not_checked("webhooks", "no Commerce Layer credentials")
            return
        client = self.make_client(settings)
        try:
            try:
                client.access_token()
            except WebhookAppError as exc:
                # a refusal's text ends with the settings to check: said once, as the fix
                detail = str(exc).removesuffix(f": check {getattr(exc, 'fix', '')}")
                yield Check("credentials", False, detail, _credentials_fix(exc, settings))
                yield _not_checked("webhooks", "Commerce Layer did not accept the credentials")
                return
            yield Check("credentials", True, f"Commerce Layer accepted client {settings.cl_client_id}")
            try:
                hooks = client.list_webhooks()
            except WebhookAppError as exc:
                yield Check("webhooks", False, f"cannot list the webhooks: {exc}", "check CL_API_BASE")
                return
            yield from webhook_checks(
                hooks, settings=settings, policy=policy, callback_url=self.callback_url, secrets_name=self.secrets_name
            )
        finally:
            client.close()


def _secrets_check(settings: Settings, name: str = "CL_WEBHOOK_SECRETS") -> Check:
    if not settings.webhook_secrets:
        return Check(
            "webhook secrets",
            False,
            "none: every delivery would be refused with 401",
            f"set {name} to the shared secrets `webhooks register` printed",
        )
    labels = ", ".join(s.label for s in settings.webhook_secrets)
    return Check("webhook secrets", True, f"{len(settings.webhook_secrets)} configured ({labels})")


def callback_check(url: str, *, timeout: float = 5.0) -> Check:
    """Does anything answer at the callback URL? A GET, which the intake answers 405 (it takes
    POSTs only); a connection error, a timeout, a 404 or a 5xx (a proxy whose service is down) is
    a cross: Commerce Layer's deliveries there would fail."""
    import urllib.error
    import urllib.request

    fix = "start `webhook-app serve` (or `web`) and check that this URL reaches it"
    if not url.startswith(("http://", "https://")):
        return Check("callback URL", False, f"{url} is not an http(s) URL", "pass the public intake URL")
    try:
        # nosec B310: http(s) checked above; doctor is run by the operator with their own URL
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310  # nosec B310
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Check("callback URL", False, f"{url} does not answer: {reason}", fix)
    if status == 404 or status >= 500:
        return Check("callback URL", False, f"{url} answers {status} to a GET (the intake answers 405)", fix)
    return Check("callback URL", True, f"{url} answers ({status} to a GET; the intake takes POSTs)")


def _worker_check(store: Store, *, now: float) -> Check:
    status = store.get_status("worker")  # worker.HEARTBEAT, written every HEARTBEAT_SECONDS
    seen = None if status is None else status.updated_at
    if seen is None:
        return Check(
            "worker", False, "no worker has ever polled this database", "start `webhook-app worker` (serve runs one)"
        )
    age = max(0.0, now - seen)
    if age > WORKER_STALE_SECONDS:
        return Check(
            "worker",
            False,
            f"last polled {age:.0f} s ago",
            "start `webhook-app worker` (serve runs one); check its log",
        )
    return Check("worker", True, f"polled {age:.0f} s ago")


def webhook_checks(
    hooks: list[dict[str, Any]],
    *,
    settings: Settings,
    policy: Policy | None,
    callback_url: str,
    secrets_name: str = "CL_WEBHOOK_SECRETS",
) -> Iterator[Check]:
    """What the registered webhooks must be for the policy's orders to reach this service."""
    from webhook_app.ops.registration import plan

    mine = [h for h in hooks if _attr(h, "callback_url") == callback_url]
    register = f"webhook-app webhooks register --callback-url {callback_url}"
    if not mine:
        others = sorted({str(_attr(h, "callback_url")) for h in hooks})
        seen = f"; registered URLs: {', '.join(others)}" if others else ""
        yield Check("webhooks", False, f"none points at {callback_url}{seen}", register)
        return
    yield Check("webhooks", True, f"{len(mine)} point at {callback_url}")
    if policy is None:
        yield _not_checked("webhook topics", "the policy is not valid")
        yield _not_checked("webhook includes", "the policy is not valid")
    else:
        wanted = dict(plan(policy))
        have = {str(_attr(h, "topic")) for h in mine}
        missing = sorted(set(wanted) - have)
        if missing:
            yield Check("webhook topics", False, f"the policy acts on {', '.join(missing)}: not registered", register)
        else:
            yield Check("webhook topics", True, f"every topic the policy acts on ({len(wanted)}) is registered")
        short = []
        for h in mine:
            topic = str(_attr(h, "topic"))
            if topic not in wanted:
                continue
            lacking = sorted(set(wanted[topic]) - set(_attr(h, "include_resources") or ()))
            if lacking:
                short.append(f"{h.get('id')} ({topic}) lacks {','.join(lacking)}")
        if short:
            yield Check(
                "webhook includes",
                False,
                "; ".join(short),
                "set the webhook's include_resources (delete it and run `webhooks register`)",
            )
        else:
            yield Check("webhook includes", True, "each carries the include_resources the policy and guards need")
    open_ = [f"{h.get('id')} ({_attr(h, 'topic')})" for h in mine if _attr(h, "circuit_state") != "closed"]
    if open_:
        yield Check(
            "webhook circuits",
            False,
            f"open: {', '.join(open_)}: Commerce Layer sends them nothing",
            "webhook-app webhooks status --reset-open (then reconcile the gap)",
        )
    else:
        yield Check("webhook circuits", True, "all closed")
    unknown = [f"{h.get('id')} ({_attr(h, 'topic')})" for h in mine if not _known_secret(h, settings)]
    if unknown:
        yield Check(
            "webhook signing",
            False,
            f"signed with a secret the service does not have: {', '.join(unknown)}",
            f"add each webhook's shared_secret to {secrets_name}",
        )
    else:
        yield Check("webhook signing", True, f"each signs with a secret in {secrets_name}")


def _known_secret(hook: Mapping[str, Any], settings: Settings) -> bool:
    shared = _attr(hook, "shared_secret")
    if not isinstance(shared, str) or not shared:
        return False
    given = shared.encode()
    found = False
    for s in settings.webhook_secrets:  # every one, in constant time, like the intake
        found |= hmac.compare_digest(s.secret, given)
    return found


def _attr(resource: Mapping[str, Any], name: str) -> Any:
    return (resource.get("attributes") or {}).get(name)


def _database_fix(settings: Settings) -> str:
    if settings.database_url.startswith("sqlite:"):
        return "check WEBHOOK_APP_DATABASE_URL's path and its directory's permissions"
    return "check WEBHOOK_APP_DATABASE_URL, then run `webhook-app db upgrade`"


def _credentials_fix(exc: WebhookAppError, settings: Settings) -> str:
    if getattr(exc, "answer_status", None) in (400, 401, 403):
        return "check CL_CLIENT_ID and CL_CLIENT_SECRET (an integration application's credentials)"
    return f"check that {settings.cl_auth_url} (CL_AUTH_URL) is reachable from here"
