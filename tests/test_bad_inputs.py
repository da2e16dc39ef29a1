"""The bad-input battery: one table of what users and attackers hand the package, across every entry point
(encode_text, encode_image, the features API, Sentence-Transformers, loading, convert, export, push, the
training config, training data, evaluation). Each case asserts either a clear error (its type, and a message
that names the problem) or a correct result (finite, and the same whether the item is encoded alone or in a
batch). URL cases use the local bad servers of tests/_http.py, under a short deadline.

Adding a case: append a `Case` to the table of its category; `run(ctx)` gets the shared fixtures."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from _http import PNG, server  # noqa: F401 - server is a fixture
from _release_fixture import write_release_snapshot
from _tiny import build_processor, build_tokenizer, tiny_config, tiny_model
from jina_clip_v2._config import ConfigError
from jina_clip_v2.modeling import JinaCLIPModel

# The exported folder's processor is its remote code (transformers_modules.*), so the error classes of that copy
# are other class objects than this package's: image errors are matched by class name (a ValueError subclass).
ImageLoadError = "ImageLoadError"

DEADLINE = 1.5  # seconds: the fetch deadline of the URL cases
OK = None  # `error` of a case whose result is checked by `check` instead


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Any], Any]
    error: type[BaseException] | tuple[type[BaseException], ...] | str | None = OK  # str: a ValueError's class name
    match: str = ""
    check: Callable[[Any, Any], None] | None = None  # (ctx, result) -> asserts, for the correct-result cases


class Ctx:
    """Shared inputs: a tiny model with its processor, an exported folder, a scratch folder, the URL server."""

    def __init__(self, model, exported: Path, tmp: Path, server_url: str):
        self.model, self.exported, self.tmp, self.url = model, exported, tmp, server_url
        self._count = 0

    def file(self, data: bytes, suffix: str = ".png") -> str:
        self._count += 1
        path = self.tmp / f"file{self._count}{suffix}"
        path.write_bytes(data)
        return str(path)

    def copy_export(self) -> Path:
        """A fresh copy of the exported folder, to damage."""
        self._count += 1
        out = self.tmp / f"export{self._count}"
        shutil.copytree(self.exported, out)
        return out

    def weights(self, folder: Path) -> Path:
        return next(folder.glob("*.safetensors"))


def finite(_ctx, result) -> None:
    assert np.isfinite(np.asarray(result)).all()


def alone_equals_batch(texts_or_images, encode: str) -> Callable:
    """A correct-result check: every item's embedding in the batch equals its embedding alone."""

    def check(ctx, result) -> None:
        finite(ctx, result)
        function = getattr(ctx.model, encode)
        for index, item in enumerate(texts_or_images):
            np.testing.assert_allclose(result[index], function([item])[0], atol=1e-5, err_msg=f"item {index}")

    return check


def _noisy_png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# encode_text
# ----------------------------------------------------------------------------------------------------------

ODD_TEXTS = ["", " ", "\t\n", "a " * 2000, "😀🙃", "مرحبا بالعالم", "日本語のテキスト", "\u200b\u200d", "x\x00y", "http://127.0.0.1:9/cat.png"]

ENCODE_TEXT = [
    Case("text-none-item", lambda c: c.model.encode_text(["a", None]), TypeError, r"item 1 is NoneType"),
    Case("text-bytes", lambda c: c.model.encode_text([b"bytes"]), TypeError, r"must be strings; item 0 is bytes"),
    Case("text-nested-list", lambda c: c.model.encode_text([["a"]]), TypeError, r"item 0 is list"),
    Case("text-int", lambda c: c.model.encode_text(3), TypeError, r"item 0 is int"),
    Case("text-empty-list", lambda c: c.model.encode_text([]), ValueError, r"texts must not be empty"),
    Case("text-lone-surrogate", lambda c: c.model.encode_text(["a\ud800b"]), ValueError, r"text 0 is not valid Unicode"),
    Case("text-batch-size-0", lambda c: c.model.encode_text(["a"], batch_size=0), ValueError, r"batch_size must be >= 1, got 0"),
    Case("text-batch-size-float", lambda c: c.model.encode_text(["a"], batch_size=1.5), TypeError, r"batch_size must be an int"),
    Case("text-batch-size-str", lambda c: c.model.encode_text(["a"], batch_size="8"), TypeError, r"batch_size must be an int"),
    Case("text-batch-size-bool", lambda c: c.model.encode_text(["a"], batch_size=True), TypeError, r"got True \(bool\)"),
    Case("text-max-length-0", lambda c: c.model.encode_text(["a"], max_length=0), ValueError, r"max_length must be >= 1, got 0"),
    Case("text-max-length-negative", lambda c: c.model.encode_text(["a"], max_length=-3), ValueError, r"max_length must be >= 1"),
    Case("text-token-budget-0", lambda c: c.model.encode_text(["a"], max_tokens_per_batch=0), ValueError, r"max_tokens_per_batch"),
    Case("text-truncate-dim-0", lambda c: c.model.encode_text(["a"], truncate_dim=0), ValueError, r"truncate_dim=0 is not supported"),
    Case("text-truncate-dim-untrained", lambda c: c.model.encode_text(["a"], truncate_dim=7), ValueError, r"valid values"),
    Case("text-truncate-dim-too-wide", lambda c: c.model.encode_text(["a"], truncate_dim=10**5), ValueError, r"not supported"),
    Case("text-unknown-task", lambda c: c.model.encode_text(["a"], task="retrieval.nope"), ValueError, r"unknown task 'retrieval.nope'"),
    Case(
        "text-no-token-at-all",
        lambda c: c.model.encode_text([""], add_special_tokens=False),
        ValueError,
        r"text\(s\) \[0\] give no token",
    ),
    Case("text-adapter-mask-of-old-releases", lambda c: c.model.encode_text(["a"], adapter_mask=[0]), TypeError, r"no longer takes adapter_mask"),
    Case("text-misspelled-argument", lambda c: c.model.encode_text(["a"], normalise_embeddings=False), TypeError, r"unexpected keyword argument\(s\) \['normalise_embeddings'\]"),
    Case("text-odd-strings-batch-invariant", lambda c: c.model.encode_text(ODD_TEXTS), check=alone_equals_batch(ODD_TEXTS, "encode_text")),
    Case(
        "text-long-is-truncated",
        lambda c: c.model.encode_text(["word " * 5000, "word " * 6000]),
        check=lambda c, r: np.testing.assert_allclose(r[0], r[1], atol=1e-6),  # both cut at max_text_length
    ),
]

# ----------------------------------------------------------------------------------------------------------
# encode_image (files, arrays, URIs, URLs)
# ----------------------------------------------------------------------------------------------------------


def _encode_url(c, path: str):
    return c.model.encode_image([f"{c.url}{path}"])  # the processor's limits: DEADLINE s, 10**6 bytes (ctx)


ODD_IMAGES = [np.zeros((1, 1, 3), np.uint8), np.zeros((1, 300, 3), np.uint8), np.full((7, 5), 200, np.uint8), np.ones((4, 4, 3), np.float32) * 0.5]

ENCODE_IMAGE = [
    Case("image-missing-file", lambda c: c.model.encode_image(["/nonexistent/cat.png"]), FileNotFoundError, r"image file not found: '/nonexistent/cat.png'"),
    Case("image-folder", lambda c: c.model.encode_image([str(c.tmp)]), IsADirectoryError, r"is a folder, not a file"),
    Case("image-empty-file", lambda c: c.model.encode_image([c.file(b"")]), ImageLoadError, r"empty \(no bytes\)"),
    Case("image-garbage-file", lambda c: c.model.encode_image([c.file(b"garbage" * 10)]), ImageLoadError, r"not a format PIL recognizes \(70 bytes"),
    Case("image-text-file", lambda c: c.model.encode_image([c.file(b"hello", ".txt")]), ImageLoadError, r"cannot decode image from .*file\d+\.txt"),
    Case("image-truncated-png", lambda c: c.model.encode_image([c.file(_noisy_png()[:3000])]), ImageLoadError, r"cannot decode image from .*(truncated|broken)"),
    Case("image-0x0-array", lambda c: c.model.encode_image([np.zeros((0, 0, 3), np.uint8)]), ImageLoadError, r"no pixels"),
    Case("image-1d-array", lambda c: c.model.encode_image([np.zeros(10, np.uint8)]), ImageLoadError, r"got shape \(10,\)"),
    Case("image-5-channels", lambda c: c.model.encode_image([np.zeros((8, 8, 5), np.uint8)]), ImageLoadError, r"got shape \(8, 8, 5\)"),
    Case("image-float-0-255", lambda c: c.model.encode_image([np.full((8, 8, 3), 200.0, np.float32)]), ImageLoadError, r"float numpy images must be in \[0, 1\]"),
    Case("image-nan-array", lambda c: c.model.encode_image([np.full((8, 8, 3), np.nan, np.float32)]), ImageLoadError, r"NaN or infinite"),
    Case("image-int-item", lambda c: c.model.encode_image([5]), TypeError, r"unsupported image input of type int"),
    Case("image-none-item", lambda c: c.model.encode_image([None]), TypeError, r"of type NoneType"),
    Case("image-data-uri-text", lambda c: c.model.encode_image(["data:text/plain;base64,aGVsbG8="]), ImageLoadError, r"media type 'text/plain'"),
    Case("image-data-uri-bad-base64", lambda c: c.model.encode_image(["data:image/png;base64,@@@"]), ImageLoadError, r"invalid base64"),
    Case("image-file-url", lambda c: c.model.encode_image(["file:///etc/passwd"]), ImageLoadError, r"unsupported URL scheme 'file'"),
    Case("image-ftp-url", lambda c: c.model.encode_image(["ftp://127.0.0.1/x.png"]), ImageLoadError, r"unsupported URL scheme 'ftp'"),
    Case("image-batch-size-0", lambda c: c.model.encode_image([np.zeros((8, 8, 3), np.uint8)], batch_size=0), ValueError, r"batch_size must be >= 1"),
    Case("image-workers-negative", lambda c: c.model.encode_image([np.zeros((8, 8, 3), np.uint8)], num_workers=-1), ValueError, r"num_workers must be an int >= 0"),
    Case("image-truncate-dim-untrained", lambda c: c.model.encode_image([np.zeros((8, 8, 3), np.uint8)], truncate_dim=5), ValueError, r"valid values"),
    Case("image-odd-shapes-batch-invariant", lambda c: c.model.encode_image(ODD_IMAGES), check=alone_equals_batch(ODD_IMAGES, "encode_image")),
    Case(
        "image-url-upper-case-scheme",
        lambda c: (c.model.encode_image([f"HTTP://{c.url[len('http://'):]}/ok.png"]), c.model.encode_image([Image.open(c.file(PNG))])),
        check=lambda c, r: np.testing.assert_allclose(r[0], r[1], atol=1e-6),
    ),
    Case("url-stall", lambda c: _encode_url(c, "/stall-headers"), ImageLoadError, r"no complete response within 1\.5 s"),
    Case("url-drip", lambda c: _encode_url(c, "/drip"), ImageLoadError, r"no complete response within 1\.5 s"),
    Case("url-endless", lambda c: _encode_url(c, "/endless"), ImageLoadError, r"larger than 1000000 bytes"),
    Case("url-huge-declared", lambda c: _encode_url(c, "/huge-declared"), ImageLoadError, r"1000000000000 declared"),
    Case("url-404", lambda c: _encode_url(c, "/missing.png"), ImageLoadError, r"HTTP 404"),
    Case("url-html", lambda c: _encode_url(c, "/page"), ImageLoadError, r"'text/html', not an image"),
    Case("url-redirect-to-file", lambda c: _encode_url(c, "/to-file"), ImageLoadError, r"redirect to a non-http\(s\) URL refused \(file:///etc/passwd\)"),
    Case("url-redirect-loop", lambda c: _encode_url(c, "/loop"), ImageLoadError, r"more than 5 redirects"),
    Case("url-garbage-body", lambda c: _encode_url(c, "/garbage"), ImageLoadError, r"cannot decode image from http://127\.0\.0\.1:\d+/garbage"),
    Case("url-server-error", lambda c: _encode_url(c, "/anything-else"), ImageLoadError, r"HTTP 500"),
]

# ----------------------------------------------------------------------------------------------------------
# get_text_features / get_image_features
# ----------------------------------------------------------------------------------------------------------

IDS = torch.tensor([[0, 5, 2]])

FEATURES = [
    Case("ids-float", lambda c: c.model.get_text_features(torch.ones(1, 3)), TypeError, r"integer token ids; got dtype torch.float32"),
    Case("ids-out-of-vocabulary", lambda c: c.model.get_text_features(torch.tensor([[0, 5000, 2]])), ValueError, r"token id 5000, outside the vocabulary \(0 \.\. 999\)"),
    Case("ids-negative", lambda c: c.model.get_text_features(torch.tensor([[0, -1, 2]])), ValueError, r"token id -1"),
    Case("ids-1d", lambda c: c.model.get_text_features(torch.tensor([0, 5, 2])), ValueError, r"shape \(batch, sequence\).*got \(3,\)"),
    Case("ids-empty", lambda c: c.model.get_text_features(torch.zeros(0, 3, dtype=torch.long)), ValueError, r"got \(0, 3\)"),
    Case("mask-wrong-shape", lambda c: c.model.get_text_features(IDS, attention_mask=torch.ones(1, 2)), ValueError, r"attention_mask has shape \(1, 2\)"),
    Case("mask-all-zero-row", lambda c: c.model.get_text_features(torch.cat([IDS, IDS]), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]])), ValueError, r"text\(s\) \[1\] have no token"),
    Case("pixels-nan", lambda c: c.model.get_image_features(torch.full((1, 3, 56, 56), float("nan"))), ValueError, r"NaN or infinite"),
    Case("pixels-empty-batch", lambda c: c.model.get_image_features(torch.zeros(0, 3, 56, 56)), ValueError, r"no image \(batch of 0\)"),
    Case("pixels-3d", lambda c: c.model.get_image_features(torch.zeros(3, 56, 56)), ValueError, r"\(batch, 3, height, width\); got \(3, 56, 56\)"),
    Case("pixels-one-channel", lambda c: c.model.get_image_features(torch.zeros(1, 1, 56, 56)), ValueError, r"got \(1, 1, 56, 56\)"),
    Case("pixels-wrong-size", lambda c: c.model.get_image_features(torch.zeros(1, 3, 40, 40)), ValueError, r"2x2 patch grid.*image_size=56"),
    Case("pixels-integer", lambda c: c.model.get_image_features(torch.zeros(1, 3, 56, 56, dtype=torch.long)), TypeError, r"must be floating point"),
    Case(
        "ids-without-mask-derive-it",  # the release derives the mask from the pad id: same as passing it
        lambda c: (c.model.get_text_features(torch.tensor([[0, 5, 2, 1]])), c.model.get_text_features(torch.tensor([[0, 5, 2, 1]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))),
        check=lambda c, r: torch.testing.assert_close(r[0], r[1]),
    ),
]

# ----------------------------------------------------------------------------------------------------------
# Sentence-Transformers
# ----------------------------------------------------------------------------------------------------------


def _st(c):
    if getattr(c, "_st", None) is None:
        from sentence_transformers import SentenceTransformer

        c._st = SentenceTransformer(str(c.exported), trust_remote_code=True, device="cpu")
    return c._st


SENTENCE_TRANSFORMERS = [
    Case("st-untrained-truncate-dim", lambda c: _st(c).encode(["a"], truncate_dim=7), ValueError, r"truncate_dim"),
    Case("st-unknown-task", lambda c: _st(c).encode(["a"], task="nope"), ValueError, r"nope"),
    Case("st-missing-image-file", lambda c: _st(c).encode([{"image": "/nonexistent/cat.png"}]), (FileNotFoundError, ValueError), r"/nonexistent/cat\.png"),
    Case("st-image-url-404", lambda c: _st(c).encode([{"image": f"{c.url}/missing.png"}]), ValueError, r"HTTP 404"),
    Case("st-image-url-redirect-to-file", lambda c: _st(c).encode([{"image": f"{c.url}/to-file"}]), ValueError, r"file:///etc/passwd"),
    Case(
        "st-url-looking-text-is-text",
        lambda c: (_st(c).encode([f"{c.url}/ok.png"], normalize_embeddings=True), c.model.encode_text([f"{c.url}/ok.png"])),
        check=lambda c, r: np.testing.assert_allclose(r[0], r[1], atol=1e-5),
    ),
]

# ----------------------------------------------------------------------------------------------------------
# Loading an exported folder (from_pretrained, strict by default)
# ----------------------------------------------------------------------------------------------------------


def _load(folder, **kwargs):
    return JinaCLIPModel.from_pretrained(str(folder), **kwargs)


def _edit_weights(c, edit: Callable[[dict], None]) -> Path:
    from safetensors.torch import load_file, save_file

    folder = c.copy_export()
    path = c.weights(folder)
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return folder


def _truncated(c) -> Path:
    folder = c.copy_export()
    path = c.weights(folder)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return folder


def _garbage(c) -> Path:
    folder = c.copy_export()
    c.weights(folder).write_bytes(b"\x00" * 64)
    return folder


def _without(c, *names) -> Path:
    folder = c.copy_export()
    for name in names:
        for path in folder.glob(name):
            path.unlink()
    return folder


def _config_json(c, text: str) -> Path:
    folder = c.copy_export()
    (folder / "config.json").write_text(text)
    return folder


def _first_key(tensors: dict, part: str) -> str:
    return next(key for key in sorted(tensors) if part in key)


def _nan_weight(tensors: dict) -> None:
    tensors[_first_key(tensors, "vision_model")][...] = float("nan")


def _strict_false_partial_load(c):
    folder = _edit_weights(c, lambda t: t.pop(_first_key(t, "text_model")))
    return _load(folder, strict=False).encode_text(["a"])


LOAD = [
    Case("load-truncated-safetensors", lambda c: _load(_truncated(c)), ValueError, r"cannot read the weights of .*truncated or corrupt"),
    Case("load-garbage-safetensors", lambda c: _load(_garbage(c)), ValueError, r"cannot read the weights"),
    Case("load-missing-tensor", lambda c: _load(_edit_weights(c, lambda t: t.pop(_first_key(t, "text_model")))), ValueError, r"1 missing tensor\(s\): text_model"),
    Case("load-extra-tensor", lambda c: _load(_edit_weights(c, lambda t: t.update(surplus=torch.zeros(2)))), ValueError, r"1 unexpected tensor\(s\): surplus"),
    Case("load-wrong-shape", lambda c: _load(_edit_weights(c, lambda t: t.update({_first_key(t, "logit_scale"): torch.zeros(3)}))), ValueError, r"another shape"),
    Case("load-nan-weight", lambda c: _load(_edit_weights(c, _nan_weight)), ValueError, r"NaN or infinite values in vision_model\."),
    Case("load-no-tokenizer-json", lambda c: _load(_without(c, "tokenizer.json")), ValueError, r"no tokenizer\.json"),
    Case("load-no-weights", lambda c: _load(_without(c, "*.safetensors", "*.safetensors.index.json")), OSError, r"(?i)no file named model\.safetensors"),
    Case("load-config-is-a-list", lambda c: _load(_config_json(c, "[1, 2]")), (ValueError, TypeError, OSError), r"(?i)config"),
    Case("load-config-not-json", lambda c: _load(_config_json(c, "{not json")), (ValueError, OSError), r"(?i)(json|config)"),
    Case("load-missing-folder", lambda c: _load(c.tmp / "nowhere"), OSError, r"nowhere"),
    Case("load-strict-false-opt-out", _strict_false_partial_load, check=finite),
]

# ----------------------------------------------------------------------------------------------------------
# Convert (a release snapshot) and export (a training output)
# ----------------------------------------------------------------------------------------------------------


def _snapshot(c, fmt="safetensors") -> Path:
    c._count += 1
    folder = c.tmp / f"snapshot{c._count}"
    folder.mkdir()
    write_release_snapshot(folder, tiny_config(), seed=0, fmt=fmt)
    return folder


def _convert(c, snapshot: Path, **kwargs):
    from jina_clip_v2.hub.convert import convert_release

    c._count += 1
    return convert_release(snapshot, c.tmp / f"converted{c._count}", **kwargs)


def _pickle_bin(c) -> Path:
    """A `.bin` whose unpickling would run code: torch.load(weights_only=True) refuses it."""
    marker = c.tmp / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    snapshot = _snapshot(c)
    for path in snapshot.glob("*.safetensors"):
        path.unlink()
    torch.save({"payload": Payload()}, snapshot / "pytorch_model.bin")
    return snapshot


def _convert_pickle(c):
    try:
        _convert(c, _pickle_bin(c))
    finally:
        assert not (c.tmp / "payload-ran").exists(), "the pickle payload ran"


def _export_model_from(c, make: Callable[[Path], Path], **kwargs):
    from jina_clip_v2.hub.export import load_model

    c._count += 1
    return load_model(make(c.tmp / f"source{c._count}"), **kwargs)


def _folder_with(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


CONVERT_EXPORT = [
    Case("convert-missing-snapshot", lambda c: _convert(c, c.tmp / "no-snapshot"), FileNotFoundError, r"no-snapshot"),
    Case("convert-snapshot-without-weights", lambda c: _convert(c, _without_weights(_snapshot(c))), Exception, r"(?i)weights"),
    Case("convert-truncated-weights", lambda c: _convert(c, _truncate_all(_snapshot(c))), Exception, r"(?i)(safetensors|truncated|corrupt|read)"),
    Case("convert-pickle-bin-refused", _convert_pickle, Exception, r"(?i)(weights_only|unsupported global|pickle)"),
    Case("convert-not-a-release-config", lambda c: _convert(c, _with_config(_snapshot(c), {"model_type": "bert"})), Exception, r"(?i)(jina|release|model_type)"),
    Case("export-missing-source", lambda c: _export_model_from(c, lambda p: p), FileNotFoundError, r"no such model folder or weights file"),
    Case("export-folder-without-config", lambda c: _export_model_from(c, lambda p: _folder_with(p, {"model.safetensors": b""})), Exception, r"has no config\.json"),
    Case("export-unknown-weights-suffix", lambda c: _export_model_from(c, lambda p: _weights_file_with_config(p, "w.npz", b"x")), Exception, r"unknown weights file type '\.npz'"),
    Case("export-bin-not-a-state-dict", lambda c: _export_model_from(c, lambda p: _weights_file_with_config(p, "w.bin", _saved([1, 2, 3]))), Exception, r"not a flat state dict of named tensors"),
    Case("export-weights-without-config", lambda c: _export_model_from(c, lambda p: _folder_with(p, {"w.bin": _saved({})}) / "w.bin"), Exception, r"no config for the weights file"),
    Case("export-to-existing-folder", lambda c: _export_over_existing(c), FileExistsError, r"exists"),
]


def _without_weights(snapshot: Path) -> Path:
    for path in list(snapshot.glob("*.safetensors")) + list(snapshot.glob("*.bin")):
        path.unlink()
    return snapshot


def _truncate_all(snapshot: Path) -> Path:
    for path in snapshot.glob("*.safetensors"):
        path.write_bytes(path.read_bytes()[:100])
    return snapshot


def _with_config(snapshot: Path, config: dict) -> Path:
    (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot


def _saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _weights_file_with_config(folder: Path, name: str, data: bytes) -> Path:
    _folder_with(folder, {name: data, "config.json": json.dumps(tiny_config().to_dict()).encode()})
    return folder / name


def _export_over_existing(c):
    from jina_clip_v2.hub.export import export_model

    out = c.tmp / "occupied"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("mine")
    try:
        export_model(c.model, out, processor=c.model.processor)
    finally:
        assert (out / "keep.txt").read_text() == "mine"  # nothing of the user's is lost


# ----------------------------------------------------------------------------------------------------------
# Push (no network: the plan is checked before any upload)
# ----------------------------------------------------------------------------------------------------------


def _plan(folder, repo="user/tiny", **kwargs):
    from jina_clip_v2.hub.push import plan_push

    return plan_push(folder, repo, **kwargs)


def _push_with(c, name: str, data: bytes = b"x", link: bool = False):
    folder = c.copy_export()
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        target.symlink_to("/etc/hostname")
    else:
        target.write_bytes(data)
    return _plan(folder)


def _push_error():
    from jina_clip_v2.hub.push import PushError

    return PushError


PUSH = [
    Case("push-missing-folder", lambda c: _plan(c.tmp / "nowhere"), _push_error(), r"no such folder"),
    Case("push-bad-repo-id", lambda c: _plan(c.exported, repo="a b/../c"), _push_error(), r"invalid repository id"),
    Case("push-repo-without-owner", lambda c: _plan(c.exported, repo="tiny"), _push_error(), r"must be <user or organisation>/<name>"),
    Case("push-not-an-export", lambda c: _plan(_folder_with(c.tmp / "plain", {"notes.txt": b"x"})), _push_error(), r"not an exported model folder"),
    Case("push-token-file", lambda c: _push_with(c, "token", b"hf_secret"), _push_error(), r"token"),
    Case("push-ssh-key", lambda c: _push_with(c, "id_rsa", b"-----BEGIN"), _push_error(), r"id_rsa"),
    Case("push-credentials-json", lambda c: _push_with(c, "credentials.json", b"{}"), _push_error(), r"credentials\.json"),
    Case("push-symlink", lambda c: _push_with(c, "extra.txt", link=True), _push_error(), r"(?i)symlink|symbolic link"),
    Case(
        "push-pycache-and-hidden-skipped",
        lambda c: (_push_with(c, "__pycache__/x.cpython-311.pyc", b"\0"), _push_with(c, ".env", b"HF_TOKEN=hf_x")),
        check=lambda c, plans: [
            None if skip in plan.skipped and not any(name.startswith(skip.rstrip("/")) for name, _ in plan.files) else pytest.fail(str(plan))
            for plan, skip in zip(plans, ("__pycache__/", ".env"))
        ],
    ),
    Case(
        "push-plan-lists-exactly-the-export",
        lambda c: _plan(c.exported),
        check=lambda c, plan: (
            None
            if sorted(name for name, _ in plan.files) == sorted(str(p.relative_to(c.exported)) for p in c.exported.rglob("*") if p.is_file())
            else pytest.fail(f"plan {plan.files}")
        ),
    ),
]

# ----------------------------------------------------------------------------------------------------------
# Training config (the OmegaConf schema with ranges; errors name the dotted key)
# ----------------------------------------------------------------------------------------------------------


def _config(*overrides: str):
    from jina_clip_v2.training.config import load_config

    return load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml", list(overrides))


TRAINING_CONFIG = [
    Case("config-negative-lr", lambda c: _config("optim.lr=-1e-4"), ConfigError, r"optim\.lr"),
    Case("config-nan-lr", lambda c: _config("optim.lr=.nan"), ConfigError, r"optim\.lr"),
    Case("config-eps-zero", lambda c: _config("optim.eps=0"), ConfigError, r"optim\.eps"),
    Case("config-negative-weight-decay", lambda c: _config("optim.weight_decay=-0.1"), ConfigError, r"optim\.weight_decay"),
    Case("config-negative-grad-norm", lambda c: _config("optim.max_grad_norm=-1"), ConfigError, r"optim\.max_grad_norm"),
    Case("config-zero-steps", lambda c: _config("train.steps=0"), ConfigError, r"train\.steps"),
    Case("config-string-for-int", lambda c: _config("train.steps=many"), ConfigError, r"train\.steps"),
    Case("config-unknown-key", lambda c: _config("train.stepz=3"), ConfigError, r"train\.stepz"),
    Case("config-zero-chunk-size", lambda c: _config("train.grad_cache.text_chunk_size=0"), ConfigError, r"train\.grad_cache\.text_chunk_size"),
    Case("config-missing-file", lambda c: __import__("jina_clip_v2.training.config", fromlist=["x"]).load_config(c.tmp / "none.yaml"), (FileNotFoundError, ConfigError), r"none\.yaml"),
]

# ----------------------------------------------------------------------------------------------------------
# Evaluation (metrics and suites)
# ----------------------------------------------------------------------------------------------------------


def _retrieval(images, texts, owner, **kwargs):
    from jina_clip_v2.evaluation.metrics import image_text_retrieval

    return image_text_retrieval(images, texts, owner, **kwargs)


def _suite_file(c, text: str):
    from jina_clip_v2.evaluation.suites import load_suite_file

    return load_suite_file(c.file(text.encode(), ".yaml"))


EVALUATION = [
    Case("eval-owner-length", lambda c: _retrieval(np.ones((2, 4)), np.ones((3, 4)), [0, 1]), ValueError, r"one entry per caption \(3\)"),
    Case("eval-owner-out-of-range", lambda c: _retrieval(np.ones((2, 4)), np.ones((2, 4)), [0, 5]), ValueError, r"outside \[0, 2\)"),
    Case("eval-owner-float", lambda c: _retrieval(np.ones((2, 4)), np.ones((2, 4)), [0.0, 1.0]), TypeError, r"integer image indices"),
    Case("eval-image-without-caption", lambda c: _retrieval(np.ones((3, 4)), np.ones((2, 4)), [0, 1]), ValueError, r"images without one: \[2\]"),
    Case("eval-k-too-large", lambda c: _retrieval(np.eye(2, 4), np.eye(2, 4), [0, 1], ks=(5,)), ValueError, r"(?i)k"),
    Case("eval-bad-dims", lambda c: __import__("jina_clip_v2.evaluation.runner", fromlist=["x"]).parse_dims("64,abc"), ValueError, r"abc"),
    Case("eval-suite-unknown-key", lambda c: _suite_file(c, "tasks:\n  - kind: crossmodal\n    nme: x\n"), ConfigError, r"nme"),
    Case("eval-suite-not-a-mapping", lambda c: _suite_file(c, "- 1\n- 2\n"), ConfigError, r"(?i)(mapping|tasks|suite)"),
    Case(
        "eval-retrieval-perfect-on-identity",
        lambda c: _retrieval(np.eye(3, 4), np.eye(3, 4), [0, 1, 2], ks=(1,)),
        check=lambda c, r: None if r == {"text_to_image_recall@1": 100.0, "image_to_text_recall@1": 100.0} else pytest.fail(str(r)),
    ),
]

# ----------------------------------------------------------------------------------------------------------
# Training data (jsonl sources read row by row; a source that yields nothing stops the run)
# ----------------------------------------------------------------------------------------------------------


def _data_error():
    from jina_clip_v2.training.data import DataError

    return DataError


def _rows(c, rows: list, suffix=".jsonl") -> str:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    return c.file("".join(line + "\n" for line in lines).encode(), suffix)


def _first_batch(c, rows, kind="text_pairs", **options):
    from jina_clip_v2.training.data import SourceConfig, TaskDataConfig, build_task_stream

    source = rows if isinstance(rows, str) else _rows(c, rows)
    cfg = TaskDataConfig(kind=kind, sources=[SourceConfig(source)], batch_size=2, image_size=28, shuffle_buffer=0,
                         name="data.bad", max_consecutive_skips=options.pop("max_consecutive_skips", 50), **options)
    if getattr(c, "_data_processor", None) is None:
        c._data_processor = build_processor(build_tokenizer(), image_size=28)
    return next(build_task_stream(cfg, c._data_processor, keep_raw=True))


PAIRS = [{"query": f"q{i}", "document": f"d{i}"} for i in range(4)]

TRAINING_DATA = [
    Case("data-all-images-undecodable", lambda c: _first_batch(c, [{"image": f"missing{i}.png", "caption": "c"} for i in range(9)], "image_text_short"),
         _data_error(), r"data\.bad\.sources\.0 \(.*\): 50 consecutive unusable examples \(50 undecodable image\)"),
    Case("data-all-texts-empty", lambda c: _first_batch(c, [{"query": "", "document": "d"}] * 9), _data_error(), r"\(50 empty text\)"),
    Case("data-triplets-without-negatives", lambda c: _first_batch(c, [{"query": "q", "positive": "p", "negatives": []}] * 9, "text_triplets"),
         _data_error(), r"too few negatives"),
    Case("data-invalid-json-row", lambda c: _first_batch(c, [PAIRS[0], "{not json", *PAIRS[1:]], on_bad_row="error"), _data_error(), r"line 2: invalid JSON"),
    Case("data-wrong-type-row", lambda c: _first_batch(c, [PAIRS[0], {"query": 5, "document": "d"}], on_bad_row="error"), _data_error(), r"line 2: 'query' has type int"),
    Case("data-json-list-row", lambda c: _first_batch(c, [PAIRS[0], "[1, 2]"], on_bad_row="error"), _data_error(), r"line 2: a JSON list, not an object"),
    Case("data-empty-file", lambda c: _first_batch(c, c.file(b"\n\n", ".jsonl")), _data_error(), r"no rows"),
    Case("data-missing-column", lambda c: _first_batch(c, [{"q": "a", "d": "b"}] * 3), KeyError, r"column 'query' not found"),
    Case(
        "data-bad-rows-skipped-by-default",
        lambda c: _first_batch(c, [PAIRS[0], "{not json", {"query": None, "document": "d"}, PAIRS[1]]),
        check=lambda c, batch: None if [r["query"] for r in batch["raw"]] == ["q0", "q1"] else pytest.fail(str(batch["raw"])),
    ),
]


CATEGORIES = {
    "encode_text": ENCODE_TEXT,
    "encode_image": ENCODE_IMAGE,
    "features": FEATURES,
    "sentence_transformers": SENTENCE_TRANSFORMERS,
    "load": LOAD,
    "convert_export": CONVERT_EXPORT,
    "push": PUSH,
    "training_config": TRAINING_CONFIG,
    "training_data": TRAINING_DATA,
    "evaluation": EVALUATION,
}
ALL = [pytest.param(case, id=f"{category}:{case.id}") for category, cases in CATEGORIES.items() for case in cases]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, server):  # noqa: F811 - the imported fixture
    from jina_clip_v2.hub.export import export_model

    model = tiny_model(seed=0)
    processor = build_processor(build_tokenizer(), image_size=model.config.vision_config.image_size)
    exported = export_model(model, tmp_path_factory.mktemp("bad_inputs") / "tiny", processor=processor)
    model = JinaCLIPModel.from_pretrained(str(exported)).eval()
    model.processor.image_processor.fetch_timeout = DEADLINE
    model.processor.image_processor.fetch_max_bytes = 10**6
    return Ctx(model, Path(exported), tmp_path_factory.mktemp("scratch"), server)


def test_the_battery_is_large_and_ids_are_unique():
    ids = [param.id for param in ALL]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 80, len(ids)
    assert all(len(cases) >= 5 for cases in CATEGORIES.values())


@pytest.mark.parametrize("case", ALL)
def test_bad_input(case: Case, ctx):
    if case.id.startswith("st-"):
        pytest.importorskip("sentence_transformers")
    started = time.monotonic()
    if case.error is OK:
        result = case.run(ctx)
        case.check(ctx, result)
    else:
        expected = ValueError if isinstance(case.error, str) else case.error
        with pytest.raises(expected, match=case.match) as info:
            case.run(ctx)
        if isinstance(case.error, str):
            assert case.error in [cls.__name__ for cls in type(info.value).__mro__], type(info.value)
        message = str(info.value)
        assert message and "Traceback" not in message
    # Nothing hangs: the slowest cases are the URL ones, bounded by the fetch deadline.
    assert time.monotonic() - started < 60
