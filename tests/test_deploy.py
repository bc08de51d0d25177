"""The deployment files: Dockerfile, deploy/gunicorn.conf.py, deploy/nginx/,
deploy/docker-compose.yml, deploy/k8s/ and deploy/Procfile.

Structure is asserted here (probes, limits, security settings, dependencies, the values that must
agree between files), the files are run through their own tools and validators (gunicorn's config
machinery, `nginx -t`, kustomize, kubernetes-validate, hadolint, dclint, yamllint), and nginx is
run for real in front of two gunicorn instances with the production config to show the
slow-client protection and the retry behaviour. A missing tool skips its test with the reason,
or fails under CI (see tests/support/deploy_tools.py).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from support import SECRET, base_env, signed_headers
from support.deploy_tools import (
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILE,
    K8S,
    NGINX,
    ROOT,
    Nginx,
    by_kind,
    dockerfile_instructions,
    effective_security,
    exec_form,
    final_stage,
    gunicorn_settings,
    gunicorn_web,
    kustomize_build,
    load_yaml,
    load_yaml_docs,
    need_module,
    need_tool,
    nginx_seconds,
    nginx_values,
    pod_containers,
    stop_process,
    wait_for,
)
from support.procs import free_port, wait_http

from webhook_app.cli import build_parser
from webhook_app.config import Settings
from webhook_app.runtime import GUNICORN_DEFAULTS

CONFIG_PY = (ROOT / "webhook_app" / "config.py").read_text()
GUNICORN_CONF_IN_IMAGE = "/app/deploy/gunicorn.conf.py"
POLICY_PATH = "/etc/webhook-app/policy.toml"
SECRET_VARIABLES = {
    "CL_WEBHOOK_SECRETS",
    "CL_CLIENT_SECRET",
    "WEBHOOK_APP_DATABASE_URL",
    "WEBHOOK_APP_ADMIN_KEYS",
    "WEBHOOK_APP_REPLAY_KEYS",
}
# Variables only docker-compose.yml interpolates (never passed to the app under these names).
COMPOSE_ONLY_VARIABLES = {"POSTGRES_PASSWORD", "WEBHOOK_APP_HTTP_PORT", "WEBHOOK_APP_IMAGE"}
COMMERCE_LAYER_TIMEOUT = 5.0  # seconds Commerce Layer waits for an answer (documented)
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), DEPLOY / ".dclintrc"])


def cli_args(args: list[str]) -> Any:
    """Parse `webhook-app ARGS` with the real command line parser (SystemExit if invalid)."""
    return build_parser().parse_args(args)


def app_reads(variable: str) -> bool:
    return f'"{variable}"' in CONFIG_PY


# --- YAML everywhere -------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_without_duplicate_keys(path):
    assert load_yaml_docs(path), f"{path} is empty"


def test_yamllint_passes():
    need_module("yamllint")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-c",
            str(DEPLOY / ".yamllint.yaml"),
            str(DEPLOY),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- gunicorn --------------------------------------------------------------------------------


def test_gunicorn_config_loads_with_gunicorn_and_sets_the_limits():
    cfg = gunicorn_settings()
    assert cfg.bind == ["0.0.0.0:8000"]
    assert cfg.worker_class_str == "webhook_app.sync_worker.SyncWorker" and cfg.threads == 1  # sync, JSON refusals
    assert 2 <= cfg.workers <= 8
    assert cfg.preload_app is False
    assert cfg.timeout == 20 and cfg.graceful_timeout == 20
    assert cfg.keepalive == 65
    assert cfg.max_requests == 2000 and 0 < cfg.max_requests_jitter < cfg.max_requests
    assert cfg.accesslog is None and cfg.errorlog == "-"
    assert cfg.worker_tmp_dir == "/dev/shm"
    assert cfg.pidfile is None
    assert cfg.forwarded_allow_ips == []  # no proxy declared: nobody may claim https
    assert cfg.secure_scheme_headers == {"X-FORWARDED-PROTO": "https"}
    if "control_socket_disable" in cfg.settings:  # gunicorn >= 25.1
        assert cfg.control_socket_disable is True


def test_gunicorn_limits_are_no_looser_than_the_apps_defaults():
    cfg = gunicorn_settings()
    for name in ("limit_request_line", "limit_request_fields", "limit_request_field_size"):
        assert 0 < getattr(cfg, name) <= GUNICORN_DEFAULTS[name], name
    assert cfg.timeout <= GUNICORN_DEFAULTS["timeout"]


def test_gunicorn_timeout_outlasts_the_databases_own_timeouts():
    # A request waiting on a locked SQLite database must get the app's 503, not a killed worker.
    from webhook_app.store.sqlite import SQLiteStore

    busy_ms = inspect.signature(SQLiteStore.__init__).parameters["busy_timeout_ms"].default
    assert gunicorn_settings().timeout > busy_ms / 1000 + 5


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PORT": "9001"}, {"bind": ["0.0.0.0:9001"]}),
        ({"WEBHOOK_APP_WEB_WORKERS": "3"}, {"workers": 3}),
        ({"WEBHOOK_APP_FORWARDED_HOPS": "1"}, {"forwarded_allow_ips": ["*"]}),
        (
            {"WEBHOOK_APP_FORWARDED_HOPS": "1", "FORWARDED_ALLOW_IPS": "10.0.0.0/8"},
            {"forwarded_allow_ips": ["10.0.0.0/8"]},
        ),
        (
            {"WEBHOOK_APP_FORWARDED_HOPS": "0", "FORWARDED_ALLOW_IPS": "10.0.0.0/8"},
            {"forwarded_allow_ips": []},
        ),
    ],
)
def test_gunicorn_config_follows_the_environment(env, expected):
    cfg = gunicorn_settings(env)
    for name, value in expected.items():
        assert getattr(cfg, name) == value


def test_gunicorn_config_refuses_a_bad_worker_count():
    with pytest.raises(SystemExit):  # gunicorn reports the config file's error and exits
        gunicorn_settings({"WEBHOOK_APP_WEB_WORKERS": "many"})


@pytest.mark.e2e
def test_webhook_app_web_runs_with_the_config_file(tmp_path):
    port = free_port()
    env = {
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
        "WEBHOOK_APP_WEB_WORKERS": "1",
        **base_env(),
    }
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook_app",
            "web",
            "--bind",
            f"127.0.0.1:{port}",
            "--config",
            str(DEPLOY / "gunicorn.conf.py"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=15, proc=proc)
    finally:
        stop_process(proc)
        log.close()


# --- nginx -----------------------------------------------------------------------------------


SITE = (NGINX / "webhook-app.conf").read_text()


def test_nginx_config_passes_nginx_t():
    nginx = Nginx()
    try:
        done = nginx.test_config()
        assert done.returncode == 0, done.stderr
        assert "test is successful" in done.stderr
    finally:
        nginx.stop()


def test_nginx_body_limit_is_the_apps():
    (size,) = nginx_values(SITE, "client_max_body_size")
    assert size == ["1m"] and Settings().max_body_bytes == 1024 * 1024
    assert nginx_values(SITE, "client_body_buffer_size") == [["1m"]]  # bodies never touch disk


def test_nginx_buffers_requests_and_answers_and_keeps_client_timeouts_tight():
    assert nginx_values(SITE, "proxy_request_buffering") == [["on"]]
    assert nginx_values(SITE, "proxy_buffering") == [["on"]]
    for name in (
        "client_header_timeout",
        "client_body_timeout",
        "send_timeout",
        "keepalive_timeout",
    ):
        (values,) = nginx_values(SITE, name)
        assert nginx_seconds(values[0]) <= 10, name
    (count, size) = nginx_values(SITE, "large_client_header_buffers")[0]
    assert int(count) <= 4 and size == "8k"
    cfg = gunicorn_settings()
    assert cfg.limit_request_field_size <= 8192 and cfg.limit_request_line <= 8192
    assert nginx_values(SITE, "limit_req_zone") and nginx_values(SITE, "limit_conn_zone")


def test_nginx_answers_within_commerce_layers_timeout():
    connect = nginx_seconds(nginx_values(SITE, "proxy_connect_timeout")[0][0])
    read = nginx_seconds(nginx_values(SITE, "proxy_read_timeout")[0][0])
    send = nginx_seconds(nginx_values(SITE, "proxy_send_timeout")[0][0])
    tries = int(nginx_values(SITE, "proxy_next_upstream_tries")[0][0])
    assert tries == 2
    assert connect * tries + max(read, send) < COMMERCE_LAYER_TIMEOUT


def test_nginx_retries_a_post_only_when_it_was_never_sent():
    (retry,) = nginx_values(SITE, "proxy_next_upstream")
    assert set(retry) == {"error", "timeout"}
    assert "non_idempotent" not in retry


def test_nginx_sets_the_forwarding_headers_and_clears_the_ones_the_app_must_not_trust():
    headers = {name.lower(): value for name, value in nginx_values(SITE, "proxy_set_header")}
    assert headers["x-forwarded-for"] == "$remote_addr"
    assert headers["x-forwarded-proto"] == "$scheme"
    assert headers["x-request-id"] == "$webhook_request_id"
    for cleared in ("x-forwarded-prefix", "x-forwarded-ssl", "x-forwarded-protocol"):
        assert headers[cleared] == '""', cleared


def test_nginx_publishes_only_post_to_the_intake():
    assert nginx_values(SITE, "limit_except", context="location = /webhooks/commercelayer") == [["POST"]]
    assert nginx_values(SITE, "proxy_pass", context="location /") == []
    assert nginx_values(SITE, "deny", context="location ~ ^/(healthz|readyz)$") == [["all"]]


SOURCES_INCLUDE = (NGINX / "commercelayer-sources.conf").read_text()


def test_nginx_commercelayer_allowlist_is_commerce_layers_addresses_and_off_by_default():
    from webhook_app.sources import NAMES

    allowed = [args[0] for args in nginx_values(SOURCES_INCLUDE, "allow")]
    assert sorted(allowed) == sorted(NAMES["commercelayer"])  # the app's list, the same six
    assert nginx_values(SOURCES_INCLUDE, "deny") == [["all"]]
    assert "docs.commercelayer.io/core/callbacks-security" in SOURCES_INCLUDE
    # shipped commented out, in the intake's location: the default stays open
    assert Nginx.SOURCES_INCLUDE in SITE
    assert nginx_values(SITE, "include", context="location = /webhooks/commercelayer") == []
    assert (
        "./nginx/commercelayer-sources.conf:/etc/nginx/commercelayer-sources.conf:ro"
        in (load_yaml(COMPOSE_FILE)["services"]["nginx"]["volumes"])
    )


def test_nginx_config_with_the_commercelayer_allowlist_passes_nginx_t():
    nginx = Nginx(allow_sources=SOURCES_INCLUDE)
    try:
        site = (nginx.prefix / "webhook-app.conf").read_text()
        included = nginx_values(site, "include", context="location = /webhooks/commercelayer")
        assert included == [["commercelayer-sources.conf"]]
        done = nginx.test_config()
        assert done.returncode == 0, done.stderr
        assert "test is successful" in done.stderr
    finally:
        nginx.stop()


@pytest.mark.e2e
def test_nginx_with_the_allowlist_refuses_other_sources_before_the_app():
    """From 127.0.0.1 (not Commerce Layer) the intake is 403 from nginx itself; with loopback added
    to the list the request goes on (to an upstream where nothing listens: 502). Other routes stay."""
    dead = f"127.0.0.1:{free_port()}"
    for text, expected in (
        (SOURCES_INCLUDE, 403),
        (SOURCES_INCLUDE.replace("deny all;", "allow 127.0.0.0/8;\ndeny all;"), 502),
    ):
        nginx = Nginx([dead], listen=f"127.0.0.1:{free_port()}", allow_sources=text)
        nginx.start()
        try:
            wait_http(nginx.url + "/nginx-healthz", timeout=10, proc=nginx.proc)
            r = post(nginx.url, delivery(90))
            assert r.status_code == expected, r.text
            assert requests.get(nginx.url + "/nginx-healthz", timeout=5).status_code == 200
        finally:
            nginx.stop()


def test_nginx_compose_upstreams_are_the_compose_web_services():
    compose = load_yaml(COMPOSE_FILE)
    servers = nginx_values((NGINX / "upstream.compose.conf").read_text(), "server")
    assert len(servers) >= 2
    for args in servers:
        host, port = args[0].split(":")
        service = compose["services"][host]
        assert port in [str(p) for p in service["expose"]]
    local = nginx_values((NGINX / "upstream.local.conf").read_text(), "server")
    assert len(local) >= 2 and all(a[0].startswith("127.0.0.1:") for a in local)


# --- nginx in front of two real gunicorn instances ------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`webhook-app db upgrade`, two gunicorn instances (deploy/gunicorn.conf.py, one sync worker
    each, so a single stuck request would block an instance) and nginx in front of them."""
    nginx_binary = need_tool("nginx")  # skip before starting anything
    assert nginx_binary
    tmp = tmp_path_factory.mktemp("stack")
    env = {
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'stack.db'}",
        "WEBHOOK_APP_WEB_WORKERS": "1",
        "WEBHOOK_APP_FORWARDED_HOPS": "1",
        "WEBHOOK_APP_LOG_LEVEL": "WARNING",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CL_", "WEBHOOK_APP_"))}
    subprocess.run(
        [sys.executable, "-m", "webhook_app", "db", "upgrade"],
        cwd=ROOT,
        env={**base, **env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    ports = [free_port(), free_port()]
    webs = [gunicorn_web(p, env, tmp / f"web-{p}.log") for p in ports]
    nginx = None
    try:
        for port, proc in zip(ports, webs, strict=True):
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=20, proc=proc)
        nginx = Nginx([f"127.0.0.1:{p}" for p in ports], listen=f"127.0.0.1:{free_port()}")
        nginx.start()
        url = nginx.url
        wait_http(url + "/nginx-healthz", timeout=10, proc=nginx.proc)
        yield {"url": url, "ports": ports, "nginx": nginx, "env": env, "tmp": tmp}
    finally:
        if nginx is not None:
            nginx.stop()
        for proc in webs:
            stop_process(proc)


def delivery(n: int = 0) -> bytes:
    body = json.loads((ROOT / "tests" / "data" / "orders.place.guest-wire-transfer.json").read_bytes())
    body["data"]["id"] = f"deployTest{n}"
    return json.dumps(body).encode()


def post(url: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(
        url + "/webhooks/commercelayer",
        data=body,
        timeout=5,
        headers={**signed_headers(body), **headers},
    )


def slow_request(port: int) -> socket.socket:
    """A client that sends its headers and the first byte of a 100-byte body, then stalls."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        b"POST /webhooks/commercelayer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return s


@pytest.mark.e2e
def test_stack_accepts_then_dedupes_a_delivery_across_instances(stack):
    body = delivery(1)
    first = post(stack["url"], body, **{"X-Request-Id": "deploy-test-1"})
    assert first.status_code == 202, first.text
    assert first.headers["X-Request-Id"] == "deploy-test-1"  # one header, the client's id
    assert first.json()["status"] == "accepted"
    again = post(stack["url"], body)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert re.fullmatch(r"[0-9a-f]{32}", again.headers["X-Request-Id"])  # made up by nginx


@pytest.mark.e2e
def test_stack_balances_over_both_instances(stack):
    for n in range(10, 16):
        assert post(stack["url"], delivery(n)).status_code == 202
    upstreams = {e["upstream"] for e in stack["nginx"].access_log() if e["uri"] == "/webhooks/commercelayer"}
    assert {f"127.0.0.1:{p}" for p in stack["ports"]} <= upstreams


@pytest.mark.e2e
def test_stack_refuses_at_the_edge(stack):
    big = b"{" + b" " * (1024 * 1024) + b"}"
    too_big = post(stack["url"], big)
    assert too_big.status_code == 413
    assert too_big.headers.get("X-Request-Id")
    assert requests.get(stack["url"] + "/webhooks/commercelayer", timeout=5).status_code == 403
    other = requests.get(stack["url"] + "/admin", timeout=5)
    assert other.status_code == 404 and other.json()["errors"][0]["status"] == "404"
    assert requests.get(stack["url"] + "/readyz", timeout=5).status_code == 200  # from loopback


@pytest.mark.e2e
def test_slow_clients_block_a_bare_sync_worker_but_not_the_stack(stack):
    port = stack["ports"][0]
    # Without the proxy: one stalled client holds the instance's only sync worker.
    stalled = slow_request(port)
    try:
        time.sleep(0.2)
        with pytest.raises(requests.exceptions.Timeout):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    finally:
        stalled.close()
    wait_http(f"http://127.0.0.1:{port}/healthz", timeout=10)
    # Through nginx: more stalled clients than there are workers, and a delivery still goes through
    # at once, because nginx passes a request on only when it has all of it.
    nginx_port = int(stack["nginx"].listen.rsplit(":", 1)[1])
    stalled_many = [slow_request(nginx_port) for _ in range(4)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        assert post(stack["url"], delivery(20)).status_code == 202
        assert time.monotonic() - started < 2.0  # not blocked until a stalled client gives up
    finally:
        for s in stalled_many:
            s.close()
    # nginx dropped them (400, client gone) without ever opening a connection to an instance.
    wait_for(
        lambda: sum(e["status"] == 400 for e in stack["nginx"].access_log()) >= 4,
        timeout=5,
        what="the stalled requests in the access log",
    )
    dropped = [e for e in stack["nginx"].access_log() if e["status"] == 400]
    assert all(e["upstream"] == "" for e in dropped)


@pytest.mark.e2e
def test_stack_sends_a_post_to_the_other_instance_when_one_is_down(stack):
    dead = free_port()  # nothing listens: connection refused, so the request was never sent
    live = stack["ports"][0]
    nginx = Nginx([f"127.0.0.1:{dead}", f"127.0.0.1:{live}"], listen=f"127.0.0.1:{free_port()}")
    nginx.start()
    try:
        url = nginx.url
        wait_http(url + "/nginx-healthz", timeout=10, proc=nginx.proc)
        for n in range(30, 34):
            answer = post(url, delivery(n))
            assert answer.status_code == 202, answer.text
        wait_for(lambda: len(nginx.access_log()) >= 4, timeout=5, what="access log lines")
        tried = [e["upstream"] for e in nginx.access_log() if e["uri"] == "/webhooks/commercelayer"]
        assert f"127.0.0.1:{dead}, 127.0.0.1:{live}" in tried
    finally:
        nginx.stop()


@pytest.mark.e2e
def test_the_images_healthcheck_command_works(stack):
    ((_, args),) = [i for i in final_stage(dockerfile_instructions(DOCKERFILE.read_text())) if i[0] == "HEALTHCHECK"]
    command = exec_form(args.split(" CMD ", 1)[1])
    assert command[0] == "python"
    base = {k: v for k, v in os.environ.items() if k != "PORT"}
    ok = subprocess.run(
        [sys.executable, *command[1:]],
        env={**base, "PORT": str(stack["ports"][1])},
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(
        [sys.executable, *command[1:]],
        env={**base, "PORT": str(free_port())},
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert down.returncode != 0


# --- docker compose --------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)  # type: ignore[no-any-return]


APP_SERVICES = ("web1", "web2", "worker", "migrate")


def test_compose_has_the_services():
    services = compose()["services"]
    assert {"nginx", "web1", "web2", "worker", "migrate", "postgres"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert re.fullmatch(r"postgres:1[56](\.\d+)?(-[a-z0-9]+)?", services["postgres"]["image"])
    for name in APP_SERVICES:
        assert services[name]["build"]["context"] == ".." and (DEPLOY / ".." / "Dockerfile").exists()


def test_compose_starts_things_in_order():
    services = compose()["services"]
    for name in ("web1", "web2", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        assert deps["postgres"] == {"condition": "service_healthy"}, name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["command"] == ["db", "upgrade"] and services["migrate"]["restart"] == "no"
    assert services["nginx"]["depends_on"] == {
        "web1": {"condition": "service_healthy"},
        "web2": {"condition": "service_healthy"},
    }


def test_compose_healthchecks():
    services = compose()["services"]
    for name in ("web1", "web2"):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "/readyz" in test or "/healthz" in test
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "nginx-healthz" in " ".join(services["nginx"]["healthcheck"]["test"])
    for name in ("worker", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}  # no web port to probe


def test_compose_postgres_keeps_its_data_in_a_named_volume():
    pg = compose()["services"]["postgres"]
    (volume,) = [v for v in pg["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert volume.split(":")[0] in compose()["volumes"]


def test_compose_app_containers_are_locked_down():
    for name in (*APP_SERVICES, "nginx"):
        service = compose()["services"][name]
        assert service["read_only"] is True, name
        assert any(t.startswith("/tmp") for t in service["tmpfs"]), name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["deploy"]["resources"]["limits"]["memory"], name
    for name in APP_SERVICES:
        assert compose()["services"][name]["user"] == "10001:10001"
    assert compose()["services"]["postgres"]["read_only"] is True


def test_compose_publishes_only_nginx_and_only_on_loopback():
    for name, service in compose()["services"].items():
        if name != "nginx":
            assert "ports" not in service, name
    (port,) = compose()["services"]["nginx"]["ports"]
    assert port.startswith("127.0.0.1:")
    for name in ("app", "db"):
        assert compose()["networks"][name]["internal"] is True
    assert "edge" not in compose()["services"]["web1"]["networks"]
    assert compose()["services"]["postgres"]["networks"] == ["db"]


def test_compose_secrets_are_interpolated_never_written():
    env = compose()["x-app-environment"]
    for name in SECRET_VARIABLES:
        assert "${" in env[name], name
    postgres = compose()["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert env["WEBHOOK_APP_POLICY"] == POLICY_PATH
    assert env["WEBHOOK_APP_FORWARDED_HOPS"] == "1"
    for service in APP_SERVICES:
        assert compose()["services"][service]["environment"] == env


def test_compose_files_it_mounts_exist():
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source
    assert f"./k8s/policy.toml:{POLICY_PATH}:ro" in compose()["services"]["worker"]["volumes"]


def test_compose_references_resolve():
    for name, service in compose()["services"].items():
        for network in service.get("networks", []):
            assert network in compose()["networks"], (name, network)
        for dep in service.get("depends_on", {}):
            assert dep in compose()["services"], (name, dep)


def test_compose_passes_dclint():
    dclint = need_tool("dclint")
    done = subprocess.run(
        [dclint, "--no-color", "-c", str(DEPLOY / ".dclintrc"), str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_env_example_lists_every_interpolated_variable():
    example = (DEPLOY / ".env.example").read_text()
    declared = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    assert used <= declared
    for name in declared - COMPOSE_ONLY_VARIABLES:
        assert app_reads(name), name


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built():
    return load_yaml_docs(kustomize_build())


def k8s_file(name: str) -> Any:
    return load_yaml(K8S / name)


def test_kustomization_lists_existing_files_and_leaves_the_examples_out():
    kustomization = k8s_file("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]
    assert "ingress.example.yaml" not in kustomization["resources"]


def test_kustomize_builds_every_kind(built):
    kinds = {d["kind"] for d in built}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Job",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Namespace",
        "ServiceAccount",
    } <= kinds
    assert all(d["metadata"].get("namespace") == "webhook-app" for d in built if d["kind"] != "Namespace")


@pytest.mark.parametrize("version", ["1.29.0", None], ids=["k8s-1.29", "k8s-latest"])
def test_manifests_validate_against_the_kubernetes_schemas(built, version):
    kv = need_module("kubernetes_validate")
    version = version or kv.latest_version()
    examples = [
        *load_yaml_docs(K8S / "secret.example.yaml"),
        *load_yaml_docs(K8S / "ingress.example.yaml"),
    ]
    for doc in [*built, *examples]:
        kv.validate(doc, version, strict=True)


def test_web_deployment_probes_and_resources():
    web = k8s_file("web-deployment.yaml")
    pod = web["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"] == ["web", "--config", GUNICORN_CONF_IN_IMAGE]
    cli_args(container["args"])
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert "replicas" not in web["spec"]  # the HPA owns it
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_web_grace_period_covers_the_prestop_pause_and_gunicorns_drain():
    pod = k8s_file("web-deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pause + gunicorn_settings().graceful_timeout < pod["terminationGracePeriodSeconds"]
    compose_grace = int(compose()["x-web"]["stop_grace_period"].rstrip("s"))
    assert gunicorn_settings().graceful_timeout < compose_grace


def test_worker_deployment():
    worker = k8s_file("worker-deployment.yaml")
    assert worker["spec"]["replicas"] >= 2
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["worker"]
    cli_args(container["args"])
    assert "livenessProbe" not in container and "readinessProbe" not in container  # see the manifest's comment
    assert pod["restartPolicy"] == "Always"
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_migration_job():
    job = k8s_file("migrate-job.yaml")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["db", "upgrade"]
    cli_args(container["args"])
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_pods_wait_for_the_schema_before_starting():
    for name in ("web-deployment.yaml", "worker-deployment.yaml"):
        (init,) = k8s_file(name)["spec"]["template"]["spec"]["initContainers"]
        script = init["command"][-1]
        assert "webhook-app db status" in script
        cli_args(["db", "status"])


WORKLOADS = ("web-deployment.yaml", "worker-deployment.yaml", "migrate-job.yaml")


@pytest.mark.parametrize("name", WORKLOADS)
def test_pods_run_locked_down(name):
    pod = k8s_file(name)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod_containers(pod):
        sec = effective_security(pod, container)
        assert sec["runAsNonRoot"] is True, container["name"]
        assert sec["runAsUser"] == 10001, container["name"]
        assert sec["readOnlyRootFilesystem"] is True, container["name"]
        assert sec["allowPrivilegeEscalation"] is False, container["name"]
        assert sec["capabilities"]["drop"] == ["ALL"], container["name"]
        assert sec["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_container_has_requests_and_limits(name):
    pod = k8s_file(name)["spec"]["template"]["spec"]
    for container in pod_containers(pod):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)


@pytest.mark.parametrize("name", WORKLOADS)
def test_pods_mount_tmp_and_the_policy_configmap(name):
    pod = k8s_file(name)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert volumes["policy"]["configMap"]["name"] == "webhook-app-policy"
    assert volumes["policy"]["configMap"]["items"] == [{"key": "policy.toml", "path": "policy.toml"}]
    for container in pod_containers(pod):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/tmp"]["name"] == "tmp"
        assert mounts["/etc/webhook-app"] == {
            "name": "policy",
            "mountPath": "/etc/webhook-app",
            "readOnly": True,
        }


@pytest.mark.parametrize("name", WORKLOADS)
def test_secrets_come_from_secret_key_refs(name):
    pod = k8s_file(name)["spec"]["template"]["spec"]
    example = load_yaml(K8S / "secret.example.yaml")
    for container in pod_containers(pod):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert set(refs) == SECRET_VARIABLES, container["name"]
        for variable, ref in refs.items():
            assert ref["name"] == "webhook-app-secrets"
            assert ref["key"] in example["stringData"]
            assert ref.get("optional", False) is (variable not in {"CL_WEBHOOK_SECRETS", "WEBHOOK_APP_DATABASE_URL"})
        assert not [e for e in container["env"] if "value" in e], "plain values belong in the ConfigMap"
        assert container["envFrom"] == [{"configMapRef": {"name": "webhook-app-config"}}]


def test_the_settings_configmap_points_at_the_policy_and_holds_no_secret():
    (config,) = [g for g in k8s_file("kustomization.yaml")["configMapGenerator"] if g["name"] == "webhook-app-config"]
    settings = dict(literal.split("=", 1) for literal in config["literals"])
    assert settings["WEBHOOK_APP_POLICY"] == POLICY_PATH
    assert settings["WEBHOOK_APP_FORWARDED_HOPS"] == "1"
    assert settings["WEBHOOK_APP_MODE"] in {"shadow", "enforce"}
    assert not SECRET_VARIABLES & set(settings)
    for variable in settings:
        assert app_reads(variable), variable
    # 2 * the web container's CPU limit + 1, as deploy/gunicorn.conf.py would pick.
    (web,) = k8s_file("web-deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert int(settings["WEBHOOK_APP_WEB_WORKERS"]) == 2 * int(web["resources"]["limits"]["cpu"]) + 1


def test_the_secret_example_is_only_an_example():
    text = (K8S / "secret.example.yaml").read_text()
    assert "EXAMPLE ONLY" in text
    secret = load_yaml(K8S / "secret.example.yaml")
    assert set(secret["stringData"]) == SECRET_VARIABLES
    for key, value in secret["stringData"].items():
        assert "REPLACE-ME" in value, key


def test_built_manifests_refer_to_what_they_define(built):
    objects = by_kind(built)
    configmaps = {name for kind, name in objects if kind == "ConfigMap"}
    policy = next(d for (kind, name), d in objects.items() if kind == "ConfigMap" and "policy" in name)
    assert policy["data"]["policy.toml"] == (K8S / "policy.toml").read_text()
    for doc in built:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in {n for k, n in objects if k == "ServiceAccount"}
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
        for container in pod_containers(pod):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
        if doc["kind"] == "Deployment":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()


def test_the_policy_is_valid():
    from webhook_app.policy import load_policy

    policy = load_policy(K8S / "policy.toml")
    assert policy.rules


def test_service_pdbs_and_hpa_target_the_web_pods():
    web_labels = k8s_file("web-deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    worker_labels = k8s_file("worker-deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    service = k8s_file("web-service.yaml")
    assert service["spec"]["selector"].items() <= web_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    web_pdb, worker_pdb = k8s_file("web-pdb.yaml"), k8s_file("worker-pdb.yaml")
    assert web_pdb["apiVersion"] == "policy/v1"
    assert web_pdb["spec"]["selector"]["matchLabels"].items() <= web_labels.items()
    assert worker_pdb["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    assert web_pdb["spec"]["maxUnavailable"] == 1 and worker_pdb["spec"]["maxUnavailable"] == 1
    hpa = k8s_file("web-hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "webhook-app-web",
    }
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"


def test_only_the_ingress_controller_reaches_the_web_pods():
    web_policy, closed = load_yaml_docs(K8S / "networkpolicy.yaml")
    (rule,) = web_policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert closed["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in closed["spec"]


def test_the_ingress_example_keeps_the_nginx_protections():
    ingress = load_yaml(K8S / "ingress.example.yaml")
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-body-size"] == "1m"
    assert notes[prefix + "proxy-request-buffering"] == "on"
    assert notes[prefix + "proxy-next-upstream"] == "error timeout"
    assert float(notes[prefix + "proxy-read-timeout"]) < COMMERCE_LAYER_TIMEOUT
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/webhooks/commercelayer" and path["pathType"] == "Exact"


# --- Dockerfile ------------------------------------------------------------------------------


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text())
FINAL = final_stage(INSTRUCTIONS)


def instruction(word: str, stage: list[tuple[str, str]] = FINAL) -> list[str]:
    return [args for w, args in stage if w == word]


def test_dockerfile_is_multi_stage_on_a_slim_python():
    froms = instruction("FROM", INSTRUCTIONS)
    assert len(froms) >= 2
    (arg,) = [a for a in instruction("ARG", INSTRUCTIONS) if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[12]-slim(-[a-z]+)?", arg)
    assert froms[-1].startswith("${PYTHON_IMAGE}")
    assert "pip wheel" in " ".join(instruction("RUN", INSTRUCTIONS[: INSTRUCTIONS.index(FINAL[0])]))


def test_dockerfile_installs_the_wheels_with_postgres_and_no_build_tools():
    run = " ".join(instruction("RUN"))
    assert "--no-index" in run and "webhook-app[postgres]" in run
    assert "from=build" in run
    assert not re.search(r"\b(apt-get|gcc|build-essential|make)\b", run)


def test_dockerfile_runs_as_a_non_root_user():
    (user,) = instruction("USER")
    assert user.split(":")[0] == "10001"


def test_dockerfile_settings_port_healthcheck_and_command():
    env = " ".join(instruction("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert instruction("EXPOSE") == ["8000"] and gunicorn_settings().bind == ["0.0.0.0:8000"]
    (health,) = instruction("HEALTHCHECK")
    assert "urllib" in health and "/healthz" in health
    assert exec_form(instruction("ENTRYPOINT")[0]) == ["webhook-app"]
    command = exec_form(instruction("CMD")[0])
    assert command == ["web", "--config", GUNICORN_CONF_IN_IMAGE]
    cli_args(command)
    assert f"deploy/gunicorn.conf.py {GUNICORN_CONF_IN_IMAGE}" in instruction("COPY")


def test_dockerfile_adds_nothing_from_the_network():
    for word, args in INSTRUCTIONS:
        if word == "ADD":
            assert not re.search(r"(https?|git)://|git@", args), args
        if word == "RUN":
            assert not re.search(r"\b(curl|wget)\b", args), args


def test_dockerignore_admits_only_what_the_image_is_built_from():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for args in instruction("COPY", INSTRUCTIONS):
        if args.startswith("--from"):
            continue
        for source in shlex.split(args)[:-1]:
            assert source.rstrip("/") in allowed, source
    assert not any(p.startswith("!deploy/.env") or p == "!deploy" for p in patterns)


def test_dockerfile_passes_hadolint():
    hadolint = need_tool("hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- Procfile and the commands everywhere -----------------------------------------------------


def test_procfile_has_web_worker_and_release():
    lines = dict(line.split(": ", 1) for line in (DEPLOY / "Procfile").read_text().splitlines() if line)
    assert set(lines) == {"web", "worker", "release"}
    assert lines["release"] == "webhook-app db upgrade"
    for command in lines.values():
        words = shlex.split(command)
        assert words[0] == "webhook-app"
        cli_args(words[1:])
    assert "--config deploy/gunicorn.conf.py" in lines["web"]


def test_compose_commands_are_valid_cli_invocations():
    for name in APP_SERVICES:
        cli_args(compose()["services"][name]["command"])
    assert compose()["services"]["web1"]["command"] == ["web", "--config", GUNICORN_CONF_IN_IMAGE]


def test_every_setting_the_deployment_sets_is_one_the_app_reads():
    for variable in compose()["x-app-environment"]:
        assert app_reads(variable), variable
    for variable in SECRET_VARIABLES:
        assert app_reads(variable), variable


def test_the_healthcheck_needs_only_the_standard_library():
    # The slim image has no curl or wget, and the check must not depend on the app's packages.
    (health,) = instruction("HEALTHCHECK")
    code = exec_form(health.split(" CMD ", 1)[1])[-1]
    imported = set(re.findall(r"import ([\w.]+)", code))
    assert imported <= {"os", "urllib.request"}, imported


def test_deploy_dir_holds_no_real_env_file():
    assert not (DEPLOY / ".env").exists() or ".env" in (DEPLOY / ".gitignore").read_text()
    assert Path(DEPLOY / ".env.example").is_file()
    git = need_tool("git")  # what is tracked (a copy without git has nothing tracked to check)
    tracked = subprocess.run(
        [git, "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    assert "deploy/.env" not in tracked and "deploy/k8s/secret.yaml" not in tracked
