"""End to end: webhook-app (web + worker) against the Commerce Layer sandbox.

The sandbox adds 50 ms to every API request and enforces Commerce Layer's documented test-mode
limits (100 requests a minute overall, 25 per 10 s per endpoint); the service runs with its own
defaults (`CL_RATE_LIMITS=100/60,25/10`, poll interval 0.1 s), one `webhook-app web` (2 gunicorn
workers) and one `webhook-app worker`, on a fresh database.

The event mix (full run: 5,000 events; --quick: 1,000) is built from 1,000 generated orders:
- `P` orders.place events for registered customers' orders with a wallet-capable payment
  source: the bundled policy saves their payment source, one PATCH each (full run: 200);
- every other event is skipped by the policy without any API call: orders.place of guest
  orders and of orders paid with a source that has no wallet flow, and orders.approve / .pay /
  .start_fulfilling / .fulfill / .cancel / .refund... of any order.
At 100 PATCHes a minute, P is what bounds the run; 5,000 PATCH-needing events would take 50
minutes, so P is kept small enough for the run to take a few minutes (documented limits), and
the minimum the limits allow for P is computed exactly and reported next to the drain time.

Two phases:
1. unhurried (the latency measurement): `P1` PATCH-needing events, one every 1.5 s (40/min,
   below every limit), each followed by a few skip events; the queue never backs up, so
   receipt -> PATCH acknowledged (deliveries.received_at -> decisions.decided_at of the
   `applied` decision, which is written right after the sandbox's 200) is the service's own
   latency: poll interval + claim + 50 ms API latency + recording.
2. burst (the drain measurement): all remaining events (P2 = P - P1 PATCH-needing) as fast as
   8 senders can post; drain time is from the first burst request to the moment no job is
   pending or running. The minimum is what the sliding windows allow given the calls already
   made in phase 1 (simulated with the service's own `earliest_slot`), plus the 50 ms of the
   last call.
429s are counted by the sandbox over the whole run (phase 1 is the warm-up; both are
reported). No 429 is the target.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from commercelayer_sandbox import Sandbox
from commercelayer_sandbox.model import WALLET_TYPES

from bench.common import (
    PY,
    Proc,
    clean_env,
    db_query,
    free_port,
    log,
    pg_drop,
    pg_recreate,
    wait_http,
)
from webhook_app.config import bundled_policy_path
from webhook_app.events import Event
from webhook_app.policy import SAVE, load_policy
from webhook_app.signing import sign

SECRET = "bench-e2e-shared-secret-0123456789"
CLIENT = {"client_id": "bench-client", "client_secret": "bench-client-secret-xyz", "scope": "market:all"}
INCLUDES = ["customer", "payment_source", "market", "line_items", "available_customer_payment_sources"]
SKIP_TOPICS = [
    "orders.approve",
    "orders.pay",
    "orders.start_fulfilling",
    "orders.fulfill",
    "orders.authorize",
    "orders.cancel",
    "orders.refund",
    "orders.create",
]
API_LATENCY_MS = 50
SANDBOX_LIMITS = {"api_limits": ["100/60"], "endpoint_limits": ["25/10"], "auth_limits": ["30/60"]}
SERVICE_LIMITS = "100/60,25/10"  # the service's default CL_RATE_LIMITS, stated explicitly


def scenario(orders: int) -> dict[str, Any]:
    return {
        "sandbox": {"token_ttl": 7200, **SANDBOX_LIMITS, "request_log_size": 100_000},
        "clients": [CLIENT],
        "generate": {"orders": orders, "guest_share": 0.2, "seed": 2026},
        "webhooks": [
            {
                "id": "HookBench1",
                "topic": "orders.place",
                "callback_url": "http://127.0.0.1:9/x",
                "include_resources": INCLUDES,
                "shared_secret": SECRET,
            }
        ],
    }


def plan(events: int, patches: int, unhurried: int, orders: int = 1000) -> dict[str, Any]:
    """The events to send: (topic, order_id, body) for phase 1 (interleaved) and phase 2."""
    sb = Sandbox()
    sb.load_scenario(scenario(orders))
    hook = next(iter(sb.state.webhooks.values()))
    snap = sb.state.snapshot()
    by_id = {o.id: o for o in sb.state.orders.values()}
    # The orders the bundled policy saves on orders.place (not Braintree's: saved on
    # orders.pending), one per customer and card (a second order with a card already saved is
    # card_already_in_wallet: no PATCH).
    policy = load_policy(bundled_policy_path())
    selected, cards = [], set()
    for o in sorted(snap["orders"], key=lambda o: o["id"]):
        if o["guest"] or not o["customer_id"] or o["payment_source"]["type"] not in WALLET_TYPES:
            continue
        order = by_id[o["id"]]
        body = sb.webhook_body(order, hook, "orders.place")
        if policy.decide(Event.from_body("orders.place", body)).action != SAVE:
            continue
        ps = sb.state.payment_sources[order.payment_source_id]
        card = (
            o["customer_id"],
            ps.type,
            ps.card_fingerprint or (ps.card_brand, ps.card_last4, ps.card_exp_month, ps.card_exp_year),
        )
        if card in cards:
            continue
        cards.add(card)
        selected.append(o["id"])
    others = sorted(o["id"] for o in snap["orders"] if o["id"] not in set(selected))
    if len(selected) < patches:
        raise RuntimeError(f"only {len(selected)} orders need a PATCH, {patches} wanted")
    rng = random.Random(7)
    patch_orders = selected[:patches]
    skip_pool = [("orders.place", o) for o in others]
    skip_pool += [(t, o) for o in sorted(by_id) for t in SKIP_TOPICS]
    rng.shuffle(skip_pool)
    need_skips = events - patches
    # A skip event is one the policy does not save on at all: not a Braintree order's
    # orders.pending, and not a second order with a card another order saves (whether the wallet
    # already holds that card when it arrives would depend on timing).
    skips = []
    for topic, oid in skip_pool:
        if len(skips) == need_skips:
            break
        if policy.decide(Event.from_body(topic, sb.webhook_body(by_id[oid], hook, topic))).action != SAVE:
            skips.append((topic, oid))
    if len(skips) < need_skips:
        raise RuntimeError("not enough distinct skip events")

    def render(topic: str, order_id: str) -> tuple[str, str, bytes]:
        return topic, order_id, sb.webhook_body(by_id[order_id], hook, topic)

    per_patch = 4  # skip events sent after each unhurried PATCH-needing event
    phase1 = []
    for n, oid in enumerate(patch_orders[:unhurried]):
        group = [render("orders.place", oid)]
        group += [render(t, o) for t, o in skips[n * per_patch : (n + 1) * per_patch]]
        phase1.append(group)
    rest_skips = skips[unhurried * per_patch :]
    phase2 = [render("orders.place", o) for o in patch_orders[unhurried:]] + [render(t, o) for t, o in rest_skips]
    rng.shuffle(phase2)
    return {
        "orders": orders,
        "selected_orders": len(selected),
        "patch_orders": patch_orders,
        "phase1": phase1,
        "phase2": phase2,
        "events": events,
        "patches": patches,
        "unhurried": unhurried,
    }


def _ts(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def _earliest(now: float, history: list[float], windows: list[tuple[int, float]]) -> float:
    """First instant >= now at which one more call fits every (count, seconds) window exactly as
    Commerce Layer (and the sandbox) count them: calls in (t - seconds, t]."""
    t = now
    changed = True
    while changed:
        changed = False
        for count, seconds in windows:
            inside = [x for x in history if x > t - seconds]
            if len(inside) >= count and inside[len(inside) - count] + seconds > t:
                t = inside[len(inside) - count] + seconds
                changed = True
    return t


def minimum_seconds(history: list[float], start: float, calls: int, limits: str = SERVICE_LIMITS) -> float:
    """The least time from `start` until `calls` more calls are answered, given calls made at
    `history` (epoch seconds) and Commerce Layer's sliding windows `limits` (without the
    service's safety guard), the last call taking the API latency."""
    windows = [(int(c), float(s)) for c, s in (w.split("/") for w in limits.split(","))]
    hist = sorted(history)
    slot = start
    for _ in range(calls):
        slot = _earliest(start, hist, windows)
        hist.append(slot)
        hist.sort()
    return round(slot - start + API_LATENCY_MS / 1000, 1) if calls else 0.0


class Poster:
    def __init__(self, url: str) -> None:
        self.url = url
        self.local = threading.local()
        self.lock = threading.Lock()
        self.answers: list[dict[str, Any]] = []

    def post(self, item: tuple[str, str, bytes], phase: int) -> dict[str, Any]:
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = requests.Session()
        topic, order_id, body = item
        t = time.time()
        r = s.post(
            self.url,
            data=body,
            timeout=30,
            headers={
                "Content-Type": "application/json",
                "X-CommerceLayer-Topic": topic,
                "X-CommerceLayer-Signature": sign(body, secret=SECRET),
            },
        )
        a = {
            "phase": phase,
            "topic": topic,
            "order_id": order_id,
            "status": r.status_code,
            "sent_at": t,
            "delivery_id": r.json().get("delivery_id")
            if r.headers.get("Content-Type", "").startswith("application/json")
            else None,
        }
        with self.lock:
            self.answers.append(a)
        return a


def _patch_seconds(metrics_url: str) -> float | None:
    """Mean seconds of the worker's `orders.patch` calls so far, from its /metrics."""
    import re

    try:
        text = requests.get(metrics_url, timeout=10).text
    except requests.RequestException:
        return None
    found = dict(
        re.findall(
            r'^webhook_app_commercelayer_request_seconds_(sum|count)\{route="orders.patch"\} ([0-9.e+]+)$', text, re.M
        )
    )
    n = float(found.get("count", 0))
    return float(found["sum"]) / n if n else None


@dataclass
class _Timeline:
    """When each phase ran, as the runner saw it (time.time() seconds)."""

    unhurried_start: float = 0.0
    unhurried_end: float = 0.0
    burst_start: float = 0.0
    burst_sent_s: float = 0.0
    drain_s: float = 0.0
    #: the worker's own mean `orders.patch` seconds after phase 1 (None: no metrics)
    client_patch: float | None = None
    #: the sandbox's non-token API calls before the burst (their start times)
    history: list[float] = field(default_factory=list)


def run_e2e(backend: str, workdir: Path, *, quick: bool = False) -> dict[str, Any]:
    events, patches, unhurried, spacing = (1_000, 40, 10, 1.5) if quick else (5_000, 200, 30, 1.5)
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"e2e {backend}: {events} events, {patches} PATCHes ({unhurried} unhurried)")
    p = plan(events, patches, unhurried)
    procs: list[Proc] = []
    sb_port, web_port = free_port(), free_port()
    sb_url, web_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{web_port}"
    (workdir / "scenario.json").write_text(json.dumps(scenario(p["orders"])))
    db_url, pg_db = _fresh_database(backend, workdir)
    result: dict[str, Any] = {
        "backend": backend,
        "events_planned": events,
        "patches_expected": patches,
        "unhurried_patches": unhurried,
        "unhurried_spacing_s": spacing,
        "api_latency_ms": API_LATENCY_MS,
        "sandbox_limits": SANDBOX_LIMITS,
        "service_limits": SERVICE_LIMITS,
        "orders_generated": p["orders"],
        "orders_selected_by_policy": p["selected_orders"],
    }
    try:
        metrics_url = _start(procs, backend, workdir, sb_port, web_port, _service_env(sb_url, db_url))
        poster = Poster(web_url + "/webhooks/commercelayer")
        timeline = _run_phases(poster, p, spacing, db_url, sb_url, metrics_url)
        result.update(_summary(p, poster.answers, db_url, sb_url, timeline, patches, unhurried))
    except Exception as exc:  # reported, the other parts still run
        log(f"e2e {backend} failed: {exc!r}")
        result["error"] = repr(exc)[:300]
    finally:
        for proc in reversed(procs):
            proc.stop()
        if pg_db:
            pg_drop(pg_db)
    if "burst" in result:
        b, lat = result["burst"], result["latency_phase"]
        log(
            f"  -> drained {b['drain_s']} s (minimum {b['minimum_s']} s), 429s {result['sandbox_429']}, "
            f"receipt->PATCH p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms, dead {result['dead_jobs']}"
        )
    return result


def _fresh_database(backend: str, workdir: Path) -> tuple[str, str | None]:
    """(database URL, the PostgreSQL database to drop afterwards or None), emptied."""
    if backend == "sqlite":
        db = workdir / "webhook-app.db"
        for suffix in ("", "-wal", "-shm", "-lock"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        return f"sqlite:///{db}", None
    pg_db = "bench_e2e"
    return pg_recreate(pg_db), pg_db


def _service_env(sb_url: str, db_url: str) -> dict[str, str]:
    return {
        "CL_WEBHOOK_SECRETS": f"cl:{SECRET}",
        "CL_CLIENT_ID": CLIENT["client_id"],
        "CL_CLIENT_SECRET": CLIENT["client_secret"],
        "CL_SCOPE": CLIENT["scope"],
        "CL_API_BASE": sb_url + "/api",
        "CL_AUTH_URL": sb_url + "/oauth/token",
        "WEBHOOK_APP_MODE": "enforce",
        "WEBHOOK_APP_DATABASE_URL": db_url,
        "CL_RATE_LIMITS": SERVICE_LIMITS,
    }


def _start(procs: list[Proc], backend: str, workdir: Path, sb_port: int, web_port: int, env: dict[str, str]) -> str:
    """The sandbox (with its API latency), the schema, `webhook-app web` and `worker`, each added
    to `procs` as it starts (the caller stops them); returns the worker's metrics URL."""
    sb_url, web_url = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{web_port}"
    sandbox = Proc(
        [PY, "-m", "commercelayer_sandbox", "--port", str(sb_port), "--seed", str(workdir / "scenario.json")],
        clean_env({}),
        workdir / "sandbox.log",
    )
    procs.append(sandbox)
    wait_http(sb_url + "/_sandbox/health", proc=sandbox.proc)
    requests.put(
        sb_url + "/_sandbox/faults", json={"rules": [{"route": "*", "latency_ms": API_LATENCY_MS}]}, timeout=10
    ).raise_for_status()
    full_env = clean_env(env)
    if backend == "postgres":
        import subprocess

        up = subprocess.run(
            [PY, "-m", "webhook_app", "db", "upgrade"],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if up.returncode != 0:
            raise RuntimeError(f"db upgrade: {up.stderr.strip()}")
    web = Proc(
        [PY, "-m", "webhook_app", "web", "--bind", f"127.0.0.1:{web_port}", "--workers", "2"],
        full_env,
        workdir / "web.log",
    )
    procs.append(web)
    wait_http(web_url + "/readyz", proc=web.proc)
    metrics_port = free_port()
    worker = Proc(
        [PY, "-m", "webhook_app", "worker", "--metrics-port", str(metrics_port)], full_env, workdir / "worker.log"
    )
    procs.append(worker)
    time.sleep(1.0)
    return f"http://127.0.0.1:{metrics_port}/metrics"


def _run_phases(
    poster: Poster, p: dict[str, Any], spacing: float, db_url: str, sb_url: str, metrics_url: str
) -> _Timeline:
    """Phase 1 (unhurried, one group every `spacing` s) then phase 2 (burst), each drained."""
    tl = _Timeline(unhurried_start=time.time())
    for n, group in enumerate(p["phase1"]):
        target = tl.unhurried_start + n * spacing
        time.sleep(max(0.0, target - time.time()))
        for item in group:
            poster.post(item, 1)
    _wait_drained(db_url, timeout=60)
    tl.unhurried_end = time.time()
    # The PATCHes' latency as the worker saw it (request to answer; rate-limit waits are not in
    # it): Commerce Layer's latency as far as the service is concerned.
    tl.client_patch = _patch_seconds(metrics_url)

    api_log = requests.get(sb_url + "/_sandbox/requests", timeout=60).json()["requests"]
    tl.history = [_ts(r["time"]) - r["duration_ms"] / 1000 for r in api_log if r["route"] != "token"]
    tl.burst_start = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: poster.post(item, 2), p["phase2"]))
    tl.burst_sent_s = time.time() - tl.burst_start
    drained_at = _wait_drained(db_url, timeout=1800)
    tl.drain_s = round(drained_at - tl.burst_start, 1)
    return tl


def _summary(
    p: dict[str, Any],
    answers: list[dict[str, Any]],
    db_url: str,
    sb_url: str,
    tl: _Timeline,
    patches: int,
    unhurried: int,
) -> dict[str, Any]:
    """What the run did, from the answers, the sandbox's request log and stats, and the database."""
    t2 = tl.burst_start
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a["status"])] = statuses.get(str(a["status"]), 0) + 1
    lat = _receipt_to_patch_ms(p, answers, db_url, unhurried)
    patch_log = requests.get(sb_url + "/_sandbox/requests", params={"route": "orders.patch"}, timeout=60).json()[
        "requests"
    ]
    patched: dict[str, int] = {}
    for r in patch_log:
        if r["status"] == 200:
            oid = r["path"].rsplit("/", 1)[1]
            patched[oid] = patched.get(oid, 0) + 1
    stats = requests.get(sb_url + "/_sandbox/stats", timeout=30).json()
    all_api = requests.get(sb_url + "/_sandbox/requests", timeout=60).json()["requests"]
    rl_times = [_ts(r["time"]) for r in all_api if r["status"] == 429]
    jobs = db_query(db_url, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
    outcomes = db_query(db_url, "SELECT outcome, COUNT(*) AS n FROM decisions GROUP BY outcome")
    return {
        "events_sent": len(answers),
        "answers": statuses,
        "patches_made": sum(patched.values()),
        "orders_patched": len(patched),
        "patches_per_order": sorted(set(patched.values())),
        "every_selected_order_patched_once": set(patched) == set(p["patch_orders"])
        and all(v == 1 for v in patched.values()),
        "sandbox_429": stats.get("rate_limited", {}).get("total", 0),
        "sandbox_429_in_burst": sum(1 for t in rl_times if t >= t2),
        "sandbox_429_in_unhurried_phase": sum(1 for t in rl_times if t < t2),
        "api_calls_by_route": stats.get("by_route", {}),
        "jobs_by_state": {r["state"]: int(r["n"]) for r in jobs},
        "decisions_by_outcome": {r["outcome"]: int(r["n"]) for r in outcomes},
        "dead_jobs": sum(int(r["n"]) for r in jobs if r["state"] == "dead"),
        "latency_phase": _latency_phase(lat, patch_log, tl),
        "burst": _burst(p, patch_log, tl, patches - unhurried),
    }


def _receipt_to_patch_ms(p: dict[str, Any], answers: list[dict[str, Any]], db_url: str, unhurried: int) -> list[float]:
    """Phase 1's receipt -> applied-decision times (ms), sorted."""
    p1_ids = [
        a["delivery_id"]
        for a in answers
        if a["phase"] == 1 and a["topic"] == "orders.place" and a["order_id"] in set(p["patch_orders"][:unhurried])
    ]
    lat_rows = (
        db_query(
            db_url,
            "SELECT d.id, d.received_at, c.decided_at FROM decisions c JOIN deliveries d"
            " ON d.id = c.delivery_id WHERE c.outcome = 'applied' AND d.id IN ("
            + ",".join(str(int(i)) for i in p1_ids)
            + ")",
        )
        if p1_ids
        else []
    )
    return sorted((float(r["decided_at"]) - float(r["received_at"])) * 1000 for r in lat_rows)


def _latency_phase(lat: list[float], patch_log: list[dict[str, Any]], tl: _Timeline) -> dict[str, Any]:
    # The API's latency as the sandbox served it (its configured delay and its own work), for
    # the PATCHes of the unhurried phase: the target is receipt -> PATCH within it + 15 ms.
    api_ms = sorted(
        float(r["duration_ms"])
        for r in patch_log
        if r["status"] == 200 and _ts(r["time"]) < tl.burst_start and r.get("duration_ms") is not None
    )
    return {
        "n": len(lat),
        "api_p50_ms": round(api_ms[len(api_ms) // 2], 1) if api_ms else None,
        "client_patch_mean_ms": round(tl.client_patch * 1000, 1) if tl.client_patch is not None else None,
        "seconds": round(tl.unhurried_end - tl.unhurried_start, 1),
        **_spread(lat),
    }


def _spread(lat: list[float]) -> dict[str, float | None]:
    """p50, p99, mean and max of sorted milliseconds (None for each without any)."""
    if not lat:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    return {
        "p50_ms": round(lat[len(lat) // 2], 1),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
        "mean_ms": round(statistics.fmean(lat), 1),
        "max_ms": round(lat[-1], 1),
    }


def _burst(p: dict[str, Any], patch_log: list[dict[str, Any]], tl: _Timeline, burst_patches: int) -> dict[str, Any]:
    t2 = tl.burst_start
    burst_patch_times = sorted(_ts(r["time"]) for r in patch_log if r["status"] == 200 and _ts(r["time"]) >= t2)
    minimum = minimum_seconds(tl.history, t2, burst_patches)
    return {
        "events": len(p["phase2"]),
        "patches": burst_patches,
        "send_s": round(tl.burst_sent_s, 1),
        "drain_s": tl.drain_s,
        "minimum_s": minimum,
        "drain_over_minimum": round(tl.drain_s / minimum, 2) if minimum else None,
        "last_patch_after_s": round(burst_patch_times[-1] - t2, 1) if burst_patch_times else None,
        "api_calls_before_burst_in_last_60s": sum(1 for h in tl.history if h > t2 - 60),
    }


def _wait_drained(db_url: str, *, timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = db_query(db_url, "SELECT COUNT(*) AS n FROM jobs WHERE state IN ('pending', 'running')")[0]
        if int(row["n"]) == 0:
            return time.time()
        time.sleep(0.25)
    raise TimeoutError(f"queue not drained within {timeout} s")
