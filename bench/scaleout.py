"""How far one PostgreSQL goes: 1, 2 and 4 `webhook-app web` instances and 2 workers on one database.

For each number of instances N: a fresh PostgreSQL database (`webhook-app db upgrade`), N
`webhook-app web` instances, each on its own port with its defaults (4 sync workers and its
commit writer), and 2 `webhook-app worker` processes (shadow mode: they claim, decide and record
every job and call no API); a warm-up with one topic, then the measured run: wrk, its threads
spread over the instances (bench/ingest.lua with WRK_HOSTS: thread k to instance k mod N), 32
connections, the same distinct signed 30 KB order bodies as the ingest benchmark.

Measured per N: deliveries acknowledged per second (2xx) with p50 / p99, the jobs the workers
finished per second during the measured run and the backlog at its end, PostgreSQL's commits and
WAL, and where the CPU went, as shares of the machine's cores: the web instances (gunicorn
masters, workers and commit writers), the workers, PostgreSQL (the backends of this database and
PostgreSQL's own background processes; other databases' backends count as other load), wrk, and
everything else. `where_it_tops_out` turns those rows into the findings BENCHMARKS.md shows.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from bench import bodies as bodies_mod
from bench.common import PY, Proc, clean_env, db_query, db_upgrade, free_port, log, pg_drop, pg_recreate, wait_http
from bench.cpu import children_cpu, machine_jiffies, postgres_pids, proc_cpu_seconds, wait_for_quiet
from bench.ingest import MEASURE_TOPICS, SECRET, WARMUP_TOPIC, run_wrk, summarize_wrk
from bench.rss import descendants

JOB_WORKERS = 2
CONNECTIONS = 32


def wrk_threads(instances: int, minimum: int = 2) -> int:
    """The smallest multiple of `instances` that is at least `minimum`: every instance gets the
    same number of wrk threads, hence of connections."""
    return instances * math.ceil(minimum / instances)


class Fleet:
    """N `webhook-app web` instances and the job workers, on one fresh PostgreSQL database."""

    def __init__(self, instances: int, workdir: Path, run_id: str, *, web_workers: int | None = None) -> None:
        self.instances = instances
        self.workdir = workdir
        self.web_workers = web_workers
        self.dbname = f"bench_scale_{run_id}"
        self.db_url = ""
        self.ports = [free_port() for _ in range(instances)]
        self.webs: list[Proc] = []
        self.workers: list[Proc] = []

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def start(self) -> None:
        self.db_url = pg_recreate(self.dbname)
        env = clean_env(
            {
                "CL_WEBHOOK_SECRETS": f"bench:{SECRET}",
                "WEBHOOK_APP_DATABASE_URL": self.db_url,
                "WEBHOOK_APP_MODE": "shadow",
            }
        )
        db_upgrade(env)
        for i, port in enumerate(self.ports):
            argv = [PY, "-m", "webhook_app", "web", "--bind", f"127.0.0.1:{port}"]
            if self.web_workers:
                argv += ["--workers", str(self.web_workers)]
            self.webs.append(Proc(argv, env, self.workdir / f"web-{i + 1}.log"))
        for i in range(JOB_WORKERS):
            self.workers.append(Proc([PY, "-m", "webhook_app", "worker"], env, self.workdir / f"worker-{i + 1}.log"))
        for web, port in zip(self.webs, self.ports, strict=True):
            wait_http(f"http://127.0.0.1:{port}/readyz", proc=web.proc)

    def web_pids(self) -> list[int]:
        return [p for w in self.webs for p in (w.pid, *descendants(w.pid))]

    def worker_pids(self) -> list[int]:
        return [p for w in self.workers for p in (w.pid, *descendants(w.pid))]

    def stop(self) -> None:
        for p in [*self.webs, *self.workers]:
            p.stop()
        if self.db_url:
            pg_drop(self.dbname)


def _pg_pids(db_url: str, dbname: str) -> list[int]:
    """PostgreSQL processes working for this run: this database's backends and the server's
    background processes (WAL writer, checkpointer...), not other databases' backends."""
    rows = db_query(
        db_url,
        f"SELECT pid FROM pg_stat_activity WHERE datname = '{dbname}' OR backend_type <> 'client backend'",  # our own name
    )
    mine = {int(r["pid"]) for r in rows}
    return [p for p in postgres_pids() if p in mine]


def _pg_counters(db_url: str, dbname: str) -> dict[str, float]:
    row = db_query(
        db_url,
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,"
        " (SELECT wal_bytes FROM pg_stat_wal) AS wal_bytes, (SELECT wal_sync FROM pg_stat_wal) AS wal_syncs",
    )[0]
    return {k: float(v or 0) for k, v in row.items()}


class GroupCpu:
    """CPU seconds of named groups of processes over one interval, and of the whole machine."""

    def start(self, groups: dict[str, list[int]]) -> GroupCpu:
        self.t0 = time.monotonic()
        self.m0 = machine_jiffies()
        self.c0 = children_cpu()
        self.p0 = {pid: proc_cpu_seconds(pid) for pids in groups.values() for pid in pids}
        return self

    def stop(self, groups: dict[str, list[int]]) -> dict[str, Any]:
        tick = os.sysconf("SC_CLK_TCK")
        busy1, total1 = machine_jiffies()
        busy = (busy1 - self.m0[0]) / tick
        capacity = (total1 - self.m0[1]) / tick or 1e-9
        seconds = {
            name: sum(max(0.0, proc_cpu_seconds(p) - self.p0.get(p, 0.0)) for p in set(pids))
            for name, pids in groups.items()
        }
        seconds["wrk"] = children_cpu() - self.c0
        seconds["other"] = max(0.0, busy - sum(seconds.values()))
        return {
            "wall_s": round(time.monotonic() - self.t0, 2),
            "cores": os.cpu_count(),
            "machine_busy_pct": round(100 * busy / capacity, 1),
            "cpu_s": {k: round(v, 2) for k, v in seconds.items()},
            "pct": {k: round(100 * v / capacity, 1) for k, v in seconds.items()},
        }


def run_one(
    instances: int,
    bodies: dict[str, Any],
    *,
    warmup: float,
    seconds: float,
    workdir: Path,
    run_id: str,
    quiet_wait: float,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(instances, workdir, run_id)
    threads = wrk_threads(instances)
    log(f"scaleout: {instances} web instance(s), {JOB_WORKERS} workers, one PostgreSQL, {CONNECTIONS} connections")
    result: dict[str, Any] = {
        "instances": instances,
        "job_workers": JOB_WORKERS,
        "connections": CONNECTIONS,
        "wrk_threads": threads,
        "warmup_s": warmup,
        "duration_s": seconds,
        "quiet_gate": wait_for_quiet(max_wait_s=quiet_wait),
    }
    try:
        fleet.start()
        url = f"http://{fleet.hosts[0]}/webhooks/commercelayer"
        common_args: dict[str, Any] = {"connections": CONNECTIONS, "threads": threads, "hosts": fleet.hosts}
        warm = run_wrk(
            url, bodies["file"], [WARMUP_TOPIC], seconds=warmup, out=workdir / "wrk-warmup.json", **common_args
        )
        groups = {"web": fleet.web_pids(), "workers": fleet.worker_pids()}
        groups["postgres"] = _pg_pids(fleet.db_url, fleet.dbname)
        pg0 = _pg_counters(fleet.db_url, fleet.dbname)
        cpu = GroupCpu().start(groups)
        t0 = time.time()
        measured = run_wrk(
            url, bodies["file"], MEASURE_TOPICS, seconds=seconds, out=workdir / "wrk.json", **common_args
        )
        t1 = time.time()
        groups["postgres"] = sorted({*groups["postgres"], *_pg_pids(fleet.db_url, fleet.dbname)})
        result["cpu"] = cpu.stop(groups)
        pg1 = _pg_counters(fleet.db_url, fleet.dbname)
        result.update(summarize_wrk(measured))
        result["warmup"] = summarize_wrk(warm)
        window = max(1e-9, t1 - t0)
        row = db_query(
            fleet.db_url,
            "SELECT (SELECT COUNT(*) FROM deliveries) AS deliveries, (SELECT COUNT(*) FROM jobs) AS jobs,"
            " (SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')) AS backlog,"
            f" (SELECT COUNT(*) FROM jobs WHERE finished_at >= {t0} AND finished_at <= {t1}) AS finished",  # floats
        )[0]
        stored = {k: int(v) for k, v in row.items()}
        accepted = warm["statuses"].get("202", 0) + measured["statuses"].get("202", 0)
        result["stored"] = stored
        result["accepted_202"] = accepted
        result["all_acknowledged_stored"] = (
            stored["deliveries"] == stored["jobs"] and accepted <= stored["deliveries"] <= accepted + 2 * CONNECTIONS
        )
        result["jobs_done_per_s"] = round(stored["finished"] / window, 1)
        result["backlog_end"] = stored["backlog"]
        result["pg"] = {
            "commits_per_s": round((pg1["commits"] - pg0["commits"]) / window, 1),
            "wal_mb_per_s": round((pg1["wal_bytes"] - pg0["wal_bytes"]) / window / 1e6, 2),
            "wal_syncs_per_s": round((pg1["wal_syncs"] - pg0["wal_syncs"]) / window, 1),
        }
        done = measured["statuses"].get("202", 0)
        pg_s = result["cpu"]["cpu_s"].get("postgres", 0.0)
        result["pg_cpu_ms_per_delivery"] = round(1000 * pg_s / done, 3) if done else None
    finally:
        fleet.stop()
    log(
        f"  -> {result.get('rps')} req/s, p99 {result.get('p99_ms')} ms, errors {result.get('errors')}, "
        f"jobs {result.get('jobs_done_per_s')}/s, backlog {result.get('backlog_end')}, "
        f"CPU % {result.get('cpu', {}).get('pct')}"
    )
    return result


def run_scaleout(
    run_dir: Path,
    *,
    bodies_dir: Path,
    instances: list[int],
    quick: bool = False,
    seconds: float | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Each instance count in interleaved rounds (each round starts with a different count);
    the report takes the median round of each."""
    warmup = 1.0 if quick else 3.0
    seconds = seconds or (4.0 if quick else 10.0)
    rounds = rounds or 1
    bodies = bodies_mod.ensure_bodies(bodies_dir, "30k", 10_000)
    runs: list[dict[str, Any]] = []
    n = 0
    for r in range(rounds):
        order = instances[r % len(instances) :] + instances[: r % len(instances)]
        for count in order:
            n += 1
            res = run_one(
                count,
                bodies,
                warmup=warmup,
                seconds=seconds,
                workdir=run_dir / f"{n:02d}-{count}-web",
                run_id=f"{n}",
                quiet_wait=5.0 if quick else 10.0,
            )
            res["round"] = r + 1
            runs.append(res)
    by_count = []
    for count in instances:
        mine = sorted((x for x in runs if x["instances"] == count), key=lambda x: x["rps"])
        median = dict(mine[len(mine) // 2])
        median["rps_rounds"] = [x["rps"] for x in mine]
        by_count.append(median)
    return {
        "warmup_s": warmup,
        "seconds": seconds,
        "rounds": rounds,
        "body_bytes": bodies["mean_bytes"],
        "distinct_bodies": bodies["count"],
        "runs": runs,
        "by_instances": by_count,
        "findings": where_it_tops_out(by_count),
    }


def where_it_tops_out(
    rows: list[dict[str, Any]], *, busy_saturated: float = 90.0, noisy_other: float = 20.0
) -> list[str]:
    """What the rows (one per instance count, as `run_scaleout` makes them) say about the limit:
    the scaling from the fewest to the most instances, whether the machine's cores were the
    limit and who used them, and PostgreSQL's CPU per delivery, with the throughput one PostgreSQL
    would top out at on CPU if it had the machine's cores to itself."""
    if not rows:
        return ["no scale-out rows"]
    rows = sorted(rows, key=lambda r: r["instances"])
    first, last = rows[0], rows[-1]
    out: list[str] = []
    if len(rows) > 1 and first["rps"]:
        gain = last["rps"] / first["rps"]
        out.append(
            f"{last['instances']} instances take in {last['rps']:,.0f} deliveries/s, {gain:.2f}x "
            f"the {first['rps']:,.0f}/s of {first['instances']}"
            + (" (more instances add nothing here)" if gain < 1.1 else "")
            + "."
        )
    cpu = last["cpu"]
    pct = cpu["pct"]
    shares = ", ".join(f"{k} {v:g}%" for k, v in sorted(pct.items(), key=lambda kv: -kv[1]))
    if cpu["machine_busy_pct"] >= busy_saturated:
        top = max((k for k in pct if k != "other"), key=lambda k: pct[k])
        out.append(
            f"At {last['instances']} instances the machine's {cpu['cores']} cores are saturated "
            f"({cpu['machine_busy_pct']:g}% busy: {shares}): it tops out on CPU, most of it in {top}."
        )
    else:
        out.append(
            f"At {last['instances']} instances the machine is {cpu['machine_busy_pct']:g}% busy ({shares}): "
            f"not CPU-bound; the limit is waiting (commits, locks, the load generator's connections)."
        )
    other = max(r["cpu"]["pct"].get("other", 0.0) for r in rows)
    if other >= noisy_other:
        out.append(
            f"Other work took up to {other:g}% of the machine during these runs: more instances win a larger "
            f"share of a contended machine, so this scaling says little about PostgreSQL; rerun when it is quiet."
        )
    ms = last.get("pg_cpu_ms_per_delivery")
    if ms:
        cores = cpu["cores"] or 1
        lagging = last["jobs_done_per_s"] < 0.9 * last["rps"]
        out.append(
            f"PostgreSQL spends {ms:g} ms of CPU per delivery taken in (the intake's commits and, in the same "
            f"time, the workers' claims and records of {last['jobs_done_per_s']:,.0f} jobs/s"
            + ("; with workers that keep up it is more" if lagging else "")
            + f"); with {cores} cores to itself one PostgreSQL would top out near {cores * 1000 / ms:,.0f} "
            f"deliveries/s on CPU ({last['pg']['commits_per_s']:,.0f} commits/s, "
            f"{last['pg']['wal_syncs_per_s']:,.0f} WAL syncs/s"
            + (f", {last['pg']['wal_mb_per_s']:g} MB/s of WAL" if "wal_mb_per_s" in last["pg"] else "")
            + f" at {last['rps']:,.0f} deliveries/s here)."
        )
    if last.get("backlog_end"):
        out.append(
            f"The {last['job_workers']} workers finished {last['jobs_done_per_s']:,.0f} jobs/s and left "
            f"{last['backlog_end']:,} pending at the end of the run: at this intake they fall behind."
        )
    return out
