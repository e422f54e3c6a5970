# otel-budget developer entry points. See docs/stack.md for the local service stack.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STACK   := $(PYTHON) stack/stack.py
PYTEST_ARGS ?=

.PHONY: help venv stack stack-down stack-status stack-build test-tools validate-config test demo bench bench-instructions bench-e2e-instructions bench-gateway-tier valgrind

help:
	@echo "make venv            .venv with otel-budget[all,dev] (re-run when pyproject.toml changes)"
	@echo "make stack           start PostgreSQL, Redis, FerretDB, Jaeger, collector, Prometheus (idempotent)"
	@echo "make stack-status    table of the services"
	@echo "make stack-down      stop what 'make stack' started"
	@echo "make stack-build     install packages / build binaries only"
	@echo "make test-tools      install what the tests need beside the stack (chromium, headless)"
	@echo "make validate-config check collector-config/config.yaml (and the Prometheus config)"
	@echo "make test            stack + venv + test-tools, then pytest"
	@echo "make demo            stack + venv, then examples/demo.py"
	@echo "make bench           venv + stack, then benchmarks/run.py, bench-instructions and bench-e2e-instructions"
	@echo "make bench-instructions  instructions per scope under callgrind, ratios to plain OTel (~10 min)"
	@echo "make bench-e2e-instructions  the shop's view per request under callgrind, one gunicorn worker (~10 min)"
	@echo "make bench-gateway-tier  spans/s through agent + 2 gateways, step by step to saturation (~3 min)"

venv: $(VENV)/.stamp

# setup.py builds the compiled hot path (src/otel_budget/_speedups.c) in place; without a C compiler the
# install goes on without it (the pure-Python path), and tests/unit/test_compiled.py fails, saying so.
$(VENV)/.stamp: pyproject.toml setup.py src/otel_budget/_speedups.c
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -e ".[all,dev]"
	# psycopg 3 for tests/e2e/test_e2e_django_stacks.py, outside site-packages: where it is importable,
	# Django picks it over psycopg2, so only the processes that put this directory on PYTHONPATH get it.
	$(VENV)/bin/pip install --disable-pip-version-check -q --upgrade --target $(VENV)/psycopg3 "psycopg[binary]>=3.2,<4"
	touch $@

stack:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

stack-build:
	$(STACK) build

test-tools:
	$(STACK) tools

validate-config:
	$(STACK) validate-config

# pytest exit code 5 ("no tests collected") is a failure here, not a pass.
# The unit tests run twice: on the compiled hot path (with everything else) and on the pure-Python one.
test: stack venv test-tools
	@rc=0; $(VPY) -m pytest tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests - failing" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	echo "make test: tests/unit again on the pure-Python hot path (OTEL_BUDGET_COMPILED=false)"; \
	OTEL_BUDGET_COMPILED=false $(VPY) -m pytest tests/unit -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests - failing" >&2; exit 1; fi; \
	exit $$rc

demo: stack venv
	$(VPY) examples/demo.py

# The e2e benchmark drives the shop with wrk (a Debian package).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
bench: venv stack valgrind
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y -q --no-install-recommends wrk \
		|| { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends wrk; }
	$(VPY) benchmarks/run.py
	$(VPY) benchmarks/instructions.py --compare
	$(VPY) benchmarks/e2e_instructions.py --compare

# Instruction counts (noise-free): each configuration at two sizes under callgrind, the difference per scope.
bench-instructions: venv valgrind
	$(VPY) benchmarks/instructions.py --compare

# End to end in instructions: the shop's 25-query view, one gunicorn worker under callgrind, per request (~10 min).
bench-e2e-instructions: venv stack valgrind
	$(VPY) benchmarks/e2e_instructions.py --compare

# Spans per second through the scaled topology (its own agent + 2 gateways on the shared ports + 22000).
GATEWAY_TIER_RATES ?= 5000,10000,20000,40000,60000,80000
bench-gateway-tier: venv stack
	$(VPY) benchmarks/gateway_tier.py $(GATEWAY_TIER_RATES)

# valgrind (callgrind) from Debian's packages, when it is not there yet.
valgrind:
	@command -v valgrind >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q valgrind; }
