# Two commands on a fresh machine: `make demo` (the phantom study through dvc repro) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: install data demo test bench clean

install: $(VENV)/.installed .dvc/plots_offline.html

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# the page template `dvc plots show` fills (.dvc/config: plots.html_template), Vega inlined so it renders offline
.dvc/plots_offline.html: $(VENV)/.installed
	$(BIN)/sonotune plots-template --out $@

# BASELINE=no: leave dvc.lock uncommitted (by default the demo's dvc.lock is committed, alone, as the baseline that
# `dvc exp show` and `dvc exp diff` compare experiments against; docs/manual.md, Comparing strategies and experiments)
BASELINE ?= yes
DEMO_IDENTITY := -c user.name=sonotune-demo -c user.email=demo@sonotune.invalid

# data/phantom, the demo's images that data.dvc versions (docs/manual.md, Data under DVC): pulled from the DVC
# remote when one is configured, else regenerated bit for bit and put in DVC's cache, so `dvc status` is clean.
# An existing data/phantom is left as it is.
data: install
	@if [ -d data/phantom ]; then echo "data/phantom: present (dvc status data.dvc compares it with data.dvc)"; \
	elif [ -n "$$(dvc remote list)" ] && dvc pull -q data.dvc; then echo "data/phantom: pulled from the DVC remote"; \
	else sonotune phantom --dataset phantom && dvc commit -q -f data.dvc && \
	  if git diff --quiet -- data.dvc; then echo "data/phantom: regenerated, the set data.dvc records, now in DVC's cache"; \
	  else echo "data/phantom: regenerated, but its hash differs from data.dvc's (git diff data.dvc)" >&2; fi; fi

demo: data
	@set -o pipefail; dvc repro 2>&1 | tee $(VENV)/demo.log
	@grep -q "Running stage 'report'" $(VENV)/demo.log || cat reports/summary.md
	@if [ "$(BASELINE)" = yes ] && [ -n "$$(git status --porcelain -- dvc.lock)" ]; then \
	  git add dvc.lock && git $$(git config user.email >/dev/null || echo '$(DEMO_IDENTITY)') commit -q \
	    -m "demo baseline: dvc.lock of make demo" -- dvc.lock && \
	  echo "committed dvc.lock as the baseline of dvc exp show / dvc exp diff (make demo BASELINE=no: not)"; fi

test: install
	$(BIN)/pytest -q -ra

# naive / cached / batched k-fold study, ratios, where the time goes, the paper's grid projected on this machine
# (docs/benchmarks.md); BENCH_ARGS=--help for the knobs
bench: install
	PYTHONPATH=src $(BIN)/python benchmarks/bench_cache.py $(BENCH_ARGS)

clean:
	rm -rf prepared runs reports mlruns/mlflow.db mlruns/artifacts
