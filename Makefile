# Benchmarks (see BENCHMARKS.md). Needs wrk (Debian: apt-get install wrk) and, for the
# PostgreSQL runs, a server at BENCH_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/test).
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: bench bench-quick bench-retention

bench:
	$(PYTHON) bench/run.py $(BENCH_ARGS)

bench-quick:
	$(PYTHON) bench/run.py --quick $(BENCH_ARGS)

# A long synthetic run under retention (bounded: --seconds per backend); prints the database size
# day by day. BENCH_RETENTION_ARGS e.g. "--backend sqlite --days 20".
bench-retention:
	$(PYTHON) bench/retention.py --backend both $(BENCH_RETENTION_ARGS)
