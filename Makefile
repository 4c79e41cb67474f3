# Two entry points, both creating .venv on first use:
#   make run    set up, then run the main job
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
# Default data: the shared LFW sample when it sits beside the checkout, otherwise
# scikit-learn's LFW download/cache (needs a network the first time).
DATA   ?= $(wildcard ../shared/data/lfw-sample)
DATA_FLAG = $(if $(DATA),--data $(DATA),)

.PHONY: run test venv clean
venv: $(VENV)/.installed

# torch is pinned in every pip call that may resolve it (a bare install pulls CUDA wheels).
# onnx2torch declares torchvision, which breaks beside the CPU torch build; falsify only
# needs its Conv/Gemm/... converters, so it is installed without dependencies.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 -e '.[test]'
	$(PIP) install -q --no-deps onnx2torch==1.5.15
	touch $@

run: venv
	$(VENV)/bin/falsify verify $(DATA_FLAG)

test: venv
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV)
