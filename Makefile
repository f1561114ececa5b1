# Two commands do all set-up on a fresh Debian machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint docs-check bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg)
	@# an interrupted earlier setup can leave a venv without pip: start it again
	@[ -x $(BIN)/pip ] || (rm -rf $(VENV) && $(PY) -m venv $(VENV))
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@# setuptools' editable install is an import hook consulted after sys.path, and Ray puts the driver's working
	@# directory first on its workers' sys.path: an output folder named shards/ there would shadow the package.
	@# A plain path entry for the checkout is found first.
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "efficient3d-checkout.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	@touch $(STAMP)

demo: setup
	$(BIN)/e3d demo --workdir $${DEMO_DIR:-/tmp/e3d-demo}

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check .

# README line by line: commands parse, flags/paths/links exist, figures cite a source, local commands run
docs-check: setup
	$(BIN)/python -m pytest -q tests/test_docs.py

bench: setup
	$(BIN)/python bench/bench_preprocess.py

clean:
	rm -rf $(VENV) build *.egg-info
