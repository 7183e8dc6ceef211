# kdx: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the torch pair these machines keep on local disk; override for another platform
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.kdx-installed

.PHONY: install test demo bench clean help

help:
	@echo "make demo    create .venv, install kdx, run the demo on the embedded dataset (CPU)"
	@echo "make test    create .venv, install kdx with test extras, run pytest"
	@echo "make bench   run the benchmarks (throughput ratios against plain baselines)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/kdx pipeline --preset demo --out runs/demo --quiet
	@echo "report: runs/demo/study_report.md"

bench: install
	$(BIN)/python benchmarks/teacher_throughput.py
	$(BIN)/python benchmarks/explainer_throughput.py
	$(BIN)/python benchmarks/analysis_time.py
	$(BIN)/python benchmarks/vam_overhead.py
	$(BIN)/python benchmarks/vam_variant_cost.py
	$(BIN)/python benchmarks/explainer_method_step.py
	$(BIN)/python benchmarks/parallel_runs.py
	$(BIN)/python benchmarks/roofline.py
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) runs .pytest_cache
