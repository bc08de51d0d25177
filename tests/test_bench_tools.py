"""The benchmark's own tools (bench/): distinct, correctly signed ~30 KB bodies, and a baseline
that really verifies signatures. Fast; no server is started and nothing is timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline_app import create_app  # noqa: E402
from bench.bodies import BENCH_SECRET, SIZES, generate, write_bodies  # noqa: E402
from webhook_app.events import Delivery  # noqa: E402
from webhook_app.signing import parse_secrets, sign  # noqa: E402


def test_bodies_are_distinct_signed_compact_orders_of_about_30_kb(tmp_path):
    summary = write_bodies(tmp_path / "b.txt", "30k", 200)
    lines = (tmp_path / "b.txt").read_bytes().splitlines()
    assert summary["count"] == len(lines) == 200
    secrets = parse_secrets(f"bench:{BENCH_SECRET}")
    bodies, ids, identities = set(), set(), set()
    for line in lines:
        signature, body = line.split(b" ", 1)
        assert 29_000 <= len(body) <= 32_000  # the real sample is 30.8 KB compact
        assert json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode() == body
        d = Delivery.from_http(
            {"X-CommerceLayer-Topic": "orders.place", "X-CommerceLayer-Signature": signature.decode()},
            body,
            secrets=secrets,
        )
        assert d.is_order and d.secret_label == "bench"
        bodies.add(body)
        ids.add(d.order_id)
        identities.add(d.identity)
    assert len(bodies) == len(ids) == len(identities) == 200


@pytest.mark.parametrize("size", ["1k", "300k"])
def test_other_sizes_are_near_their_target(size):
    body = next(generate(size, 1))
    assert 0.9 * SIZES[size] <= len(body) <= 1.1 * SIZES[size]
    assert json.loads(body)["data"]["type"] == "orders"


def test_baseline_accepts_only_correct_signatures():
    client = create_app(BENCH_SECRET).test_client()
    body = next(generate("30k", 1))
    headers = {"Content-Type": "application/json", "X-CommerceLayer-Topic": "orders.place"}
    good = client.post(
        "/webhooks/commercelayer",
        data=body,
        headers={**headers, "X-CommerceLayer-Signature": sign(body, secret=BENCH_SECRET)},
    )
    assert good.status_code == 200
    for bad in (sign(body, secret="another-secret"), sign(body + b" ", secret=BENCH_SECRET), "", "é"):
        r = client.post("/webhooks/commercelayer", data=body, headers={**headers, "X-CommerceLayer-Signature": bad})
        assert r.status_code == 401, bad
    assert client.post("/webhooks/commercelayer", data=body, headers=headers).status_code == 401


# --- the peers (issue 22): the same signature check, then one task queued per delivery ----------


@pytest.mark.parametrize("module", ["bench.peer_celery", "bench.peer_procrastinate"])
def test_peers_verify_the_signature_then_queue_topic_and_body(module):
    """The fake queue stands at the seam the real one (Celery's `.delay`, procrastinate's
    `.defer`) plugs into: neither library is needed to import or test the peer's Flask app."""
    import importlib

    queued: list[tuple[str, str]] = []
    app = importlib.import_module(module).create_app(BENCH_SECRET, enqueue=lambda t, b: queued.append((t, b)))
    client = app.test_client()
    body = next(generate("30k", 1))
    headers = {"Content-Type": "application/json", "X-CommerceLayer-Topic": "orders.place"}
    for bad in (sign(body, secret="another-secret"), sign(body + b" ", secret=BENCH_SECRET), ""):
        r = client.post("/webhooks/commercelayer", data=body, headers={**headers, "X-CommerceLayer-Signature": bad})
        assert r.status_code == 401
    assert queued == []
    good = {**headers, "X-CommerceLayer-Signature": sign(body, secret=BENCH_SECRET)}
    assert client.post("/webhooks/commercelayer", data=body, headers=good).status_code == 202
    assert queued == [("orders.place", body.decode())]


def test_bench_modules_import_without_the_peers_libraries():
    """run.py, report.py, scaleout.py and the peers import celery, redis and procrastinate only
    when a peer really runs: the benchmark's tests pass on the service's lock alone."""
    import subprocess

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('celery', 'redis', 'procrastinate', 'kombu'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import bench.run, bench.report, bench.scaleout, bench.peers_smoke, bench.peer_celery, bench.peer_procrastinate\n"
        "import bench.per_process, bench.store_cost\n"
        "from bench.common import peer_versions\n"
        "assert 'redis' not in peer_versions(), peer_versions()  # no client: no server facts, no error\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_store_cost_inserts_what_the_commit_writer_inserts_in_every_variant(tmp_path):
    """bench/store_cost.py measures the service's own insert on its migrated schema: each variant
    stores every delivery with its job (a variant that failed or stored nothing would measure
    nothing), a compressed body is what is stored, and the indexes it drops exist. It leaves the
    environment alone: a PROMETHEUS_MULTIPROC_DIR pointed at its databases broke /metrics for
    every later test of the session."""
    import os
    import sqlite3

    from bench import store_cost

    environ = dict(os.environ)
    tmpl = store_cost.template(tmp_path)
    assert dict(os.environ) == environ
    bodies = [b'{"data": {"id": "x", "type": "orders"}}' * 50]
    names = {r[0] for r in sqlite3.connect(tmpl).execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert set(store_cost.SECONDARY_INDEXES) <= names
    for name, (setup, compress) in store_cost.variants().items():
        db = tmp_path / f"{len(name)}-{abs(hash(name))}.db"
        db.write_bytes(tmpl.read_bytes())
        cpu, wall = store_cost.measure(db, bodies, setup=setup, compress=compress, rows=4, per_commit=2)
        assert cpu >= 0 and wall > 0
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT COUNT(*) FROM jobs j JOIN deliveries d ON d.id = j.delivery_id").fetchone() == (4,)
        stored = conn.execute("SELECT body FROM deliveries ORDER BY id LIMIT 1").fetchone()[0]
        assert (stored == bodies[0] + b"0") == (compress is None), name


def test_ingest_kinds_follow_the_issue_table_and_the_backends():
    from bench.run import ingest_kinds

    both = ["sqlite", "postgres"]
    assert ingest_kinds(both, peers=True) == [
        "baseline",
        "celery",
        "procrastinate",
        "serve-sqlite",
        "sqlite",
        "postgres",
    ]
    assert ingest_kinds(["sqlite"], peers=True) == ["baseline", "celery", "serve-sqlite", "sqlite"]
    assert ingest_kinds(["postgres"], peers=False) == ["baseline", "postgres"]


# --- issue 22's table and targets (bench/report.py) ---------------------------------------------


def _agg(rps, p99, **extra):
    return {"rps": rps, "p99_ms": p99, "errors": 0, "all_acknowledged_stored": True, **extra}


def _issue_run():
    """The issue's own figures (32 connections) as a results document."""
    servers = {
        "baseline": _agg(3309, 19),
        "celery": _agg(881, 385),
        "procrastinate": _agg(111, 411),
        "serve-sqlite": _agg(536, 88),
        "sqlite": _agg(923, 55),
        "postgres": _agg(862, 84),
    }
    entry = {"connections": 32, "workers": 2, "peer_workers": 4, "body_bytes": 30845, "servers": servers}
    e2e = {
        "sqlite": {"latency_phase": {"p50_ms": 184.0, "client_patch_mean_ms": 73.0}},
        "postgres": {"latency_phase": {"p50_ms": 80.0, "client_patch_mean_ms": 68.1}},
    }
    return {"configs": {"main-32": entry}}, e2e


def test_receivers_table_gives_each_share_of_the_stateless_limit():
    from bench.report import receivers_table

    ingest, _ = _issue_run()
    machine = {"redis": {"version": "7.0.15", "appendonly": "no", "save": ""}}
    lines = receivers_table(ingest["configs"]["main-32"], machine)
    assert lines[0] == "| receiver | req/s | of the stateless limit | p99 |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert len(rows) == 6
    assert rows["stateless Flask verifier, gunicorn 2 sync (the limit)"].endswith("| 3,309 | 1.00 | 19 ms |")
    assert rows["Flask + Celery `.delay` on Redis, gunicorn 4 sync (not durable on disk)"].endswith(
        "| 881 | 0.27 | 385 ms |"
    )
    assert rows["`webhook-app serve`, SQLite (**the single-host default**)"].endswith("| 536 | 0.16 | 88 ms |")
    assert rows["Flask + procrastinate `defer` on PostgreSQL, gunicorn 4 sync (durable)"].endswith(
        "| 111 | 0.03 | 411 ms |"
    )


def test_issue_targets_give_each_figure_and_met_or_missed():
    from bench.report import issue_targets, targets_table

    ingest, e2e = _issue_run()
    rows = {(r["target"], r["where"]): r for r in issue_targets(ingest, e2e)}
    serve_web = rows[("`serve` >= 0.9x `web` (SQLite)", "32 connections")]
    assert serve_web["figure"] == "0.58x (536 / 923 req/s)" and serve_web["met"] is False
    assert rows[("`serve` >= 1.5x the Celery receiver", "32 connections")]["met"] is False
    assert rows[("`web` on PostgreSQL >= 1.5x the Celery receiver", "32 connections")]["met"] is False
    pg_proc = rows[("`web` on PostgreSQL >= 5x the procrastinate receiver", "32 connections")]
    assert pg_proc["figure"] == "7.77x (862 / 111 req/s)" and pg_proc["met"] is True
    p99 = rows[("stretch: `web` (SQLite) p99 <= 2x the limit's", "32 connections")]
    assert p99["figure"] == "2.89x (55 / 19 ms)" and p99["met"] is False and p99["stretch"]
    latency = "receipt -> PATCH acknowledged p50 <= the API's latency + 15 ms"
    assert rows[(latency, "sqlite")]["met"] is False
    assert rows[(latency, "postgres")]["met"] is True  # 80 <= 68.1 + 15
    assert rows[(latency, "postgres")]["figure"] == "80.0 ms against 68.1 ms + 15"
    # the 4-connection configuration was not run: its rows are absent, not invented
    assert not any(where == "4 connections" for _, where in rows)
    table = targets_table(list(rows.values()))
    assert "| `serve` >= 0.9x `web` (SQLite) | 32 connections | 0.58x (536 / 923 req/s) | **missed** |" in table
    assert any(line.endswith("| met |") for line in table)


def test_a_target_whose_receiver_did_not_run_says_not_measured():
    from bench.report import issue_targets, targets_table

    ingest, _ = _issue_run()
    del ingest["configs"]["main-32"]["servers"]["celery"]
    rows = issue_targets(ingest, None)
    celery = [r for r in rows if "Celery" in r["target"]]
    assert celery and all(r["met"] is None and r["figure"] == "not measured" for r in celery)
    assert all(r["met"] is None for r in rows if r["where"] in ("sqlite", "postgres"))
    assert "| `serve` >= 1.5x the Celery receiver | 32 connections | not measured | not measured |" in targets_table(
        rows
    )


def test_the_reference_bars_say_what_the_simplest_durable_receiver_reaches():
    from bench.report import reference_rows, targets_table

    ingest, _ = _issue_run()
    assert reference_rows(ingest) == []  # no hand-written durable receiver in the run: no rows
    ingest["configs"]["main-32"]["servers"]["baseline-sqlite"] = _agg(1100, 60)
    rows = {r["target"]: r for r in reference_rows(ingest)}
    bar = rows["hand-written Flask + one SQLite commit >= 1.5x the Celery receiver"]
    assert bar["figure"] == "1.25x (1,100 / 881 req/s)" and bar["met"] is False
    ours = rows["`web` (SQLite) >= the hand-written Flask + one SQLite commit"]
    assert ours["figure"] == "0.84x (923 / 1,100 req/s)" and ours["met"] is False
    assert all(r["where"] == "32 connections" for r in rows.values())
    assert "| 1.25x (1,100 / 881 req/s) | **missed** |" in "\n".join(targets_table(list(rows.values())))


# --- the scale-out harness (bench/scaleout.py) ---------------------------------------------------


def test_wrk_threads_are_a_multiple_of_the_instances():
    from bench.scaleout import wrk_threads

    assert [wrk_threads(n) for n in (1, 2, 3, 4)] == [2, 2, 3, 4]


def _scale_row(instances, rps, busy, pct, pg_ms=0.5, backlog=0):
    return {
        "instances": instances,
        "rps": rps,
        "job_workers": 2,
        "jobs_done_per_s": 300.0,
        "backlog_end": backlog,
        "pg_cpu_ms_per_delivery": pg_ms,
        "pg": {"commits_per_s": 150.0, "wal_syncs_per_s": 140.0},
        "cpu": {"cores": 2, "machine_busy_pct": busy, "pct": pct},
    }


def test_where_it_tops_out_names_the_saturated_cpu_and_its_biggest_user():
    from bench.scaleout import where_it_tops_out

    rows = [
        _scale_row(4, 610.0, 97.0, {"web": 60.0, "postgres": 18.0, "workers": 9.0, "wrk": 6.0, "other": 4.0}, 0.6, 900),
        _scale_row(1, 600.0, 95.0, {"web": 58.0, "postgres": 20.0, "workers": 9.0, "wrk": 6.0, "other": 2.0}),
    ]
    findings = where_it_tops_out(rows)
    assert (
        findings[0] == "4 instances take in 610 deliveries/s, 1.02x the 600/s of 1 (more instances add nothing here)."
    )
    assert "cores are saturated" in findings[1] and "most of it in web" in findings[1]
    assert "0.6 ms of CPU per delivery" in findings[2] and "near 3,333 deliveries/s" in findings[2]
    assert "with workers that keep up it is more" in findings[2]  # 300 jobs/s against 610 taken in
    assert "left 900 pending" in findings[3]
    assert not any("contended" in f for f in findings)  # other load at most 4%


def test_where_it_tops_out_warns_when_other_work_shared_the_machine():
    from bench.scaleout import where_it_tops_out

    rows = [
        _scale_row(1, 144.0, 100.0, {"web": 9.0, "postgres": 8.0, "other": 69.4}),
        _scale_row(4, 418.0, 99.7, {"web": 20.0, "postgres": 13.6, "other": 49.0}),
    ]
    findings = where_it_tops_out(rows)
    assert "most of it in web" in findings[1]  # "other" is not a part of the run
    assert any("up to 69.4% of the machine" in f and "says little about PostgreSQL" in f for f in findings)


def test_where_it_tops_out_says_when_the_machine_was_not_the_limit():
    from bench.scaleout import where_it_tops_out

    rows = [
        _scale_row(1, 300.0, 40.0, {"web": 20.0, "postgres": 10.0, "other": 10.0}),
        _scale_row(2, 580.0, 70.0, {"web": 40.0, "postgres": 20.0, "other": 10.0}),
    ]
    findings = where_it_tops_out(rows)
    assert "1.93x" in findings[0] and "add nothing" not in findings[0]
    assert "not CPU-bound" in findings[1]
    assert not any("pending" in f for f in findings)


def test_scaleout_block_has_a_row_per_instance_count_and_the_findings(tmp_path):
    from bench.report import SCALEOUT_END, SCALEOUT_START, render_scaleout, update_doc

    rows = []
    for n, rps in ((1, 300.0), (2, 450.0)):
        row = _scale_row(n, rps, 95.0, {"web": 60.0, "postgres": 20.0, "workers": 10.0, "wrk": 4.0, "other": 1.0})
        row.update(wrk_threads=2, connections=32, p50_ms=50.0, p99_ms=120.0, errors=0, all_acknowledged_stored=True)
        rows.append(row)
    results = {
        "started": "2026-12-07T15:00:00+0000",
        "command": "python bench/run.py --only scaleout",
        "git": {"commit": "abc1234", "dirty": "no"},
        "machine": {"cores": 2, "postgresql": "15.20"},
        "scaleout": {"body_bytes": 30845, "seconds": 10, "warmup_s": 3, "rounds": 1, "by_instances": rows},
    }
    block = render_scaleout(results)
    assert block.startswith(SCALEOUT_START) and block.rstrip().endswith(SCALEOUT_END)
    assert (
        "| 1 | 2 x 32 | 300 (300) | 50 / 120 | 0 | met | 300, 0 | 95 | 60 | 10 | 20 | 4 | 1 | 0.5 | 150, 140 |" in block
    )
    assert "- 2 instances take in 450 deliveries/s, 1.50x the 300/s of 1." in block
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n\nbefore\n\n{SCALEOUT_START}\nold\n{SCALEOUT_END}\n\nafter\n")
    update_doc(doc, block, start=SCALEOUT_START, end=SCALEOUT_END)
    text = doc.read_text()
    assert "old" not in text and "before" in text and "after" in text and "| 2 | 2 x 32 | 450 (450)" in text
