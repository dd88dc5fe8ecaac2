# fraudscore — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install protos lint typecheck validate-deploy test test-unit test-integration test-e2e demo clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install the pinned dependencies

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==26.3"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

protos: install ## regenerate services/proto from protos/
	$(PY) scripts/gen_protos.py

lint: install ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy
	$(BIN)/mypy services training scripts

validate-deploy: install ## compose file and Kubernetes manifests against their schemas
	bash scripts/validate_deploy.sh

test: install lint typecheck validate-deploy ## the whole suite: lint, types, deploy, unit, integration, e2e
	$(BIN)/pytest tests

test-unit: install ## unit tests only
	$(BIN)/pytest tests/unit

test-integration: install ## integration tests (real broker, Redis, gRPC)
	$(BIN)/pytest tests/integration

test-e2e: install ## the whole stack
	$(BIN)/pytest tests/e2e

demo: install ## run the whole stack locally (DURATION=seconds to stop by itself)
	$(BIN)/fraudctl demo $(if $(DURATION),--duration $(DURATION),)

clean: ## remove local state
	rm -rf .fraudscore .pytest_cache .mypy_cache .ruff_cache
