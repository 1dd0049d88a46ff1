# The two doors of the README: `make demo` (the embedded default, no Kafka) and `make test`
# (the whole suite: lint, types, unit + integration tests against a real Kafka broker and a real
# Prometheus, both started by the project's own kit). Both install what they need first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# pytest-xdist workers: the integration tier mostly waits on the broker (sessions, kills,
# transactions), so three share two cores well; a test file stays on one worker (its
# module's own broker starts once).
TEST_WORKERS ?= 3

.PHONY: install demo test lint bench

install:
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'

demo: install
	fds demo

lint:
	ruff check .
	ruff format --check .
	mypy

test: install
	bash scripts/install_prometheus.sh
	bash streams/kafka/install.sh
	$(MAKE) lint
	FDS_REQUIRE_INTEGRATION=1 $(PYTHON) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile

# Every benchmark runs; one that fails (or exits 1 for a figure that missed its target, as
# bench_metrics does) is listed at the end, and the exit is non-zero (it stopped the loop there).
bench: install
	failed=""; for b in benchmarks/bench_*.py; do $(PYTHON) $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "exited non-zero:$$failed"; exit 1; fi
