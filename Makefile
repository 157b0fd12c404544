# Two commands do everything on a fresh clone: `make run` and `make test`.
# Every target sets itself up first, and set-up is idempotent.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Triton's own environment: nvidia-pytriton needs numpy<2, executorch (main venv) numpy>=2
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# Debian packages: docker-compose validates the compose file offline, chromium drives the
# browser tests, a Java runtime runs TorchServe natively, g++ compiles AOTInductor packages.
DEBIAN_PACKAGES := docker-compose chromium default-jre-headless g++
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages test-docker-packages promtool images run test lint clean fuzz docs

setup: system-packages $(STAMP) $(TRITON_STAMP)

system-packages:
	@if ! command -v docker-compose >/dev/null || ! command -v chromium >/dev/null \
	    || ! command -v java >/dev/null || ! command -v g++ >/dev/null; then \
	  echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $(DEBIAN_PACKAGES); \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3.11 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: 2.13.0 installs from a CPU wheel on disk; a looser spec
	# resolved later would pull a multi-GB CUDA build. --no-compile: Python compiles what is
	# imported, on first use, instead of every file of torch and TensorFlow at install.
	$(BIN)/pip install --quiet --no-compile torch==2.13.0
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	touch $(STAMP)

# The Triton environment: what requirements-triton.txt pins, and the kit from its sources
# without its dependencies (Triton's model code imports numpy and the framework it runs).
$(TRITON_STAMP): requirements-triton.txt pyproject.toml
	test -x $(TRITON_VENV)/bin/python || python3.11 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet --no-compile torch==2.13.0
	$(TRITON_VENV)/bin/pip install --quiet --no-compile -r requirements-triton.txt
	$(TRITON_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(TRITON_STAMP)

# The Docker tests need an engine: one that answers (a user's Docker, CI's) is used as it is.
# Where neither an engine nor dockerd is installed, the tests install Debian's docker.io and
# start its dockerd themselves (as root). Only `make test` does this, never `make setup`:
# docker.io conflicts with docker-ce. DEPLOYBENCH_NO_DOCKER=1 skips the install and the tests.
test-docker-packages:
	@if [ "$$DEPLOYBENCH_NO_DOCKER" != 1 ] && ! docker info >/dev/null 2>&1 \
	    && ! command -v dockerd >/dev/null; then \
	  echo "installing Debian's docker.io for the Docker tests"; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends docker.io; \
	fi
	@if [ "$$DEPLOYBENCH_NO_DOCKER" != 1 ] && ! command -v debootstrap >/dev/null; then \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends debootstrap; \
	fi

# promtool checks the monitoring profile's Prometheus configuration (tests/test_monitoring.py).
# Debian's prometheus package is unpacked, not installed: installing it would start a
# Prometheus daemon on this machine.
PROMTOOL := .cache/prometheus/usr/bin/promtool
promtool: $(PROMTOOL)
$(PROMTOOL):
	mkdir -p .cache/debs
	cd .cache/debs && (apt-get download prometheus 2>/dev/null \
	  || ($(SUDO) apt-get update >/dev/null && apt-get download prometheus))
	dpkg -x $$(ls .cache/debs/prometheus_*.deb | head -1) .cache/prometheus
	test -x $(PROMTOOL)

# The compose stack's images, built offline where no registry is reachable: a Debian base from
# debootstrap, the host's wheels, the kit's Dockerfiles on that base (serving/images.py).
# Needs a Docker engine that answers; the Debian base needs root (debootstrap).
images: setup
	$(BIN)/deploybench images

run: setup
	$(BIN)/deploybench run

# Two pytest workers, a test file each at a time, the longest files first (tests/conftest.py):
# much of the suite waits on servers, so two files overlap well even on two cores.
test: setup test-docker-packages promtool
	$(BIN)/ruff check .
	$(BIN)/mkdocs build --strict --site-dir .cache/site
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=40

lint: setup
	$(BIN)/ruff check .

# The docs site (mkdocs.yml, docs/) into site/, warnings as errors; nothing is fetched.
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(TRITON_VENV) artifacts runs test-artifacts .pytest_cache .cache

# The long fuzzing run of the servers' request decoders (not a test; `make test` runs a bounded
# one): 1,000 generated bodies per server and protocol, a table and fuzz-results.json.
fuzz: setup
	$(BIN)/python -m tests.fuzz_decoders --examples 1000 --out fuzz-results.json
	$(BIN)/python -m tests.fuzz_decoders --model text-bert --examples 1000 \
		--out fuzz-results-text-bert.json
