"""A tiny snapshot in the exact layout of the original jinaai/jina-clip-v1 release, for converter tests.

Written from the v1 release reference (docs/jina-clip-v1-release.md, sections 1 and 2), not from the
converter: the config.json keys of jina-clip-implementation (text backbone jinaai/jina-bert-flash-
implementation, its sizes in hf_model_config_kwargs), the JinaBERT tensors under `text_model.transformer.`
with the fused `mixer.Wqkv` (rows [Q; K; V]) and `mlp.gated_layers` (rows [gate; up], no bias), and the
EVA02 tensors under `vision_model.` as jina-clip-v2 names them. The release tensors are built here from a
model in our layout by explicit concatenation, so the converted folder must embed exactly as that model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from _release_fixture import release_backbone_kwargs, release_header, release_vision_config

T = "text_model.transformer."


def release_v1_config_dict(config) -> dict:
    """A jina-clip-v1 release config.json for our `config` (tiny backbone sizes in hf_model_config_kwargs,
    which the release `.update()`s onto jina-bert-flash-implementation's config)."""
    t, v = config.text_config, config.vision_config
    return {
        **release_header(config),
        "use_text_flash_attn": None,
        "use_vision_xformers": None,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "jina_clip_text",
            "embed_dim": t.hidden_size,
            "hf_model_name_or_path": "jinaai/jina-bert-flash-implementation",
            "default_instruction_task": None,
            "default_lora_task": None,
            "pooler_type": "mean_pooler",
            "proj_type": None,
            "proj_bias": False,
            "hf_model_config_kwargs": {
                **release_backbone_kwargs(t),
                "mlp_type": "glu",
                "use_qk_norm": False,
                "window_size": [-1, -1],
            },
        },
        # The release's v1 config has intp_freq false (RoPE on the plain 14x14 grid, pt_hw_seq_len 14); a tiny
        # grid other than pt_hw_seq_len needs the interpolating table to run at all.
        "vision_config": release_vision_config(
            v, x_attention=False, intp_freq=v.rope_grid_size != v.image_size // v.patch_size, drop_path_rate=0.0
        ),
    }


def release_v1_state_dict(model) -> dict[str, torch.Tensor]:
    """The release tensors holding `model`'s weights: ours renamed and fused by explicit concatenation."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t = model.config.text_config
    out: dict[str, torch.Tensor] = {}
    out[T + "embeddings.word_embeddings.weight"] = sd["text_model.embeddings.word_embeddings.weight"]
    out[T + "embeddings.token_type_embeddings.weight"] = sd["text_model.embeddings.token_type_embeddings.weight"]
    out[T + "emb_ln.weight"] = sd["text_model.embeddings.LayerNorm.weight"]
    out[T + "emb_ln.bias"] = sd["text_model.embeddings.LayerNorm.bias"]
    for i in range(t.num_hidden_layers):
        ours, theirs = f"text_model.layers.{i}.", f"{T}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{theirs}mixer.Wqkv.{kind}"] = torch.cat(
                [sd[f"{ours}self_attn.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")]
            )
            out[f"{theirs}mixer.out_proj.{kind}"] = sd[f"{ours}self_attn.o_proj.{kind}"]
            out[f"{theirs}norm1.{kind}"] = sd[f"{ours}post_attention_layernorm.{kind}"]
            out[f"{theirs}norm2.{kind}"] = sd[f"{ours}post_mlp_layernorm.{kind}"]
            out[f"{theirs}mlp.wo.{kind}"] = sd[f"{ours}mlp.down_proj.{kind}"]
        # gated_layers: [gate rows (through GELU); value rows], no bias
        out[f"{theirs}mlp.gated_layers.weight"] = torch.cat([sd[f"{ours}mlp.gate_proj.weight"], sd[f"{ours}mlp.up_proj.weight"]])
    for key, value in sd.items():
        if key.startswith("vision_model.") or key == "logit_scale":
            out[key] = value
    assert len(out) == 4 + 11 * t.num_hidden_layers + sum(1 for k in sd if not k.startswith("text_model."))
    return {k: v.contiguous() for k, v in out.items()}


def write_release_v1_snapshot(folder, model, tokenizer=None, fmt: str = "safetensors") -> dict:
    """config.json, weights (`model.safetensors` or `pytorch_model.bin`), preprocessor_config.json and,
    when given, the tokenizer files of a tiny jina-clip-v1 release snapshot holding `model`'s weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = release_v1_config_dict(model.config)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state_dict = release_v1_state_dict(model)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
    else:
        raise ValueError(f"unknown fmt {fmt!r}")
    preprocessor = {
        "auto_map": {
            "AutoImageProcessor": "jinaai/jina-clip-implementation--processing_clip.JinaCLIPImageProcessor",
            "AutoProcessor": "jinaai/jina-clip-implementation--processing_clip.JinaCLIPProcessor",
        },
        "image_processor_type": "JinaCLIPImageProcessor",
        "processor_class": "JinaCLIPProcessor",
        "size": model.config.vision_config.image_size,
        "resize_mode": "shortest",
        "interpolation": "bicubic",
        "fill_color": 0,
        "mean": [0.48145466, 0.4578275, 0.40821073],  # OpenAI CLIP, as jina-clip-v2
        "std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return {"release_config": config, "release_state_dict": state_dict}
