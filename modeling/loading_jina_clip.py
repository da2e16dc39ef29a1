"""What `JinaCLIPModel.from_pretrained` adds to transformers' own loading, one function per addition:

- `default_dtype`: bf16 where CUDA is available, fp32 otherwise, unless the caller gives a dtype (the release's
  rule: the towers were trained in bf16, paper Table 6). On CPU, fp32 keeps every entry point equal to the release's
  CPU embeddings. bf16 is an explicit option (`dtype=torch.bfloat16`), worth it where the CPU multiplies bf16
  natively (`native_bf16`: AVX512-BF16 / AMX / Arm BF16): measured on such a CPU (AMD EPYC, one thread, full-depth
  real-width towers with random weights, benchmarks/README.md "Every entry point"), encode_text 2.0x and encode_image
  at 512 px 1.9x faster than fp32, min cosine to fp32 0.99965 (texts) and 0.99933 (images). Without native bf16,
  oneDNN emulates it and bf16 is slower than fp32.
- `check_loading_report`: strict loading from transformers' public loading report (`output_loading_info`):
  missing, unexpected and mis-shaped tensors, and non-finite weights, are errors naming them. transformers would
  re-initialise a missing tensor at random with a log line: plausible-looking but wrong embeddings.
- `weights_file_errors`: an unreadable (truncated, corrupt) safetensors file is an error naming the folder.
- `load_processor`: the processor saved beside the weights, loaded with this package's own classes
  (`JinaCLIPImageProcessor` with the folder's settings, and the folder's tokenizer.json as written through
  `load_tokenizer`), so no code of the folder runs, whatever its processor or tokenizer config names; and the
  tokenizer is checked against the model's vocabulary (`check_processor`).

This file is Hub remote code: it imports torch and transformers, nothing of this repository except relatively.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from transformers import CLIPProcessor
from transformers.utils import cached_file

from .processing_jina_clip import JinaCLIPImageProcessor
from .tokenization_jina_clip import load_tokenizer

# from_pretrained keywords that say where files come from (passed on to the processor's files).
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension (the flags
    Linux lists in /proc/cpuinfo; False elsewhere or where they cannot be read). Without them, oneDNN emulates
    bf16 matmuls by converting to fp32, which is slower than fp32 itself."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            flags = set()
            for line in file:
                if line.lower().startswith(("flags", "features")):
                    flags.update(line.split(":", 1)[-1].split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def default_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


@contextlib.contextmanager
def weights_file_errors(source):
    try:
        yield
    except Exception as err:  # noqa: BLE001 - a corrupt weights file: name it
        if type(err).__name__ != "SafetensorError" and "deserializ" not in str(err):
            raise
        raise ValueError(
            f"cannot read the weights of {source}: {err} (a truncated or corrupt .safetensors file; download or "
            "export it again)"
        ) from err


def check_loading_report(model, info: dict, source) -> None:
    """transformers' loading report (`from_pretrained(..., output_loading_info=True)`, loaded with
    `ignore_mismatched_sizes=True` so that tensors of another shape are listed, not raised without their names)
    as an error naming every problem; then a scan for NaN / infinite weights (one makes every embedding NaN)."""
    problems = []
    for label, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys"))):
        if keys:
            keys = sorted(keys)
            problems.append(f"{len(keys)} {label} tensor(s): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
    mismatched = [str(item) for item in info.get("mismatched_keys") or []]
    if mismatched:
        hint = " (weights of another image size: load at the saved size, then model.set_image_size(...))" if any(
            "pos_embed" in item for item in mismatched) else ""
        problems.append(f"tensors of another shape: {mismatched[:8]}{hint}")
    if problems:
        raise ValueError(
            f"the weights in {source} do not match the model: {'; '.join(problems)} (strict=False loads anyway, "
            "initialising missing tensors at random)"
        )
    bad = [
        name for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())
    ]  # fmt: skip
    if bad:
        raise ValueError(f"the weights in {source} hold NaN or infinite values in {', '.join(bad[:8])}")


def set_processor_image_size(processor, image_size: int) -> None:
    image_processor = getattr(processor, "image_processor", processor)
    image_processor.size = {"shortest_edge": image_size}
    image_processor.crop_size = {"height": image_size, "width": image_size}


def check_processor(processor, config) -> None:
    """A tokenizer with more ids than the text tower has embeddings would fail on its first rare token (an
    IndexError deep in the embedding): refused where it is attached, naming both sizes."""
    tokenizer = getattr(processor, "tokenizer", None)
    vocab_size = config.text_config.vocab_size
    if tokenizer is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary of {vocab_size} "
            f"(text_config.vocab_size): ids from {vocab_size} on have no embedding; use the model's own tokenizer"
        )


def _file(source, name: str, hub_kwargs: dict) -> str | None:
    """The local path of `name` in a folder or Hub repository (downloaded when needed), or None where it has none."""
    try:
        return cached_file(os.fspath(source), name, **hub_kwargs)
    except OSError:
        return None


def _no_processor(folder: str, reason) -> str:
    return (
        f"cannot load the processor (tokenizer + image processor) of {folder!r}: {reason}. Save one next to the "
        "weights with `processor.save_pretrained(folder)` or assign `model.processor`."
    )


def load_folder_processor(source, config=None, strict: bool = True, kwargs: dict | None = None) -> tuple[Any, str | None]:
    """(processor, None), or (None, why there is none) for a folder without one (the model still loads, and
    `encode_*` say how to attach one). A folder holding a processor config but no tokenizer.json is an error when
    `strict`: transformers would build a tokenizer of a few special tokens, under which every text embeds alike.
    With the model's `config`, the processor is checked against it (`check_processor`) and set to its image size.
    `kwargs`: from_pretrained's keywords, of which those saying where files come from (`HUB_KWARGS`) are used."""
    hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if (kwargs or {}).get(name) is not None}
    tokenizer_file = _file(source, "tokenizer.json", hub_kwargs)
    folder = os.fspath(source)
    if tokenizer_file is None:
        configs = [name for name in ("processor_config.json", "tokenizer_config.json") if os.path.isfile(os.path.join(folder, name))]
        if strict and configs:
            raise ValueError(
                f"{folder} holds {', '.join(configs)} but no tokenizer.json: the tokenizer cannot be loaded "
                "(export or convert the folder again; strict=False loads the model without it)"
            )
        return None, _no_processor(folder, "it has no tokenizer.json")
    _file(source, "tokenizer_config.json", hub_kwargs)  # its special tokens, next to tokenizer.json when it has one
    try:
        image_processor = JinaCLIPImageProcessor.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError, KeyError) as err:
        return None, _no_processor(folder, err)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=load_tokenizer(tokenizer_file))
    if config is not None:
        check_processor(processor, config)
        set_processor_image_size(processor, config.vision_config.image_size)
    return processor, None


__all__ = [
    "native_bf16",
    "check_loading_report",
    "check_processor",
    "default_dtype",
    "load_folder_processor",
    "set_processor_image_size",
    "weights_file_errors",
]
