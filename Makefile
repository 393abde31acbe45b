PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install kube caddy run test test-dialects fuzz lint typecheck bench clean

SERVE_STAMP := $(VENV)/.installed-serve
# uv installs the same packages as pip (same index, same resolution: checked with pip freeze) in
# 18 s from a fresh clone (5 s once uv's cache is warm) instead of pip's 53 s, most of which was
# building the four editable packages each in an isolated environment of its own.
# --compile-bytecode: pip compiles what it installs, uv does not unless asked; without it every
# Python process would compile its imports from source again (see PYTHONDONTWRITEBYTECODE below).
UV := $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode

# Python's own default, restored: this machine's environment sets PYTHONDONTWRITEBYTECODE=1, under
# which no process keeps the bytecode of ctrlplane's modules and pytest rewrites every test
# module again in each of its processes. The suite starts hundreds of Python processes (xdist
# workers, CLI calls, servers): collecting the tests took 10.5 s of CPU per process with it set,
# 4.6 s without; a CLI's imports 0.25 s more. The caches go to __pycache__ (ignored by git).
unexport PYTHONDONTWRITEBYTECODE

install: $(STAMP)

# What serving needs (make run): ctrlplane and its provider plugins, without the test and
# development tools, which make install (and so make test) adds.
$(SERVE_STAMP): pyproject.toml providers/docker/pyproject.toml providers/kubernetes/pyproject.toml providers/nodes/pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "ctrlplane needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(UV) -e . -e providers/docker -e providers/kubernetes -e providers/nodes
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP)
	$(UV) -e '.[test,dev]' -e providers/docker -e providers/kubernetes -e providers/nodes
	touch $(STAMP)

# The real Kubernetes control plane of the Kubernetes tests: built once per machine (outside the
# clone), reused after; see docs/kubernetes.md.
kube:
	bash tools/kube/build.sh

# Caddy 2.11.9 for the test of bytes_read (Debian's 2.6.2, the tests' router, logs none): built once per
# machine from the Go module proxy (outside the clone), reused after; docs/network.md "Which Caddy".
caddy:
	bash tools/caddy/build.sh

run: $(SERVE_STAMP)
	$(BIN)/ctrlplane serve

# Four workers on two cores: most tests wait on real processes (servers, containers, the Kubernetes
# control plane), so four keep both cores busy; measured 894 s with two, 723 s with four.
test: install kube caddy
	$(BIN)/pytest -q -n 4 --dist worksteal --durations=30

test-dialects: install
	$(BIN)/pytest -q -n 2 --dist worksteal -m dialects

fuzz: install
	CTRLPLANE_TEST_FUZZ_EXAMPLES=200 CTRLPLANE_TEST_FUZZ_SECONDS=600 $(BIN)/pytest -q -n 2 tests/api/test_fuzz.py

lint: install
	$(BIN)/ruff check ctrlplane providers tests migrations
	$(BIN)/ruff format --check ctrlplane providers tests migrations

typecheck: install
	$(BIN)/mypy ctrlplane

bench: install
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
