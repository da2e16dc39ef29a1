# One-command entry points. `make demo` and `make test` set everything up from scratch on a fresh machine,
# with exactly the versions of requirements/dev.lock (what CI last passed); `make lock` refreshes it.
SHELL   = /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Fetched assets (the real XLM-R tokenizer) live in the checkout, where the tests look for them.
export JINA_CLIP_ASSETS ?= $(CURDIR)/.assets

# uv installs and resolves (fast, one resolution per platform); it lives in its own folder, outside the venvs
# it manages, at the version the lock was made with.
LOCK        = requirements/dev.lock
UV_VERSION  = 0.13.9
UV_HOME     = .uv
UV          = $(UV_HOME)/bin/uv
# The extras `make setup` installs (all but `flash`, which needs CUDA, and `oracle`, see below).
EXTRAS      = train eval st onnx embed ray search dev
LOCK_INPUTS = pyproject.toml requirements/dev.in $(foreach extra,$(EXTRAS),--extra $(extra))
# uv reads no pip configuration: pass on the wheel folder pip's configuration names (where this machine keeps
# the CPU build of torch); without one, PyTorch's CPU index provides `torch==X+cpu`.
PIP_FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_SOURCES  = $(if $(strip $(PIP_FIND_LINKS)),$(foreach folder,$(PIP_FIND_LINKS),--find-links $(folder)),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
UV_INSTALL  = $(UV) pip install -q --python $(PY) $(UV_SOURCES)

# Older library versions for the compatibility tests (tests/test_compat.py, tests/test_sentence_transformers.py),
# each in its own folder that a test subprocess puts first on PYTHONPATH (--no-deps: exactly these files). Each
# set carries the `kernels` release its transformers accepts: transformers imports an installed `kernels` and
# the venv's (the newest) breaks older transformers at import.
COMPAT  = .compat
COMPAT_SETS = \
	"transformers-5.3 transformers==5.3.0 tokenizers==0.22.2 huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9 kernels==0.10.5" \
	"transformers-5.4 transformers==5.4.0 tokenizers==0.22.2 huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9 kernels==0.12.3" \
	"transformers-4.57 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 kernels==0.9.1" \
	"sentence-transformers-5.4 sentence-transformers==5.4.0" \
	"sentence-transformers-5.3 sentence-transformers==5.3.0"

# The clients people serve exports with, which tests/test_clients.py runs on exported folders: fastembed (Python,
# in a venv of its own: it needs huggingface-hub<2, the main venv has 2.x) and transformers.js (Node, `npm ci` in
# tests/js from the committed package-lock.json). --ignore-scripts: no package code runs at install; the only
# install script that matters, onnxruntime-node's, would fetch CUDA libraries from NuGet (its CPU build is in the
# npm package).
FASTEMBED_LOCK = requirements/fastembed.lock
FASTEMBED_VENV = .venv-fastembed
JS_DIR         = tests/js
NPM_FLAGS      = --ignore-scripts --no-audit --no-fund

# The libraries `make test-latest` upgrades to their newest releases, in a venv of its own (.venv-latest).
LATEST_LIBS = transformers sentence-transformers accelerate datasets peft huggingface-hub safetensors tokenizers kernels
LATEST_VENV = .venv-latest

.PHONY: setup demo test test-latest lock clean

setup: $(VENV)/.ready $(COMPAT)/.ready $(FASTEMBED_VENV)/.ready $(JS_DIR)/node_modules/.ready

$(UV):
	rm -rf $(UV_HOME)
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps --target $(UV_HOME) uv==$(UV_VERSION)

# The venv is rebuilt from nothing whenever the lock changes: `uv pip sync` makes it exactly the lock.
$(VENV)/.ready: $(LOCK) pyproject.toml jina_clip_v2/assets.py | $(UV)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(UV) pip sync -q --python $(PY) $(UV_SOURCES) $(LOCK)
	@# The lock must still satisfy pyproject.toml: resolving again under it must give exactly it. (This also
	@# puts every package's metadata in uv's cache, so the tests' fresh venvs install offline.)
	$(UV) pip compile -q --python-version 3.11 $(UV_SOURCES) $(LOCK_INPUTS) -c $(LOCK) --no-header --no-annotate -o $(VENV)/lock-check.txt
	@diff <(grep -E '^[^ #]' $(LOCK)) $(VENV)/lock-check.txt >/dev/null || { diff <(grep -E '^[^ #]' $(LOCK)) $(VENV)/lock-check.txt; \
		echo "$(LOCK) no longer matches pyproject.toml / requirements/dev.in: run \`make lock\` and commit it"; exit 1; }
	$(UV_INSTALL) --no-deps --no-build-isolation -e .
	@# timm (the EVA02 oracle of the tests) needs torchvision, whose PyPI wheel is CUDA-only and breaks
	@# `import transformers` next to a CPU torch: keep both out of the venv, in a folder the tests add.
	rm -rf .oracle && $(UV_INSTALL) --no-deps --target .oracle timm==1.0.31 torchvision==0.28.0
	$(VENV)/bin/jina-clip fetch-assets
	touch $@

$(COMPAT)/.ready: $(VENV)/.ready Makefile
	@for set in $(COMPAT_SETS); do \
		set -- $$set; folder=$$1; shift; \
		rm -rf $(COMPAT)/$$folder && $(UV_INSTALL) --no-deps --target $(COMPAT)/$$folder "$$@" || exit 1; \
	done
	touch $@

$(FASTEMBED_VENV)/.ready: $(FASTEMBED_LOCK) | $(UV)
	rm -rf $(FASTEMBED_VENV)
	$(PYTHON) -m venv --without-pip $(FASTEMBED_VENV)
	$(UV) pip sync -q --python $(FASTEMBED_VENV)/bin/python $(FASTEMBED_LOCK)
	touch $@

$(JS_DIR)/node_modules/.ready: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci $(NPM_FLAGS)
	touch $@

demo: setup
	$(VENV)/bin/jina-clip demo

test: setup
	$(PY) -m pytest -n 2 tests

# Resolve requirements/*.in (and the package's extras, for dev.lock) into exact versions. Versions already in a
# lock are kept unless a requirement moved past them; `make lock UPGRADE=1` takes the newest of everything.
lock: | $(UV)
	$(UV) pip compile -q --python-version 3.11 $(UV_SOURCES) $(if $(UPGRADE),--upgrade) $(LOCK_INPUTS) -o $(LOCK)
	$(UV) pip compile -q --python-version 3.11 $(if $(UPGRADE),--upgrade) requirements/fastembed.in -o $(FASTEMBED_LOCK)
	cd $(JS_DIR) && npm $(if $(UPGRADE),update,install) --package-lock-only $(NPM_FLAGS)

# The newest releases of the libraries we build on, in a venv of their own beside the locked one, through the
# smoke tests (tests/test_smoke.py). Not part of CI (CI must be reproducible): run it before a release and
# when upstream ships, and fix what it finds.
test-latest: setup
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(UV) pip sync -q --python $(LATEST_VENV)/bin/python $(UV_SOURCES) $(LOCK)
	$(UV) pip install -q --python $(LATEST_VENV)/bin/python $(UV_SOURCES) --refresh --upgrade $(LATEST_LIBS) torch==$$(sed -n 's/^torch==//p' $(LOCK))
	$(UV) pip install -q --python $(LATEST_VENV)/bin/python --no-deps --no-build-isolation -e .
	@echo "newest releases installed (pytest's header below names every version); not the newest, and why:"
	@$(UV) pip list --python $(LATEST_VENV)/bin/python $(UV_SOURCES) --outdated | grep -iE "^($$(echo $(LATEST_LIBS) | tr ' ' '|')) " || echo "  none of $(LATEST_LIBS)"
	$(LATEST_VENV)/bin/python -m pytest -n 2 -p no:cacheprovider tests/test_smoke.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(UV_HOME) .oracle .assets $(COMPAT) $(FASTEMBED_VENV) $(JS_DIR)/node_modules outputs
