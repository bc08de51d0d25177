"""prometheus_client's multiprocess directory: made per start in the temporary directory, removed
when the command stops, and a gunicorn worker that exits is marked dead in it.

Real processes with TMPDIR pointing at the test's own directory, so what they leave behind there
is theirs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support import SECRET, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http, wait_until

pytestmark = pytest.mark.e2e


def _env(tmp: Path) -> dict[str, str]:
    (tmp / "tmp").mkdir(exist_ok=True)
    return {
        "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
        "WEBHOOK_APP_DATABASE_URL": f"sqlite:///{tmp / 'app.db'}",
        "WEBHOOK_APP_POLL_INTERVAL": "0.05",
        "TMPDIR": str(tmp / "tmp"),
    }


def _metrics_dirs(tmp: Path) -> list[Path]:
    return sorted((tmp / "tmp").glob("webhook-app-metrics-*"))


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("command", ["serve", "web"])
def test_the_metrics_directory_is_removed_when_the_service_stops(tmp_path, command):
    env = _env(tmp_path)
    port = free_port()
    svc = Service([command, "--bind", f"127.0.0.1:{port}", "--workers", "1"], env, tmp_path / "svc.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=svc.proc)
        body = order_body("ordMETRICS1")
        url = f"http://127.0.0.1:{port}/webhooks/commercelayer"
        assert requests.post(url, data=body, headers=signed_headers(body), timeout=5).status_code == 202
        [made] = _metrics_dirs(tmp_path)  # one for the whole service, its children included
        assert any(made.glob("*.db"))  # in use: counters per process
    finally:
        code = svc.stop(signal.SIGTERM)
    assert code == 0, svc.output()[-2000:]
    assert _metrics_dirs(tmp_path) == []


def test_worker_once_leaves_no_metrics_directory_and_a_given_one_is_kept(tmp_path):
    env = {**os.environ, **_env(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    subprocess.run([sys.executable, "-m", "webhook_app", "db", "upgrade"], env=env, check=True, timeout=60)
    r = subprocess.run([sys.executable, "-m", "webhook_app", "worker", "--once"], env=env, timeout=60)
    assert r.returncode == 0 and _metrics_dirs(tmp_path) == []
    given = tmp_path / "mine"
    r = subprocess.run(
        [sys.executable, "-m", "webhook_app", "worker", "--once"],
        env={**env, "PROMETHEUS_MULTIPROC_DIR": str(given)},
        timeout=60,
    )
    assert r.returncode == 0 and given.is_dir()  # the operator's directory is the operator's


def test_a_gunicorn_worker_that_exits_is_marked_dead_in_the_metrics_directory(tmp_path):
    """gunicorn's child_exit hook calls prometheus_client's mark_process_dead: the live gauge
    files of a worker that died go (here one put there for it; the service's own gauges are all
    `max`/`mostrecent`, which prometheus_client keeps)."""
    env = _env(tmp_path)
    port = free_port()
    svc = Service(["web", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env, tmp_path / "web.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=svc.proc)
        [made] = _metrics_dirs(tmp_path)

        def worker_pid() -> int | None:
            # the master's children but the commit writer's keeper (a fork of the master whose own
            # child is the writer)
            pids = [
                p
                for p in _children(svc.proc.pid)
                if "commit-writer" not in _cmdline(p) and not any("commit-writer" in _cmdline(c) for c in _children(p))
            ]
            return pids[0] if len(pids) == 1 else None

        wait_until(lambda: worker_pid() is not None, what="one gunicorn worker")
        old = worker_pid()
        assert old is not None
        live = made / f"gauge_livesum_{old}.db"
        live.write_bytes(b"\0" * 16)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: worker_pid() not in (None, old), what="the worker replaced")
        wait_until(lambda: not live.exists(), timeout=5, what="the dead worker's live gauges removed")
        time.sleep(0.2)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        svc.stop(signal.SIGTERM)
