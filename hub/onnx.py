"""Export the two towers of an exported jina-clip-v2 folder as ONNX graphs, in fp32, fp16 and int8, with a
parity table against PyTorch.

    jina-clip onnx --model <folder> [--out <folder>/onnx] [--precisions fp32,fp16,int8] [--overwrite]
    (also `python -m jina_clip_v2.hub.onnx ...`, and `jina-clip export ... --onnx`)

What it writes (the layout transformers.js loads jina_clip towers from, `JinaCLIPTextModel` /
`JinaCLIPVisionModel` with `dtype` "fp32" / "fp16" / "q8"):

- `onnx/text_model.onnx`: inputs `input_ids`, `attention_mask` (int64, batch x sequence, both dynamic);
  outputs `text_embeddings` (the masked mean over every non-pad token, before normalization) and
  `l2norm_text_embeddings` (batch x projection_dim).
- `onnx/vision_model.onnx`: input `pixel_values` (float32, batch x 3 x image_size x image_size, batch
  dynamic); outputs `image_embeddings` (CLS token after the final norm) and `l2norm_image_embeddings`.
- `*_fp16.onnx`: fp16 weights and activations (onnxruntime.transformers.float16) with fp32 inputs and
  outputs (`keep_io_types`); the pooling sums and the L2 norms stay in fp32. LayerNormalization computes its
  statistics in fp32 (ONNX stash_type), softmax runs in fp16.
- `*_quantized.onnx`: int8 weights, dynamic int8 activations (onnxruntime.quantization.quantize_dynamic,
  per-channel) for every MatMul and the embedding table; the patch convolution stays fp32 (int8
  ConvInteger has no kernel in onnxruntime-web).
- Weights above 2 GB go to external data files `<name>.onnx_data` (`_data_1`, ... in chunks under 2 GB),
  and config.json gets the hint transformers.js reads:
  `"transformers.js_config": {"use_external_data_format": {"text_model.onnx": <chunks>}}`.
- `onnx/parity.json` and `onnx/parity.md`: fp32 max abs diff against PyTorch, fp16 and int8 cosine against
  fp32 PyTorch, on texts in several languages and images from the bundled demo data (`data/tuxpaint`),
  and the file sizes. When the folder has a model card (README.md), its ONNX section is written too.

The files are written into a staging folder next to `--out`, each graph checked (`onnx.checker`, and run by ONNX
Runtime for the parity table), and the folder then takes the name `--out` in one rename: a kill or a full disk
leaves the previous files or the new ones, never a truncated graph under its final name (`jina_clip_v2._io`).
`--overwrite` replaces a previous ONNX export as a whole; a `--out` holding other files is refused. config.json
and README.md of the model folder are updated afterwards, each file atomically.

Matryoshka truncation from the ONNX outputs: keep the first k dims of `*_embeddings`, then L2-normalize
(`hub.onnx_runtime.truncate_and_normalize`; the query instruction of `task="retrieval.query"` is part of
the text, prepended before tokenization). `hub.onnx_runtime.JinaCLIPOnnx` does all of it without PyTorch.

onnx, onnx_ir and onnxruntime (the [onnx] extra) are imported in the functions that use them: `jina-clip export`
imports this module and runs without them unless asked for `--onnx`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jina_clip_v2.modeling import JinaCLIPModel

from jina_clip_v2 import _io

from ._util import configure_logging, human_size, write_json, write_text
from .model_card import onnx_section, set_onnx_section
from .onnx_runtime import (
    PRECISION_SUFFIXES,
    TEXT_INPUTS,
    TEXT_OUTPUTS,
    TRANSFORMERS_JS_DTYPES,
    VISION_INPUTS,
    VISION_OUTPUTS,
    JinaCLIPOnnx,
    onnx_file_name,
    truncate_and_normalize,
)

logger = logging.getLogger(__name__)

PRECISIONS = tuple(PRECISION_SUFFIXES)
# Opset 18: LayerNormalization is native (17+), and every ONNX Runtime since 1.14 (onnxruntime-web too) runs it.
OPSET = 18
# A protobuf file cannot exceed 2 GiB; weights beyond this go to external data, in chunks below it (a
# browser cannot hold one ArrayBuffer of 2 GiB or more, and transformers.js fetches `_data`, `_data_1`, ...).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
EXTERNAL_DATA_CHUNK = 2**31 - 2**26
# Kept in fp32 inside the fp16 graphs: the pooling sum and the L2 norm (a sum of up to 512 token states, and
# of 1024 squares, loses digits in fp16), on top of the converter's default list.
FP16_KEEP_FP32 = ("ReduceSum", "ReduceL2", "Div", "Clip")
# int8: weights of MatMul and Gather (the embedding table); Conv is left in fp32.
INT8_OP_TYPES = ("MatMul", "Gather")
DEMO_LANGUAGES = ("en", "de", "fr", "es", "ru", "ja", "zh-cn", "ar", "hi", "ko", "el", "th")
DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "tuxpaint"

# The clients tests/test_clients.py runs on an exported folder (the README's snippets, offline; a tiny random
# model with the real XLM-R tokenizer): their versions and the lowest cosine per row against encode_text /
# encode_image it measured (rounded down, with a margin for other CPUs), kept there as floors and stated in
# parity.md and the model card. Measured (x86-64, 2 cores): transformers.js fp32 text 0.999997 / image 0.999816,
# fp16 0.999997 / 0.999812, q8 0.999961 / 0.999011; fastembed 1.000000 / 1.000000.
CLIENT_PARITY = {
    "transformers.js": {
        "version": "4.3.2",
        "usage": "Node, `JinaCLIPTextModel` / `JinaCLIPVisionModel`, images read with the README's `readImage`",
        "rows": {"fp32": {"text": 0.9999, "image": 0.999}, "fp16": {"text": 0.9999, "image": 0.999}, "q8": {"text": 0.9999, "image": 0.998}},
    },
    "fastembed": {
        "version": "0.9.1",
        "usage": "`TextEmbedding.add_custom_model` + `ImageEmbedding(specific_model_path=...)`",
        "rows": {"fp32": {"text": 0.9999, "image": 0.9999}},
    },
}
# transformers.js's own resize (RawImage.read + its image processor: sharp's affine transform) against the
# release's pixels (PIL) at 512 px, in levels of 255, on the bundled demo photos and a 1024 x 768 collage of them
# (tests/test_clients.py); and the lowest image cosine it gives the tiny model at 56 px.
TRANSFORMERS_JS_RESIZE = {"mean_levels": 5.1, "max_levels": 244, "tiny_model_min_cosine": 0.88}


def transformers_js_resize_note() -> str:
    numbers = TRANSFORMERS_JS_RESIZE
    return (
        "transformers.js's own resize (`RawImage.read` + its image processor: sharp's affine transform, without "
        "antialiasing) gives pixels that differ from the release's (PIL's bicubic) by "
        f"{numbers['mean_levels']:g} levels of 255 on average, at most {numbers['max_levels']:g}, at 512 px on the "
        "bundled demo photos; it also applies EXIF rotations, which the release does not. Resize images as the "
        "repository README's `readImage` does before its processor."
    )


def clients_markdown() -> str:
    """The clients paragraphs of parity.md and the model card: CLIENT_PARITY as a table, and the resize note."""
    intro = (
        "The folder loads as it is in transformers.js and fastembed (the repository README's snippets, offline). "
        "Cosine per embedding against `encode_text` / `encode_image`, at least: the floors the package's tests "
        "keep, measured on a tiny random model with the real tokenizer (tests/test_clients.py):"
    )
    lines = ["| Client | Usage | dtype | Min cosine (text) | Min cosine (image) |", "|---|---|---|---|---|"]
    lines += [
        f"| {name} {client['version']} | {client['usage']} | `{dtype}` | {floors['text']:.4f} | {floors['image']:.4f} |"
        for name, client in CLIENT_PARITY.items()
        for dtype, floors in client["rows"].items()
    ]
    return "\n\n".join([intro, "\n".join(lines), transformers_js_resize_note()])


class OnnxExportError(ValueError):
    """A folder or option that cannot be exported to ONNX as given."""


# Notices of the ONNX toolchain that say nothing about this export, kept off the console while it runs: torch's
# exporter lists the torchvision operators it cannot register (torchvision is no dependency of ours) and warns
# about its own deprecated internals and about dynamic axes it merges; ONNX Runtime's quantizer recommends, on
# the root logger, a pre-processing step written for CNNs. Errors, and every other warning, still show.
_TOOLCHAIN_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)", r"# The axis name: .* will not be used")


class _QuantizerNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and f"onnxruntime{os.sep}quantization" in record.pathname)


@contextlib.contextmanager
def quiet_toolchain():
    """Silence the notices above (stdlib logging and warnings, restored on exit)."""
    exporter, root, notices = logging.getLogger("torch.onnx"), logging.getLogger(), _QuantizerNotices()
    level = exporter.level
    exporter.setLevel(logging.ERROR)
    root.addFilter(notices)
    try:
        with warnings.catch_warnings():
            for pattern in _TOOLCHAIN_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        root.removeFilter(notices)
        exporter.setLevel(level)


# ----------------------------------------------------------------------------------------------------
# The towers as modules with plain tensor inputs and outputs
# ----------------------------------------------------------------------------------------------------


class TextTower(nn.Module):
    """`get_text_features` -> (pooled embedding, L2-normalized embedding)."""

    def __init__(self, model: JinaCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        embeddings = self.model.get_text_features(input_ids, attention_mask=attention_mask, unpadded=False).pooler_output
        return embeddings, F.normalize(embeddings, dim=-1)


class VisionTower(nn.Module):
    """`get_image_features` -> (CLS embedding, L2-normalized embedding)."""

    def __init__(self, model: JinaCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        embeddings = self.model.get_image_features(pixel_values).pooler_output
        return embeddings, F.normalize(embeddings, dim=-1)


def load_for_export(folder: str | os.PathLike) -> JinaCLIPModel:
    """The folder's weights in fp32 with eager attention (plain MatMul/Softmax graphs every runtime runs),
    loaded strictly (the default of `from_pretrained`) with this repository's model class."""
    model = JinaCLIPModel.from_pretrained(os.fspath(folder), dtype=torch.float32)
    model.set_attn_implementation("eager")
    return model.float().eval()


def example_inputs(model: JinaCLIPModel) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs to trace with: two texts of different lengths (one padded), two images."""
    text = model.config.text_config
    input_ids = torch.full((2, 9), text.pad_token_id, dtype=torch.long)
    input_ids[0, :] = torch.arange(9) % (text.vocab_size - 3) + 3
    input_ids[1, :5] = torch.arange(5) % (text.vocab_size - 3) + 3
    attention_mask = (input_ids != text.pad_token_id).long()
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(2, model.config.vision_config.num_channels, size, size, generator=torch.Generator().manual_seed(0))
    return {"text": (input_ids, attention_mask), "vision": (pixel_values,)}


def export_tower(model: JinaCLIPModel, tower: str, opset: int = OPSET):
    """One tower as an ONNX `ModelProto` (torch.onnx.export with the dynamo exporter; the TorchScript
    exporter cannot trace the vision tower), batch dynamic, and sequence length dynamic for text."""
    import onnx_ir

    inputs = example_inputs(model)[tower]
    batch = torch.export.Dim("batch")
    if tower == "text":
        module, names, outputs = TextTower(model), TEXT_INPUTS, TEXT_OUTPUTS
        sequence = torch.export.Dim("sequence")
        dynamic_shapes = {name: {0: batch, 1: sequence} for name in names}
    else:
        module, names, outputs = VisionTower(model), VISION_INPUTS, VISION_OUTPUTS
        dynamic_shapes = {names[0]: {0: batch}}
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            inputs,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            input_names=list(names),
            output_names=list(outputs),
            verbose=False,
        )
    proto = onnx_ir.serde.serialize_model(program.model)
    # The exporter annotates every node with the Python stack trace that made it (paths of this machine):
    # drop them, so two exports of the same weights give the same files and nothing local is published.
    for node in list(proto.graph.node) + [n for function in proto.functions for n in function.node]:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.metadata_props[:]
    proto.producer_name, proto.producer_version = "jina-clip-v2 (torch.onnx dynamo exporter)", torch.__version__
    return proto


# ----------------------------------------------------------------------------------------------------
# Saving, fp16, int8
# ----------------------------------------------------------------------------------------------------


def _initializer_bytes(model) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_onnx(model, path: Path) -> list[Path]:
    """Write `model` (a ModelProto) to `path`; weights above 2 GB go to `<name>_data`, `<name>_data_1`, ...
    (each under 2 GB, as transformers.js names the chunks; `model` then refers to them). Returns the files
    written."""
    import onnx
    from onnx.external_data_helper import set_external_data, write_external_data_tensors

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}_data*"):
        stale.unlink()
    if _initializer_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path))
        path.chmod(0o644)
        return [path]
    chunk, offset = 0, 0
    for tensor in model.graph.initializer:
        size = len(tensor.raw_data)
        if size < 1024:  # small constants stay inline
            continue
        if offset and offset + size > EXTERNAL_DATA_CHUNK:
            chunk, offset = chunk + 1, 0
        location = f"{path.name}_data" + (f"_{chunk}" if chunk else "")
        set_external_data(tensor, location=location)  # offsets are assigned when written
        offset += size
    write_external_data_tensors(model, str(path.parent))
    onnx.save_model(model, str(path))
    files = [path] + sorted(path.parent.glob(f"{path.name}_data*"))
    for written in files:
        written.chmod(0o644)  # onnx creates the data files 0600
    return files


def check_onnx_file(path: Path) -> None:
    """`path` parses as an ONNX model and every external-data reference lies inside its file: a truncated graph or
    data chunk is an `OnnxExportError` naming it. (`onnx.checker` refuses the fp16 converter's node order, which
    ONNX Runtime runs; the parity table runs every graph.)"""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's errors name no file
        raise OnnxExportError(f"{path} is not a readable ONNX model: {type(err).__name__}: {err}") from err
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        data = path.parent / info["location"]
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if not data.is_file() or data.stat().st_size < end:
            raise OnnxExportError(f"{data} is missing or shorter than the {end} bytes {path.name} needs ({tensor.name})")


def external_data_chunks(path: Path) -> int:
    return len(list(path.parent.glob(f"{path.name}_data*")))


def to_fp16(fp32_path: Path):
    """fp16 weights and activations, fp32 inputs and outputs (onnxruntime.transformers.float16)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # A path, not a ModelProto: the converter then runs shape inference on the file (infer_shapes_path),
    # which works above protobuf's 2 GB limit.
    return convert_float_to_float16(
        str(fp32_path),
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32),
    )


def to_int8(fp32_path: Path):
    """Dynamic int8 quantization (onnxruntime.quantization.quantize_dynamic): int8 weights per output
    channel for MatMul and Gather, activations quantized at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="jina_clip_int8_") as tmp:
        target = Path(tmp) / "model.onnx"
        quantize_dynamic(
            str(fp32_path),
            str(target),
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )
        return onnx.load(str(target), load_external_data=True)


# ----------------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------------


def demo_inputs(num_texts: int = 12, num_images: int = 8, data_dir: str | os.PathLike | None = None):
    """Texts in several languages and scripts (of different lengths) and images of several sizes from the
    bundled demo data (data/tuxpaint)."""
    root = Path(data_dir) if data_dir is not None else DEMO_DATA
    with open(root / "captions.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    texts, languages = [], []
    for index, record in enumerate(records):
        if len(texts) == num_texts:
            break
        lang = DEMO_LANGUAGES[len(texts) % len(DEMO_LANGUAGES)]
        caption = record["captions"].get(lang)
        if caption:
            # Every third text is the caption followed by its English one: longer texts in the same batch.
            texts.append(caption if index % 3 else f"{caption} {record['en']}")
            languages.append(lang)
    images = [str(root / record["image"]) for record in records[:: max(1, len(records) // num_images)][:num_images]]
    return texts, languages, images


def _cosines(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))


def measure_parity(model: JinaCLIPModel, folder: Path, onnx_folder: Path, precisions: Sequence[str], texts, images) -> dict:
    """Embeddings of `texts` / `images` through ONNX Runtime (`JinaCLIPOnnx`) against `encode_text` /
    `encode_image` in fp32 PyTorch: max abs diff (raw and normalized) and cosines."""
    reference = {
        "text": model.encode_text(texts, normalize_embeddings=False, batch_size=8),
        "vision": model.encode_image(images, normalize_embeddings=False, batch_size=8),
    }
    rows = []
    for precision in precisions:
        runtime = JinaCLIPOnnx(folder, onnx_folder=onnx_folder, precision=precision)
        got = {
            "text": runtime.encode_text(texts, normalize_embeddings=False, batch_size=8),
            "vision": runtime.encode_image(images, normalize_embeddings=False, batch_size=8),
        }
        for tower in ("text", "vision"):
            cos = _cosines(got[tower], reference[tower])
            normalized = np.abs(truncate_and_normalize(got[tower]) - truncate_and_normalize(reference[tower])).max()
            path = onnx_folder / onnx_file_name(tower, precision)
            files = [path] + sorted(path.parent.glob(f"{path.name}_data*"))
            rows.append(
                {
                    "tower": tower,
                    "precision": precision,
                    "file": path.name,
                    "transformers_js_dtype": TRANSFORMERS_JS_DTYPES[precision],
                    "bytes": sum(f.stat().st_size for f in files),
                    "external_data_files": [f.name for f in files[1:]],
                    "max_abs_diff": float(np.abs(got[tower] - reference[tower]).max()),
                    "max_abs_diff_normalized": float(normalized),
                    "min_cosine": float(cos.min()),
                    "mean_cosine": float(cos.mean()),
                }
            )
    return {"rows": rows, "reference": "fp32 PyTorch (encode_text / encode_image, eager attention)"}


def parity_markdown(report: dict) -> str:
    """The parity table as Markdown (parity.md, and the model card's ONNX section)."""

    return onnx_section(report)


# ----------------------------------------------------------------------------------------------------
# The whole export
# ----------------------------------------------------------------------------------------------------


def export_onnx(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    precisions: Sequence[str] = PRECISIONS,
    opset: int = OPSET,
    overwrite: bool = False,
    parity: bool = True,
    update_folder: bool | None = None,
) -> dict:
    """Export both towers of an exported folder (`jina-clip export`) to `out` (default `<folder>/onnx`) in
    the given precisions, measure parity, and return the report (also written as parity.json / .md).

    Args:
        precisions: any of "fp32", "fp16", "int8" (fp32 is always written: the others derive from it).
        update_folder: write the transformers.js hints into `<folder>/config.json` and the ONNX section into
            `<folder>/README.md` (default: when `out` is `<folder>/onnx`, where transformers.js looks).
    """
    folder = Path(folder)
    out = Path(out) if out is not None else folder / "onnx"
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise OnnxExportError(f"unknown precisions {unknown}; choose from {list(PRECISIONS)}")
    precisions = [p for p in PRECISIONS if p in set(precisions) | {"fp32"}]
    if not (folder / "config.json").is_file():
        raise OnnxExportError(f"{folder} has no config.json: export the model first (`jina-clip export`)")
    existing = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if existing and not overwrite:
        holds = "ONNX files" if any(name.endswith(".onnx") for name in existing) else "files"
        raise FileExistsError(f"{out} already holds {holds} ({existing[0]}, ...); pass --overwrite to replace them")
    foreign = [name for name in existing if not _is_onnx_output(name)]
    if foreign:
        raise FileExistsError(
            f"{out} holds files an ONNX export does not write ({', '.join(foreign[:5])}): --overwrite replaces the "
            "whole folder, so choose another --out"
        )
    if update_folder is None:
        update_folder = out.resolve() == (folder / "onnx").resolve()

    logger.info("loading %s (fp32, eager attention)", folder)
    model = load_for_export(folder)
    # Written into a staging folder next to `out`, checked, then renamed onto `out` in one step (jina_clip_v2._io):
    # a kill or a full disk leaves the old files or the new ones, never a truncated graph under its final name.
    with _io.atomic_folder(out, overwrite=out.exists()) as staging:  # taken meanwhile by another writer: an error
        report = _write_onnx(model, folder, staging, precisions, opset, parity)
    if update_folder:
        _update_folder(folder, report)
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    logger.info("wrote %s (%s)", out, human_size(total))
    return report


def _is_onnx_output(name: str) -> bool:
    """A file name `export_onnx` writes: the graphs, their external data chunks, the parity table."""
    return name in ("parity.json", "parity.md") or bool(re.fullmatch(r"[a-z_0-9]+\.onnx(_data(_[0-9]+)?)?", name))


def _write_onnx(model: JinaCLIPModel, folder: Path, out: Path, precisions: Sequence[str], opset: int, parity: bool) -> dict:
    """Both towers in `precisions` into the (staging) folder `out`, each file checked (`check_onnx_file`), and
    the parity report; returns the report."""
    external: dict[str, int] = {}
    for tower in ("text", "vision"):
        logger.info("exporting the %s tower (torch.onnx.export, dynamo, opset %d)", tower, opset)
        fp32_path = out / onnx_file_name(tower, "fp32")
        with quiet_toolchain():
            save_onnx(export_tower(model, tower, opset), fp32_path)
            if "fp16" in precisions:
                logger.info("  fp16")
                save_onnx(to_fp16(fp32_path), out / onnx_file_name(tower, "fp16"))
            if "int8" in precisions:
                logger.info("  int8 (dynamic quantization)")
                save_onnx(to_int8(fp32_path), out / onnx_file_name(tower, "int8"))
        for precision in precisions:
            path = out / onnx_file_name(tower, precision)
            check_onnx_file(path)
            if external_data_chunks(path):
                external[path.name] = external_data_chunks(path)

    report: dict[str, Any] = {
        "opset": opset,
        "inputs": {"text": list(TEXT_INPUTS), "vision": list(VISION_INPUTS)},
        "outputs": {"text": list(TEXT_OUTPUTS), "vision": list(VISION_OUTPUTS)},
        "transformers.js_config": {"use_external_data_format": external} if external else {},
        "versions": _versions(),
        "clients": CLIENT_PARITY,
        "clients_markdown": clients_markdown(),
    }
    if parity:
        texts, languages, images = demo_inputs()
        logger.info("measuring parity on %d texts (%s) and %d images", len(texts), ", ".join(sorted(set(languages))), len(images))
        report.update(measure_parity(model, folder, out, precisions, texts, images))
        report["data"] = {"texts": len(texts), "languages": sorted(set(languages)), "images": len(images), "source": "data/tuxpaint"}
        write_json(out / "parity.json", report)
        write_text(out / "parity.md", parity_markdown(report) + "\n")
    return report


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def _update_folder(folder: Path, report: dict) -> None:
    """config.json: the transformers.js hint (`use_external_data_format` for files with external data);
    README.md: the ONNX section with the parity table."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    hints = dict(config.get("transformers.js_config") or {})
    hints.pop("use_external_data_format", None)
    hints.update(report["transformers.js_config"])
    if hints:
        config["transformers.js_config"] = hints
    else:
        config.pop("transformers.js_config", None)
    write_json(config_path, config)
    card = folder / "README.md"
    if card.is_file() and report.get("rows"):

        write_text(card, set_onnx_section(card.read_text(encoding="utf-8"), report))


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def _precisions(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jina-clip onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="an exported folder (`jina-clip export`)")
    parser.add_argument("--out", type=Path, help="folder for the .onnx files (default: <model>/onnx)")
    parser.add_argument("--precisions", type=_precisions, default=list(PRECISIONS), help="comma-separated: fp32,fp16,int8 (default: all)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET})")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity measurement")
    parser.add_argument("--overwrite", action="store_true", help="replace existing .onnx files in --out")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        report = export_onnx(
            args.model, args.out, precisions=args.precisions, opset=args.opset, overwrite=args.overwrite, parity=not args.no_parity
        )
    except (OnnxExportError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if report.get("rows"):
        print(parity_markdown(report))
    print(args.out or args.model / "onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CLIENT_PARITY", "OPSET", "clients_markdown", "PRECISIONS", "TRANSFORMERS_JS_RESIZE", "OnnxExportError", "demo_inputs", "export_onnx", "export_tower", "main", "measure_parity", "save_onnx", "transformers_js_resize_note"]
