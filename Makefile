# cutq developer entry points.
#
#   make venv    .venv with the project installed editable, plus [test] extras
#   make model   rembg's u2netp weights into $(U2NET_HOME), offline (tools/provision_model.py)
#   make deps    Debian packages some tests use (tmux, ip, nft, systemd-analyze); never fails
#   make lint    ruff, mypy (strict: shared/, broker/) and the import-layer contracts
#   make test    lint, then the whole pytest suite; PYTEST_ARGS='-k foo -x' passes arguments through
#   make bench   dispatch, image and latency benchmarks (JSON on stdout)
#   make up      a local broker and two workers
#   make clean   remove the venv, downloaded wheels, the local model dir and caches
#
# Every target sees U2NET_HOME (where rembg looks for its weights) and CUTQ_SOAK_TASKS
# (the size of the bounded soak run CI does); override either on the command line.

export U2NET_HOME ?= $(CURDIR)/.models
export CUTQ_SOAK_TASKS ?= 2000

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# tests run side by side in this many processes (pytest-xdist): most of their time is spent waiting
# on real brokers, workers and sockets, so 3 on 2 cores took the suite from 12 min to 5.5 min;
# PYTEST_JOBS=0 runs them in one process
PYTEST_JOBS ?= 3

# Debian packages (not Python ones) that some tests drive; each test skips itself when
# its tool is missing, so installing them is best effort.
DEB_PACKAGES := tmux iproute2 nftables systemd

.PHONY: venv model deps lint test bench up clean

venv: $(STAMP)

# Stamped after a successful install so reruns are instant; pyproject.toml changes
# (new dependencies) reinstall.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -e '.[test,lint]'
	touch $@

model: venv
	$(VPY) tools/provision_model.py --dest "$(U2NET_HOME)" --cache "$(CURDIR)/.cache/wheels"

# Best effort by design: without root, apt-get or a registry this prints one line and
# succeeds; the tests that need a missing tool skip themselves with a reason.
deps:
	@missing=""; \
	if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then \
		echo "deps: no apt-get/dpkg here; not installing $(DEB_PACKAGES) (tests that need them skip)"; \
		exit 0; \
	fi; \
	for p in $(DEB_PACKAGES); do \
		dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "deps: $(DEB_PACKAGES) already installed"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "deps: missing$$missing; not root, not installing (tests that need them skip)"; \
	else \
		echo "deps: installing$$missing"; \
		if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		     } >/dev/null; then \
			echo "deps: apt-get failed for$$missing; continuing (tests that need them skip)"; \
		fi; \
	fi; \
	exit 0

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: deps venv model lint
	$(VPY) -m pytest -q -n $(PYTEST_JOBS) $(PYTEST_ARGS)

bench: venv model
	$(VPY) bench/dispatch.py --tasks 20000 --workers 2 --json
	$(VPY) bench/images.py --json
	$(VPY) bench/latency.py --json
	$(VPY) bench/bytes.py --json
	$(VPY) bench/requests.py --json

up: venv model
	$(VENV)/bin/cutq up --workers 2

# Only the repository's own .models: an overridden U2NET_HOME (e.g. ~/.u2net) is left alone.
clean:
	rm -rf $(VENV) .cache .models .pytest_cache .hypothesis .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
