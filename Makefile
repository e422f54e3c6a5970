# otel-budget developer entry points. See docs/stack.md for the local service stack.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STACK   := $(PYTHON) stack/stack.py
PYTEST_ARGS ?=

.PHONY: help venv stack stack-down stack-status stack-build validate-config test demo bench bench-instructions valgrind

help:
	@echo "make venv            .venv with otel-budget[all,dev] (re-run when pyproject.toml changes)"
	@echo "make stack           start PostgreSQL, Redis, FerretDB, Jaeger, collector, Prometheus (idempotent)"
	@echo "make stack-status    table of the services"
	@echo "make stack-down      stop what 'make stack' started"
	@echo "make stack-build     install packages / build binaries only"
	@echo "make validate-config check collector-config/config.yaml (and the Prometheus config)"
	@echo "make test            stack + venv, then pytest"
	@echo "make demo            stack + venv, then examples/demo.py"
	@echo "make bench           venv + stack, then benchmarks/run.py and bench-instructions"
	@echo "make bench-instructions  instructions per scope under callgrind, ratios to plain OTel (~10 min)"

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -e ".[all,dev]"
	touch $@

stack:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

stack-build:
	$(STACK) build

validate-config:
	$(STACK) validate-config

# pytest exit code 5 ("no tests collected") is a failure here, not a pass.
test: stack venv
	@rc=0; $(VPY) -m pytest tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests - failing" >&2; exit 1; fi; \
	exit $$rc

demo: stack venv
	$(VPY) examples/demo.py

bench: venv stack valgrind
	$(VPY) benchmarks/run.py
	$(VPY) benchmarks/instructions.py --compare

# Instruction counts (noise-free): each configuration at two sizes under callgrind, the difference per scope.
bench-instructions: venv valgrind
	$(VPY) benchmarks/instructions.py --compare

# valgrind (callgrind) from Debian's packages, when it is not there yet.
valgrind:
	@command -v valgrind >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q valgrind; }
