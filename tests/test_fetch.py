"""Remote images are fetched with a total deadline, a byte cap, http(s) only and a content-type check, from
every entry point (the one decoder); each failure is an error naming the URL and what went wrong. A local
server on 127.0.0.1 plays the bad servers: one that stalls, one that drips a byte at a time, an endless
body, 404, an HTML page, redirects to file:// and in a loop."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from _http import PNG, server  # noqa: F401 - server is a fixture
from jina_clip_v2.modeling.processing_jina_clip import ImageLoadError, JinaCLIPImageProcessor, load_image

DEADLINE = 1.5  # seconds: the tests check the deadline holds, so keep it short


def _load(url, **kwargs):
    return load_image(url, fetch_timeout=kwargs.pop("fetch_timeout", DEADLINE), **kwargs)


def test_good_urls_decode_like_the_file(server):
    expected = np.asarray(Image.open(io.BytesIO(PNG)).convert("RGB"))
    for url in (f"{server}/ok.png", f"{server}/octet", f"{server}/to-ok", f"HTTP://{server[len('http://'):]}/ok.png"):
        assert np.array_equal(np.asarray(_load(url)), expected), url


@pytest.mark.parametrize(
    "path, message",
    [
        ("/stall-headers", r"no complete response within 1\.5 s"),
        ("/stall-body", r"no complete response within 1\.5 s"),
        ("/drip", r"no complete response within 1\.5 s"),
        ("/missing.png", r"HTTP 404"),
        ("/page", r"sent 'text/html', not an image"),
        ("/to-file", r"redirect to a non-http\(s\) URL refused \(file:///etc/passwd\)"),
        ("/to-ftp", r"redirect to a non-http\(s\) URL refused"),
        ("/loop", r"more than 5 redirects"),
        ("/huge-declared", r"larger than 1000 bytes \(1000000000000 declared\)"),
        ("/endless", r"larger than 1000 bytes"),
        ("/garbage", r"cannot decode image from http"),
        ("/error", r"HTTP 500"),
    ],
)
def test_bad_servers_give_a_named_error_within_the_deadline(server, path, message):
    url = f"{server}{path}"
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match=message) as info:
        _load(url, fetch_max_bytes=1000)
    elapsed = time.monotonic() - started
    assert url in str(info.value)
    assert elapsed < DEADLINE + 1.0, f"{path}: {elapsed:.2f} s"


@pytest.mark.parametrize(
    "value, error, message",
    [
        ("file:///etc/passwd", ImageLoadError, "unsupported URL scheme 'file'"),
        ("ftp://127.0.0.1/x.png", ImageLoadError, "only http"),
        ("data:text/plain;base64,aGVsbG8=", ImageLoadError, "not an image \\(media type 'text/plain'\\)"),
        ("data:,hello", ImageLoadError, "media type 'missing'"),
        ("http://", ImageLoadError, "cannot fetch image"),
        ("https://[::1", ImageLoadError, "cannot fetch image"),
    ],
)
def test_refused_urls(value, error, message):
    with pytest.raises(error, match=message):
        _load(value)


def test_the_limits_are_settings_of_the_image_processor(server, tmp_path):
    processor = JinaCLIPImageProcessor(fetch_timeout=DEADLINE, fetch_max_bytes=10)
    assert len(PNG) > 10
    with pytest.raises(ImageLoadError, match="larger than 10 bytes"):
        processor(images=f"{server}/ok.png")
    processor.save_pretrained(tmp_path)
    loaded = JinaCLIPImageProcessor.from_pretrained(tmp_path)
    assert (loaded.fetch_timeout, loaded.fetch_max_bytes) == (DEADLINE, 10)
    loaded.fetch_max_bytes = 10**6
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match="within 1.5 s"):
        loaded(images=f"{server}/drip")
    assert time.monotonic() - started < DEADLINE + 1.0
    with pytest.raises(ValueError, match="must be positive"):
        load_image(f"{server}/ok.png", fetch_timeout=0)
