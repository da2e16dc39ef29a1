"""The README.md model card of an exported jina-clip-v2 folder, built with huggingface_hub's
`ModelCard` / `ModelCardData`.

The card's metadata says what the Hub needs to list and run the model (library_name `transformers`,
pipeline_tag `feature-extraction`, tags, languages, license, base_model, datasets) and, when evaluation
results are given, a `model-index`. The body explains the model, shows usage through `AutoModel` and
`SentenceTransformer` (with `truncate_dim`), a results table and the training stages.
The inputs (evaluation results and training summary JSON: schemas in `hub/card_inputs.py`) are checked and
rendered by `card_inputs`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .card_inputs import (
    ModelCardError,
    _count,
    _is_local_path,
    _is_number,
    _public,
    _table,
    eval_results_to_card,
    load_eval_results,
    load_training_summary,
    training_claim,
    training_summary_to_table,
)

LIBRARY_NAME = "transformers"
PIPELINE_TAG = "feature-extraction"
DEFAULT_LICENSE = "cc-by-nc-4.0"  # the license of the released jina-clip-v2 weights
RELEASE_REPO = "jinaai/jina-clip-v2"
# Licenses a card inherits from its base model when none is given (weights derived from these carry them).
BASE_MODEL_LICENSES = {
    RELEASE_REPO: DEFAULT_LICENSE,
    "jinaai/jina-embeddings-v3": "cc-by-nc-4.0",
    "jinaai/jina-embeddings-v3-hf": "cc-by-nc-4.0",
    "jinaai/jina-clip-v1": "apache-2.0",
    "timm/eva02_large_patch14_clip_224.merged2b": "mit",
    "FacebookAI/xlm-roberta-large": "mit",
}
TAGS = [
    "jina-clip",
    "clip",
    "eva02",
    "xlm-roberta",
    "multimodal",
    "multilingual",
    "retrieval",
    "matryoshka",
    "sentence-transformers",
    "sentence-similarity",
    "feature-extraction",
    "custom_code",
]
# ISO 639 codes of XLM-RoBERTa's pretraining languages (the tokenizer and backbone of jina-embeddings-v3
# and jina-clip-v2; the paper reports 89 supported languages); "multilingual" first for the Hub's filter.
LANGUAGES = [
    "multilingual", "af", "am", "ar", "as", "az", "be", "bg", "bn", "br", "bs", "ca", "cs", "cy", "da", "de",
    "el", "en", "eo", "es", "et", "eu", "fa", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha", "he", "hi",
    "hr", "hu", "hy", "id", "is", "it", "ja", "jv", "ka", "kk", "km", "kn", "ko", "ku", "ky", "la", "lo",
    "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my", "ne", "nl", "no", "om", "or", "pa", "pl", "ps",
    "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "th",
    "tl", "tr", "ug", "uk", "ur", "uz", "vi", "xh", "yi", "zh",
]  # fmt: skip
# Pipeline tags a card of this model may carry (the Hub's list is longer; these are the sensible ones).
_PIPELINE_TAGS = {"feature-extraction", "sentence-similarity", "zero-shot-image-classification"}
_LANGUAGE_CODE = re.compile(r"^(multilingual|[a-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# A local filesystem path: absolute (POSIX, Windows drive or UNC), home-relative or explicitly relative.

CITATION = """\
@misc{koukounas2024jinaclipv2,
  title         = {jina-clip-v2: Multilingual Multimodal Embeddings for Text and Images},
  author        = {Andreas Koukounas and Georgios Mastrapas and Bo Wang and Mohammad Kalim Akram and
                   Sedigheh Eslami and Michael G{\\"u}nther and Isabelle Mohr and Saba Sturua and
                   Scott Martens and Nan Wang and Han Xiao},
  year          = {2024},
  eprint        = {2412.08802},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2412.08802},
}"""


# jina-clip-v1 (Koukounas et al., 2024, arXiv 2405.20204): English, 768-d, no Matryoshka, no instruction,
# Apache-2.0 weights. The card of a v1 folder (config.version == "v1") says so instead of the v2 texts.
V1_RELEASE_REPO = "jinaai/jina-clip-v1"
V1_LICENSE = "apache-2.0"
V1_TAGS = [tag for tag in TAGS if tag not in ("xlm-roberta", "multilingual", "matryoshka")] + ["jina-bert"]
V1_CITATION = """\
@misc{koukounas2024jinaclip,
  title         = {Jina CLIP: Your CLIP Model Is Also Your Text Retriever},
  author        = {Andreas Koukounas and Georgios Mastrapas and Michael G{\\"u}nther and Bo Wang and
                   Scott Martens and Isabelle Mohr and Saba Sturua and Mohammad Kalim Akram and
                   Joan Fontanals Mart{\\'i}nez and Saahil Ognawala and Susana Guzman and Maximilian Werk and
                   Nan Wang and Han Xiao},
  year          = {2024},
  eprint        = {2405.20204},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2405.20204},
}"""


def _usage_v1(repo: str) -> str:
    return f"""\
### Transformers

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)

texts = ["a dog playing in the snow", "A golden retriever runs through fresh snow."]
images = ["dog.jpg", "https://example.com/cat.png"]  # paths, URLs, data URIs or PIL images

# No instructions and no truncation: jina-clip-v1 embeds queries and documents alike, at full width.
text_embeddings = model.encode_text(texts)
image_embeddings = model.encode_image(images)
print(text_embeddings @ image_embeddings.T)  # L2-normalised: cosine similarities
```

### Sentence-Transformers

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo}", trust_remote_code=True)
embeddings = model.encode(["a dog playing in the snow", "dog.jpg"])  # texts and images in one list
print(model.similarity(embeddings, embeddings))  # cosine
```"""



def _instruction_note(instruction: str) -> str:
    if instruction:
        return f'`task="retrieval.query"` prepends "{instruction}" to each text, as in training.'
    return '`task="retrieval.query"` adds nothing: this model was trained without a query instruction.'


def _usage(repo: str, dims: list[int], instruction: str) -> str:
    dim = 256 if 256 in dims else dims[len(dims) // 2]
    return f"""\
### Transformers

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)

queries = ["Ein Hund spielt im Schnee", "a dog playing in the snow"]
documents = ["A golden retriever runs through fresh snow.", "Un gato duerme en el sofá."]
images = ["dog.jpg", "https://example.com/cat.png"]  # paths, URLs, data URIs or PIL images

# Queries get the retrieval instruction; documents and images get none.
query_embeddings = model.encode_text(queries, task="retrieval.query", truncate_dim={dim})
document_embeddings = model.encode_text(documents, truncate_dim={dim})
image_embeddings = model.encode_image(images, truncate_dim={dim})

# Embeddings are L2-normalised after truncation: dot products are cosine similarities.
print(query_embeddings @ image_embeddings.T)
print(query_embeddings @ document_embeddings.T)
```

`truncate_dim` (Matryoshka) may be any of {dims} (the widths it was trained for); omit it for the full
{dims[-1]} dimensions. {_instruction_note(instruction)}

### Sentence-Transformers

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo}", trust_remote_code=True, truncate_dim={dim})

queries = ["Ein Hund spielt im Schnee", "a dog playing in the snow"]
query_embeddings = model.encode(queries, prompt_name="retrieval.query", normalize_embeddings=True)
# One list may mix texts and images (PIL images, local paths, {{"image": url_or_path}}).
embeddings = model.encode(["a dog playing in the snow", "dog.jpg"], normalize_embeddings=True)
print(model.similarity(query_embeddings, embeddings))  # cosine
```

`model.encode_query(...)` and `model.encode(..., task="retrieval.query")` use the same query instruction;
`model.encode_document(...)` adds none. A string that looks like an http(s) URL is embedded as a text: pass
`{{"image": url}}` to embed the image it points to. Sentence-Transformers normalises before it truncates:
pass `normalize_embeddings=True` (as above) to get unit vectors after truncation, identical to
`encode_text` / `encode_image`; `model.similarity` is cosine either way. `truncate_dim` must be one of
{dims}."""


def build_model_card(
    config,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str | None = None,
    base_model: str | list[str] | None = None,
    datasets: list[str] | None = None,
    eval_results: str | os.PathLike | Mapping | None = None,
    training_summary: str | os.PathLike | Mapping | None = None,
    num_parameters: Mapping[str, int] | None = None,
    dtype: str | None = None,
    source: str | None = None,
) -> ModelCard:
    """The model card of an exported folder.

    Args:
        config: the model's `JinaCLIPConfig` (sizes, Matryoshka dims, instruction).
        repo_id: where the folder will live on the Hub; shown in the usage snippets (else a placeholder).
        model_name: the card's title and metadata name (default: the repository name of `repo_id`).
        license: the weights' license id; default: the base model's (`BASE_MODEL_LICENSES`), else none.
        base_model: Hub id(s) of the model the weights come from (default: the training summary's);
            local paths are left out of the metadata.
        eval_results / training_summary: paths or dicts in the formats of this module's docstring.
        num_parameters: {"total": ..., "text": ..., "vision": ...} shown in the description.
        dtype: the weights' dtype as saved.
        source: a line saying where the weights come from (e.g. the converted release snapshot).
    """
    evaluation = load_eval_results(eval_results) if eval_results is not None else None
    training = load_training_summary(training_summary) if training_summary is not None else None
    if base_model is None and training is not None:
        base_model = training.get("base_model")
    if datasets is None and training is not None:
        datasets = training.get("datasets")
    v1 = getattr(config, "version", "v2") == "v1"
    bases = [base_model] if isinstance(base_model, str) else list(base_model or [])
    bases = [base for base in bases if not _is_local_path(base)]  # metadata names Hub models only
    base_model = (bases[0] if len(bases) == 1 else bases) or None
    datasets = [name for name in datasets or [] if not _is_local_path(name)] or None
    inherited = license is None and any(base in BASE_MODEL_LICENSES for base in bases)
    if license is None:  # the most restrictive of the bases' (a non-commercial one wins)
        inherited_licenses = [BASE_MODEL_LICENSES[base] for base in bases if base in BASE_MODEL_LICENSES]
        license = "cc-by-nc-4.0" if "cc-by-nc-4.0" in inherited_licenses else next(iter(inherited_licenses), None)
    name = model_name or (repo_id.split("/")[-1] if repo_id else "jina-clip model")
    repo = repo_id or "path/to/exported-folder"
    text, vision = config.text_config, config.vision_config
    dims = list(config.matryoshka_dimensions)
    instruction = config.task_instructions.get("retrieval.query", "")

    entries, results_table = (None, None)
    if evaluation is not None:
        entries, results_table = eval_results_to_card(evaluation, config.projection_dim)
    data = ModelCardData(
        model_name=name,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=list(V1_TAGS if v1 else TAGS),
        language=["en"] if v1 else list(LANGUAGES),
        license=license,
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        eval_results=entries or None,
        inference=False,
    )

    params = ""
    if num_parameters:
        params = (
            f" It has {_count(num_parameters['total'])} parameters (text tower "
            f"{_count(num_parameters.get('text', 0))}, vision tower {_count(num_parameters.get('vision', 0))})"
            + (f", stored in {dtype}." if dtype else ".")
        )
    if v1:
        intro = (
            "An English multimodal embedding model in the architecture of jina-clip-v1 "
            "([paper](https://arxiv.org/abs/2405.20204))"
        )
        text_tower = "JinaBERT (BERT geometry with ALiBi attention biases and a gated GELU MLP, `modeling_jina_bert.py`)"
        matryoshka = f"- **Matryoshka**: not trained for truncation: use the full {config.projection_dim} dimensions.\n"
    else:
        intro = (
            "A multilingual, multimodal embedding model in the architecture of jina-clip-v2 "
            "([paper](https://arxiv.org/abs/2412.08802))"
        )
        text_tower = (
            "XLM-RoBERTa geometry with rotary position embeddings (jina-embeddings-v3 backbone, "
            "transformers' `JinaEmbeddingsV3Model`)"
        )
        matryoshka = f"- **Matryoshka**: embeddings can be truncated to {dims} dimensions (truncate, then normalise).\n"
    sections = [
        f"# {name}",
        f"{intro}: texts and images are embedded into one {config.projection_dim}-dimensional space, for "
        f"text-to-image, image-to-text and text-to-text retrieval.{params}",
        f"- **Text tower**: {text_tower}: {text.num_hidden_layers} layers, width {text.hidden_size}, "
        f"{text.num_attention_heads} heads, vocabulary {text.vocab_size}; mean pooling; up to "
        f"{config.max_text_length} tokens per text by default.\n"
        f"- **Vision tower**: EVA02 ViT: {vision.num_hidden_layers} layers, width {vision.hidden_size}, "
        f"patch {vision.patch_size}, {vision.image_size}x{vision.image_size} px input, 2D RoPE, SwiGLU; CLS pooling.\n"
        + matryoshka
        + "- **Files**: remote code (`configuration_jina_clip.py`, `modeling_jina_clip.py`, `encoding_jina_clip.py`, "
        "`policy_jina_clip.py`, `loading_jina_clip.py`, `configuration_jina_bert.py`, `modeling_jina_bert.py`, "
        "`processing_jina_clip.py`, `fetching_jina_clip.py`, `tokenization_jina_clip.py`, `custom_st.py`, "
        "`pipeline_jina_clip.py`), safetensors weights, tokenizer and "
        "processor, Sentence-Transformers configuration.",
    ]
    if source:
        sections.append(source)
    sections += ["## Usage", _usage_v1(repo) if v1 else _usage(repo, dims, instruction)]
    if results_table is not None:
        model_note = f" of `{_public(evaluation['model'])}`" if evaluation.get("model") else ""
        sections += [
            "## Evaluation",
            f"Results{model_note} (Dim: embedding dimensions used; Matryoshka truncation below the full "
            f"{config.projection_dim}).",
            results_table,
        ]
    if training is not None:
        sections += ["## Training", training_claim(training)]
        if training.get("stages"):
            sections.append(training_summary_to_table(training))
    if license is None:
        license_text = "No license was given for these weights (`jina-clip export --license <id>` sets one)."
    elif inherited:
        origin = next(base for base in bases if BASE_MODEL_LICENSES.get(base) == license)
        license_text = f"The weights derive from `{origin}` and are released under its license, `{license}`."
    else:
        license_text = f"The weights are released under `{license}`" + (
            " (as the original jinaai/jina-clip-v2 weights)." if RELEASE_REPO in bases and license == DEFAULT_LICENSE else "."
        )
    sections += [
        "## License",
        license_text,
        "## Citation",
        f"```bibtex\n{V1_CITATION if v1 else CITATION}\n```",
    ]
    body = "\n\n".join(sections) + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# ----------------------------------------------------------------------------------------------------
# The ONNX section (written by `jina-clip onnx`, hub/onnx.py)
# ----------------------------------------------------------------------------------------------------

ONNX_HEADING = "## ONNX"


def onnx_section(report: Mapping[str, Any]) -> str:
    """The card's ONNX section: where the graphs are, how to run them, and the parity table of a
    `hub.onnx.export_onnx` report (also written as onnx/parity.md)."""
    from ._util import human_size

    rows = [
        [
            row["tower"],
            row["precision"],
            f"`onnx/{row['file']}`" + (f" (+ {len(row['external_data_files'])} data file(s))" if row["external_data_files"] else ""),
            f"`{row['transformers_js_dtype']}`",
            human_size(row["bytes"]),
            f"{row['max_abs_diff']:.2e}",
            f"{row['max_abs_diff_normalized']:.2e}",
            f"{row['min_cosine']:.6f}",
            f"{row['mean_cosine']:.6f}",
        ]
        for row in report["rows"]
    ]
    table = _table(
        ["Tower", "Precision", "File", "transformers.js dtype", "Size", "Max abs diff", "Max abs diff (normalized)", "Min cosine", "Mean cosine"],
        rows,
    )
    data = report.get("data", {})
    versions = report.get("versions", {})
    return "\n\n".join(
        [
            ONNX_HEADING,
            "The text and vision towers as separate ONNX graphs (dynamic batch; dynamic sequence length for text), "
            "in the layout transformers.js loads `JinaCLIPTextModel` / `JinaCLIPVisionModel` from. Inputs: "
            "`input_ids` + `attention_mask` (text), `pixel_values` (vision, preprocessed as by the processor). "
            "Outputs: `text_embeddings` / `image_embeddings` (pooled, before normalization) and "
            "`l2norm_text_embeddings` / `l2norm_image_embeddings`. For Matryoshka truncation keep the first k "
            "dimensions of the un-normalized output, then L2-normalize; for queries prepend the "
            "`retrieval.query` instruction to the text.",
            "```python\nfrom jina_clip_v2.hub.onnx_runtime import JinaCLIPOnnx  # no PyTorch needed\n\n"
            "model = JinaCLIPOnnx(\"path/to/folder\", precision=\"int8\")  # fp32 | fp16 | int8\n"
            "queries = model.encode_text([\"Ein Hund spielt im Schnee\"], task=\"retrieval.query\", truncate_dim=256)\n"
            "images = model.encode_image([\"dog.jpg\"], truncate_dim=256)\nprint(queries @ images.T)\n```",
            f"Parity against fp32 PyTorch (`encode_text` / `encode_image`) on {data.get('texts', '?')} texts in "
            f"{len(data.get('languages', []))} languages and {data.get('images', '?')} images of the bundled demo data "
            f"(ONNX Runtime {versions.get('onnxruntime', '?')}, CPU, opset {report.get('opset', '?')}). Max abs diff: "
            "largest difference of the un-normalized embeddings (normalized: of the unit vectors); cosines per "
            "embedding.",
            table,
            *([report["clients_markdown"]] if report.get("clients_markdown") else []),  # hub.onnx.clients_markdown
        ]
    )


def set_onnx_section(card: str, report: Mapping[str, Any]) -> str:
    """`card` (README.md text) with its ONNX section replaced, or inserted before the License section."""
    section = onnx_section(report) + "\n\n"
    lines = card.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == ONNX_HEADING), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        return "".join(lines[:start]) + section + "".join(lines[end:])
    before = next((i for i, line in enumerate(lines) if line.rstrip() in ("## License", "## Citation")), len(lines))
    return "".join(lines[:before]) + section + "".join(lines[before:])


# ----------------------------------------------------------------------------------------------------
# Checking a card
# ----------------------------------------------------------------------------------------------------


def validate_model_card(card: ModelCard | str | os.PathLike) -> ModelCardData:
    """Check a card's metadata offline and return it; `ModelCardError` lists every problem.

    `ModelCard.validate()` asks the Hub's API and so needs the network; this checks what the Hub checks
    for this kind of card without it: the YAML parses (strictly, model-index included), the library,
    pipeline tag, license, languages, tags and base model are well formed, and every evaluation result
    has a task, a dataset and a numeric value.
    """
    if not isinstance(card, ModelCard):
        card = ModelCard.load(card, ignore_metadata_errors=False)
    data = card.data
    problems = []
    if data.library_name != LIBRARY_NAME:
        problems.append(f"library_name is {data.library_name!r}, expected {LIBRARY_NAME!r}")
    if data.pipeline_tag not in _PIPELINE_TAGS:
        problems.append(f"pipeline_tag {data.pipeline_tag!r} is not one of {sorted(_PIPELINE_TAGS)}")
    if data.license is not None and (not isinstance(data.license, str) or not _LICENSE_ID.match(data.license)):
        problems.append(f"license {data.license!r} is not a license identifier (e.g. 'cc-by-nc-4.0')")
    languages = data.language if isinstance(data.language, list) else [data.language]
    bad_languages = [code for code in languages if not isinstance(code, str) or not _LANGUAGE_CODE.match(code)]
    if not languages or bad_languages:
        problems.append(f"language must list ISO 639 codes; invalid: {bad_languages or 'none given'}")
    if not data.tags or not all(isinstance(tag, str) and tag for tag in data.tags):
        problems.append("tags must be a non-empty list of strings")
    bases = data.base_model if isinstance(data.base_model, list) else [data.base_model] if data.base_model else []
    bad_bases = [b for b in bases if not isinstance(b, str) or not _REPO_ID.match(b)]
    if bad_bases:
        problems.append(f"base_model must be Hub repo ids (owner/name); invalid: {bad_bases}")
    for result in data.eval_results or []:
        if not (result.task_type and result.dataset_type and result.dataset_name and result.metric_type):
            problems.append(f"incomplete model-index entry: {result}")
        if not _is_number(result.metric_value):
            problems.append(f"model-index value of {result.metric_type} on {result.dataset_name} is not a number")
    if problems:
        raise ModelCardError("model card metadata is invalid:\n- " + "\n- ".join(problems))
    return data


__all__ = [
    "BASE_MODEL_LICENSES",
    "DEFAULT_LICENSE",
    "V1_LICENSE",
    "V1_RELEASE_REPO",
    "ModelCardError",
    "build_model_card",
    "eval_results_to_card",
    "load_eval_results",
    "load_training_summary",
    "onnx_section",
    "set_onnx_section",
    "training_claim",
    "training_summary_to_table",
    "validate_model_card",
]
