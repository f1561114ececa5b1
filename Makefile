# Two commands do all set-up on a fresh Debian machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg)
	@# an interrupted earlier setup can leave a venv without pip: start it again
	@[ -x $(BIN)/pip ] || (rm -rf $(VENV) && $(PY) -m venv $(VENV))
	$(BIN)/pip install -q --upgrade pip
	@# compat: a path entry, not an import hook. Ray puts the driver's working directory first on its workers'
	@# sys.path, and an output folder there named shards/ would otherwise shadow the package.
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $(STAMP)

demo: setup
	$(BIN)/e3d demo --workdir $${DEMO_DIR:-/tmp/e3d-demo}

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/bench_preprocess.py

clean:
	rm -rf $(VENV) build *.egg-info
