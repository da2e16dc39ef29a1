"""Shared pytest configuration: the header names the versions of the libraries the package builds on, so
every run (CI's locked set, `make test-latest`'s newest releases) says what it tested."""

from __future__ import annotations

from importlib import metadata

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
