# Benchmarks (see BENCHMARKS.md). Needs wrk (Debian: apt-get install wrk) and, for the
# PostgreSQL runs, a server at BENCH_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/test);
# the peers (Celery, procrastinate) need `make bench-deps` and Redis at BENCH_REDIS_URL
# (default redis://127.0.0.1:6379/15); BENCH_ARGS=--no-peers leaves them out.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: bench bench-quick bench-deps bench-peers-smoke bench-scaleout bench-retention

# The peers' libraries, pinned (bench/requirements.txt; not in the service's lock).
bench-deps:
	$(PYTHON) -m pip install -r bench/requirements.txt

# Each peer queues real tasks, and its own worker runs them.
bench-peers-smoke:
	$(PYTHON) bench/peers_smoke.py

# 1, 2 and 4 `webhook-app web` instances and 2 workers on one PostgreSQL (BENCH_ARGS e.g. --quick).
bench-scaleout:
	$(PYTHON) bench/run.py --only scaleout $(BENCH_ARGS)

bench:
	$(PYTHON) bench/run.py $(BENCH_ARGS)

bench-quick:
	$(PYTHON) bench/run.py --quick $(BENCH_ARGS)

# A long synthetic run under retention (bounded: --seconds per backend); prints the database size
# day by day. BENCH_RETENTION_ARGS e.g. "--backend sqlite --days 20".
bench-retention:
	$(PYTHON) bench/retention.py --backend both $(BENCH_RETENTION_ARGS)
