# One-command entry points. `make demo` and `make test` set everything up from scratch on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Fetched assets (the real XLM-R tokenizer) live in the checkout, where the tests look for them.
export JINA_CLIP_ASSETS ?= $(CURDIR)/.assets

# Older library versions for the compatibility tests (tests/test_compat.py, tests/test_sentence_transformers.py),
# each in its own folder that a test subprocess puts first on PYTHONPATH (--no-deps: exactly these files).
COMPAT  = .compat
COMPAT_SETS = \
	"transformers-5.3 transformers==5.3.0 tokenizers==0.22.2 huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9" \
	"transformers-5.4 transformers==5.4.0 tokenizers==0.22.2 huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9" \
	"transformers-4.57 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2" \
	"sentence-transformers-5.4 sentence-transformers==5.4.0" \
	"sentence-transformers-5.3 sentence-transformers==5.3.0"

.PHONY: setup demo test clean

setup: $(VENV)/.ready $(COMPAT)/.ready

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

$(COMPAT)/.ready: $(VENV)/.ready Makefile
	@for set in $(COMPAT_SETS); do \
		set -- $$set; folder=$$1; shift; \
		rm -rf $(COMPAT)/$$folder && $(PIP) install -q --no-deps --target $(COMPAT)/$$folder "$$@" || exit 1; \
	done
	touch $@

demo: setup
	$(VENV)/bin/jina-clip demo

test: setup
	$(PY) -m pytest -n 2 tests

clean:
	rm -rf $(VENV) .oracle .assets $(COMPAT) outputs
