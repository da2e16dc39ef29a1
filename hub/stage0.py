"""Stage 0: the folder stage 1 starts from, built from the public checkpoints the paper names (section 3,
Table 6 "weights init": EVA02 ViT-L/14 and Jina-XLM-RoBERTa).

    jina-clip init [--vision timm/eva02_large_patch14_clip_224.merged2b | QuanSun/EVA-CLIP | <folder> | <file>]
        [--vision-file EVA02_CLIP_L_psz14_s4B.pt] [--vision-heads N]
        [--text jinaai/jina-embeddings-v3 | jinaai/jina-embeddings-v3-hf | FacebookAI/xlm-roberta-large | <folder>]
        [--tokenizer <folder>] [--image-size 224] [--revision-vision R] [--revision-text R]
        --out outputs/stage0 [--overwrite] [--no-check]

A Hub id is fetched with `huggingface_hub.snapshot_download`, restricted by `allow_patterns` to the
config, weights and tokenizer files (no code is downloaded, nothing is executed: configs are read as
JSON), with a byte cap (`--max-download-gb`, checked on the file list before downloading) and a total
deadline (`--download-timeout`). A local folder or file in the same layout works offline. The towers are
mapped strictly (`modeling.convert_pretrained_towers`: every tensor mapped or dropped for a stated reason,
every parameter filled, shapes checked), the vision position table is resampled from the checkpoint's grid
to `--image-size` (stage 1 starts at 224 px), the tokenizer is the text checkpoint's `tokenizer.json` as
written (or `--tokenizer`), and the folder is written as `jina-clip export` writes one, reloaded and checked,
with a `training_summary.json` whose `init` block says where each tower came from (the next stages carry it
on; the model card states it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from jina_clip_v2._io import atomic_write
from jina_clip_v2.modeling.convert_jina_clip_release import ReleaseCheckpointError, _shard_paths, read_weights_file
from jina_clip_v2.modeling.convert_pretrained_towers import (
    VisionGeometry,
    convert_text_state_dict,
    convert_vision_state_dict,
    stage0_config,
    text_config_from,
    text_layout,
    timm_heads,
    timm_rope_grid,
    vision_geometry,
)
from jina_clip_v2.modeling.processing_jina_clip import JinaCLIPImageProcessor
from jina_clip_v2.modeling.tokenization_jina_clip import load_tokenizer

from ._util import configure_logging, hub_logger
from .export import ExportError, check_export, export_model

logger = hub_logger("stage0")

DEFAULT_VISION = "timm/eva02_large_patch14_clip_224.merged2b"
DEFAULT_TEXT = "jinaai/jina-embeddings-v3"
STAGE1_IMAGE_SIZE = 224  # Table 6: stage 1 starts at (224, 224)
# Licenses of the public sources (their model cards); the stage-0 weights carry the most restrictive one.
SOURCE_LICENSES = {
    "timm/eva02_large_patch14_clip_224.merged2b": "mit",
    "timm/eva02_large_patch14_clip_336.merged2b": "mit",
    "timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k": "mit",
    "QuanSun/EVA-CLIP": "mit",
    "jinaai/jina-embeddings-v3": "cc-by-nc-4.0",
    "jinaai/jina-embeddings-v3-hf": "cc-by-nc-4.0",
    "FacebookAI/xlm-roberta-large": "mit",
}
# Weights file names, in order of preference (safetensors first; .bin / .pt only through
# torch.load(weights_only=True), `read_weights_file`).
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "open_clip_model.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "open_clip_pytorch_model.bin",
)  # fmt: skip
_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# Root files only: `*` would also match the adapter folders of jinaai/jina-embeddings-v3-hf.
_WEIGHT_PATTERNS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]


class Stage0Error(ValueError):
    """A source that cannot be fetched or read as a stage-0 tower."""


# ----------------------------------------------------------------------------------------------------
# Sources: a local folder / file, or a Hub snapshot
# ----------------------------------------------------------------------------------------------------


def fetch_snapshot(
    repo_id: str,
    allow_patterns: list[str],
    *,
    revision: str | None = None,
    timeout: float = 3600.0,
    max_bytes: int = 8 * 1024**3,
) -> Path:
    """`snapshot_download(repo_id, allow_patterns=...)` with a byte cap on the files it would fetch (their
    sizes listed first with `dry_run`, where huggingface_hub has it) and a total deadline."""
    from huggingface_hub import snapshot_download

    kwargs = {"revision": revision, "allow_patterns": list(allow_patterns)}
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on"):
        try:
            planned = snapshot_download(repo_id, dry_run=True, **kwargs)
        except TypeError:  # huggingface_hub without dry_run: the deadline still holds
            planned = None
        if planned is not None:
            if not planned:
                raise Stage0Error(f"{repo_id} has no file matching {allow_patterns}")
            size = sum(item.file_size or 0 for item in planned if item.will_download)
            if size > max_bytes:
                raise Stage0Error(f"{repo_id}: the files to fetch hold {size / 1e9:.1f} GB, over the cap of {max_bytes / 1e9:.1f} GB")
    result: dict = {}

    def download() -> None:
        try:
            result["path"] = snapshot_download(repo_id, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = err

    worker = threading.Thread(target=download, name=f"fetch {repo_id}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"fetching {repo_id} took longer than {timeout:.0f} s (--download-timeout)")
    if "error" in result:
        raise result["error"]
    return Path(result["path"])


def resolve_source(
    source: str, patterns: list[str], *, revision: str | None, timeout: float, max_bytes: int
) -> Path:
    """A local folder or file as it is; anything else is a Hub id, fetched."""
    path = Path(os.path.expanduser(source))
    if path.exists():
        return path
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise FileNotFoundError(f"no such file or folder: {source} (and not a Hub id of the form owner/name)")
    logger.info("fetching %s (%s)", source, ", ".join(patterns))
    return fetch_snapshot(source, patterns, revision=revision, timeout=timeout, max_bytes=max_bytes)


def weight_files(source: Path, name: str | None = None) -> list[Path]:
    """The weight file(s) of a folder: `name` when given, else the first of `WEIGHT_FILES`, else the only
    `.safetensors` / `.pt` / `.pth` / `.bin` file there."""
    if source.is_file():
        return [source]
    if name is not None:
        path = source / name
        if not path.is_file():
            raise FileNotFoundError(f"no {name} in {source}")
        return _shard_paths(source, path) if name.endswith(".index.json") else [path]
    for candidate in WEIGHT_FILES:
        path = source / candidate
        if path.is_file():
            return _shard_paths(source, path) if candidate.endswith(".index.json") else [path]
    found = sorted(p.name for p in source.iterdir() if p.suffix in (".safetensors", ".pt", ".pth", ".bin"))
    if len(found) == 1:
        return [source / found[0]]
    raise FileNotFoundError(
        f"{source}: {'several weight files ' + str(found) + ': name one' if found else 'no weights file'} "
        f"(expected one of {', '.join(WEIGHT_FILES)}; --vision-file / --text-file name another)"
    )


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = {}
    for path in files:
        part = read_weights_file(path)  # safetensors, or torch.load(weights_only=True): never a full unpickle
        repeated = sorted(state_dict.keys() & part.keys())
        if repeated:
            raise Stage0Error(f"{path} repeats tensors of another shard: {repeated[:10]}")
        state_dict.update(part)
    return state_dict


def _read_config(source: Path) -> dict:
    path = (source if source.is_dir() else source.parent) / "config.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# ----------------------------------------------------------------------------------------------------
# Building the model
# ----------------------------------------------------------------------------------------------------


def build_stage0(
    vision: Path,
    text: Path,
    *,
    image_size: int = STAGE1_IMAGE_SIZE,
    vision_file: str | None = None,
    text_file: str | None = None,
    vision_heads: int | None = None,
    tokenizer: Path | None = None,
):
    """The stage-0 `JinaCLIPModel` (float32, eval mode, at `image_size`), its processor and the tower
    reports, from local sources (a folder or a weights file each)."""
    from transformers import CLIPProcessor

    from jina_clip_v2.modeling import JinaCLIPModel

    vision_state = read_state_dict(weight_files(vision, vision_file))
    vision_config = _read_config(vision)
    geometry: VisionGeometry = vision_geometry(
        vision_state, num_heads=vision_heads or timm_heads(vision_config), rope_grid=timm_rope_grid(vision_config)
    )
    text_state = read_state_dict(weight_files(text, text_file))
    layout = text_layout(text_state)
    text_source_config = _read_config(text)
    if not text_source_config:
        raise Stage0Error(f"no config.json next to the text weights in {text}: the text tower's sizes come from it")
    config = stage0_config(geometry, text_config_from(text_source_config, layout))
    vision_weights, vision_report = convert_vision_state_dict(vision_state, config)
    text_weights, text_report = convert_text_state_dict(text_state, config)
    del vision_state, text_state
    state_dict = {k: v.to(torch.float32) for k, v in {**vision_weights, **text_weights}.items()}
    state_dict["logit_scale"] = torch.tensor(config.logit_scale_init_value)
    model, info = JinaCLIPModel.from_pretrained(
        None, config=config, state_dict=state_dict, dtype=torch.float32, output_loading_info=True
    )
    problems = {k: sorted(map(str, v)) for k, v in info.items() if v}
    if problems:
        raise ReleaseCheckpointError(f"loading the stage-0 weights was not exact: {problems}")
    source_grid = geometry.grid
    model.set_image_size(image_size)  # resample the position table: the training stages' own resampling
    target_grid = model.config.vision_config.grid_size
    tokenizer_folder = tokenizer or (text if text.is_dir() else text.parent)
    if not (Path(tokenizer_folder) / "tokenizer.json").is_file():
        raise Stage0Error(
            f"no tokenizer.json in {tokenizer_folder}: pass --tokenizer <folder with the XLM-R tokenizer.json> "
            "(`jina-clip fetch-assets` fetches one)"
        )
    processor = CLIPProcessor(
        image_processor=JinaCLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=list(OPENAI_CLIP_MEAN),  # EVA02-CLIP's and the release's statistics
            image_std=list(OPENAI_CLIP_STD),
        ),
        tokenizer=load_tokenizer(tokenizer_folder),
    )
    model.processor = processor
    resampled = f"position table {source_grid}x{source_grid} ({geometry.image_size} px) -> {target_grid}x{target_grid} ({image_size} px)"
    return model.eval(), processor, {"vision": vision_report, "text": text_report, "resampled": resampled}


def _license(*sources: str) -> str | None:
    licenses = [SOURCE_LICENSES.get(source) for source in sources]
    if "cc-by-nc-4.0" in licenses:
        return "cc-by-nc-4.0"
    return licenses[0] if licenses and len(set(licenses)) == 1 else None


def init_stage0(
    out: str | os.PathLike,
    *,
    vision: str = DEFAULT_VISION,
    text: str = DEFAULT_TEXT,
    image_size: int = STAGE1_IMAGE_SIZE,
    vision_file: str | None = None,
    text_file: str | None = None,
    vision_heads: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    revision_vision: str | None = None,
    revision_text: str | None = None,
    download_timeout: float = 3600.0,
    max_download_bytes: int = 8 * 1024**3,
    check: bool = True,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Build and write the stage-0 folder; returns it and the summary's `init` block (see the module docstring)."""
    vision_patterns = [vision_file] if vision_file else ["config.json", *_WEIGHT_PATTERNS, "open_clip_model.safetensors"]
    text_patterns = ["config.json", *([text_file] if text_file else _WEIGHT_PATTERNS), *_TOKENIZER_FILES]
    fetch = {"timeout": download_timeout, "max_bytes": max_download_bytes}
    vision_path = resolve_source(vision, vision_patterns, revision=revision_vision, **fetch)
    text_path = resolve_source(text, text_patterns, revision=revision_text, **fetch)
    model, processor, reports = build_stage0(
        vision_path, text_path, image_size=image_size, vision_file=vision_file, text_file=text_file,
        vision_heads=vision_heads, tokenizer=Path(tokenizer) if tokenizer else None,
    )  # fmt: skip
    for line in [*reports["vision"].lines(), f"  {reports['resampled']}", *reports["text"].lines()]:
        logger.info("%s", line)
    init = {
        "vision": {"source": vision, "file": vision_file, "revision": revision_vision, **reports["vision"].to_dict()},
        "text": {"source": text, "file": text_file, "revision": revision_text, **reports["text"].to_dict()},
        "image_size": image_size,
        "resampled": reports["resampled"],
    }
    bases = [source for source in (vision, text) if not Path(os.path.expanduser(source)).exists()]
    note = (
        "Stage-0 weights (`jina-clip init`): the starting point of jina-clip-v2's stage 1 (paper Table 6), not a "
        f"trained dual encoder: the two towers do not share an embedding space yet. Vision tower: `{vision}` "
        f"({reports['vision'].layout} layout; {reports['resampled']}); text tower: `{text}` "
        f"({reports['text'].layout} layout). What was dropped: "
        + "; ".join(
            f"{len(keys)} tensors, {reason}" for report in (reports["vision"], reports["text"]) for reason, keys in report.dropped.items()
        )
        + "."
    )

    def verify(folder: Path) -> None:
        logger.info("checking the stage-0 folder")
        for name, diff in check_export(folder, model).items():
            logger.info("  %s: max |diff| %.2e", name, diff)

    out = Path(out)
    export_model(
        model, out, processor=processor, base_model=bases or None, license=_license(vision, text),
        source_note=note, training_summary={"init": init, "stages": []}, overwrite=overwrite,
        verify=verify if check else None,
    )  # fmt: skip
    with atomic_write(out / "training_summary.json") as handle:
        json.dump({"init": init, "stages": [], "base_model": bases}, handle, indent=2)
    return out, init


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jina-clip init", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default=DEFAULT_VISION, help=f"EVA02-CLIP checkpoint: Hub id, folder or file (default {DEFAULT_VISION})")
    parser.add_argument("--vision-file", help="the weights file inside --vision (e.g. EVA02_CLIP_L_psz14_s4B.pt of QuanSun/EVA-CLIP)")
    parser.add_argument("--vision-heads", type=int, help="attention heads of the vision tower (default: its config.json, else width / 64)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help=f"Jina-XLM-RoBERTa: jina-embeddings-v3 (remote-code or -hf layout), or FacebookAI/xlm-roberta-large; Hub id or folder (default {DEFAULT_TEXT})")
    parser.add_argument("--text-file", help="the weights file inside --text (default: model.safetensors)")
    parser.add_argument("--tokenizer", type=Path, help="folder with the XLM-R tokenizer.json (default: --text's)")
    parser.add_argument("--image-size", type=int, default=STAGE1_IMAGE_SIZE, help="resolution of the folder (default 224: stage 1's start)")
    parser.add_argument("--revision-vision", help="Hub revision of --vision")
    parser.add_argument("--revision-text", help="Hub revision of --text")
    parser.add_argument("--download-timeout", type=float, default=3600.0, help="total seconds per Hub download (default 3600)")
    parser.add_argument("--max-download-gb", type=float, default=8.0, help="byte cap per Hub download, in GB (default 8)")
    parser.add_argument("--out", type=Path, default=Path("outputs/stage0"), help="folder to create (default outputs/stage0, stage1.yaml's init_from)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-check", action="store_true", help="skip reloading and checking the folder")
    args = parser.parse_args(argv)
    if args.image_size < 1 or (args.vision_heads is not None and args.vision_heads < 1):
        parser.error("--image-size and --vision-heads must be positive")
    configure_logging()
    try:
        folder, _ = init_stage0(
            args.out, vision=args.vision, text=args.text, image_size=args.image_size, vision_file=args.vision_file,
            text_file=args.text_file, vision_heads=args.vision_heads, tokenizer=args.tokenizer,
            revision_vision=args.revision_vision, revision_text=args.revision_text, download_timeout=args.download_timeout,
            max_download_bytes=int(args.max_download_gb * 1024**3), check=not args.no_check, overwrite=args.overwrite,
        )  # fmt: skip
    except (ReleaseCheckpointError, Stage0Error, ExportError, FileNotFoundError, FileExistsError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    from jina_clip_v2.cli import run

    sys.exit(run(main, name="jina-clip init"))


__all__ = ["DEFAULT_TEXT", "DEFAULT_VISION", "build_stage0", "fetch_snapshot", "init_stage0", "main", "resolve_source", "weight_files"]
