# Benchmarks (see BENCHMARKS.md). Needs wrk (Debian: apt-get install wrk) and, for the
# PostgreSQL runs, a server at BENCH_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/test).
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: bench bench-quick

bench:
	$(PYTHON) bench/run.py $(BENCH_ARGS)

bench-quick:
	$(PYTHON) bench/run.py --quick $(BENCH_ARGS)
