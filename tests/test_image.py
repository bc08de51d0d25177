"""The image, built from the repository's Dockerfile and run for real (see tests/support/image_tools.py).

One build per session (podman, on a local Debian base), loaded into a private docker daemon.
Then, each as the deployment runs it (read-only root filesystem, tmpfs /tmp, no capabilities):
`web` and `worker` on a SQLite volume and on PostgreSQL, the sandbox as Commerce Layer sending a
signed delivery that is answered 202 and turned into one PATCH; the image's user, its HEALTHCHECK
command, SIGTERM while a PATCH is in flight, and what is installed. Size and build time go to
test-artifacts/image.json.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from support import pg_schema_url, require_postgres
from support.image_tools import Docker, base_image, build_image, containers, need_tool
from support.procs import LOG_PATHS, SERVICE_ENVS, Service, free_port, wait_http, wait_until

from webhook_app.store import open_store

pytestmark = [pytest.mark.image, pytest.mark.e2e]
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
SB_SECRET = "image-shared-secret-0123456789"
CLIENT = {"client_id": "image-client", "client_secret": "image-client-secret-0123"}
ORDER = "OrdImage01"


@pytest.fixture(scope="module")
def image():
    """(docker, tag): the image built once and loaded into the daemon the tests use."""
    podman = need_tool("podman")
    docker = Docker()
    tag = f"localhost/webhook-app-test:{uuid.uuid4().hex[:8]}"
    try:
        started = time.monotonic()
        base = base_image(podman)
        base_seconds = time.monotonic() - started
        build_seconds = build_image(podman, base, tag)
        docker.load_from_podman(podman, tag)
        info = docker.inspect(tag)
        ARTIFACTS.mkdir(exist_ok=True)
        report = {
            "base": base,
            "base_seconds": round(base_seconds, 1),
            "build_seconds": round(build_seconds, 1),
            "size_bytes": info["Size"],
            "size_mb": round(info["Size"] / 1e6, 1),
        }
        (ARTIFACTS / "image.json").write_text(json.dumps(report, indent=1) + "\n")
        print(
            f"\nimage built in {build_seconds:.1f} s (base ready in {base_seconds:.1f} s), {info['Size'] / 1e6:.1f} MB"
        )
        yield docker, tag
    finally:
        docker("rmi", "-f", tag, check=False)
        docker.close()
        from support.image_tools import run

        run([podman, "rmi", "-f", tag], check=False)


# --- what the image is -----------------------------------------------------------------------------

PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, re, shutil

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

installed = {key(d.metadata["Name"]): d for d in md.distributions()}

def closure(name, extras):
    # every distribution reachable from `name[extras]` by its Requires-Dist (the image has no
    # `packaging`: a marker naming an extra is evaluated, any other marker counts if installed)
    seen, todo = set(), [(name, set(extras))]
    while todo:
        n, ex = todo.pop()
        if key(n) in seen:
            continue
        seen.add(key(n))
        for r in installed[key(n)].requires or []:
            spec, _, marker = r.partition(";")
            m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", spec)
            dep, dep_extras = m.group(1), {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
            wanted = re.findall(r"extra\s*==\s*[\"']([^\"']+)", marker)
            if wanted and not set(wanted) & ex:
                continue
            if marker.strip() and not wanted and key(dep) not in installed:
                continue
            todo.append((dep, dep_extras))
    return seen

print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "installed": sorted(installed),
    "needed": sorted(closure("webhook-app", ["postgres"])),
    "modules": {m: importlib.util.find_spec(m) is not None
                for m in ("commercelayer_sandbox", "pytest", "hypothesis", "selenium")},
    "scripts": {s: shutil.which(s) for s in ("commercelayer-sandbox", "pytest", "gcc")},
    # the base image's own Python may keep its pip (the official image does); the app's venv not
    "venv_pip": os.path.exists("/opt/venv/bin/pip"),
}))
"""


def test_image_runs_as_10001_with_only_the_runtime_installed(image):
    docker, tag = image
    info = docker.inspect(tag)
    cfg = info["Config"]
    assert cfg["User"] == "10001:10001" and cfg["Entrypoint"] == ["webhook-app"]
    assert cfg["Cmd"] == ["web", "--config", "/app/deploy/gunicorn.conf.py"]
    assert cfg["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    done = docker("run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python", tag, "-c", PROBE)
    probe = json.loads(done.stdout)
    assert (probe["uid"], probe["gid"]) == (10001, 10001)
    # nothing but webhook-app[postgres] and what it needs (the virtualenv's pip is removed)
    assert set(probe["installed"]) == set(probe["needed"]), set(probe["installed"]) ^ set(probe["needed"])
    assert not any(probe["modules"].values()), probe["modules"]
    assert not any(probe["scripts"].values()), probe["scripts"]
    assert probe["venv_pip"] is False


# --- web and worker with the sandbox as Commerce Layer --------------------------------------------


def sandbox_scenario(callback: str) -> dict:
    return {
        "sandbox": {
            "api_limits": ["1000/60"],
            "endpoint_limits": ["500/10"],
            "sender": {"backoff_base": 0.2, "backoff_max": 1, "timeout": 5},
        },
        "clients": [CLIENT],
        "customers": [{"email": "reg@example.com", "has_password": True}],
        "orders": [
            {
                "id": ORDER,
                "customer": "reg@example.com",
                "payment_source": {"type": "stripe_payments", "card_last4": "4242"},
            }
        ],
        "webhooks": [
            {
                "id": "HookImageP",
                "topic": "orders.place",
                "callback_url": callback,
                "include_resources": ["customer", "payment_source", "available_customer_payment_sources"],
                "shared_secret": SB_SECRET,
            }
        ],
    }


class Sandbox:
    def __init__(self, tmp_path: Path, callback: str) -> None:
        port = free_port()
        seed = tmp_path / "scenario.json"
        seed.write_text(json.dumps(sandbox_scenario(callback)))
        self.url = f"http://127.0.0.1:{port}"
        self.svc = Service(["sandbox", "--port", str(port), "--seed", str(seed)], {}, tmp_path / "sandbox.log")
        wait_http(self.url + "/_sandbox/health", proc=self.svc.proc)

    def control(self, method: str, path: str, body=None):
        r = requests.request(method, self.url + "/_sandbox" + path, json=body, timeout=60)
        assert r.status_code < 300, r.text
        return r.json() if r.content else None


def app_env(sb: Sandbox, db_url: str, port: int) -> dict[str, str]:
    env = {
        "CL_WEBHOOK_SECRETS": f"cl:{SB_SECRET}",
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_API_BASE": sb.url + "/api",
        "CL_AUTH_URL": sb.url + "/oauth/token",
        "WEBHOOK_APP_MODE": "enforce",
        "WEBHOOK_APP_POLL_INTERVAL": "0.05",
        "WEBHOOK_APP_DATABASE_URL": db_url,
        "PORT": str(port),
        "WEBHOOK_APP_WEB_WORKERS": "2",
    }
    SERVICE_ENVS.append(env)  # the secret scan checks every output for these values
    return env


class _VolumeReader:
    """What the test reads of the container's SQLite file, read-only. The store itself refuses a
    file another user owns (the container's uid 10001 owns this one; the test runs as root)."""

    def __init__(self, db_url: str) -> None:
        path = db_url.removeprefix("sqlite:///")
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)

    def action_state(self, order_id: str, action: str) -> str | None:
        row = self.db.execute(
            "SELECT state FROM order_actions WHERE order_id = ? AND action = ?", (order_id, action)
        ).fetchone()
        return None if row is None else row[0]

    def queue_stats(self, *, now: float) -> SimpleNamespace:
        counts = dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return SimpleNamespace(**{k: counts.get(k, 0) for k in ("pending", "running", "dead")})

    def close(self) -> None:
        self.db.close()


def through_to_the_patch(c, sb: Sandbox, env: dict[str, str], db_url: str, tmp_path: Path, volume: str | None):
    """web + worker containers; one delivery from the sandbox, answered 202, one PATCH; the
    worker stopped by SIGTERM while that PATCH hangs at Commerce Layer finishes it first."""
    port = int(env["PORT"])
    web = c.start(
        "web",
        "--config",
        "/app/deploy/gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        env=env,
        volume=volume,
        options=["--health-interval", "1s", "--health-start-period", "20s"],
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
    worker = c.start("worker", env=env, volume=volume, options=["--no-healthcheck"])
    # the running server: the image's user, and a root filesystem it cannot write
    done = c.docker(
        "exec",
        web,
        "python",
        "-c",
        "import os\nprint(os.getuid(), os.getgid())\ntry:\n open('/app/probe', 'w')\n"
        "except OSError as e:\n print(e.strerror)",
    )
    assert done.stdout.split("\n")[:2] == ["10001 10001", "Read-only file system"], done.stdout
    # the image's HEALTHCHECK command, run by the daemon, passes for web
    wait_until(
        lambda: c.docker.inspect(web)["State"].get("Health", {}).get("Status") == "healthy",
        timeout=30,
        what="web healthy",
    )
    # a slow Commerce Layer: the PATCH hangs 3 s, then is applied
    sb.control(
        "PUT", "/faults", {"rules": [{"route": "orders.patch", "hang_share": 1.0, "hang_seconds": 3, "requests": 1}]}
    )
    sb.control("POST", "/events", {"topic": "orders.place", "order_id": ORDER})
    wait_until(
        lambda: any(cb.get("response_code") for cb in sb.control("GET", "/event_callbacks")["event_callbacks"]),
        timeout=30,
        what="the delivery answered",
    )
    [callback] = sb.control("GET", "/event_callbacks")["event_callbacks"]
    assert callback["response_code"] == 202, callback
    store = open_store(db_url) if not db_url.startswith("sqlite:") else _VolumeReader(db_url)
    try:
        wait_until(
            lambda: store.action_state(ORDER, "save_payment_source") == "in_flight", timeout=30, what="PATCH in flight"
        )
        time.sleep(0.3)  # the PATCH is now hanging at the sandbox
        stop_started = time.monotonic()
        c.docker("stop", "-t", "30", worker, timeout=60)  # SIGTERM (the image's STOPSIGNAL)
        stop_seconds = time.monotonic() - stop_started
        state = c.docker.inspect(worker)["State"]
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state
        assert 1.5 < stop_seconds < 25  # it waited for the PATCH, and was not killed after the grace period
        assert store.action_state(ORDER, "save_payment_source") == "done"
        q = store.queue_stats(now=time.time())
        assert (q.pending, q.running, q.dead) == (0, 0, 0)
    finally:
        store.close()
    stats = sb.control("GET", "/stats")
    assert stats["wallet"]["save_flags"] == 1, stats
    wallet = [w for w in sb.control("GET", "/state")["customer_payment_sources"] if w["origin_order_id"] == ORDER]
    assert len(wallet) == 1
    assert "worker stopped" in c.logs(worker)
    for name, role in ((web, "web"), (worker, "worker")):
        log = tmp_path / f"container-{role}.log"
        log.write_text(c.logs(name))
        LOG_PATHS.append(log)
        assert "Traceback" not in log.read_text(), log.read_text()[-2000:]
    # the web container still healthy, then stopped by SIGTERM too, cleanly
    c.docker("stop", "-t", "30", web, timeout=60)
    assert c.docker.inspect(web)["State"]["ExitCode"] == 0


@pytest.fixture
def stack(image, tmp_path):
    docker, tag = image
    port = free_port()
    sb = Sandbox(tmp_path, f"http://127.0.0.1:{port}/webhooks/commercelayer")
    with containers(docker, tag) as c:
        c.port = port
        yield c, sb
    sb.svc.stop()


def test_web_and_worker_on_a_sqlite_volume(stack, tmp_path):
    c, sb = stack
    volume = c.volume()
    # the named volume starts with the image's directory: owned by 10001, mode 0750
    mount = Path(c.docker("volume", "inspect", "-f", "{{.Mountpoint}}", volume).stdout.strip())
    db_url = f"sqlite:///{mount / 'webhook-app.db'}"
    env = app_env(sb, "sqlite:////var/lib/webhook-app/webhook-app.db", c.port)
    through_to_the_patch(c, sb, env, db_url, tmp_path, volume)
    st = (mount / "webhook-app.db").stat()
    assert (st.st_uid, st.st_gid) == (10001, 10001)


def test_web_and_worker_on_postgresql(stack, tmp_path):
    require_postgres()
    c, sb = stack
    with pg_schema_url() as url:
        env = app_env(sb, url, c.port)
        # the schema first, as compose's `migrate` and the Kubernetes Job do
        done = c.run_once("db", "upgrade", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        through_to_the_patch(c, sb, env, url, tmp_path, None)
