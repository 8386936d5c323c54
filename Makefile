# Istio Lab Kit: one entry point for learners (make lab) and for CI (make test).
# Every tool runs as `$(PY) -m ...` so the venv never needs activating.

# bash with strict flags, one shell per recipe: recipes below read like scripts.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Touched after a successful install: pyproject.toml newer than this means reinstall.
STAMP := $(VENV)/.installed
# Turns off JupyterLab's "Jupyter news" pop-up, which covers the page on first start.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
# Pinned here because it is installed --no-deps (it pins greenlet<3 without importing it).
HTTPBIN := httpbin==0.10.4

LAB_BACKEND ?= local
LAB_IP ?= 127.0.0.1
# The labs' check cells assert, so -lax still fails on any exception; cells may start meshes.
NBVAL_FLAGS ?= --nbval-lax --nbval-cell-timeout=600
LINT_PATHS := $(wildcard lablib tests bench)
# JupyterLab refuses to run as root without this flag; CI and containers run as root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help venv lab test lint format bench soak clean cluster istio cluster-down

help: ## List the targets
	@echo "Istio Lab Kit targets (variables: VENV=$(VENV) LAB_BACKEND=$(LAB_BACKEND)):"
	grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) \
	  | awk -F':.*## ' '{ printf "  make %-13s %s\n", $$1, $$2 }'

venv: $(STAMP) $(LAB_OVERRIDES) ## Create the virtualenv, or reinstall if pyproject.toml changed

$(STAMP): pyproject.toml
	@echo "==> installing the kit into $(VENV) (pyproject.toml is newer than $@)"
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(HTTPBIN)
	touch $@

$(LAB_OVERRIDES): | $(STAMP)
	@mkdir -p $(@D)
	echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}' > $@

lab: venv ## Start JupyterLab on the labs (LAB_BACKEND=local by default)
	@echo "Starting JupyterLab (LAB_BACKEND=$(LAB_BACKEND)); open the http://$(LAB_IP):... URL it prints."
	LAB_BACKEND=$(LAB_BACKEND) $(PY) -m jupyterlab --notebook-dir=labs --ip $(LAB_IP) $(ALLOW_ROOT)

lint: venv ## ruff on lablib, tests and bench; mypy on lablib
	@rc=0
	$(PY) -m ruff check $(LINT_PATHS) || rc=1
	$(PY) -m mypy lablib || rc=1
	exit $$rc

format: venv ## Fix imports and reformat lablib, tests and bench with ruff
	@$(PY) -m ruff check --select I --fix $(LINT_PATHS)
	$(PY) -m ruff format $(LINT_PATHS)

# Runs every step even after a failure so the summary shows the whole picture.
# pytest's exit code 5 means "collected no tests": not a failure while the kit grows.
test: venv ## make lint, pytest tests, then every notebook in labs/ through nbval
	@log=$$(mktemp); counts=$$(mktemp); summary=(); failed=0
	record() {  # record STEP EXIT_CODE: add one summary line, remember a failure
	  case $$2 in
	    0) summary+=("  ok       $$1") ;;
	    5) summary+=("  ok       $$1 (no tests collected)") ;;
	    *) summary+=("  FAILED   $$1 (exit $$2)"); failed=1 ;;
	  esac
	}
	pytest_step() {  # pytest_step NAME ARGS...: run pytest, keep its closing line and counts
	  local name=$$1 rc=0 closing; shift
	  echo "==> $$name"
	  $(PY) -m pytest "$$@" 2>&1 | tee "$$log" || rc=$$?
	  closing=$$(grep -E '^=+ .* in [0-9.]+s' "$$log" | tail -n 1 | tr -d '=' | xargs || true)
	  grep -oE '[0-9]+ (passed|failed|errors?|skipped)' <<< "$$closing" >> "$$counts" || true
	  record "$$name: $$closing" $$rc
	}
	total() { awk -v w="$$1" '$$2 ~ "^" w { n += $$1 } END { print n + 0 }' "$$counts"; }
	echo "==> make lint"
	rc=0; $(MAKE) --no-print-directory lint || rc=$$?; record "make lint" $$rc
	pytest_step "pytest tests" tests
	if [ -n "$$(find labs -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' 2>/dev/null)" ]
	then pytest_step "nbval labs" $(NBVAL_FLAGS) labs
	  # The exam again, with every reference fix applied: each task must then pass.
	  LAB_EXAM_SELF_TEST=1 pytest_step "nbval lab 24 (self-test)" $(NBVAL_FLAGS) \
	    labs/24_practice_exam.ipynb
	else summary+=("  skipped  nbval labs (no notebooks in labs/ yet)")
	fi
	echo; echo "== make test summary =="; printf '%s\n' "$${summary[@]}"
	echo "tests: $$(total passed) passed, $$(( $$(total failed) + $$(total error) )) failed," \
	  "$$(total skipped) skipped"
	rm -f "$$log" "$$counts"
	exit $$failed

bench: venv ## Run the benchmarks (python -m bench), which write bench/REPORT.md
	@if [ -f bench/__main__.py ]; then
	  $(PY) -m bench
	  echo "Report: bench/REPORT.md"
	else
	  echo "No benchmarks yet (bench/__main__.py is missing): nothing to run."
	fi

soak: venv ## Ten minutes of weight changes under load (not part of make test): bench/SOAK.md
	@$(PY) -m bench.soak

cluster: ## Create a kind cluster for LAB_BACKEND=kubernetes (needs docker and kind)
	@environment/create-cluster.sh

istio: ## Install Istio 1.20 (demo) and the Prometheus, Grafana, Kiali addons on the cluster
	@environment/install-istio.sh

cluster-down: ## Delete the kind cluster
	@environment/delete-cluster.sh

clean: ## Stop local meshes, remove the venv and every cache
	@if [ -x $(PY) ]; then
	  $(PY) -m lablib.cli down --all || echo "(could not stop local meshes; ignored)"
	fi
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info tests/artifacts bench/out
	find . -name .git -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) \
	  -type d -prune -exec rm -rf {} +
