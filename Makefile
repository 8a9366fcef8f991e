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

# Every benchmark at small sizes (each prints the sizes it used; a few minutes on a
# 2-core CPU). RUNS=DIR (default: none) passes the trained runs under DIR to the
# scripts that can time one, each only when its directory exists:
#   likelihood_ode     --workdir=DIR/demo (`make demo`'s VP-SDE)
#   sampler_speed      --workdir=DIR/digits_score_sde
#   flow_likelihood    --realnvp=DIR/nsf --fm=DIR/fm --cnf=DIR/cnf
#   decode_speed       --target-workdir=DIR/lm_stdlib_long --draft-workdir=DIR/lm_draft_long (both)
#   compress_container --workdir=DIR/lm
# A script without its run times an untrained model (or an exact score) and says so;
# each run's config is read from the run itself. QUICK=1: the smallest sizes, a smoke
# run (tests/test_benchmarks.py). lm_vs_torch (needs torch), lm_profile (a
# profiler) and config_run_times (training minutes of every config) are not part of it.
RUNS ?=
QUICK ?=
# $(call run_flag,FLAG,NAME): FLAG=$(RUNS)/NAME when RUNS is set and that directory exists
run_flag = $(if $(RUNS),$(if $(wildcard $(RUNS)/$(2)/.),$(1)=$(RUNS)/$(2)))
FLOW_RUNS = $(call run_flag,--realnvp,nsf) $(call run_flag,--fm,fm) $(call run_flag,--cnf,cnf)
DECODE_RUNS = $(if $(and $(call run_flag,-,lm_stdlib_long),$(call run_flag,-,lm_draft_long)),\
	$(call run_flag,--target-workdir,lm_stdlib_long) $(call run_flag,--draft-workdir,lm_draft_long))
# $(call sizes,ARGS[,QUICK_ARGS]): ARGS, or with QUICK=1 QUICK_ARGS (default --quick)
sizes = $(if $(QUICK),$(or $(2),--quick),$(1))
ORACLE_QUICK = --quick --num 100 --samplers ddim dpm3m --discretizations logsnr

bench: $(STAMP)
	$(PY) -m benchmarks.likelihood_ode $(call run_flag,--workdir,demo) $(call sizes,--num 200 --repeats 3)
	$(PY) -m benchmarks.ensemble $(call sizes,--repeats 3)
	$(PY) -m benchmarks.sampler_speed $(call run_flag,--workdir,digits_score_sde) $(call sizes,--repeats 3)
	$(PY) -m benchmarks.flow_likelihood $(FLOW_RUNS) $(call sizes,--num 500 --repeats 3)
	$(PY) -m benchmarks.peak_flops $(call sizes,--repeats 5)
	$(PY) -m benchmarks.lm_train_speed $(call sizes,--repeats 3)
	$(PY) -m benchmarks.decode_speed $(DECODE_RUNS) $(call sizes,--repeats 3)
	$(PY) -m benchmarks.guard_overhead $(call sizes,--repeats 5)
	$(PY) -m benchmarks.compress_container $(call run_flag,--workdir,lm) $(call sizes,--repeats 3)
	$(PY) -m benchmarks.sampler_oracle $(call sizes,--quick --discretizations logsnr,$(ORACLE_QUICK))

clean:
	rm -rf runs .pytest_cache .jax_cache
