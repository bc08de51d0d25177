"""Several organizations in one sandbox process, as an agency sees Commerce Layer.

A scenario with an `organizations` key holds one full scenario per organization (the format of
`seed.py`, each with its own clients, orders, wallets, webhooks and secrets), as a table keyed by
slug or a list whose entries name theirs with `slug`:

    [sandbox]                      # optional: settings every organization starts from
    api_limits = ["100/60"]
    [organizations.acme]           # the slug
    clients = [{client_id = "acme-id", client_secret = "..."}]
    [organizations.acme.sandbox]   # optional: this organization's own settings
    organization_id = "AcmeOrg"

Nothing else may sit beside `organizations` and `sandbox`. A scenario without `organizations` is
one organization, exactly as before. Each organization is a `Sandbox` of its own (tokens signed
with its own key and carrying its slug in the `organization` claim, so a token is refused by
every other organization); they share one rate limiter, keyed by client address, because
Commerce Layer counts its limits per IP across organizations.

`OrganizationDispatcher` routes a request to an organization's application:

- by path prefix: `/_org/<slug>/api/...`, `/_org/<slug>/oauth/token`, `/_org/<slug>/_sandbox/...`
  (links in answers keep the prefix);
- by host name, as the SDK builds the API base from the token: `Host: <slug>.<domain>` (the
  organization's `domain` setting, `localhost` by default), or `X-Forwarded-Host` behind a TLS
  proxy;
- anything else goes to the first organization (the only one for a one-organization scenario),
  except `GET /_sandbox/organizations`, which lists them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from commercelayer_sandbox.errors import SandboxError
from commercelayer_sandbox.sandbox import Sandbox

PREFIX = "/_org/"
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def split_scenario(scenario: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]] | None:
    """Each organization's own scenario (slug, scenario), in file order; None without `organizations`.

    An organization's scenario gets the shared `[sandbox]` settings under its own, and its slug
    as `organization_slug` (its `organization_id` defaults to one derived from the slug).
    """
    if "organizations" not in scenario:
        return None
    extra = sorted(set(scenario) - {"organizations", "sandbox"})
    if extra:
        raise SandboxError(
            extra[0], "a scenario with organizations holds only `organizations` and `sandbox` (shared settings)"
        )
    shared = scenario.get("sandbox", {})
    if not isinstance(shared, Mapping):
        raise SandboxError("sandbox", "must be an object")
    items = _named_organizations(scenario["organizations"])
    out: list[tuple[str, dict[str, Any]]] = []
    for slug, org in items:
        if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
            raise SandboxError(f"organizations.{slug}", "a slug is lowercase letters, digits and -")
        if any(slug == s for s, _ in out):
            raise SandboxError(f"organizations.{slug}", "named twice")
        out.append((slug, _organization_scenario(slug, org, shared)))
    return out


def _named_organizations(raw: Any) -> list[tuple[Any, Any]]:
    """`organizations` as (slug, scenario) pairs, from a table keyed by slug or a list of {slug, ...}."""
    items: list[tuple[Any, Any]]
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for n, entry in enumerate(raw):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("slug"), str):
                raise SandboxError(f"organizations[{n}].slug", "each organization names its slug")
            items.append((entry["slug"], {k: v for k, v in entry.items() if k != "slug"}))
    else:
        raise SandboxError("organizations", "must be a table keyed by slug or a list of {slug, ...}")
    if not items:
        raise SandboxError("organizations", "name at least one organization")
    return items


def _organization_scenario(slug: str, org: Any, shared: Mapping[str, Any]) -> dict[str, Any]:
    """One organization's scenario, with the shared settings under its own and its slug."""
    where = f"organizations.{slug}"
    if not isinstance(org, Mapping):
        raise SandboxError(where, "must be a scenario (an object)")
    if "organizations" in org:
        raise SandboxError(f"{where}.organizations", "organizations do not nest")
    own = org.get("sandbox", {})
    if not isinstance(own, Mapping):
        raise SandboxError(f"{where}.sandbox", "must be an object")
    settings = {
        **shared,
        "organization_id": "Org" + "".join(p.title() for p in slug.split("-")),
        **own,
        "organization_slug": slug,
    }
    return {**org, "sandbox": settings}


class OrganizationDispatcher:
    """WSGI: each request to its organization's application (see the module docstring)."""

    def __init__(self, apps: Mapping[str, WsgiApp], sandboxes: Mapping[str, Sandbox]) -> None:
        self.apps = dict(apps)
        self.sandboxes = dict(sandboxes)
        self.default = next(iter(self.apps))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(PREFIX):
            slug, _, rest = path[len(PREFIX) :].partition("/")
            app = self.apps.get(slug)
            if app is None:
                return self._not_found(start_response, slug)
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + PREFIX + slug
            environ["PATH_INFO"] = "/" + rest
            return app(environ, start_response)
        if path == "/_sandbox/organizations" and environ.get("REQUEST_METHOD") == "GET":
            return self._listing(environ, start_response)
        # Behind the TLS front the name the client used is X-Forwarded-Host (each organization's
        # application follows it for its links too: api.py's ProxyFix).
        forwarded = (environ.get("HTTP_X_FORWARDED_HOST") or "").split(",")[0].strip()
        host = (forwarded or environ.get("HTTP_HOST") or "").rsplit(":", 1)[0].lower()
        label, _, domain = host.partition(".")
        sandbox = self.sandboxes.get(label)
        if sandbox is not None and domain == sandbox.config.domain.lower():
            return self.apps[label](environ, start_response)
        return self.apps[self.default](environ, start_response)

    def _listing(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        root = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        doc = {
            "organizations": [
                {
                    "slug": slug,
                    "id": sb.config.organization_id,
                    "api_url": f"{root}{PREFIX}{slug}/api",
                    "auth_url": f"{root}{PREFIX}{slug}/oauth/token",
                    "control_url": f"{root}{PREFIX}{slug}/_sandbox",
                    "host": f"{slug}.{sb.config.domain}",
                    "clients": sorted(sb.state.clients),
                }
                for slug, sb in self.sandboxes.items()
            ]
        }
        body = json.dumps(doc).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _not_found(self, start_response: Callable[..., Any], slug: str) -> Iterable[bytes]:
        detail = f"No organization {slug!r} in this sandbox (known: {', '.join(self.apps)})."
        doc = {"errors": [{"title": "Not found", "detail": detail, "code": "RECORD_NOT_FOUND", "status": "404"}]}
        body = json.dumps(doc).encode()
        start_response(
            "404 NOT FOUND",
            [("Content-Type", "application/vnd.api+json"), ("Content-Length", str(len(body)))],
        )
        return [body]
