"""Shared pytest configuration: the header names the versions of the libraries the package builds on, so
every run (CI's locked set, `make test-latest`'s newest releases) says what it tested; and the shared tiny-model
fixtures (`tokenizer`, `processor`, `model`)."""

from __future__ import annotations

from importlib import metadata

import pytest

LIBRARIES = (
    "torch", "transformers", "sentence-transformers", "accelerate", "datasets", "peft", "huggingface-hub",
    "safetensors", "tokenizers", "kernels", "onnxruntime",
)


def library_versions(names=LIBRARIES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def pytest_report_header(config) -> str:
    return "libraries: " + ", ".join(f"{name} {version}" for name, version in library_versions().items())


# ----------------------------------------------------------------------------------------------------
# The shared tiny model (tests/_tiny.py): a test file asks for `tokenizer`, `processor` or `model` and gets these,
# unless it defines a fixture of that name itself (another seed or size, jina-clip-v1, a loaded folder).
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    """The small XLM-R-layout test tokenizer (1000 pieces), one per test file (a fast tokenizer keeps the settings
    of its last call, and saves them)."""
    from _tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    """`CLIPProcessor(JinaCLIPImageProcessor at 56 px, tokenizer)`, one per test file like `tokenizer`."""
    from _tiny import build_processor

    return build_processor(tokenizer)


@pytest.fixture(scope="module")
def model(processor):
    """The tiny jina-clip-v2 model (tests/_tiny.py, randomised weights, eval mode) with `processor` attached; one per
    test file, so a file may change it (attention backend, training flag) as long as its own tests agree."""
    from _tiny import tiny_model

    model = tiny_model(seed=0)
    model.processor = processor
    return model
