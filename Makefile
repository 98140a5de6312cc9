# The two commands that matter: `make run` (build if needed, then serve) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
MUSICREC := $(VENV)/bin/musicrec
PORT ?= 8000
ARTIFACTS_DIR ?= artifacts
SHARED_CSV := ../shared/data/spotify_tracks_114k.csv.gz
# Your own data/dataset.csv wins, then the shared 114k file; with neither, the synthetic demo catalog.
DATA_CSV ?= $(firstword $(wildcard data/dataset.csv) $(wildcard $(SHARED_CSV)))
export PORT ARTIFACTS_DIR

.PHONY: install install-dev build run test bench rebuild clean

# Running (serve, build, rebuild) needs only the package's own dependencies; the tests and the
# benchmarks add the dev extra (pytest, locust, the Kafka test broker, the OpenAPI client generator).
# The install also compiles the scoring kernel (setup.py) next to its source, so a changed kernel reinstalls.
INSTALL_INPUTS := pyproject.toml setup.py musicrec/index/_kernel.c
$(VENV)/.installed-run: $(INSTALL_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(INSTALL_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

install-dev: $(VENV)/.installed-dev

build: install
	$(MUSICREC) build --root $(ARTIFACTS_DIR) $(if $(DATA_CSV),--csv $(DATA_CSV))

run: install
	@test -e $(ARTIFACTS_DIR)/current || $(MAKE) --no-print-directory build
	$(MUSICREC) serve

test: install-dev
	$(PY) -m pytest

# The load test against its goals (benchmarks/README.md): the null service and musicrec under the same
# Locust load and rate, the `make bench` mix and the player mix, with their ratios. The 114k artefacts
# are built once into $(BENCH_ARTIFACTS); Redis, the services and Locust are started and stopped by
# benchmarks/load.py. BENCH_ARGS passes more options (e.g. BENCH_ARGS="--ceiling 1000,2000,3000").
BENCH_ARTIFACTS ?= artifacts/bench/114k
bench: install-dev
	@test -e $(BENCH_ARTIFACTS)/manifest.json || $(MUSICREC) build --out $(BENCH_ARTIFACTS) --csv $(SHARED_CSV) --quiet
	$(PY) -m benchmarks.load --artifacts $(BENCH_ARTIFACTS) $(BENCH_ARGS)

# The near-line → offline loop (README: "Retraining from listening events"): drain the Kafka topic
# into the Parquet event dataset, rebuild with those events, and switch current once the new
# version passes its check; a running service picks it up without a restart.
EVENTS_DIR ?= events
IDLE_S ?= 10
rebuild: install
	$(MUSICREC) rebuild --events $(EVENTS_DIR) --until-idle $(IDLE_S) --root $(ARTIFACTS_DIR) $(if $(DATA_CSV),--csv $(DATA_CSV))

clean:
	rm -rf $(VENV) .pytest_cache build musicrec/index/_kernel*.so
