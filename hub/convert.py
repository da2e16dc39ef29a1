"""Convert a local snapshot of the original jinaai/jina-clip-v2 (or jina-clip-v1) release into a Hub-ready folder.

    jina-clip convert --from <released snapshot folder> --out <folder>
        [--tokenizer <folder>] [--dtype bfloat16] [--max-shard-size 5GB] [--repo-id user/name]
        [--eval-results results.json] [--overwrite] [--no-check]

Reads the release's `config.json` and weights (`model.safetensors`, sharded safetensors, or
`pytorch_model.bin` loaded with `torch.load(weights_only=True)`, never a full unpickler), converts them
with `modeling.convert_jina_clip_release` (v2: LoRA merged, Wqkv split; v1: Wqkv and gated_layers split;
strict; the release is recognised from config.json), takes the tokenizer and the
image preprocessing from the snapshot (`tokenizer.json`, `preprocessor_config.json`), exports the
folder as `hub.export` does, then reloads it and checks it: the saved tensors equal the converted ones
and AutoModel / SentenceTransformer embeddings of probe texts and images equal the converted model's.

Download a snapshot first, e.g. `hf download jinaai/jina-clip-v2 --local-dir jina-clip-v2` (or
`jinaai/jina-clip-v1`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from jina_clip_v2.modeling.convert_jina_clip_release import ReleaseCheckpointError, convert_release_snapshot, read_weights_file
from jina_clip_v2.modeling.processing_jina_clip import RELEASE_KEYS, JinaCLIPImageProcessor
from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer

from ._util import configure_logging, hub_logger
from .export import (
    DTYPES,
    ExportError,
    add_card_arguments,
    add_output_arguments,
    check_export,
    export_model,
)
from .model_card import DEFAULT_LICENSE, RELEASE_REPO, V1_LICENSE, V1_RELEASE_REPO

logger = hub_logger("convert")

def release_image_processor(snapshot: Path, image_size: int) -> JinaCLIPImageProcessor:
    """Our image processor with the settings of the snapshot's preprocessor_config.json (reference section 3.1),
    or the release's values if it has none. The release's keys (`size`, `resize_mode`, `interpolation`,
    `fill_color`, `mean`, `std`) are the layout our processor saves and reads itself; the rest of the file
    (`auto_map` naming the release's code, `processor_class`) is not taken over."""
    path = snapshot / "preprocessor_config.json"
    settings = {}
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            settings = {k: v for k, v in json.load(handle).items() if k in RELEASE_KEYS}
    else:
        logger.info("no preprocessor_config.json in the snapshot: using the release's preprocessing")
    size = settings.pop("size", image_size)
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if size != image_size:
        raise ExportError(f"preprocessor_config.json size {size!r} differs from the model's image_size {image_size}")
    try:
        return JinaCLIPImageProcessor(size=image_size, **settings)
    except ValueError as err:  # a resize_mode or interpolation the release's code has but this package does not
        raise ExportError(f"preprocessor_config.json: {err}") from err


def release_tokenizer(folder: Path, version: str = "v2"):
    """The snapshot's tokenizer (XLM-RoBERTa for jina-clip-v2, BERT WordPiece for jina-clip-v1): its
    tokenizer.json exactly as written (`load_tokenizer`: the ids equal those of `tokenizers.Tokenizer.from_file`
    on that file, as the release's transformers 4 tokenizer gave them), with the special tokens and
    model_max_length of its tokenizer_config.json."""
    kind = "BERT WordPiece" if version == "v1" else "XLM-RoBERTa"
    if not (folder / "tokenizer.json").is_file():
        raise ExportError(
            f"no tokenizer.json in {folder}: pass --tokenizer <folder holding the jina-clip-{version} / {kind} "
            "tokenizer.json>"
        )
    return load_tokenizer(folder)


def _check_saved_weights(folder: Path, model, dtype: torch.dtype | None) -> None:
    """The tensors in the exported safetensors files equal the converted model's, bit for bit."""
    saved: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        saved.update(read_weights_file(path))
    expected = model.state_dict()
    if saved.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
        raise ExportError(f"exported weights have other keys than the model: missing {missing[:10]}, extra {extra[:10]}")
    for key, tensor in expected.items():
        want = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        if saved[key].dtype != want.dtype or not torch.equal(saved[key], want):
            raise ExportError(f"exported tensor {key} differs from the converted one")


def convert_release(
    snapshot: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    dtype: str | None = None,
    check: bool = True,
    base_model: str | None = None,
    license: str | None = None,
    **export_kwargs,
) -> Path:
    """Convert a release snapshot folder and export it to `out` (see the module docstring).

    Args:
        snapshot: local folder with the release's config.json and weights (and its tokenizer /
            preprocessor_config.json, unless `tokenizer` points elsewhere).
        tokenizer: folder with the tokenizer.json to ship (default: the snapshot).
        dtype: dtype of the exported weights (default float32: the LoRA merge stays unrounded).
        check: reload the folder and compare weights and embeddings with the converted model.
        base_model, license: model card metadata (default: the release's repository and license,
            jinaai/jina-clip-v2 cc-by-nc-4.0 or jinaai/jina-clip-v1 apache-2.0).
        export_kwargs: passed to `hub.export.export_model` (max_shard_size, repo_id, eval_results, ...).
    """
    snapshot = Path(snapshot)
    if not snapshot.is_dir():
        raise FileNotFoundError(f"no such snapshot folder: {snapshot}")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    logger.info("converting the release checkpoint in %s", snapshot)
    model = convert_release_snapshot(snapshot, dtype=torch.float32)
    from transformers import CLIPProcessor

    version = model.config.version
    if export_kwargs.get("model_name") is None and export_kwargs.get("repo_id") is None:
        export_kwargs["model_name"] = f"jina-clip-{version}"
    processor = CLIPProcessor(
        image_processor=release_image_processor(snapshot, model.config.vision_config.image_size),
        tokenizer=release_tokenizer(Path(tokenizer) if tokenizer is not None else snapshot, version),
    )
    model.processor = processor
    if version == "v1":
        base_model = base_model or V1_RELEASE_REPO
        license = license or V1_LICENSE
        source_note = (
            "The weights are the original jinaai/jina-clip-v1 checkpoint converted to this layout: the fused "
            "QKV projection and the fused gate / value projection of the text tower's MLP split "
            "(`jina-clip convert`)."
        )
    else:
        base_model = base_model or RELEASE_REPO
        license = license or DEFAULT_LICENSE
        source_note = (
            "The weights are the original jinaai/jina-clip-v2 checkpoint converted to this layout: the "
            "`retrieval.query` LoRA adapter, which the release applies to every text, merged into the text "
            "tower, and the fused QKV projection split (`jina-clip convert`)."
        )

    def verify(folder: Path) -> None:
        # Runs on the complete folder before it takes the name `out`: a failed check leaves nothing there.
        logger.info("checking the converted folder")
        _check_saved_weights(folder, model, DTYPES[dtype] if dtype else None)
        atol = 1e-5 if dtype in (None, "float32") else 5e-2
        for name, diff in check_export(folder, model, atol=atol).items():
            logger.info("  %s: max |diff| %.2e", name, diff)
        logger.info("check passed")

    return export_model(
        model,
        out,
        processor=processor,
        dtype=dtype,
        base_model=base_model,
        license=license,
        source_note=source_note,
        verify=verify if check else None,
        **export_kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jina-clip convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="snapshot", required=True, type=Path, help="local snapshot of jinaai/jina-clip-v2 or jina-clip-v1")
    parser.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json (default: the snapshot)")
    add_output_arguments(parser)
    parser.add_argument("--no-check", action="store_true", help="skip reloading and checking the folder")
    add_card_arguments(parser)
    # Unset: the release's own repository and license (v2: jinaai/jina-clip-v2, cc-by-nc-4.0; v1: apache-2.0).
    parser.set_defaults(base_model=None, license=None)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        folder = convert_release(
            args.snapshot,
            args.out,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            check=not args.no_check,
            base_model=args.base_model,
            license=args.license,
            max_shard_size=args.max_shard_size,
            eval_results=args.eval_results,
            training_summary=args.training_summary,
            repo_id=args.repo_id,
            model_name=args.model_name,
            overwrite=args.overwrite,
        )
    except (ReleaseCheckpointError, ExportError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except AssertionError as err:
        print(f"error: the converted folder failed its check: {err}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip convert"))


__all__ = ["convert_release", "main", "release_image_processor", "release_tokenizer"]
