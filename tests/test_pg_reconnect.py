"""PostgreSQL terminating every connection of the service (pg_terminate_backend, what a failover,
an administrator or `idle_session_timeout` does): the pool must not hand out the dead ones.

Real processes (`web` with its commit writer, `worker`) on a private schema of the test
PostgreSQL; their connections carry an application_name of the test's own, so only theirs are
terminated.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
import requests
from support import PG_URL, SECRET, pg_schema_url, require_postgres, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app.store import open_store

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _terminate(app: str) -> int:
    """Terminate every backend of `app` and wait until each has exited (pg_terminate_backend only
    signals it: on a busy machine a backend took more than the 0.3 s the test allowed to send its
    FATAL, and a connection that looked idle was used while it died)."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
        pids = [pid for pid, ok in rows if ok]
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]:
            assert time.monotonic() < deadline, "terminated backends still running after 10 s"
            time.sleep(0.02)
    return len(pids)


def _queue(url: str):
    store = open_store(url)
    try:
        return store.queue_stats(now=time.time())
    finally:
        store.close()


def test_after_every_connection_is_terminated_deliveries_are_2xx_and_the_worker_claims_at_once(procs, tmp_path):
    require_postgres()
    app = f"webhook_app_test_{uuid.uuid4().hex[:10]}"
    with pg_schema_url() as schema_url:
        url = f"{schema_url}&application_name={app}"
        setup = open_store(url)
        setup.migrate()
        setup.close()
        env = {
            "CL_WEBHOOK_SECRETS": f"main:{SECRET}",
            "WEBHOOK_APP_DATABASE_URL": url,
            "WEBHOOK_APP_POLL_INTERVAL": "0.05",
            "WEBHOOK_APP_LOG_LEVEL": "INFO",
        }
        port = free_port()
        web = Service(["web", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env, tmp_path / "web.log")
        procs.append(web)
        worker = Service(["worker"], env, tmp_path / "worker.log")
        procs.append(worker)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", proc=web.proc)

        def deliver(oid: str) -> int:
            body = order_body(oid)
            return requests.post(base + "/webhooks/commercelayer", data=body, headers=signed_headers(body), timeout=10)

        # Every process has its connections open and in use (pools warmed by a few rounds).
        for n in range(8):
            assert deliver(f"ordWARM{n:03d}").status_code == 202
        wait_until(lambda: _queue(url).done == 8, timeout=30, what="the first jobs done")
        assert requests.get(base + "/readyz", timeout=5).status_code == 200

        killed = _terminate(app)
        assert killed >= 3  # the commit writer's, the web workers' and the worker's (and its LISTEN)
        terminated_at = time.monotonic()
        time.sleep(0.3)  # the FATAL messages and the closes have reached every process (the backends are gone)

        answers = [deliver(f"ordAFTER{n:03d}").status_code for n in range(6)]
        assert answers == [202] * 6, answers  # before: the first ones met dead connections, 503
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
        wait_until(lambda: _queue(url).done == 14, timeout=10, what="the jobs after the termination done")
        took = time.monotonic() - terminated_at
        assert took < 5, f"the worker took {took:.1f} s to claim the jobs after the termination"
        assert "store unavailable, worker waiting" not in worker.output()
