# One-command entry points. `make demo` and `make test` set everything up from scratch on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Fetched assets (the real XLM-R tokenizer) live in the checkout, where the tests look for them.
export JINA_CLIP_ASSETS ?= $(CURDIR)/.assets

.PHONY: setup demo test clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml .ci/constraints.txt jina_clip_v2/assets.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c .ci/constraints.txt torch
	$(PIP) install -q -c .ci/constraints.txt -e ".[train,eval,dev,onnx]"
	@# timm (the EVA02 oracle of the tests) needs torchvision, whose PyPI wheel is CUDA-only and breaks
	@# `import transformers` next to a CPU torch: keep both out of the venv, in a folder the tests add.
	$(PIP) install -q --no-deps --target .oracle timm==1.0.31 torchvision==0.28.0
	$(VENV)/bin/jina-clip fetch-assets
	touch $@

demo: setup
	$(VENV)/bin/jina-clip demo

test: setup
	$(PY) -m pytest -n 2 tests

clean:
	rm -rf $(VENV) .oracle .assets outputs
