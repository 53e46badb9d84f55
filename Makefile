# Two entry points for a fresh machine: `make demo` and `make test`.
# Each one creates the virtualenv, installs the system packages it needs
# (when run as root) and the Python packages, then runs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# torch first, pinned to the CPU wheel: an unpinned torch pulls a CUDA build.
TORCH  := torch==2.13.0 torchvision==0.28.0

PYTEST_ARGS ?=
# Tests run in one process per core (pytest-xdist); a file's tests stay in one process,
# so its module fixtures (a compiled kernel, a simulated run) are made once.
JOBS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(JOBS) --dist loadfile

.PHONY: demo test test-slow lint setup sysdeps clean

demo: setup
	$(BIN)/velcro demo

test: setup
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow and not vivado and not board" $(PYTEST_ARGS)

test-slow: setup
	$(PYTEST) -m "slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

setup: sysdeps $(STAMP)

sysdeps:
	@sh .ci/sysdeps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	# PYNQ 3.0.1 without its dependencies: the tests run its kernel.xml parser, which
	# needs none of them, and pynqutils would pin numpy below 2.
	$(BIN)/pip install --quiet --no-deps pynq==3.0.1
	touch $@

clean:
	rm -rf $(VENV) build sim_build demo .pytest_cache
