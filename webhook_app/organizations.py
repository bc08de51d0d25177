"""Agency mode: the Commerce Layer organizations one deployment serves.

`WEBHOOK_APP_ORGANIZATIONS=/path/organizations.toml` lists them, one table per organization slug:

    [organizations.acme]
    webhook_secrets_env = "ACME_WEBHOOK_SECRETS"   # same format as CL_WEBHOOK_SECRETS
    client_id = "..."
    client_secret_env = "ACME_CL_CLIENT_SECRET"
    api_base = "https://acme.commercelayer.io"     # optional: from the slug
    auth_url = "https://auth.commercelayer.io/oauth/token"   # optional: CL_AUTH_URL
    policy = "policies/acme.toml"                  # optional: WEBHOOK_APP_POLICY (relative to the file)
    mode = "enforce"                               # optional: enforce with credentials, else shadow

Secrets are never in the file: only the names of the variables (`*_env`) or files (`*_file`) that
hold them. Without the file, today's variables describe one organization, the *implicit* one,
whose slug is `""` (every row stored before agency mode belongs to it).

`load_organizations(settings, environ)` checks everything at start: an unknown key, a variable
that is not set (but for the webhook secrets': an organization without them is only not ready,
as they come from `webhooks register`), a policy that does not load, two organizations sharing a
webhook secret (compared in constant time), a bad slug. Each mistake is one ConfigError naming
the organization and the key.
"""

from __future__ import annotations

import hmac
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webhook_app.config import Settings
from webhook_app.errors import ConfigError, PolicyError
from webhook_app.policy import Policy, load_policy
from webhook_app.signing import WebhookSecret, parse_secrets

ENV = "WEBHOOK_APP_ORGANIZATIONS"
#: the implicit organization (no file): today's single-organization settings, and old rows
IMPLICIT = ""
#: a Commerce Layer organization slug, as in `https://<slug>.commercelayer.io`
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
KEYS = frozenset(
    {
        "webhook_secrets_env",
        "webhook_secrets_file",
        "client_id",
        "client_secret_env",
        "client_secret_file",
        "scope",
        "api_base",
        "auth_url",
        "policy",
        "mode",
    }
)


@dataclass(frozen=True)
class Organization:
    """One Commerce Layer organization: its secrets, credentials, API, policy and mode."""

    slug: str
    secrets: tuple[WebhookSecret, ...] = field(repr=False)
    client_id: str
    client_secret: str = field(repr=False)
    api_base: str
    auth_url: str
    policy_path: Path
    mode: str  # enforce | shadow
    scope: str = ""
    #: where its webhook secrets are set, as commands name it to the operator: the variable
    #: (`webhook_secrets_env`), else the file (`webhook_secrets_file`)
    secrets_source: str = "CL_WEBHOOK_SECRETS"

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"

    @property
    def label(self) -> str:
        """How logs and commands name it: the slug, or `default` for the implicit organization."""
        return self.slug or "default"

    def settings(self, base: Settings) -> Settings:
        """`base` as this organization sees it: its secrets, credentials, API, policy and mode
        (everything else, timeouts and rate limits included, is the deployment's)."""
        return base.with_overrides(
            webhook_secrets=self.secrets,
            cl_client_id=self.client_id,
            cl_client_secret=self.client_secret,
            cl_api_base=self.api_base,
            cl_auth_url=self.auth_url,
            cl_scope=self.scope,
            policy_path=self.policy_path,
            mode=self.mode,
        )


@dataclass(frozen=True)
class Organizations:
    """Every organization served, by slug; `agency` when they come from a file."""

    by_slug: Mapping[str, Organization]
    agency: bool = False

    def __iter__(self) -> Iterator[Organization]:
        return iter(self.by_slug.values())

    def __len__(self) -> int:
        return len(self.by_slug)

    def get(self, slug: str) -> Organization | None:
        return self.by_slug.get(slug)

    def slugs(self) -> tuple[str, ...]:
        return tuple(self.by_slug)

    def not_ready_reasons(self) -> list[str]:
        """Agency mode: each organization whose webhook secrets are not set (every delivery to it
        is refused with 401 until they are); the implicit one's are the settings' to report."""
        if not self.agency:
            return []
        return [
            f"organization {o.slug}: no webhook secret configured: set {o.secrets_source} to the shared"
            " secrets `webhooks register` printed; until then every delivery to it is refused with 401"
            for o in self
            if not o.secrets
        ]

    def pick(self, slug: str | None) -> Organization:
        """The organization a command's `--org SLUG` names; without it, the only one there is.
        ConfigError (one line) for an unknown slug or a missing `--org` in agency mode."""
        if slug is None:
            if len(self.by_slug) == 1:
                return next(iter(self.by_slug.values()))
            raise ConfigError("--org", f"name one of the organizations: {', '.join(self.by_slug)}")
        found = self.by_slug.get(slug if slug != "default" or self.agency else IMPLICIT)
        if found is None:
            known = ", ".join(o.label for o in self) or "none"
            raise ConfigError("--org", f"no organization {slug!r} is configured (configured: {known})")
        return found


def implicit(settings: Settings) -> Organization:
    """The single organization today's variables describe."""
    return Organization(
        slug=IMPLICIT,
        secrets=settings.webhook_secrets,
        client_id=settings.cl_client_id,
        client_secret=settings.cl_client_secret,
        api_base=settings.cl_api_base,
        auth_url=settings.cl_auth_url,
        policy_path=settings.policy_path,
        mode=settings.mode,
        scope=settings.cl_scope,
    )


def load_organizations(settings: Settings, environ: Mapping[str, str] | None = None) -> Organizations:
    """The organizations `settings` describe: the file's, or the implicit one."""
    path = settings.organizations_path
    if path is None:
        return Organizations({IMPLICIT: implicit(settings)})
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(ENV, f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(ENV, f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(ENV, f"{path} is not UTF-8 text") from None
    extra = sorted(set(raw) - {"organizations"})
    if extra:
        raise ConfigError(ENV, f"unknown table or key {extra[0]!r} (only [organizations.SLUG] tables)")
    tables = raw.get("organizations")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(ENV, f"{path} has no [organizations.SLUG] table")
    out: dict[str, Organization] = {}
    for slug, table in tables.items():
        out[slug] = _organization(slug, table, settings, env, Path(path).parent)
    _check_shared_secrets(list(out.values()))
    return Organizations(out, agency=True)


def load_policies(orgs: Organizations) -> dict[str, Policy]:
    """Each organization's policy, loaded once per file."""
    by_path: dict[Path, Policy] = {}
    out: dict[str, Policy] = {}
    for org in orgs:
        if org.policy_path not in by_path:
            by_path[org.policy_path] = load_policy(org.policy_path)
        out[org.slug] = by_path[org.policy_path]
    return out


def _organization(slug: str, table: Any, settings: Settings, env: Mapping[str, str], base: Path) -> Organization:
    where = f"{ENV} [organizations.{slug}]"
    _check_table(slug, table, where)
    try:
        # Not set yet (`webhooks register` prints them): the organization is not ready (401 to its
        # deliveries, /readyz names it), as a single organization without CL_WEBHOOK_SECRETS.
        given = _secret(table, "webhook_secrets", where, env, base, required=True, unset_ok=True)
        secrets = parse_secrets(given) if given else ()
    except ValueError as exc:  # never the value
        raise ConfigError(f"{where} webhook_secrets_env", str(exc)) from None
    client_id = table.get("client_id", "").strip()
    client_secret = _secret(table, "client_secret", where, env, base, required=False)
    if bool(client_id) != bool(client_secret):
        key = "client_secret_env" if client_id else "client_id"
        raise ConfigError(f"{where} {key}", "client_id and client_secret_env go together")
    api_base = _url(table.get("api_base") or f"https://{slug}.commercelayer.io", f"{where} api_base")
    auth_url = _url(table.get("auth_url") or settings.cl_auth_url, f"{where} auth_url")
    mode = table.get("mode") or ("enforce" if client_id else "shadow")
    if mode not in ("enforce", "shadow"):
        raise ConfigError(f"{where} mode", "must be enforce or shadow")
    if mode == "enforce" and not client_id:
        raise ConfigError(f"{where} mode", "enforce needs client_id and client_secret_env")
    policy_path = _beside(table["policy"], base) if table.get("policy") else settings.policy_path
    try:
        load_policy(policy_path)
    except PolicyError as exc:
        raise ConfigError(f"{where} policy", str(exc)) from None
    return Organization(
        slug=slug,
        secrets=secrets,
        client_id=client_id,
        client_secret=client_secret,
        api_base=api_base,
        auth_url=auth_url,
        policy_path=policy_path,
        mode=mode,
        scope=table.get("scope", ""),
        secrets_source=table.get("webhook_secrets_env") or str(table.get("webhook_secrets_file", "")),
    )


def _check_table(slug: str, table: Any, where: str) -> None:
    """The slug, and the table's shape: known keys, every value a string."""
    if not SLUG.match(slug):
        raise ConfigError(where, "the slug must be lowercase letters, digits and dashes, as in <slug>.commercelayer.io")
    if not isinstance(table, dict):
        raise ConfigError(where, "must be a table")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"{where} {unknown[0]}", f"unknown key (known: {', '.join(sorted(KEYS))})")
    for key, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where} {key}", "must be a string")


def _secret(
    table: Mapping[str, str],
    name: str,
    where: str,
    env: Mapping[str, str],
    base: Path,
    *,
    required: bool,
    unset_ok: bool = False,
) -> str:
    """The secret `name_env` (a variable) or `name_file` (a file, relative to `base`) holds;
    `unset_ok`: a variable that is not set gives "" instead of an error."""
    by_env, by_file = table.get(f"{name}_env"), table.get(f"{name}_file")
    if by_env and by_file:
        raise ConfigError(f"{where} {name}_env", f"give {name}_env or {name}_file, not both")
    if by_env:
        value = env.get(by_env, "").strip()
        if not value and not unset_ok:
            raise ConfigError(f"{where} {name}_env", f"the variable {by_env} is not set")
        return value
    if by_file:
        p = _beside(by_file, base)
        try:
            value = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"{where} {name}_file", f"cannot read {p}") from None
        if not value:
            raise ConfigError(f"{where} {name}_file", f"{p} is empty")
        return value
    if required:
        raise ConfigError(f"{where} {name}_env", "is required (the name of the variable that holds it)")
    return ""


def _beside(value: str, base: Path) -> Path:
    """A path from the file: `~` expanded, relative ones taken from `base` (the file's folder)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _url(value: str, where: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(where, "must be an http(s) URL")
    return value.rstrip("/")


def _check_shared_secrets(orgs: list[Organization]) -> None:
    """Two organizations with one secret would let one's webhooks land in the other's data."""
    for i, a in enumerate(orgs):
        for b in orgs[i + 1 :]:
            for sa in a.secrets:
                for sb in b.secrets:
                    if hmac.compare_digest(sa.secret, sb.secret):
                        raise ConfigError(
                            f"{ENV} [organizations.{b.slug}] webhook_secrets_env",
                            f"secret {sb.label!r} is also organization {a.slug!r}'s ({sa.label!r}):"
                            " each organization needs its own",
                        )
