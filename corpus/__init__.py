"""Corpus embedding and search: `jina-clip embed` / `index` / `search` (corpus/README.md)."""
