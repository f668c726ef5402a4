# One command sets everything up from a fresh clone and runs the tests:
#   make test
# It creates .venv with the pinned versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Large fresh buffers page-fault under glibc's default malloc; huge pages make
# XLA's CPU element-wise work several times faster here (DESIGN.md).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
# Real data for the tests that need it (they skip when it is absent; set only when it exists,
# since a LNORM_DATA_DIR naming a missing directory fails them).
export LNORM_DATA_DIR ?= $(wildcard $(abspath ../shared/data))

.PHONY: setup test demo lint format bench clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

# Everything the tests need (the experiments, TensorFlow for the one tfds
# preparation test, pytest, ruff).
$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.created
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m lnorm._ffi  # Builds the C++ layer-norm kernel now (else on first use; never fails).
	touch $@

# Only what the experiments need (no TensorFlow): what `make demo` installs.
$(VENV)/.experiments: pyproject.toml constraints.txt $(VENV)/.created
	$(PY) -m pip install -q -c constraints.txt -e '.[experiments]'
	touch $@

setup: $(VENV)/.installed

# -rs: the reason of every skipped test (e.g. real data absent) is printed.
test: setup
	$(PY) -m pytest -n 2 --dist loadfile -q -rs tests

# A newcomer's main job, in a few minutes on 2 CPU cores: pMNIST with none,
# batch and layer norm at batch sizes 128 and 4 on the embedded MNIST subset,
# then the curves (runs/demo/compare.png) and the table (runs/demo/compare.md).
demo: $(VENV)/.experiments
	$(PY) scripts/sweep.py --config=configs/pmnist.py:data=embedded,epochs=5,seeds=1 --root=runs/demo
	$(PY) scripts/compare.py runs/demo/norm-* --metrics train/loss,test/error --x epoch --logy \
		--title 'pMNIST, embedded 5k subset' --out runs/demo/compare

# Speed, as ratios measured in one process (writes results/bench.md and .json; ~10 min).
bench: setup
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[bench]'
	$(PY) -m scripts.bench

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV)
