"""Export a jina-clip-v2 model as a Hub-ready folder.

    jina-clip export --model <folder | weights file> --out <folder> [--max-shard-size 5GB]
        [--dtype bfloat16] [--eval-results results.json] [--training-summary summary.json]
        [--repo-id user/name] [--processor <folder>] [--overwrite] [--verify]

The folder holds everything `AutoModel` / `AutoProcessor` / `SentenceTransformer` need with
`trust_remote_code=True` on a machine without this repository:

- `config.json` with `auto_map` -> `configuration_jina_clip.py` / `modeling_jina_clip.py` (copied in);
- safetensors weights, in the model's own key layout (`model.state_dict()`), sharded with
  `model.safetensors.index.json` above `max_shard_size`;
- `processor_config.json` (transformers' `CLIPProcessor` with our `JinaCLIPImageProcessor`, whose code
  `processing_jina_clip.py` and the `fetching_jina_clip.py` it imports are copied in) and the same image-processor settings in `preprocessor_config.json`
  (the release's file and layout: integer `size`, `resize_mode`, `interpolation`, `fill_color`, `mean` / `std`,
  `processor_class` "JinaCLIPProcessor"; what transformers.js and fastembed read), `tokenizer.json` (the given tokenizer's own pipeline, unchanged:
  the ids equal `tokenizers.Tokenizer.from_file` on its source file), `tokenizer_config.json` (transformers'
  generic fast tokenizer class, so nothing rebuilds the pipeline at load time);
- Sentence-Transformers files, written as the data its `save` writes (see `write_sentence_transformers_files`): `modules.json` (our
  `custom_st.JinaCLIPTransformer` input module, then `Normalize` under the class path that
  sentence-transformers 5.4+ and 6.x both resolve), `sentence_bert_config.json` (modality config:
  `get_text_features` / `get_image_features` -> `pooler_output`; texts truncated at the model's
  `max_text_length`; `fetch_image_urls` false: see `custom_st`), `config_sentence_transformers.json`
  (prompts `retrieval.query` and `query` = the release's query instruction, cosine similarity),
  `1_Normalize/`;
- `README.md`, the model card (`hub.model_card`).

The folder is written into a temporary folder next to `--out`, its weights checked (every safetensors file
whole), and renamed at the end, so `--out` is either complete or untouched. The rename is exclusive: of two
exports to one new `--out` without `--overwrite`, the first to finish wins and the other fails with an error
(`jina_clip_v2._io.atomic_folder`). Two exports of the same model give the same bytes: safetensors metadata
is fixed (`{"format": "pt"}`), JSON files have sorted keys, nothing holds a timestamp or a path.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, CLIPProcessor
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.utils import HF_MODULES_CACHE

from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel, pipeline_jina_clip
from jina_clip_v2.modeling.convert_jina_clip_release import ReleaseCheckpointError, read_weights_file
from jina_clip_v2.modeling.loading_jina_clip import load_folder_processor
from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor, keys_outside_release_layout
from jina_clip_v2.modeling.tokenization_jina_clip import exact_tokenizer, name_generic_tokenizer_class

from ._util import (
    atomic_folder,
    canonicalize_json_files,
    configure_logging,
    folder_files,
    hub_logger,
    human_size,
    read_json_object,
    weights_problems,
    write_json,
)
from .model_card import BASE_MODEL_LICENSES, build_model_card
from .onnx import export_onnx

logger = hub_logger("export")

DEFAULT_MAX_SHARD_SIZE = "5GB"
ST_MODULE_FILE = Path(__file__).with_name("custom_st.py")
ST_MODULE_CLASS = "custom_st.JinaCLIPTransformer"
# The Normalize class path every Sentence-Transformers release resolves (5.x and 6.x map it to where the
# class lives now; the library's `save` writes the 6.x-only `sentence_transformers.base.modules...`).
ST_NORMALIZE_CLASS = "sentence_transformers.models.Normalize"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Training checkpoints may carry wrapper prefixes (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ExportError(ValueError):
    """A model, processor or option that cannot be exported as given."""


# ----------------------------------------------------------------------------------------------------
# Inputs: model and processor
# ----------------------------------------------------------------------------------------------------


def _strict_load(config: JinaCLIPConfig, state_dict: dict[str, torch.Tensor] | None, source) -> JinaCLIPModel:
    """`JinaCLIPModel.from_pretrained` (a folder, or `None` + `state_dict`) that fails on any key problem."""
    model, info = JinaCLIPModel.from_pretrained(
        source, config=config, state_dict=state_dict, output_loading_info=True
    )
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        details = "; ".join(f"{k}: {v[:10]}{' ...' if len(v) > 10 else ''}" for k, v in problems.items())
        raise ExportError(f"the weights of {source or 'the checkpoint'} do not match the config: {details or info['error_msgs']}")
    return model.eval()


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = read_weights_file(path)  # safetensors, or torch.load(weights_only=True): never a full unpickle
    except ReleaseCheckpointError as err:
        raise ExportError(str(err)) from err
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def load_model(source: str | os.PathLike, *, config: str | os.PathLike | None = None) -> JinaCLIPModel:
    """Load the model to export from a `save_pretrained` folder (a training stage's output or checkpoint)
    or from a single weights file (`.safetensors`, or `.bin` read with `torch.load(weights_only=True)`)
    whose config.json sits next to it or is given as `config`."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such model folder or weights file: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExportError(
                f"{path} has no config.json: expected a folder written by save_pretrained (config.json + "
                "weights) or a weights file (.safetensors / .bin) with --config"
            )
        model_config = _load_config(path / "config.json")
        return _strict_load(model_config, None, str(path))
    config_path = Path(config) if config is not None else path.with_name("config.json")
    if not config_path.is_file():
        raise ExportError(f"no config for the weights file {path}: put config.json next to it or pass --config")
    return _strict_load(_load_config(config_path), _read_weights_file(path), None)


def _load_config(path: Path) -> JinaCLIPConfig:
    try:
        return JinaCLIPConfig.from_json_file(str(path))
    except ValueError as err:
        if "jina-clip convert" in str(err):  # a config.json of the original release
            raise ExportError(
                f"{path} belongs to the original jinaai/jina-clip-v2 release; convert it with "
                "`jina-clip convert --from <snapshot> --out <folder>`"
            ) from err
        raise


def _as_local_model(model: torch.nn.Module) -> JinaCLIPModel:
    """This repository's `JinaCLIPModel` holding `model`'s weights. A model loaded as remote code (a class
    from another folder's copy of the modeling file) is rebuilt, so the export always ships this
    repository's code."""
    if isinstance(model, JinaCLIPModel):
        return model
    if type(model).__name__ != "JinaCLIPModel":
        raise ExportError(f"expected a JinaCLIPModel, got {type(model).__name__}")
    config = JinaCLIPConfig.from_dict(model.config.to_dict())
    local = _strict_load(config, model.state_dict(), None)
    if getattr(model, "_processor", None) is not None:
        local.processor = model._processor
    return local


def load_processor(source: str | os.PathLike):
    """The processor (tokenizer + image processor) saved in a folder, built by this package's classes
    (`loading_jina_clip.load_folder_processor`: no code of the folder runs); the tokenizer is the folder's
    tokenizer.json as written (`load_tokenizer`), whatever tokenizer class its tokenizer_config.json names."""
    path = Path(source)
    if not any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json", "tokenizer.json")):
        raise ExportError(f"no processor in {path} (processor_config.json / tokenizer.json); pass --processor <folder>")
    for name in ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (path / name).is_file():
            read_json_object(path / name)  # a list or broken JSON is named here, not as transformers' TypeError
    processor, reason = load_folder_processor(path)
    if processor is None:
        raise ExportError(reason)
    return processor


def canonical_processor(processor, config: JinaCLIPConfig):
    """transformers' `CLIPProcessor` around this repository's `JinaCLIPImageProcessor` (at the model's
    image size) and the given XLM-R tokenizer, checked against the model's vocabulary."""
    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    if tokenizer is None or image_processor is None:
        raise ExportError(f"the processor ({type(processor).__name__}) needs both a tokenizer and an image processor")
    text = config.text_config
    if tokenizer.pad_token_id != text.pad_token_id:
        raise ExportError(f"tokenizer pad id {tokenizer.pad_token_id} differs from the model's {text.pad_token_id}")
    if len(tokenizer) > text.vocab_size:
        raise ExportError(f"tokenizer has {len(tokenizer)} tokens, more than the model's vocab_size {text.vocab_size}")
    # The tokenizer's own pipeline as is, in transformers' generic fast tokenizer: saved, it loads back
    # (AutoTokenizer / AutoProcessor) without being rebuilt by a model-specific class, which for XLM-R
    # would drop trailing "\u2581" pieces. A fast tokenizer also keeps the padding / truncation of its last
    # call in its backend: the copy has none (the same tokenizer.json whatever ran before).
    tokenizer = exact_tokenizer(tokenizer)
    skip = {"auto_map", "image_processor_type", "processor_class", "_processor_class"}
    params = {k: v for k, v in image_processor.to_dict().items() if k not in skip}
    size = config.vision_config.image_size
    params.update(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    image_processor = JinaCLIPImageProcessor(**params)
    # transformers.js and fastembed read preprocessor_config.json in the release's keys only: a setting that needs
    # transformers' keys (another resampling filter, no normalization, ...) would be served differently there.
    unread = keys_outside_release_layout(image_processor.to_dict())
    if unread:
        raise ExportError(
            f"the image processor's settings {unread} have no key in the release's preprocessor_config.json, the "
            "only one transformers.js and fastembed read: export the release's preprocessing (bicubic or bilinear "
            "resize of the shorter side, centre crop, rescale by 1/255, mean/std normalization)"
        )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def count_parameters(model: JinaCLIPModel) -> dict[str, int]:
    text = sum(p.numel() for p in model.text_model.parameters())
    vision = sum(p.numel() for p in model.vision_model.parameters())
    return {"total": sum(p.numel() for p in model.parameters()), "text": text, "vision": vision}


# ----------------------------------------------------------------------------------------------------
# Writing the folder
# ----------------------------------------------------------------------------------------------------


def _sentence_transformers_settings(config: JinaCLIPConfig) -> dict[str, Any]:
    instruction = config.task_instructions.get("retrieval.query")
    return {
        # The release's prompt; `query` makes encode_query() the same, `document` (encode_document) adds none.
        # jina-clip-v1 has no instruction, hence no prompts; a v2 model trained without one has the task, empty.
        "prompts": {"retrieval.query": instruction, "query": instruction, "document": ""} if instruction is not None else {},
        # encode_text's default: texts longer than max_text_length tokens are truncated, not rejected.
        "processing_kwargs": {"text": {"max_length": config.max_text_length}},
    }


def write_sentence_transformers_files(folder: Path, config: JinaCLIPConfig) -> None:
    """Sentence-Transformers' files for `folder`: `modules.json`, `sentence_bert_config.json`,
    `config_sentence_transformers.json` and `1_Normalize/config.json`, written from data
    (`sentence_transformers_json`).

    Not through `SentenceTransformer.save`: that needs a loaded model (a second copy of the weights, or a
    meta-device load through `device_map`, which transformers 5.25 broke by kernelizing every load), the
    library installed at export time, and its module paths (6.x writes `sentence_transformers.base.modules`,
    which 5.x cannot read). The files are data that every release since 5.4 reads; the tests load the folder
    with the installed library and with 5.4, and check that the library's own `save` of the loaded model
    writes the same content (`tests/test_hub.py`), so a format change upstream shows up there.
    """
    for name, content in sentence_transformers_json(config).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_json(folder / name, content)


def sentence_transformers_json(config: JinaCLIPConfig) -> dict[str, Any]:
    """The Sentence-Transformers files of an export, as data (file name -> JSON content)."""
    settings = _sentence_transformers_settings(config)
    pooled = {"method_output_name": "pooler_output"}
    return {
        "modules.json": [
            {"idx": 0, "name": "transformer", "path": "", "type": ST_MODULE_CLASS},
            {"idx": 1, "name": "normalizer", "path": "1_Normalize", "type": ST_NORMALIZE_CLASS},
        ],
        "sentence_bert_config.json": {
            "modality_config": {
                "image": {"method": "get_image_features", **pooled},
                "text": {"method": "get_text_features", **pooled},
            },
            "fetch_image_urls": False,
            "module_output_name": "sentence_embedding",
            "processing_kwargs": settings["processing_kwargs"],
            "transformer_task": "feature-extraction",
        },
        "config_sentence_transformers.json": {
            "__version__": {"pytorch": torch.__version__, "transformers": transformers.__version__},
            "default_prompt_name": None,
            "model_type": "SentenceTransformer",
            "prompts": settings["prompts"],
            "similarity_fn_name": "cosine",
        },
        "1_Normalize/config.json": {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
    }


def add_pipeline_config(folder: Path) -> None:
    """Make transformers' pipelines serve the folder (`pipeline(task, model=folder, trust_remote_code=True)`):
    `custom_pipelines` names `pipeline_jina_clip.py` (copied in) for the two image tasks, whose images then
    go through the model's own decoder; `AutoModelForZeroShotImageClassification` maps to the model class,
    the auto class transformers' own zero-shot pipeline loads. `feature-extraction` needs neither: it loads
    `AutoModel` and reads the first output of `forward(input_ids=...)`, the normalized text embedding."""
    source = Path(pipeline_jina_clip.__file__)
    shutil.copyfile(source, folder / source.name)
    config_path = folder / "config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    auto_map = saved.setdefault("auto_map", {})
    if "AutoModel" in auto_map:
        auto_map.setdefault("AutoModelForZeroShotImageClassification", auto_map["AutoModel"])
    saved["custom_pipelines"] = copy.deepcopy(pipeline_jina_clip.CUSTOM_PIPELINES)
    write_json(config_path, saved)


def _forget_remote_code(folder: Path) -> None:
    """Remove the copy of `folder`'s remote code that loading it made in transformers' module cache (the
    staging folder has a random name, so each export would otherwise leave one behind)."""
    shutil.rmtree(Path(HF_MODULES_CACHE) / "transformers_modules" / folder.name, ignore_errors=True)


def _write_folder(
    staging: Path,
    model: JinaCLIPModel,
    processor,
    *,
    max_shard_size: str | int,
    dtype: torch.dtype | None,
    card_kwargs: dict[str, Any],
) -> None:
    config = model.config
    state_dict = None
    saved_dtype = model.dtype
    if dtype is not None and dtype != model.dtype:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        saved_dtype = dtype
    logger.info("writing weights (%s, shards of at most %s)", str(saved_dtype).split(".")[-1], max_shard_size)
    model.save_pretrained(
        staging,
        state_dict=state_dict,
        max_shard_size=max_shard_size,
        # Keep the model's own key layout (not transformers' reverse conversion of the text tower to
        # the original jina-embeddings-v3 names): the files then read the same with any loader.
        save_original_format=False,
    )
    if state_dict is not None:  # save_pretrained records the dtype of the in-memory parameters
        saved = json.loads((staging / "config.json").read_text(encoding="utf-8"))
        saved["dtype"] = str(dtype).split(".")[-1]
        write_json(staging / "config.json", saved)
    add_pipeline_config(staging)
    logger.info("writing tokenizer and processor")
    processor.save_pretrained(staging)
    # The release, transformers.js and fastembed read the image processor from preprocessor_config.json, in the
    # release's keys (`JinaCLIPImageProcessor.to_dict`); transformers 5 nests the same dict in processor_config.json.
    processor.image_processor.save_pretrained(staging)
    name_generic_tokenizer_class(staging)
    logger.info("writing Sentence-Transformers configuration")
    shutil.copyfile(ST_MODULE_FILE, staging / ST_MODULE_FILE.name)
    write_sentence_transformers_files(staging, config)
    logger.info("writing model card")
    card = build_model_card(
        config, num_parameters=count_parameters(model), dtype=str(saved_dtype).split(".")[-1], **card_kwargs
    )
    (staging / "README.md").write_text(str(card) if str(card).endswith("\n") else f"{card}\n", encoding="utf-8")
    for junk in staging.rglob("__pycache__"):
        shutil.rmtree(junk)
    canonicalize_json_files(staging)


def export_model(
    model_or_path: JinaCLIPModel | str | os.PathLike,
    out: str | os.PathLike,
    *,
    processor=None,
    config: str | os.PathLike | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    dtype: str | torch.dtype | None = None,
    eval_results: str | os.PathLike | Mapping | None = None,
    training_summary: str | os.PathLike | Mapping | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str | None = None,
    base_model: str | list[str] | None = None,
    datasets: list[str] | None = None,
    source_note: str | None = None,
    overwrite: bool = False,
    onnx: bool = False,
    verify: Callable[[Path], Any] | None = None,
) -> Path:
    """Write a Hub-ready folder for a jina-clip-v2 model and return its path.

    Args:
        model_or_path: a `JinaCLIPModel`, a `save_pretrained` folder or a weights file (see `load_model`).
        out: the folder to create (must not exist unless `overwrite`).
        processor: a processor object or folder; default: the model's attached processor, else the
            processor saved in the model's folder.
        config: config.json for a bare weights file (default: next to it).
        max_shard_size: weights above this size are split into shards with an index ("5GB", "200MB", bytes).
        dtype: cast floating weights to "float32" / "bfloat16" / "float16" (default: as they are).
        eval_results / training_summary: JSON files or dicts for the model card (`hub.model_card`).
        repo_id: the Hub repository the folder is meant for (used in the card's usage snippets).
        model_name: the card's title (default: the name of `repo_id`, else of `out`; for a training
            stage's `model/` folder, the stage folder's name).
        license: the weights' license (default: the base model's, for the models in
            `hub.model_card.BASE_MODEL_LICENSES`; else none).
        base_model, datasets: card metadata (Hub ids; default: the training summary's).
        source_note: a sentence for the card about where the weights come from.
        overwrite: replace an existing `out` (only once the new folder is complete).
        onnx: also export both towers to `out/onnx` in fp32 / fp16 / int8 with a parity table (`hub.onnx`).
        verify: a check run on the complete folder before it takes the name `out` (e.g. `check_export`); if it
            raises, nothing is written at `out` and an existing `out` stays as it was.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if isinstance(model_or_path, (str, os.PathLike)):
        logger.info("loading model from %s", model_or_path)
        model = load_model(model_or_path, config=config)
        if processor is None:
            source = Path(model_or_path)
            processor = load_processor(source if source.is_dir() else source.parent)
    else:
        model = _as_local_model(model_or_path)
    if processor is None:
        if getattr(model, "_processor", None) is None and not model.name_or_path:
            raise ExportError("the model has no processor attached; pass processor=... (or --processor <folder>)")
        if getattr(model, "_processor", None) is None and Path(model.name_or_path).is_dir():
            processor = load_processor(model.name_or_path)  # its tokenizer.json as written
        else:
            processor = model.processor
    elif isinstance(processor, (str, os.PathLike)):
        processor = load_processor(processor)
    processor = canonical_processor(processor, model.config)

    out = Path(out)
    if model_name is None and repo_id is None:
        model_name = (out.resolve().parent if out.name == "model" else out.resolve()).name
    card_kwargs = dict(
        repo_id=repo_id,
        model_name=model_name,
        license=license,
        base_model=base_model,
        datasets=datasets,
        eval_results=eval_results,
        training_summary=training_summary,
        source=source_note,
    )
    # Read the card inputs before writing anything: a malformed results file fails fast.
    build_model_card(model.config, **card_kwargs)
    with atomic_folder(out, overwrite=overwrite) as staging:
        _write_folder(staging, model, processor, max_shard_size=max_shard_size, dtype=dtype, card_kwargs=card_kwargs)
        problems = weights_problems(staging)  # whole weights files only take the name `out`
        if problems:
            raise ExportError("; ".join(problems))
        if onnx:
            try:
                export_onnx(staging, staging / "onnx", update_folder=True)
            finally:
                _forget_remote_code(staging)
        if verify is not None:
            try:
                verify(staging)
            finally:
                _forget_remote_code(staging)
    files = folder_files(out)
    total = sum((out / f).stat().st_size for f in files)
    logger.info("exported %d files (%s) to %s", len(files), human_size(total), out)
    return out


# ----------------------------------------------------------------------------------------------------
# Checking an exported folder
# ----------------------------------------------------------------------------------------------------


def probe_inputs(image_size: int) -> tuple[list[str], list]:
    """A few deterministic texts (several scripts) and synthetic RGB images for parity checks."""
    texts = ["a photo of a dog in the snow", "Ein Hund spielt im Schnee", "雪の中で遊ぶ犬", "un chat"]
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((image_size + 9, image_size + 30), (image_size * 2, image_size))
    ]
    return texts, images


def check_export(folder: str | os.PathLike, reference: JinaCLIPModel | None = None, *, atol: float = 1e-5) -> dict:
    """Reload an exported folder the way users without this package do (the folder's own copy of the model code,
    as `AutoModel.from_pretrained(..., trust_remote_code=True)` loads it, and its processor; SentenceTransformer
    when installed) and compare embeddings of probe texts and images: Sentence-Transformers against `encode_text` /
    `encode_image`, and both against `reference` (a model holding the weights that were exported) when given.
    Raises `AssertionError` on a mismatch; returns the largest differences.

    The model class is taken from the folder's `auto_map` explicitly: with this package imported, transformers'
    auto classes resolve the registered `jina_clip` type to the installed code instead."""
    folder = str(folder)
    auto_map = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))["auto_map"]
    model_class = get_class_from_dynamic_module(auto_map["AutoModel"], folder)
    model = model_class.from_pretrained(folder, dtype=torch.float32).eval()
    AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    texts, images = probe_inputs(model.config.vision_config.image_size)
    # The query instruction where the model has one (jina-clip-v1 has none).
    task = "retrieval.query" if "retrieval.query" in model.config.task_instructions else None
    text_emb = model.encode_text(texts, task=task)
    image_emb = model.encode_image(images)
    report: dict[str, float] = {}

    def compare(name: str, got, expected) -> None:
        diff = float(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64)).max())
        report[name] = diff
        if not diff <= atol:
            raise ExportError(f"{name}: embeddings differ by {diff:.3g} (> {atol:g}) in {folder}")

    if reference is not None:
        if getattr(reference, "_processor", None) is None:
            reference.processor = model.processor
        reference = reference.float().eval()
        compare("automodel_vs_reference_text", text_emb, reference.encode_text(texts, task=task))
        compare("automodel_vs_reference_image", image_emb, reference.encode_image(images))
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        logger.warning("sentence-transformers is not installed: Sentence-Transformers loading not checked")
        return report
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.float32})
    compare("sentence_transformers_text", st.encode(texts, prompt_name=task), text_emb)
    compare("sentence_transformers_image", st.encode(images), image_emb)
    mixed = st.encode([texts[1], images[0], texts[2], images[1]])
    compare("sentence_transformers_mixed", mixed, np.stack([model.encode_text(texts[1]), image_emb[0], model.encode_text(texts[2]), image_emb[1]]))
    return report


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def _shard_size(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
    card = parser.add_argument_group("model card")
    card.add_argument("--eval-results", type=Path, help="evaluation results JSON (schema: hub/card_inputs.py)")
    card.add_argument("--training-summary", type=Path, help="training summary JSON (schema: hub/card_inputs.py)")
    card.add_argument("--repo-id", help="Hub repository the folder is meant for (usage snippets)")
    card.add_argument(
        "--title", "--model-name", dest="model_name", help="the card's title and model name (default: from --repo-id, else --out)"
    )
    card.add_argument(
        "--license",
        help="license id of the weights (default: the base model's for "
        f"{', '.join(sorted(BASE_MODEL_LICENSES))}; else none)",
    )
    card.add_argument("--base-model", help="Hub id of the model the weights come from (card metadata)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument(
        "--max-shard-size",
        type=_shard_size,
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"split weights into shards of at most this size, e.g. 2GB or 500MB (default: {DEFAULT_MAX_SHARD_SIZE})",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating weights (default: keep)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jina-clip export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="save_pretrained folder or weights file (.safetensors / .bin)")
    parser.add_argument("--config", type=Path, help="config.json for a bare weights file (default: next to it)")
    parser.add_argument("--processor", type=Path, help="folder with the processor (default: the model folder)")
    add_output_arguments(parser)
    parser.add_argument("--verify", action="store_true", help="reload the folder and compare embeddings")
    parser.add_argument("--onnx", action="store_true", help="also export the towers as ONNX into <out>/onnx (`jina-clip onnx`)")
    add_card_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()

    def verify(folder: Path) -> None:
        logger.info("verifying %s", folder)
        reference = load_model(args.model, config=args.config)
        for name, diff in check_export(folder, reference, atol=1e-5 if args.dtype in (None, "float32") else 1e-2).items():
            logger.info("  %s: max |diff| %.2e", name, diff)

    try:
        folder = export_model(
            args.model,
            args.out,
            processor=args.processor,
            config=args.config,
            max_shard_size=args.max_shard_size,
            dtype=args.dtype,
            eval_results=args.eval_results,
            training_summary=args.training_summary,
            repo_id=args.repo_id,
            model_name=args.model_name,
            license=args.license,
            base_model=args.base_model,
            overwrite=args.overwrite,
            onnx=args.onnx,
            verify=verify if args.verify else None,  # before the folder takes its name: a failure leaves nothing
        )
    except (ExportError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip export"))


__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "ExportError",
    "canonical_processor",
    "check_export",
    "export_model",
    "load_model",
    "load_processor",
    "main",
    "sentence_transformers_json",
    "write_sentence_transformers_files",
]
