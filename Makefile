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
# The main job: Experiment 6.1 on a small seeded sample; N_PAIRS=200 is the full experiment.
N_PAIRS ?= 12
OUT    ?= runs/6.1-n$(N_PAIRS)

.PHONY: run test bench bench-full venv clean
venv: $(VENV)/.installed

# torch is pinned in every pip call that may resolve it (a bare install pulls CUDA wheels).
# onnx2torch declares torchvision, which breaks beside the CPU torch build; falsify only
# needs its Conv/Gemm/... converters, so it is installed without dependencies.
# facenet-pytorch (tests only: falsify's facenet against its InceptionResnetV1) declares torch
# and torchvision too; the test imports the one module file it needs, so no dependencies either.
# quantus (the Quantus comparison and its test) declares opencv-python, which clashes with the
# pinned headless OpenCV: its other dependencies come with the quantus extra, itself without any.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 -e '.[test,ray,quantus]'
	$(PIP) install -q --no-deps onnx2torch==1.5.15
	$(PIP) install -q --no-deps facenet-pytorch==2.6.0
	$(PIP) install -q --no-deps quantus==0.6.0
	touch $@

run: venv
	$(VENV)/bin/falsify run 6.1 $(DATA_FLAG) --n-pairs $(N_PAIRS) --out $(OUT)

# The report test drives headless Chromium (Debian's chromium + chromium-driver); without
# them (no root, no apt) that one test is skipped with its reason.
test: venv
	-bash tests/setup_browser.sh || echo "chromium not installed: the browser test will be skipped"
	$(VENV)/bin/python -m pytest -q

# Speed against pytorch-grad-cam, captum and shap (their install: benchmarks/README.md).
bench: venv
	$(VENV)/bin/python benchmarks/run.py --threads 1

bench-full: venv
	$(VENV)/bin/python benchmarks/run.py --full

clean:
	rm -rf $(VENV)
