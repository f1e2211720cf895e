# Set-up is part of every target: the first run creates .venv and installs samplebench with its dependencies
# (the PyPI torch + torchvision builds, which run on CPU); later runs reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench app clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# torchvision must match torch (a CPU-only torch wheel without a matching torchvision fails here)
	$(PY) -c "import torch, torchvision.ops; torchvision.ops.nms; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sample --solver dpmpp-2m --nfe 10 --num 64 --out samples/demo --overwrite
	@echo "images, grid.png and summary.json are in samples/demo"

# The app's browser test drives Debian's chromium with Playwright (apt-get, as root or through sudo).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive sh -c \
	  'apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null'

test: $(STAMP) $(CHROMIUM)
	SAMPLEBENCH_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q

app: $(STAMP)
	$(VENV)/bin/samplebench app

bench: $(STAMP)
	$(PY) bench/solver_overhead.py
	$(PY) bench/eval_harness.py

clean:
	rm -rf $(VENV) samples
