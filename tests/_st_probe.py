"""What `SentenceTransformer(folder)` gives for a set of texts and image files, with any installed
sentence-transformers: run in the test process (the installed 6.x) or as a script in a subprocess whose
PYTHONPATH starts with another version (tests/test_sentence_transformers.py). Imports nothing of this
repository.

    python tests/_st_probe.py FOLDER OUT.npz INPUTS.json     (INPUTS.json: {"texts": [...], "images": [...]})
"""

from __future__ import annotations

import json
import sys

import numpy as np

# Never fetched: port 9 (discard) on the loopback interface refuses connections, so a fetch would fail loudly.
URL_TEXT = "http://127.0.0.1:9/cat.png"


def _error(call) -> str | None:
    try:
        call()
    except ValueError as err:
        return f"{type(err).__name__}: {err}"
    return None


def probe(folder: str, texts: list[str], images: list[str]) -> dict:
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    mixed = [item for pair in zip(texts, images) for item in pair]

    def encode(inputs, **kwargs):
        return st.encode(inputs, normalize_embeddings=True, batch_size=8, **kwargs)

    result = {
        "version": sentence_transformers.__version__,
        "text": encode(texts),
        "query_prompt": encode(texts, prompt_name="retrieval.query"),
        "query_task": encode(texts, task="retrieval.query"),
        "encode_query": st.encode_query(texts, normalize_embeddings=True),
        "encode_document": st.encode_document(texts, normalize_embeddings=True),
        "image_paths": encode(images),
        "image_explicit": encode([{"image": path} for path in images]),
        "mixed": encode(mixed),
        "truncated": encode(texts, truncate_dim=16),
        "url_text": encode([URL_TEXT]),
        "errors": {
            "truncate_dim_call": _error(lambda: st.encode(texts[:2], truncate_dim=10)),
            "truncate_dim_model": _error(
                lambda: SentenceTransformer(folder, trust_remote_code=True, device="cpu", truncate_dim=100).encode(texts[:2])
            ),
            "unknown_task": _error(lambda: st.encode(texts[:2], task="retrieval.passage")),
        },
    }
    return result


def main(argv: list[str]) -> int:
    folder, out, inputs = argv
    with open(inputs, encoding="utf-8") as handle:
        spec = json.load(handle)
    result = probe(folder, spec["texts"], spec["images"])
    errors = result.pop("errors")
    np.savez(out, errors=json.dumps(errors), **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
