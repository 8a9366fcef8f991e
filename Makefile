# The README's quick start: `make demo` and `make test` on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.main --config=configs/toy_vpsde.py --workdir=runs/demo --mode=all

# Two workers: most of the suite's time is XLA compilation, one core per worker.
test: $(STAMP)
	$(PY) -m pytest -q -n 2

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 -m ""

bench: $(STAMP)
	$(PY) -m benchmarks.likelihood_ode
	$(PY) -m benchmarks.ensemble
	$(PY) -m benchmarks.sampler_speed
	$(PY) -m benchmarks.flow_likelihood
	$(PY) -m benchmarks.peak_flops
	$(PY) -m benchmarks.lm_train_speed
	$(PY) -m benchmarks.decode_speed

clean:
	rm -rf runs .pytest_cache .jax_cache
