"""Sentence-Transformers on an exported folder, with 6.x (installed) and 5.4 (the oldest that can serve a
multimodal processor, in a subprocess with .compat/sentence-transformers-5.4 first on PYTHONPATH):
`SentenceTransformer(folder).encode(x, normalize_embeddings=True)` equals `encode_text` / `encode_image` for
the tokenizer test's strings and the image table's files, `task="retrieval.query"` applies the query
prompt, an untrained `truncate_dim` is refused as `encode_text` refuses it, and a text that looks like an
image URL stays a text. 5.3 refuses with an error naming the version. In this process: which strings are
fetched (a local http server records every request) and that fetches go through the bounded fetch."""

from __future__ import annotations

import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _compat import compat_folder, run_with
from _inputs import STRINGS, write_image_files
from _st_probe import URL_TEXT, probe

pytest.importorskip("sentence_transformers")

ATOL = 1e-5
# The tokenizer strings, without the 50k-character one (encoded six times per version: the 512-token
# truncation of long texts is covered by tests/test_hub.py).
TEXTS = [text for text in STRINGS if len(text) < 1000]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from _notebook_model import export_tiny_model

    return export_tiny_model(tmp_path_factory.mktemp("st") / "tiny")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return [str(path) for path in write_image_files(tmp_path_factory.mktemp("st_images")).values()]


@pytest.fixture(scope="module")
def model(exported):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(exported), trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def expected(model, images) -> dict:
    """What the same folder gives through encode_text / encode_image."""
    text, image = model.encode_text(TEXTS), model.encode_image(images)
    query = model.encode_text(TEXTS, task="retrieval.query")
    return {
        "text": text,
        "query_prompt": query,
        "query_task": query,
        "encode_query": query,
        "encode_document": text,
        "image_paths": image,
        "image_explicit": image,
        "mixed": np.stack([row for pair in zip(text, image) for row in pair]),
        "truncated": model.encode_text(TEXTS, truncate_dim=16),
        "url_text": model.encode_text([URL_TEXT]),
    }


@pytest.fixture(scope="module")
def probes(exported, images, tmp_path_factory) -> dict[str, dict]:
    """version -> probe results: the installed Sentence-Transformers in this process, 5.4 in a subprocess."""
    installed = probe(str(exported), TEXTS, images)
    work = tmp_path_factory.mktemp("st_probe")
    spec = work / "inputs.json"
    spec.write_text(json.dumps({"texts": TEXTS, "images": images}), encoding="utf-8")
    script = Path(__file__).with_name("_st_probe.py").read_text(encoding="utf-8")
    out = work / "st54.npz"
    done = run_with(compat_folder("sentence-transformers-5.4"), script, str(exported), str(out), str(spec), home=work / "home")
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(out) as data:
        old = {key: data[key] for key in data.files}
    old["version"] = str(old["version"])
    old["errors"] = json.loads(str(old["errors"]))
    return {"installed": installed, "5.4": old}


@pytest.mark.parametrize("which", ["installed", "5.4"])
def test_sentence_transformers_equals_encode_text_and_encode_image(probes, expected, which):
    result = probes[which]
    assert result["version"].startswith("6." if which == "installed" else "5.4")
    for name, want in expected.items():
        got = np.asarray(result[name])
        assert got.shape == want.shape, name
        diff = float(np.abs(got - want).max())
        assert diff <= ATOL, f"{name}: differs by {diff:.2e} under sentence-transformers {result['version']}"


@pytest.mark.parametrize("which", ["installed", "5.4"])
def test_untrained_truncate_dim_and_unknown_task_are_refused(probes, model, which):
    errors = probes[which]["errors"]
    with pytest.raises(ValueError) as refused:
        model.encode_text(TEXTS[:2], truncate_dim=10)
    assert errors["truncate_dim_call"] == f"ValueError: {refused.value}"
    assert errors["truncate_dim_model"] == "ValueError: truncate_dim=100 is not supported; valid values: [8, 16, 32]"
    assert errors["unknown_task"].startswith("ValueError: unknown task 'retrieval.passage'; valid tasks: ['retrieval.query'] (and None)")


def test_sentence_transformers_5_3_says_which_version_to_install(exported, tmp_path):
    script = """
    import sys
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    assert sentence_transformers.__version__ == "5.3.0", sentence_transformers.__version__
    try:
        SentenceTransformer(sys.argv[1], trust_remote_code=True, device="cpu")
    except ImportError as err:
        print("ImportError:", err)
    """
    done = run_with(compat_folder("sentence-transformers-5.3"), script, str(exported), home=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ImportError:" in done.stdout and "sentence-transformers>=5.4" in done.stdout, done.stdout


# ----------------------------------------------------------------------------------------------------
# Which strings are fetched, and how
# ----------------------------------------------------------------------------------------------------


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def server():
    """An http server on 127.0.0.1 that records every path requested: /cat.png and /photo?id=1 are PNGs,
    /page.png is an HTML page."""
    body = _png()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            requests.append(self.path)
            kind, data = ("text/html", b"<html>not an image</html>") if self.path == "/page.png" else ("image/png", body)
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests, body
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def st(exported):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")


def test_a_text_that_looks_like_an_image_url_is_never_fetched(st, model, server):
    base, requests, _ = server
    url = f"{base}/cat.png"
    embedding = st.encode([url, "a dog"], normalize_embeddings=True)
    assert requests == []  # nothing was fetched
    np.testing.assert_allclose(embedding, model.encode_text([url, "a dog"]), atol=ATOL)
    # ... also under a query prompt, and in a batch that holds an image
    st.encode([url], prompt_name="retrieval.query")
    mixed = st.encode([url, Image.open(io.BytesIO(server[2]))], normalize_embeddings=True)
    assert requests == []
    np.testing.assert_allclose(mixed[0], model.encode_text(url), atol=ATOL)


def test_explicit_image_urls_and_the_opt_in_are_fetched_through_the_bounded_fetch(st, model, server):
    base, requests, body = server
    image = model.encode_image(Image.open(io.BytesIO(body)))
    # Asked for explicitly: fetched, even without an image extension.
    got = st.encode([{"image": f"{base}/cat.png"}, {"image": f"{base}/photo?id=1"}], normalize_embeddings=True)
    assert sorted(requests) == ["/cat.png", "/photo?id=1"]  # (Sentence-Transformers orders by length)
    np.testing.assert_allclose(got, np.stack([image, image]), atol=ATOL)
    # Opted in on the module: plain URL strings are images again.
    st[0].fetch_image_urls = True
    np.testing.assert_allclose(st.encode(f"{base}/cat.png", normalize_embeddings=True), image, atol=ATOL)
    assert requests[-1] == "/cat.png"
    # The fetch is the image processor's bounded one: its content-type check and byte cap apply.
    with pytest.raises(ValueError, match="not an image"):
        st.encode([{"image": f"{base}/page.png"}])
    st[0].processor.image_processor.fetch_max_bytes = 100
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        st.encode([{"image": f"{base}/cat.png"}])
