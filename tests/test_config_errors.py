"""Every configuration mistake the suite can make is one clear line: the real command line, a table
of bad settings, each answered with a non-zero exit, exactly one line on stderr naming the cause
and what to change, no traceback, and no secret.

`serve` is the command run (it reads the settings, the policy and the database, and checks its
address, before it starts anything); `webhooks status` is the cheapest that calls Commerce Layer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import PG_URL, SECRET, base_env, postgres_available
from support.procs import free_port

PASSWORD = "pw-" + uuid.uuid4().hex  # in every URL that can carry one: never in the answer
PG_HOSTPORT = PG_URL.split("@", 1)[1].split("/", 1)[0]  # 127.0.0.1:5432


@dataclass
class Case:
    id: str
    env: dict[str, str] = field(default_factory=dict)
    needle: tuple[str, ...] = ()  # each must be in the line
    args: tuple[str, ...] = ("serve",)
    postgres: bool = False  # needs the test PostgreSQL (skipped without it, as the rest of the suite)
    setup: Callable[[Path], dict[str, str]] | None = None  # more env, from files it makes


def _policy(text: bytes) -> Callable[[Path], dict[str, str]]:
    def make(tmp: Path) -> dict[str, str]:
        p = tmp / "policy.toml"
        p.write_bytes(text)
        return {"WEBHOOK_APP_POLICY": str(p)}

    return make


def _file_in_the_way(tmp: Path) -> dict[str, str]:
    (tmp / "plain-file").write_text("x")
    return {"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'plain-file' / 'sub' / 'app.db'}"}


def _a_directory(tmp: Path) -> dict[str, str]:
    (tmp / "a-dir.db").mkdir()
    return {"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'a-dir.db'}"}


def _of_another_user(*names: str) -> Callable[[Path], dict[str, str]]:
    """A database file (or its -wal) that another local user made, open to everyone."""

    def make(tmp: Path) -> dict[str, str]:
        if os.geteuid() != 0:
            pytest.skip("making a file of another user needs root")
        tmp.chmod(0o755)
        for name in names:
            p = tmp / name
            p.touch()
            p.chmod(0o666)
            os.chown(p, 65534, 65534)  # nobody
        return {"WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'shared.db'}"}

    return make


def _metrics_dir_of_another_user(mode: int) -> Callable[[Path], dict[str, str]]:
    """A metrics directory that another local user made (in /tmp, say, before the service started):
    its owner can plant files there, or symlinks named like the files the processes will make,
    which a service running as root follows (its workers died, each failing to read the target)."""

    def make(tmp: Path) -> dict[str, str]:
        if os.geteuid() != 0:
            pytest.skip("making a directory of another user needs root")
        d = tmp / "metrics"
        d.mkdir()
        d.chmod(mode)
        os.chown(d, 65534, 65534)  # nobody
        return {"PROMETHEUS_MULTIPROC_DIR": str(d)}

    return make


def _metrics_dir_all_may_write(tmp: Path) -> dict[str, str]:
    d = tmp / "metrics"
    d.mkdir()
    d.chmod(0o777)
    return {"PROMETHEUS_MULTIPROC_DIR": str(d)}


def _pg(path_and_user: str) -> str:
    user, _, db = path_and_user.partition("/")
    return f"postgresql://{user}:{PASSWORD}@{PG_HOSTPORT}/{db}?connect_timeout=2"


CREDS = {"CL_CLIENT_ID": "cid", "CL_CLIENT_SECRET": "csecret-0123456789"}

CASES = [
    # --- the settings themselves (config.py)
    Case("unknown mode", {"WEBHOOK_APP_MODE": "yolo"}, ("WEBHOOK_APP_MODE", "enforce, shadow")),
    Case("enforce without credentials", {"WEBHOOK_APP_MODE": "enforce"}, ("enforce needs CL_CLIENT_ID",)),
    Case("not a number", {"WEBHOOK_APP_MAX_ATTEMPTS": "many"}, ("WEBHOOK_APP_MAX_ATTEMPTS", "whole number")),
    Case("negative number", {"WEBHOOK_APP_DB_TIMEOUT": "-1"}, ("WEBHOOK_APP_DB_TIMEOUT", "greater than zero")),
    Case("NaN", {"WEBHOOK_APP_POLL_INTERVAL": "nan"}, ("WEBHOOK_APP_POLL_INTERVAL",)),
    Case("zero workers", {"WEBHOOK_APP_WEB_WORKERS": "0"}, ("WEBHOOK_APP_WEB_WORKERS",)),
    Case("not a switch", {"WEBHOOK_APP_GROUP_COMMIT": "maybe"}, ("WEBHOOK_APP_GROUP_COMMIT", "on or off")),
    Case("bad rate limit", {"CL_RATE_LIMITS": "100 per minute"}, ("CL_RATE_LIMITS", "COUNT/SECONDS")),
    Case("bad log level", {"WEBHOOK_APP_LOG_LEVEL": "LOUD"}, ("WEBHOOK_APP_LOG_LEVEL",)),
    Case("bad topic", {"WEBHOOK_APP_TOPICS": "not a topic"}, ("WEBHOOK_APP_TOPICS",)),
    Case("bad redact field", {"WEBHOOK_APP_REDACT_FIELDS": "a b"}, ("WEBHOOK_APP_REDACT_FIELDS",)),
    Case("short replay key", {"WEBHOOK_APP_REPLAY_KEYS": "short"}, ("WEBHOOK_APP_REPLAY_KEYS", "16")),
    Case("short admin key", {"WEBHOOK_APP_ADMIN_KEYS": "short"}, ("WEBHOOK_APP_ADMIN_KEYS", "16")),
    Case("short webhook secret", {"CL_WEBHOOK_SECRETS": "main:short"}, ("CL_WEBHOOK_SECRETS", "16")),
    Case("empty webhook secret", {"CL_WEBHOOK_SECRETS": "main:"}, ("CL_WEBHOOK_SECRETS", "empty")),
    Case("empty secret entry", {"CL_WEBHOOK_SECRETS": f"a:{SECRET},,"}, ("CL_WEBHOOK_SECRETS", "entry 2")),
    Case("API base not a URL", {"CL_API_BASE": "ftp://x"}, ("CL_API_BASE", "http(s) URL")),
    Case("auth URL not a URL", {"CL_AUTH_URL": "auth.example"}, ("CL_AUTH_URL", "http(s) URL")),
    Case("health URL not a URL", {"WEBHOOK_APP_CIRCUIT_HEALTH_URL": "x"}, ("WEBHOOK_APP_CIRCUIT_HEALTH_URL",)),
    Case("lease too short", {"WEBHOOK_APP_LEASE_SECONDS": "5"}, ("WEBHOOK_APP_LEASE_SECONDS", "CL_READ_TIMEOUT")),
    Case("circuit check too often", {"WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL": "0.5"}, ("at least 1 second",)),
    Case("records before bodies", {"WEBHOOK_APP_RETAIN_RECORDS_DAYS": "1"}, ("WEBHOOK_APP_RETAIN_RECORDS_DAYS",)),
    Case("retry max below base", {"WEBHOOK_APP_RETRY_MAX_SECONDS": "1"}, ("WEBHOOK_APP_RETRY_MAX_SECONDS",)),
    # A misspelt name was ignored and its default used in silence: with the credentials set,
    # WEBHOOK_APP_MODEE=shadow ran in enforce mode; WEBHOOK_APP_DATABASE_URI a private SQLite file.
    Case(
        "misspelt mode beside the credentials",
        {**CREDS, "CL_API_BASE": "https://x.commercelayer.io", "WEBHOOK_APP_MODEE": "shadow"},
        ("WEBHOOK_APP_MODEE: is not a setting of webhook-app: did you mean WEBHOOK_APP_MODE?",),
    ),
    Case(
        "misspelt database URL",
        {"WEBHOOK_APP_DATABASE_URI": f"postgresql://u:{PASSWORD}@h/db"},
        ("WEBHOOK_APP_DATABASE_URI", "did you mean WEBHOOK_APP_DATABASE_URL?"),
    ),
    Case(
        "misspelt webhook secrets",
        {"CL_WEBHOOK_SECRET": f"main:{SECRET}"},
        ("CL_WEBHOOK_SECRET: is not a setting of webhook-app: did you mean CL_WEBHOOK_SECRETS?",),
    ),
    Case("unknown setting", {"WEBHOOK_APP_SECRETS": "x"}, ("WEBHOOK_APP_SECRETS: is not a setting",)),
    Case(
        "unknown source name",
        {"WEBHOOK_APP_ALLOWED_SOURCES": "commercelayer-eu,commercelayer-asia"},
        ("WEBHOOK_APP_ALLOWED_SOURCES", "'commercelayer-asia' is not a CIDR nor a known name", "commercelayer-us"),
    ),
    Case("bad source CIDR", {"WEBHOOK_APP_ALLOWED_SOURCES": "10.0.0.0/33"}, ("WEBHOOK_APP_ALLOWED_SOURCES", "CIDR")),
    Case(
        "source CIDR with host bits",
        {"WEBHOOK_APP_ALLOWED_SOURCES": "2001:db8::1/32"},
        ("WEBHOOK_APP_ALLOWED_SOURCES", "did you mean 2001:db8::/32?"),
    ),
    Case(
        "bad trusted proxy",
        {"WEBHOOK_APP_ALLOWED_SOURCES": "commercelayer", "WEBHOOK_APP_TRUSTED_PROXIES": "nginx"},
        ("WEBHOOK_APP_TRUSTED_PROXIES", "'nginx' is not a CIDR"),
    ),
    Case(
        "trusted proxies without an allowlist",
        {"WEBHOOK_APP_TRUSTED_PROXIES": "10.0.0.0/8"},
        ("WEBHOOK_APP_TRUSTED_PROXIES", "no effect without WEBHOOK_APP_ALLOWED_SOURCES"),
    ),
    Case(
        "allowlist behind a proxy nobody trusts",
        {"WEBHOOK_APP_ALLOWED_SOURCES": "commercelayer", "WEBHOOK_APP_FORWARDED_HOPS": "1"},
        ("WEBHOOK_APP_ALLOWED_SOURCES", "set WEBHOOK_APP_TRUSTED_PROXIES"),
    ),
    # --- the database URL
    Case("unknown database", {"WEBHOOK_APP_DATABASE_URL": f"mysql://u:{PASSWORD}@h/db"}, ("sqlite:///",)),
    Case("sqlite without a path", {"WEBHOOK_APP_DATABASE_URL": "sqlite:///"}, ("needs a file path",)),
    Case(
        "postgres port not a number",
        {"WEBHOOK_APP_DATABASE_URL": f"postgresql://u:{PASSWORD}@h:notaport/db"},
        ("WEBHOOK_APP_DATABASE_URL", "port"),
    ),
    Case(
        "sqlite directory under a file",
        needle=("plain-file", "part of that path is a file, not a directory", "WEBHOOK_APP_DATABASE_URL"),
        setup=_file_in_the_way,
    ),
    Case("sqlite path is a directory", needle=("a-dir.db", "it is a directory"), setup=_a_directory),
    Case(
        "sqlite file of another user",
        needle=("shared.db belongs to another user (uid 65534", "WEBHOOK_APP_DATABASE_URL"),
        setup=_of_another_user("shared.db"),
    ),
    Case(
        "metrics directory of another user, writable by all",
        needle=("PROMETHEUS_MULTIPROC_DIR", "belongs to another user (uid 65534)"),
        setup=_metrics_dir_of_another_user(0o777),
    ),
    Case(
        "metrics directory of another user, writable by its owner only",
        needle=("PROMETHEUS_MULTIPROC_DIR", "belongs to another user (uid 65534)"),
        setup=_metrics_dir_of_another_user(0o755),
    ),
    Case(
        "metrics directory of this user's that every user may write in",
        needle=("PROMETHEUS_MULTIPROC_DIR", "every user may write in (mode 777)"),
        setup=_metrics_dir_all_may_write,
    ),
    Case(
        "sqlite -wal of another user",
        needle=("shared.db-wal belongs to another user", "WEBHOOK_APP_DATABASE_URL"),
        setup=_of_another_user("shared.db-wal"),
    ),
    Case(
        "sqlite directory cannot be made",
        {"WEBHOOK_APP_DATABASE_URL": "sqlite:////proc/webhook-app-test/app.db"},
        ("/proc/webhook-app-test", "cannot create the directory", "WEBHOOK_APP_DATABASE_URL"),
    ),
    Case(
        "postgres database missing",
        {"WEBHOOK_APP_DATABASE_URL": _pg("postgres/no_such_db_webhook_app")},
        ('database "no_such_db_webhook_app" does not exist', "createdb", "WEBHOOK_APP_DATABASE_URL"),
        postgres=True,
    ),
    Case(
        "postgres role missing",
        {"WEBHOOK_APP_DATABASE_URL": _pg("no_such_role_webhook_app/test")},
        ('role "no_such_role_webhook_app" does not exist', "WEBHOOK_APP_DATABASE_URL"),
        postgres=True,
    ),
    Case(
        "postgres refuses",
        {"WEBHOOK_APP_DATABASE_URL": f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db"},
        ("refused the connection", "WEBHOOK_APP_DATABASE_URL"),
    ),
    Case(
        "postgres unknown host",
        {"WEBHOOK_APP_DATABASE_URL": f"postgresql://u:{PASSWORD}@no-such-host.invalid/db"},
        ('unknown host "no-such-host.invalid"', "WEBHOOK_APP_DATABASE_URL"),
    ),
    Case(
        "postgres unknown URL parameter",
        {"WEBHOOK_APP_DATABASE_URL": f"postgresql://postgres:{PASSWORD}@{PG_HOSTPORT}/test?bogus=1"},
        ('invalid URI query parameter: "bogus"', "WEBHOOK_APP_DATABASE_URL"),
    ),
    # --- the policy file
    Case("policy missing", {"WEBHOOK_APP_POLICY": "/nonexistent/policy.toml"}, ("WEBHOOK_APP_POLICY", "no such file")),
    Case("policy not TOML", needle=("policy.toml is not valid TOML",), setup=_policy(b"x = [")),
    Case("policy not UTF-8", needle=("policy.toml is not UTF-8",), setup=_policy(b"name = '\xff'")),
    Case("policy unknown key", needle=("invalid policy", "'a'"), setup=_policy(b"a = 1")),
    # --- the command line
    Case("port out of range", args=("serve", "--bind", "127.0.0.1:99999"), needle=("--bind", "0 to 65535")),
    Case("not HOST:PORT", args=("serve", "--bind", "garbage"), needle=("--bind", "HOST:PORT")),
    Case("web port out of range", args=("web", "--bind", "127.0.0.1:70000"), needle=("--bind", "0 to 65535")),
    Case(
        "address not of this machine",
        args=("web", "--bind", "192.0.2.1:8000"),
        needle=("cannot listen on 192.0.2.1:8000 (--bind)", "no network interface"),
    ),
    Case("unknown host to bind", args=("serve", "--bind", "no-such-host.invalid:8000"), needle=("unknown host",)),
    # `--workers 0` ran 4 workers in silence; `-2` made `serve` print its `listening on` banner and
    # restart a gunicorn that refused the value, forever; a port out of range was a traceback.
    Case("zero workers argument", args=("serve", "--workers", "0"), needle=("--workers", "'0' is not a whole number")),
    Case("negative workers", args=("serve", "--workers", "-2"), needle=("--workers", "'-2' is not a whole number")),
    Case("web negative workers", args=("web", "--workers", "-2"), needle=("--workers", "of 1 or more")),
    Case("metrics port out of range", args=("worker", "--metrics-port", "70000"), needle=("--metrics-port", "65535")),
    Case("metrics port negative", args=("worker", "--metrics-port", "-1"), needle=("--metrics-port", "from 1 to")),
    Case("metrics port zero", args=("worker", "--metrics-port", "0"), needle=("--metrics-port", "from 1 to 65535")),
]


def _run(args: tuple[str, ...], env: dict[str, str], *, python_prelude: str = "") -> subprocess.CompletedProcess[str]:
    """`webhook-app ARGS` (through the package's entry point, as the console script does), killed
    with its whole process group if it is still running after 30 s (it should have refused)."""
    code = f"{python_prelude}import sys; from webhook_app.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`webhook-app {' '.join(args)}` kept running: {err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _base_env(tmp_path: Path) -> dict[str, str]:
    return {
        **base_env(),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
    }


def assert_one_clear_line(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    for needle in needles:
        assert needle in line, line
    assert PASSWORD not in r.stderr + r.stdout
    return line


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_configuration_mistake_is_one_clear_line(tmp_path, case):
    if case.postgres and (why := postgres_available()):
        pytest.skip(why)
    env = {**_base_env(tmp_path), **case.env}
    if case.setup is not None:
        env.update(case.setup(tmp_path))
    r = _run(case.args, env)
    assert_one_clear_line(r, *case.needle)


def test_an_unreadable_policy_file_is_one_clear_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a file of mode 000")
    p = tmp_path / "policy.toml"
    p.write_text("version = 1\n")
    p.chmod(0)
    r = _run(("serve",), {**_base_env(tmp_path), "WEBHOOK_APP_POLICY": str(p)})
    assert_one_clear_line(r, f"cannot read {p}", "Permission denied")


def test_a_postgresql_url_without_the_postgres_extra_says_how_to_install_it(tmp_path):
    """The driver hidden from the import system (as an install without `[postgres]`): the line says
    what to install, not ModuleNotFoundError."""
    env = {**_base_env(tmp_path), "WEBHOOK_APP_DATABASE_URL": f"postgresql://u:{PASSWORD}@{PG_HOSTPORT}/test"}
    for hidden in ("psycopg", "psycopg_pool"):
        r = _run(("serve",), env, python_prelude=f"import sys; sys.modules[{hidden!r}] = None; ")
        line = assert_one_clear_line(r, "WEBHOOK_APP_DATABASE_URL", "pip install 'webhook-app[postgres]'")
        assert "ModuleNotFoundError" not in line


def test_an_address_in_use_is_one_clear_line_for_serve_and_web(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        bind = f"127.0.0.1:{s.getsockname()[1]}"
        for command in ("serve", "web"):
            r = _run((command, "--bind", bind), _base_env(tmp_path))
            assert_one_clear_line(r, f"cannot listen on {bind} (--bind)", "in use")


def test_an_operator_address_serve_cannot_take_is_one_line_before_its_banner(tmp_path):
    # Before: `serve` printed `listening on http://...` and only then refused (exit 2): the
    # banner said it listened where it never did.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        public = free_port()
        for env, address in (
            ({"WEBHOOK_APP_OPERATOR_BIND": f"127.0.0.1:{port}"}, f"127.0.0.1:{port}"),
            ({"WEBHOOK_APP_OPERATOR_BIND": "192.0.2.1:8001"}, "192.0.2.1:8001"),
        ):
            r = _run(("serve", "--bind", f"127.0.0.1:{public}"), {**_base_env(tmp_path), **env})
            assert_one_clear_line(r, f"cannot listen on {address} (WEBHOOK_APP_OPERATOR_BIND)")
            assert r.stdout == "" and "listening on" not in r.stderr
    r = _run(("serve", "--bind", "127.0.0.1:65535"), _base_env(tmp_path))
    assert_one_clear_line(r, "cannot listen on 127.0.0.1:65536 (WEBHOOK_APP_OPERATOR_BIND)", "0 to 65535")


def test_a_metrics_port_in_use_is_one_clear_line_for_the_worker(tmp_path):
    # Before: the worker started, then died with prometheus_client's traceback (Address already in use).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _run(("worker", "--metrics-port", str(port)), _base_env(tmp_path))
        assert_one_clear_line(r, f"cannot listen on 0.0.0.0:{port} (--metrics-port)", "in use")


def test_an_unreachable_commerce_layer_names_the_host_and_the_variable(tmp_path, fake_cl):
    port = free_port()
    env = {**_base_env(tmp_path), **CREDS, "CL_API_BASE": fake_cl.url, "CL_AUTH_URL": f"http://127.0.0.1:{port}/t"}
    r = _run(("webhooks", "status"), env)
    assert_one_clear_line(r, f"cannot reach http://127.0.0.1:{port} (CL_AUTH_URL): connection refused")
    env.update(CL_AUTH_URL=fake_cl.url + "/oauth/token", CL_API_BASE=f"http://127.0.0.1:{port}")
    r = _run(("webhooks", "status"), env)
    assert_one_clear_line(r, f"cannot reach http://127.0.0.1:{port} (CL_API_BASE): connection refused")
    env.update(CL_API_BASE="https://no-such-host.invalid")
    r = _run(("webhooks", "status"), env)
    assert_one_clear_line(r, "cannot reach https://no-such-host.invalid (CL_API_BASE): unknown host")
