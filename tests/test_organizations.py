"""Agency mode's configuration (webhook_app/organizations.py): the file, its defaults, and every
mistake as one line naming the organization and the key, at start of the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import SECRET, make_settings

from webhook_app.errors import ConfigError
from webhook_app.organizations import IMPLICIT, load_organizations

ACME = "acme-secret-0123456789abcdef"
GLOBEX = "globex-secret-0123456789abcdef"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "organizations.toml"
    p.write_text(text)
    return p


GOOD = """
[organizations.acme]
webhook_secrets_env = "ACME_WEBHOOK_SECRETS"
client_id = "acme-id"
client_secret_env = "ACME_CL_CLIENT_SECRET"

[organizations.globex]
webhook_secrets_env = "GLOBEX_WEBHOOK_SECRETS"
api_base = "http://127.0.0.1:9/_org/globex"
mode = "shadow"
"""
ENV = {
    "ACME_WEBHOOK_SECRETS": f"main:{ACME}",
    "ACME_CL_CLIENT_SECRET": "acme-client-secret",
    "GLOBEX_WEBHOOK_SECRETS": GLOBEX,
}


def test_without_the_file_one_implicit_organization_from_todays_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    orgs = load_organizations(settings, {})
    assert orgs.slugs() == (IMPLICIT,)
    assert not orgs.agency
    only = orgs.pick(None)
    assert only.secrets == settings.webhook_secrets and only.policy_path == settings.policy_path
    assert only.label == "default"


def test_the_file_gives_each_organization_its_own_secrets_credentials_api_and_mode(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, organizations_path=write(tmp_path, GOOD))
    orgs = load_organizations(settings, ENV)
    assert orgs.agency and orgs.slugs() == ("acme", "globex")
    acme, globex = orgs.pick("acme"), orgs.pick("globex")
    assert acme.secrets[0].secret == ACME.encode() and acme.secrets[0].label == "main"
    assert acme.api_base == "https://acme.commercelayer.io"  # from the slug
    assert acme.client_secret == "acme-client-secret" and acme.mode == "enforce"
    assert globex.mode == "shadow" and globex.api_base == "http://127.0.0.1:9/_org/globex"
    assert "acme-client-secret" not in repr(acme) and ACME not in repr(acme)
    view = acme.settings(settings)
    assert view.cl_client_id == "acme-id" and view.webhook_secrets == acme.secrets and not view.shadow
    with pytest.raises(ConfigError, match="--org"):
        orgs.pick(None)  # several: a command must say which
    with pytest.raises(ConfigError, match="no organization 'initech'"):
        orgs.pick("initech")


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        (GOOD.replace('mode = "shadow"', 'colour = "red"'), ENV, "[organizations.globex] colour: unknown key"),
        (
            GOOD,
            {**ENV, "ACME_CL_CLIENT_SECRET": ""},
            "[organizations.acme] client_secret_env: the variable ACME_CL_CLIENT_SECRET is not set",
        ),
        (
            GOOD,
            {**ENV, "GLOBEX_WEBHOOK_SECRETS": ACME},
            "[organizations.globex] webhook_secrets_env: secret 'secret-1' is also organization 'acme'",
        ),
        (GOOD.replace("organizations.globex", "organizations.Globex_Inc"), ENV, "[organizations.Globex_Inc]: the slug"),
        (GOOD.replace('mode = "shadow"', 'policy = "missing.toml"'), ENV, "[organizations.globex] policy: cannot read"),
        (
            GOOD.replace('mode = "shadow"', 'mode = "enforce"'),
            ENV,
            "[organizations.globex] mode: enforce needs client_id",
        ),
        (
            GOOD.replace('mode = "shadow"', 'mode = "loud"'),
            ENV,
            "[organizations.globex] mode: must be enforce or shadow",
        ),
        ("[other]\n", ENV, "unknown table or key 'other'"),
    ],
    ids=[
        "unknown-key",
        "unset-variable",
        "shared-secret",
        "bad-slug",
        "policy",
        "enforce-without-credentials",
        "mode",
        "table",
    ],
)
def test_each_mistake_names_the_organization_and_the_key(
    tmp_path: Path, text: str, env: dict[str, str], needle: str
) -> None:
    settings = make_settings(tmp_path, organizations_path=write(tmp_path, text))
    with pytest.raises(ConfigError) as err:
        load_organizations(settings, env)
    assert needle in str(err.value)
    assert ACME not in str(err.value) and "acme-client-secret" not in str(err.value)


def test_a_bad_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('mode = "shadow"', 'colour = "red"'))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))},
        **ENV,
        "WEBHOOK_APP_ORGANIZATIONS": str(path),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "CL_WEBHOOK_SECRETS": SECRET,
    }
    done = subprocess.run(
        [sys.executable, "-m", "webhook_app", "serve", "--bind", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "WEBHOOK_APP_ORGANIZATIONS [organizations.globex] colour: unknown key" in lines[0]


def test_webhooks_status_with_org_uses_that_organizations_credentials(tmp_path: Path) -> None:
    """`--org` picks the organization; an unknown one is one line naming the configured ones."""
    path = write(tmp_path, GOOD)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))},
        **ENV,
        "WEBHOOK_APP_ORGANIZATIONS": str(path),
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
    }
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "webhook_app", "webhooks", "status", *a],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    unknown = run("--org", "initech")
    assert unknown.returncode == 2 and "no organization 'initech'" in unknown.stderr and "acme" in unknown.stderr
    missing = run()
    assert missing.returncode == 2 and "--org: name one of the organizations: acme, globex" in missing.stderr
