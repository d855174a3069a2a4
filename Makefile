# modelops developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
STATE_DIR ?= .devcluster
# Targets that may build the devcluster get a Go >= 1.26 on PATH (fetched from the Go module proxy when missing).
WITH_GO = PATH="$$(hack/install-go.sh):$$PATH"

.DEFAULT_GOAL := help
.PHONY: help install lint test unit cluster-test demo devcluster-up devcluster-down devcluster-status tools-gomod clean crd run bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(BIN)/modelops: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/modelops ## create .venv and install modelops with its test tools

# pytest exits 5 when it collected nothing: for us that is a broken suite, not a pass.
define run_pytest
	$(2) $(BIN)/python -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests ($(1))" >&2; exit 1; fi; exit $$rc
endef

# The demo test runs its own operator, so it gets a pytest session of its own, after the one whose
# session-wide operator watches every namespace.
test: install lint ## lint, then the whole suite: unit tests and tests on the devcluster (starts it if needed)
	$(call run_pytest,tests -m "not demo",$(WITH_GO))
	$(call run_pytest,tests -m demo,$(WITH_GO))

lint: install ## unused or undefined names, syntax errors (ruff)
	$(BIN)/ruff check operator tests bench

unit: install ## only the tests that need no cluster
	$(call run_pytest,tests -m "not cluster")

cluster-test: install ## only the tests on the devcluster
	$(call run_pytest,tests -m "cluster and not demo",$(WITH_GO))
	$(call run_pytest,tests -m demo,$(WITH_GO))

demo: install ## the whole loop live on the devcluster (DEMO_ARGS=--keep leaves it running)
	$(WITH_GO) $(BIN)/modelops demo --state-dir $(STATE_DIR) $(DEMO_ARGS)

devcluster-up: install ## build (first time) and start the devcluster
	$(WITH_GO) $(BIN)/modelops devcluster up --state-dir $(STATE_DIR)

devcluster-down: install ## stop the devcluster and remove its state
	$(BIN)/modelops devcluster down --state-dir $(STATE_DIR)

devcluster-status: install ## health of each devcluster component
	$(BIN)/modelops devcluster status --state-dir $(STATE_DIR)

tools-gomod: ## regenerate hack/tools/go.mod and go.sum from the pinned versions
	hack/gen-tools-gomod.sh

clean: ## remove the venv and caches in the tree (not the binary cache in ~/.cache/modelops)
	rm -rf $(VENV) .pytest_cache build dist operator/*.egg-info

crd: install ## regenerate crds/ and docs/api-reference.md from the API models
	$(BIN)/modelops crd --output-dir crds
	$(BIN)/python -m modelops.api.reference > docs/api-reference.md

run: install ## run the operator against $$KUBECONFIG (all namespaces)
	$(BIN)/modelops run --all-namespaces

bench: install ## benchmarks (devcluster, real Prometheus, real servers); results in bench/results/
	$(WITH_GO) $(BIN)/python -m bench.analysis_queries --state-dir $(STATE_DIR)
	$(WITH_GO) $(BIN)/python -m bench.serving $(if $(MLSERVER_BIN),--mlserver-bin $(MLSERVER_BIN))
	$(WITH_GO) $(BIN)/python -m bench.rollback --state-dir $(STATE_DIR)
	$(WITH_GO) $(BIN)/python -m bench.controlplane --state-dir $(STATE_DIR)
	$(BIN)/python -m bench.churn
