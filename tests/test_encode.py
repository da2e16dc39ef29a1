"""encode_text / encode_image: Matryoshka truncation, output types, tasks, batch invariance, every
supported image input (modes, numpy, bytes, data URIs, local paths, http URLs) and clear errors for bad
inputs. Tiny model, CPU, offline (the only URLs are on 127.0.0.1)."""

from __future__ import annotations

import base64
import functools
import io
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _tiny import ROOT
from jina_clip_v2.modeling import load_image
from jina_clip_v2.modeling.fetching_jina_clip import DEFAULT_FETCH_MAX_BYTES

IMAGES = sorted((ROOT / "data" / "tuxpaint" / "images").iterdir())
TEXTS = [
    "a frog on a leaf",
    "Ein kleiner roter Vogel sitzt auf einem Ast",
    "un pingouin",
    "猫が窓のそばで眠っている",
    "a very long caption about a chicken standing in a farmyard next to a wooden fence on a sunny afternoon",
    "x",
]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(width: int = 90, height: int = 70, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------
# 5. Matryoshka truncation, output types, tasks
# ----------------------------------------------------------------------------------------------------


def test_truncate_dim_slices_then_normalises(model):
    raw = model.encode_text(TEXTS, normalize_embeddings=False, convert_to_tensor=True)
    assert raw.shape == (len(TEXTS), 32)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-3)  # raw really is raw
    full = model.encode_text(TEXTS, convert_to_tensor=True)
    assert (full - F.normalize(raw, dim=-1)).abs().max().item() <= 1e-6
    for k in (8, 16, 32):
        truncated = model.encode_text(TEXTS, truncate_dim=k, convert_to_tensor=True)
        assert truncated.shape == (len(TEXTS), k)
        assert torch.allclose(truncated.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6)
        assert (truncated - F.normalize(raw[:, :k], dim=-1)).abs().max().item() <= 1e-6
    images = [Image.open(path) for path in IMAGES[:3]]
    raw_images = model.encode_image(images, normalize_embeddings=False, convert_to_tensor=True)
    truncated = model.encode_image(images, truncate_dim=8, convert_to_tensor=True)
    assert (truncated - F.normalize(raw_images[:, :8], dim=-1)).abs().max().item() <= 1e-6
    # Without normalisation, truncation is a plain prefix.
    assert torch.equal(model.encode_text(TEXTS, truncate_dim=16, normalize_embeddings=False, convert_to_tensor=True), raw[:, :16])


@pytest.mark.parametrize("bad", [7, 1025, 0, -8, True, 8.0, "16"])
def test_invalid_truncate_dim_lists_the_valid_ones(model, bad):
    with pytest.raises(ValueError, match=r"valid values: \[8, 16, 32\]"):
        model.encode_text("hello", truncate_dim=bad)
    with pytest.raises(ValueError, match=r"valid values: \[8, 16, 32\]"):
        model.encode_image(_photo(), truncate_dim=bad)


def test_numpy_integer_truncate_dim_is_accepted(model):
    assert model.encode_text("hello", truncate_dim=np.int64(16)).shape == (16,)


def test_config_truncate_dim_is_the_default(model):
    full = model.encode_text(TEXTS[:2], normalize_embeddings=False, convert_to_tensor=True)
    model.config.truncate_dim = 16
    try:
        text = model.encode_text(TEXTS[:2], convert_to_tensor=True)
        image = model.encode_image(_photo())
        explicit = model.encode_text(TEXTS[:2], truncate_dim=32)
    finally:
        model.config.truncate_dim = None
    assert text.shape == (2, 16) and image.shape == (16,) and explicit.shape == (2, 32)
    assert (text - F.normalize(full[:, :16], dim=-1)).abs().max().item() <= 1e-6


def test_output_types(model):
    array = model.encode_text(TEXTS[:3])
    assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == (3, 32)
    tensor = model.encode_text(TEXTS[:3], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 32)
    both = model.encode_text(TEXTS[:3], convert_to_tensor=True, convert_to_numpy=True)
    assert isinstance(both, torch.Tensor)  # convert_to_tensor wins, as in sentence-transformers
    rows = model.encode_text(TEXTS[:3], convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 3 and all(isinstance(r, torch.Tensor) and r.shape == (32,) for r in rows)
    np.testing.assert_allclose(array, tensor.numpy(), atol=0, rtol=0)
    np.testing.assert_allclose(np.stack([r.numpy() for r in rows]), array, atol=0, rtol=0)

    single = model.encode_text(TEXTS[1])
    assert isinstance(single, np.ndarray) and single.shape == (32,)
    np.testing.assert_allclose(single, array[1], atol=1e-6, rtol=0)
    assert model.encode_text(TEXTS[1], convert_to_tensor=True).shape == (32,)
    assert model.encode_text(TEXTS[1], convert_to_numpy=False).shape == (32,)
    assert model.encode_text([TEXTS[1]]).shape == (1, 32)  # a list of one stays 2-D
    image = model.encode_image(_photo())
    assert isinstance(image, np.ndarray) and image.shape == (32,) and image.dtype == np.float32
    assert model.encode_image([_photo()], convert_to_tensor=True).shape == (1, 32)
    assert model.encode_text(np.array(TEXTS[:2])).shape == (2, 32)  # a numpy array of strings is a batch


def test_task_retrieval_query_adds_the_instruction(model):
    prefix = "Represent the query for retrieving evidence documents: "
    assert model.config.task_instructions == {"retrieval.query": prefix}
    with_task = model.encode_text(TEXTS[:3], task="retrieval.query")
    prefixed = model.encode_text([prefix + text for text in TEXTS[:3]])
    plain = model.encode_text(TEXTS[:3])
    np.testing.assert_allclose(with_task, prefixed, atol=1e-6, rtol=0)
    assert np.abs(with_task - plain).max() > 1e-3
    with pytest.raises(ValueError, match=r"unknown task 'retrieval.passage'.*retrieval\.query"):
        model.encode_text("hello", task="retrieval.passage")


# ----------------------------------------------------------------------------------------------------
# 4. Batch invariance through the encode API (length sorting, padding, batch size)
# ----------------------------------------------------------------------------------------------------


def test_encode_text_does_not_depend_on_batching(model):
    together = model.encode_text(TEXTS, batch_size=32)
    for batch_size in (1, 2, 4):
        np.testing.assert_allclose(model.encode_text(TEXTS, batch_size=batch_size), together, atol=1e-5, rtol=0)
    for index, text in enumerate(TEXTS):
        np.testing.assert_allclose(model.encode_text(text), together[index], atol=1e-5, rtol=0)
    # Order is the caller's, not the length-sorted one.
    np.testing.assert_allclose(model.encode_text(TEXTS[::-1]), together[::-1], atol=1e-5, rtol=0)
    # Extra padding (every text padded to 100 tokens, > the longest) changes nothing.
    assert max(len(ids) for ids in model.processor.tokenizer(TEXTS)["input_ids"]) < 100
    np.testing.assert_allclose(
        model.encode_text(TEXTS, padding="max_length", max_length=100, batch_size=3), together, atol=1e-5, rtol=0
    )
    # max_length truncates: the longest text cut to 8 tokens is another embedding.
    assert np.abs(model.encode_text(TEXTS[4], max_length=8) - together[4]).max() > 1e-3


def test_encode_image_does_not_depend_on_batching(model):
    images = [Image.open(path) for path in IMAGES[:5]]
    together = model.encode_image(images)
    for batch_size in (1, 2, 3):
        np.testing.assert_allclose(model.encode_image(images, batch_size=batch_size), together, atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.encode_image(images[3]), together[3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.encode_image(images[::-1]), together[::-1], atol=1e-5, rtol=0)


def test_encode_restores_train_mode_and_runs_without_grad(model):
    model.train()
    try:
        out = model.encode_text("hello", convert_to_tensor=True)
        assert model.training
    finally:
        model.eval()
    assert not out.requires_grad


# ----------------------------------------------------------------------------------------------------
# 6. Bad inputs
# ----------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("bad", [[], None, (), np.array([])], ids=["empty_list", "none", "empty_tuple", "empty_array"])
def test_empty_or_none_inputs(model, bad):
    with pytest.raises(ValueError, match="must not be (empty|None)"):
        model.encode_text(bad)
    with pytest.raises(ValueError, match="must not be (empty|None)"):
        model.encode_image(bad)


@pytest.mark.parametrize("bad", [["ok", 3], [None], [b"bytes"], 5, [["nested"]]])
def test_non_string_text(model, bad):
    with pytest.raises(TypeError, match="texts must be strings; item"):
        model.encode_text(bad)


def test_bad_image_inputs_raise_clear_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        model.encode_image(str(tmp_path / "missing.png"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match="cannot decode image"):
        model.encode_image(corrupt)  # a pathlib.Path works as a path
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png(_photo())[:200])
    with pytest.raises(ValueError, match="cannot decode image"):
        model.encode_image(str(truncated))
    with pytest.raises(TypeError, match="unsupported image input of type int"):
        model.encode_image(42)
    with pytest.raises(TypeError, match="unsupported image input of type dict"):
        model.encode_image([_photo(), {"path": "x.png"}])
    with pytest.raises(ValueError, match="cannot fetch image"):
        model.encode_image(f"http://127.0.0.1:{_closed_port()}/x.png")
    with pytest.raises(ValueError, match="base64"):
        model.encode_image("data:image/png;base64,@@not base64@@")
    with pytest.raises(ValueError, match="base64-encoded"):
        model.encode_image("data:image/png,rawdata")
    with pytest.raises(ValueError, match="cannot decode image from data URI"):
        model.encode_image("data:image/png;base64," + base64.b64encode(b"not an image").decode())
    with pytest.raises(ValueError, match="empty"):
        model.encode_image(b"")
    with pytest.raises(ValueError, match="cannot decode image from raw bytes"):
        model.encode_image(b"garbage")
    with pytest.raises(ValueError, match="numpy images"):
        model.encode_image(np.zeros((4, 5, 6, 7, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8, or float"):
        model.encode_image(np.zeros((20, 20, 3), dtype=np.int32))


# ----------------------------------------------------------------------------------------------------
# 6. Supported image inputs and modes
# ----------------------------------------------------------------------------------------------------


def _modes() -> dict[str, tuple[Image.Image, tuple[int, int, int]]]:
    """Images of every mode with the RGB value expected at pixel (0, 0): PIL's own `.convert("RGB")`, as the
    release decodes (transparent pixels keep their stored colour; 16-bit values clip at 255)."""
    rgba = Image.new("RGBA", (60, 40), (10, 200, 30, 0))  # fully transparent: the stored colour stays
    rgba.putpixel((1, 0), (10, 200, 30, 255))
    la = Image.new("LA", (60, 40), (90, 255))
    grey = Image.new("L", (60, 40), 77)
    palette = Image.new("P", (60, 40), 1)
    palette.putpalette([0, 0, 0, 250, 20, 20] + [0, 0, 0] * 254)
    transparent = palette.copy()
    transparent.info["transparency"] = 1
    cmyk = Image.new("CMYK", (60, 40), (0, 0, 0, 0))  # no ink: white
    i16 = Image.new("I;16", (60, 40), 65535)
    return {
        "RGBA": (rgba, (10, 200, 30)),
        "LA": (la, (90, 90, 90)),
        "L": (grey, (77, 77, 77)),
        "P": (palette, (250, 20, 20)),
        "P_transparent": (transparent, (250, 20, 20)),
        "CMYK": (cmyk, (255, 255, 255)),
        "I;16": (i16, (255, 255, 255)),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_image_mode_becomes_rgb(model, mode):
    image, expected = _modes()[mode]
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert rgb.getpixel((0, 0)) == expected
    embedding = model.encode_image(image)
    assert embedding.shape == (32,) and np.isfinite(embedding).all()
    np.testing.assert_allclose(embedding, model.encode_image(rgb), atol=1e-6, rtol=0)
    # The same image through an encoded file keeps its mode and gives the same embedding.
    if mode != "CMYK":
        np.testing.assert_allclose(model.encode_image(_png(image)), embedding, atol=1e-6, rtol=0)


def test_alpha_is_composited_only_on_request():
    rgba = _modes()["RGBA"][0]
    assert load_image(rgba).getpixel((0, 0)) == (10, 200, 30)  # the release: the hidden colour
    on_white = load_image(rgba, alpha_background=(255, 255, 255))
    assert on_white.getpixel((0, 0)) == (255, 255, 255) and on_white.getpixel((1, 0)) == (10, 200, 30)
    assert load_image(_modes()["P_transparent"][0], alpha_background=(0, 0, 255)).getpixel((0, 0)) == (0, 0, 255)
    half = Image.new("I;16", (4, 4), 32768)
    assert load_image(half).getpixel((0, 0)) == half.convert("RGB").getpixel((0, 0))  # PIL's conversion


def test_numpy_bytes_and_data_uri_inputs_match_pil(model, tmp_path):
    photo = _photo(80, 64, seed=3)
    array = np.asarray(photo)
    expected = model.encode_image(photo)
    png = _png(photo)
    (tmp_path / "photo.png").write_bytes(png)
    same = {
        "hwc_uint8": array,
        "chw_uint8": array.transpose(2, 0, 1).copy(),
        "hwc_float": array.astype(np.float32) / 255.0,
        "chw_float64": (array.astype(np.float64) / 255.0).transpose(2, 0, 1),
        "bytes": png,
        "bytearray": bytearray(png),
        "data_uri": "data:image/png;base64," + base64.b64encode(png).decode(),
        "data_uri_line_wrapped": "data:image/png;base64," + base64.encodebytes(png).decode(),
        "path_str": str(tmp_path / "photo.png"),
        "path": tmp_path / "photo.png",
    }
    for name, value in same.items():
        assert load_image(value).mode == "RGB", name
        np.testing.assert_allclose(model.encode_image(value), expected, atol=1e-6, rtol=0, err_msg=name)
    assert np.array_equal(np.asarray(load_image(array.transpose(2, 0, 1).copy())), array)
    # A batch given as one 4-D array, and a greyscale HxW array as one image.
    np.testing.assert_allclose(model.encode_image(np.stack([array, array])), np.stack([expected, expected]), atol=1e-6, rtol=0)
    grey = np.full((50, 60), 128, dtype=np.uint8)
    assert model.encode_image(grey).shape == (32,)
    assert load_image(grey).getpixel((0, 0)) == (128, 128, 128)
    # Floats outside [0, 1] (e.g. 0..255 data in a float array) are refused, not clipped to white.
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        load_image(np.full((8, 8, 3), 2.0))


@pytest.fixture
def http_server(tmp_path):
    """A local http.server on 127.0.0.1 serving tmp_path, stopped after the test."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args, **kwargs: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_url_input(model, tmp_path, http_server, monkeypatch):
    photo = _photo(70, 90, seed=4)
    (tmp_path / "photo.png").write_bytes(_png(photo))
    expected = model.encode_image(photo)
    np.testing.assert_allclose(model.encode_image(f"{http_server}/photo.png"), expected, atol=1e-6, rtol=0)
    both = model.encode_image([f"{http_server}/photo.png", photo])
    np.testing.assert_allclose(both, np.stack([expected, expected]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cannot fetch image.*404"):
        model.encode_image(f"{http_server}/missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="sent 'text/plain', not an image"):
        model.encode_image(f"{http_server}/notes.txt")
    (tmp_path / "fake.png").write_text("not an image")  # served as image/png
    with pytest.raises(ValueError, match="cannot decode image"):
        model.encode_image(f"{http_server}/fake.png")
    # Bodies are bounded.
    model.processor.image_processor.fetch_max_bytes = 100
    try:
        with pytest.raises(ValueError, match="larger than 100 bytes"):
            model.encode_image(f"{http_server}/photo.png")
    finally:
        model.processor.image_processor.fetch_max_bytes = DEFAULT_FETCH_MAX_BYTES
