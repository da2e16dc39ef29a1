"""The bounded fetch of remote images: an http(s) URL's body within a total deadline and a byte cap
(`fetch_timeout`, `fetch_max_bytes` of the image processor), following at most a few redirects and only to
http(s), and only an image (or generic binary) body. `ImageLoadError`, the error of every image input that cannot
be read, is defined here so that the decoder (`processing_jina_clip.py`) and the fetch raise the same class.

This file is Hub remote code: it imports the standard library only, nothing of this repository.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import urllib.request
from typing import Any

# Remote images: the whole fetch (connect, redirects, body) ends within this many seconds...
DEFAULT_FETCH_TIMEOUT_S = 20.0
# ...and never reads more than this many bytes.
DEFAULT_FETCH_MAX_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 5
# Content types a server may send for an image body; anything else (text/html error pages, JSON) is refused.
_BINARY_TYPES = ("application/octet-stream", "binary/octet-stream", "application/binary")


class ImageLoadError(ValueError):
    """An image input that cannot be read: undecodable bytes, a failed or refused fetch, a bad array."""


def fetch_url(url: str, *, timeout: float = DEFAULT_FETCH_TIMEOUT_S, max_bytes: int = DEFAULT_FETCH_MAX_BYTES) -> bytes:
    """The body of an http(s) image URL, within `timeout` seconds in total and at most `max_bytes` bytes.

    Redirects are followed (at most MAX_REDIRECTS) only to http(s); the response must be 200 with an image (or
    generic binary) content type. Errors are `ImageLoadError`s that name the URL (and the HTTP status)."""
    if not timeout > 0 or not max_bytes > 0:
        raise ValueError(f"fetch_timeout and fetch_max_bytes must be positive; got {timeout} and {max_bytes}")
    result: dict[str, Any] = {}
    cancelled = threading.Event()
    # The fetch runs in a worker thread so that the deadline holds whatever the network does (a stalled
    # connect, a server that drips one byte a second): the caller gets its error on time, and the worker stops
    # at its next read (every socket operation is bounded by the same deadline).
    worker = threading.Thread(
        target=_fetch_into, args=(url, timeout, max_bytes, cancelled, result), daemon=True, name="jina-clip-fetch"
    )
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        cancelled.set()
        raise ImageLoadError(f"cannot fetch image {url}: no complete response within {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["data"]


def _fetch_into(url: str, timeout: float, max_bytes: int, cancelled: threading.Event, result: dict) -> None:
    try:
        result["data"] = _fetch(url, timeout, max_bytes, cancelled)
    except ImageLoadError as err:
        result["error"] = err
    except TimeoutError:  # a socket operation hit the same deadline first
        result["error"] = ImageLoadError(f"cannot fetch image {url}: no complete response within {timeout:g} s")
    except Exception as err:  # noqa: BLE001 - network errors of every kind become one clear error
        result["error"] = ImageLoadError(f"cannot fetch image {url}: {type(err).__name__}: {err}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand redirects back to `_fetch` (as HTTPErrors), which follows them only to http(s) URLs."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _fetch(url: str, timeout: float, max_bytes: int, cancelled: threading.Event) -> bytes:
    # The standard library, not requests/httpx: this file runs as Hub remote code, where transformers and its
    # own dependencies may be all that is installed. urllib also honours the usual proxy variables.
    import urllib.error

    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_NoRedirect)
    headers = {"User-Agent": "jina-clip-v2 (transformers remote code)", "Accept": "image/*"}
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = opener.open(urllib.request.Request(current, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            err.close()
            location = err.headers.get("Location") if err.code in (301, 302, 303, 307, 308) else None
            if location is None:
                raise ImageLoadError(f"cannot fetch image {url}: HTTP {err.code} {err.reason}") from None
            target = urllib.parse.urljoin(current, location)
            if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                raise ImageLoadError(f"cannot fetch image {url}: redirect to a non-http(s) URL refused ({target})") from None
            current = target
            continue
        except (urllib.error.URLError, OSError, ValueError) as err:  # refused, DNS, TLS, timeouts, bad URLs
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError):
                raise TimeoutError from None
            raise ImageLoadError(f"cannot fetch image {url}: {reason}") from None
        with response:
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind and not kind.startswith("image/") and kind not in _BINARY_TYPES:
                raise ImageLoadError(f"cannot fetch image {url}: the server sent {kind!r}, not an image")
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
                raise ImageLoadError(f"image at {url} is larger than {max_bytes} bytes ({declared.strip()} declared)")
            chunks, size = [], 0
            while True:
                if cancelled.is_set() or time.monotonic() > deadline:
                    raise ImageLoadError(f"cannot fetch image {url}: no complete response within {timeout:g} s")
                chunk = response.read1(65536)  # returns what one read brings: a slow server cannot hold us
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > max_bytes:
                    raise ImageLoadError(f"image at {url} is larger than {max_bytes} bytes")
                chunks.append(chunk)
    raise ImageLoadError(f"cannot fetch image {url}: more than {MAX_REDIRECTS} redirects")


__all__ = ["DEFAULT_FETCH_MAX_BYTES", "DEFAULT_FETCH_TIMEOUT_S", "MAX_REDIRECTS", "ImageLoadError", "fetch_url"]
