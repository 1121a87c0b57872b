# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs. PyTorch is pinned to the
# CPU build present on these machines: an unpinned torch would pull gigabytes of CUDA wheels.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
TORCH  := torch==2.13.0
# Reference libraries: test oracles only, installed without their declared dependencies.
ORACLES      := mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0 ultralytics==8.4.190
ORACLE_DEPS  := addict yapf termcolor rich pyyaml packaging opencv-python-headless pillow matplotlib pycocotools shapely \
                terminaltables six
PYTEST_ARGS  ?= -n 2
# Idle OpenMP threads sleep instead of spinning: on a 2-core machine spinning threads of one process
# starve the other xdist worker (and the demo's data loading).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test bench install install-dev clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(PIP) -e ".[yolo]"
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) -e ".[yolo,test]"
	$(PIP) --no-deps $(ORACLES)
	$(PIP) $(ORACLE_DEPS)
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(PY) -m detassign demo --out results/demo

# The oracles are installed here, so oracle tests must fail (not skip) if one cannot be imported.
test: $(VENV)/.dev
	DETASSIGN_REQUIRE_ORACLES=1 $(PY) -m pytest $(PYTEST_ARGS) tests

# Benchmarks run with OpenMP's default wait policy, the one a training process has: each case runs
# alone in its own process, so nothing competes for the cores.
bench: $(VENV)/.dev
	env -u OMP_WAIT_POLICY $(PY) benchmarks/run.py --out results/bench

clean:
	rm -rf $(VENV) results build src/*.egg-info
