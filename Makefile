# Two commands matter: `make run` (set up, then run the full pipeline locally)
# and `make test` (set up, then run every test). Everything else is a convenience.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Use the machine's MNIST copy when there is one (CI, this workspace); otherwise
# the loader downloads and checksum-verifies it into ~/.cache/digits.
SHARED_MNIST := $(abspath ../shared/data/mnist)
ifneq ($(wildcard $(SHARED_MNIST)/train-images-idx3-ubyte.gz),)
export DIGITS_MNIST_DIR ?= $(SHARED_MNIST)
endif

.PHONY: setup lock run quick test lint pipeline grpc-stubs policy policy-setup images serve bench readme-figures study study-readme clean

setup: $(VENV)/.installed

# Installs exactly what requirements-dev.lock pins (every file checked against its
# sha256), then the project itself without touching the pinned set.
$(VENV)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

lock: setup  ## refresh requirements*.lock from pyproject.toml on purpose (review, then commit)
	UV=$(BIN)/uv scripts/lock.sh

run: setup  ## the full pipeline: CNN, XGBoost and baseline on all of MNIST, gate, deploy
	$(BIN)/digits run

quick: setup  ## a smoke run in about two minutes
	$(BIN)/digits run --quick

test: setup  ## every test; Docker and browser tests skip themselves without an engine/browser
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

pipeline: setup  ## recompile pipelines/digits_pipeline.yaml after changing the wiring
	$(BIN)/digits compile

grpc-stubs: setup  ## regenerate serving/oip/inference_pb2*.py from inference.proto (grpcio-tools, dev lock); commit them
	$(BIN)/python -m serving.oip

# checkov has pins of its own (they would pull pytest back), so it gets its own venv,
# installed from its own hash-checked lock; CI provisions it for the policy tests.
POLICY_VENV := .venv-policy
policy-setup: $(POLICY_VENV)/.installed  ## checkov in its own venv, from requirements-policy.lock

$(POLICY_VENV)/.installed: requirements-policy.lock
	$(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-policy.lock
	touch $@

policy: policy-setup  ## policy scan of every rendered overlay (checkov; skips and reasons in manifests/.checkov.yaml)
	CHECKOV=$(POLICY_VENV)/bin/checkov scripts/policy-scan.sh

images:  ## build digits-train and digits-serve with the local Docker engine
	scripts/build-images.sh

serve: setup
	$(BIN)/digits serve

# `make bench` runs both sections; `make bench WHAT=serve` or `WHAT=train` runs one.
WHAT ?= all
bench: setup  ## serving vs MLServer and in-process predict; training vs public peers
ifneq ($(filter all serve,$(WHAT)),)
	mkdir -p .digits
	$(BIN)/python bench/serving.py --json .digits/bench-serving.json
	$(BIN)/python scripts/readme_figures.py bench-serve .digits/bench-serving.json
endif
ifneq ($(filter all train,$(WHAT)),)
	mkdir -p .digits
	$(BIN)/python bench/training.py --json .digits/bench-training.json
	$(BIN)/python scripts/readme_figures.py bench-train .digits/bench-training.json
endif

readme-figures: setup  ## a full run, then its figures written into README.md
	mkdir -p .digits
	$(BIN)/digits run --json > .digits/readme-run.json
	$(BIN)/python scripts/readme_figures.py run .digits/readme-run.json

study: setup  ## the study (~90 min): every model over growing data, 3 seeds; then README Results
	$(BIN)/digits simulate --output .digits/study
	$(BIN)/python scripts/readme_figures.py study .digits/study

study-readme: setup  ## README's Results section regenerated from docs/study/results.csv
	$(BIN)/python scripts/readme_figures.py study docs/study

clean:
	rm -rf .digits .pytest_cache .ruff_cache
