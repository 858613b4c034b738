# make train: install (once) and run the default job on this CPU box.
# make test:  install (once) and run the test suite (what CI runs): tests/unit, then
#             tests/integration, then tests/e2e (docs/testing.md). make test-unit: the first, in about 100 s.
VENV ?= .venv
STAMP := $(VENV)/.rlvr-installed
ARGS ?=
PYTEST_ARGS ?=
export RLVR_CACHE ?= $(HOME)/.cache/rlvr
export TORCH_EXTENSIONS_DIR ?= $(RLVR_CACHE)/torch_extensions

.PHONY: install train test test-unit bench gpu-bundle clean

install: $(STAMP)

$(STAMP): requirements/cpu.txt scripts/install.sh pyproject.toml
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/rlvr train $(ARGS)

# the unit tier spreads over the cores (pytest-xdist); the Ray tiers run in two pytest workers, a
# test file at a time, each with its own Ray (one alone leaves half of a 2-core box idle: actors wait)
test: test-unit
	$(VENV)/bin/python -m pytest -q -ra --durations=25 -n 2 --dist loadfile tests/integration tests/e2e $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra -n auto --maxprocesses=4 tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.experiments.baseline_mse
	$(VENV)/bin/python -m benchmarks.micro.verifier_throughput
	$(VENV)/bin/python -m benchmarks.profiles.step_breakdown
	$(VENV)/bin/python -m benchmarks.micro.weight_sync

# what the device machine lacks for benchmarks/profiles/gpu_check.py (it has torch and transformers): omegaconf,
# and SmolLM2-135M's config and tokenizer (no weights); carried there as .gpu_bundle (docs/benchmarks.md)
gpu-bundle: $(STAMP)
	$(VENV)/bin/python -m pip install -q --no-deps --target .gpu_bundle/site omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
	$(VENV)/bin/python -m benchmarks.profiles.gpu_check --write-bundle .gpu_bundle

clean:
	rm -rf $(VENV) runs benchmarks/out .gpu_bundle
