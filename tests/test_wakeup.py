"""The worker wakes when a job is committed, through the real processes and real databases: with
the poll interval set to 60 s, each job is taken up at once, on SQLite (the local datagram
wake-up, webhook_app/wakeup.py) and on PostgreSQL (LISTEN/NOTIFY)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from support import SECRET, pg_schema_url, require_postgres, signed_headers
from support.builders import order_body
from support.procs import Service, free_port, wait_http, wait_until

from webhook_app import wakeup
from webhook_app.store import open_store

pytestmark = pytest.mark.e2e


def _worker_picks_up_at_once(procs: list[Service], tmp_path: Path, db_url: str) -> None:
    store = open_store(db_url)
    store.migrate()
    env = {"CL_WEBHOOK_SECRETS": f"test:{SECRET}", "WEBHOOK_APP_DATABASE_URL": db_url}
    worker = Service(["worker"], {**env, "WEBHOOK_APP_POLL_INTERVAL": "60"}, tmp_path / "worker.log")
    procs.append(worker)
    port = free_port()
    web = Service(["web", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env, tmp_path / "web.log")
    procs.append(web)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=web.proc)
    wait_until(lambda: "worker started" in worker.output(), what="the worker's start")
    time.sleep(1.0)  # its first look found nothing: it is now waiting out a 60 s poll interval
    try:
        for n in range(3):
            body = order_body(f"ordWake{n}")
            r = requests.post(
                f"http://127.0.0.1:{port}/webhooks/commercelayer", data=body, headers=signed_headers(body), timeout=10
            )
            assert r.status_code == 202, r.text
            job = r.json()["job_id"]
            # Without a wake-up this job would wait up to 60 s.
            wait_until(lambda job=job: store.job_state(job) == "done", timeout=10, what=f"job {job} done")
    finally:
        store.close()


def test_sqlite_worker_wakes_when_a_job_is_committed(procs, tmp_path):
    _worker_picks_up_at_once(procs, tmp_path, f"sqlite:///{tmp_path / 'wake.db'}")


@pytest.mark.postgres
def test_postgres_worker_wakes_on_notify(procs, tmp_path):
    require_postgres()
    with pg_schema_url() as url:
        _worker_picks_up_at_once(procs, tmp_path, url)


def test_waker_is_best_effort_and_named_per_database(tmp_path):
    a, b = (
        wakeup.Waker(wakeup.socket_path(str(tmp_path / "a.db"))),
        wakeup.Waker(wakeup.socket_path(str(tmp_path / "b.db"))),
    )
    try:
        a.notify()  # nobody listens yet: no error, nothing blocks
        assert not a.wait(0.05)  # now a listens; nothing was sent since
        b.notify()  # another database's wake-up does not reach a
        assert not a.wait(0.05)
        a.notify()
        assert a.wait(1.0)
    finally:
        a.close()
        b.close()
