"""Tiny public checkpoints in their own on-disk layouts, for `jina-clip init` (stage 0) tests.

- timm's EVA02-CLIP tower (`timm/eva02_large_patch14_clip_224.merged2b`): written by timm itself
  (`_timm_stage0.py`, timm's `save_for_hf`), so names, shapes and config.json are timm's own.
- EVA-CLIP's original file (`QuanSun/EVA-CLIP`, `EVA02_CLIP_L_psz14_s4B.pt`): the same weights under the
  names of EVA-CLIP's `eva_vit_model.py` (baaivision/EVA, EVA-CLIP/rei/eva_clip: `visual.` + `attn.q_bias` /
  `v_bias` / `inner_attn_ln`, `mlp.w1/w2/ffn_ln/w3`, the persistent `rope.freqs_cos/sin` buffers at the model
  and in every block's attention), `visual.head`, CustomCLIP's `text.` tower and `logit_scale`; a plain dict
  of tensors saved with `torch.save`, as those files are.
- jina-embeddings-v3 (`jinaai/jina-embeddings-v3`, jinaai/xlm-roberta-flash-implementation): `roberta.`
  keys with a LoRA parametrization on every Linear / Embedding (five adapters, rank 4), fused `mixer.Wqkv`,
  `emb_ln`, `encoder.layers.N.{norm1, norm2, mlp}`, the CLS pooler, bf16, and the model's config.json
  (`XLMRobertaFlashConfig` fields: `rotary_emb_base`, `lora_adaptations`, `task_instructions`, ...).
- jina-embeddings-v3 in transformers' format (`jinaai/jina-embeddings-v3-hf`): written by transformers'
  own `JinaEmbeddingsV3Model.save_pretrained`, in both of its key layouts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
ADAPTERS = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
INSTRUCTIONS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}


def tiny_text_config(vocab_size: int = 250002):
    """The text tower of training/configs/tiny.yaml (2 layers, 64 wide) as a JinaEmbeddingsV3Config (its
    vocabulary: the tokenizer's)."""
    from transformers import JinaEmbeddingsV3Config

    return JinaEmbeddingsV3Config(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip


def write_timm_sources(out: Path, *, size: int, width=64, depth=2, heads=4, classes=16, seed=0) -> Path:
    """timm's layout and EVA-CLIP's of one random tower, and timm's own outputs from both (`_timm_stage0.py`)."""
    subprocess.run(
        [sys.executable, str(HERE / "_timm_stage0.py"), str(out), str(width), str(depth), str(heads), str(classes), str(seed), str(size)],
        check=True, cwd=HERE,
    )  # fmt: skip
    return out


# timm's names -> EVA-CLIP's (the inverse of timm's `checkpoint_filter_fn`, stated from EVA-CLIP's source).
_EVA_NAMES = (
    (".attn.q_proj.bias", ".attn.q_bias"), (".attn.v_proj.bias", ".attn.v_bias"), (".attn.norm.", ".attn.inner_attn_ln."),
    (".mlp.fc1_g.", ".mlp.w1."), (".mlp.fc1_x.", ".mlp.w2."), (".mlp.norm.", ".mlp.ffn_ln."), (".mlp.fc2.", ".mlp.w3."),
)  # fmt: skip


def write_eva_clip_file(timm_folder: Path, out: Path, *, heads: int = 4, seed: int = 0) -> Path:
    """The EVA-CLIP-layout .pt holding the weights of `timm_folder`'s tower (plus a CLIP text tower)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in load_file(timm_folder / "model.safetensors").items():
        for theirs, ours in _EVA_NAMES:
            key = key.replace(theirs, ours)
        sd["visual." + key] = value.half()  # EVA-CLIP's released files are fp16
    width = sd["visual.cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("visual.blocks."))
    grid = int((sd["visual.pos_embed"].shape[1] - 1) ** 0.5)
    rope = {"freqs_cos": torch.randn(grid * grid, width // heads, generator=g), "freqs_sin": torch.randn(grid * grid, width // heads, generator=g)}
    for name, table in rope.items():
        sd[f"visual.rope.{name}"] = table
        for i in range(depth):
            sd[f"visual.blocks.{i}.attn.rope.{name}"] = table
    text_width = 32
    sd["text.positional_embedding"] = torch.randn(77, text_width, generator=g)
    sd["text.token_embedding.weight"] = torch.randn(100, text_width, generator=g)
    sd["text.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3 * text_width, text_width, generator=g)
    sd["text.ln_final.weight"] = torch.ones(text_width)
    sd["text.text_projection"] = torch.randn(text_width, sd["visual.head.weight"].shape[0], generator=g)
    sd["logit_scale"] = torch.tensor(4.6052)
    torch.save(sd, out)
    return out


def v3_remote_config(text) -> dict:
    """jinaai/jina-embeddings-v3's config.json (remote code) with `text`'s sizes."""
    return {
        "_name_or_path": "jinaai/jina-embeddings-v3",
        "architectures": ["XLMRobertaLoRA"],
        "auto_map": {
            "AutoConfig": "jinaai/xlm-roberta-flash-implementation--configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA",
            "AutoModelForMaskedLM": "jinaai/xlm-roberta-flash-implementation--modeling_xlm_roberta.XLMRobertaForMaskedLM",
            "AutoModelForPreTraining": "jinaai/xlm-roberta-flash-implementation--modeling_xlm_roberta.XLMRobertaForPreTraining",
        },
        "attention_probs_dropout_prob": text.attention_probs_dropout_prob,
        "bos_token_id": 0,
        "classifier_dropout": None,
        "emb_pooler": None,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": text.hidden_dropout_prob,
        "hidden_size": text.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": text.intermediate_size,
        "layer_norm_eps": 1e-05,
        "load_trained_adapters": True,
        "lora_adaptations": ADAPTERS,
        "lora_alpha": 1,
        "lora_dropout_p": 0.0,
        "lora_main_params_trainable": False,
        "lora_rank": 4,
        "matryoshka_dimensions": [32, 64, 128, 256, 512, 768, 1024],
        "max_position_embeddings": 8194,
        "model_type": "xlm-roberta",
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "output_past": True,
        "pad_token_id": 1,
        "position_embedding_type": "rotary",
        "rotary_emb_base": 20000.0,
        "task_instructions": INSTRUCTIONS,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.4",
        "type_vocab_size": 1,
        "use_cache": True,
        "use_flash_attn": True,
        "vocab_size": text.vocab_size,
    }


def _copy_tokenizer(tokenizer_dir: Path, folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, folder / name)


def write_v3_remote_folder(folder: Path, text, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    from _release_fixture import R, _release_tensors
    from _tiny import tiny_config

    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(text=text.to_dict(), vision={"hidden_size": text.hidden_size, "intermediate_size": 170}, projection_dim=text.hidden_size, matryoshka_dimensions=None)
    full = _release_tensors(config, 5, 4, torch.Generator().manual_seed(seed))
    sd = {"roberta." + key[len(R):]: value for key, value in full.items() if key.startswith(R)}
    g = torch.Generator().manual_seed(seed + 1)
    h = text.hidden_size
    sd["roberta.pooler.dense.parametrizations.weight.original"] = torch.randn(h, h, generator=g)
    sd["roberta.pooler.dense.parametrizations.weight.0.lora_A"] = torch.randn(5, 4, h, generator=g)
    sd["roberta.pooler.dense.parametrizations.weight.0.lora_B"] = torch.randn(5, h, 4, generator=g)
    sd["roberta.pooler.dense.bias"] = torch.randn(h, generator=g)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(v3_remote_config(text), indent=2))
    _copy_tokenizer(tokenizer_dir, folder)
    return folder


def write_v3_native_folder(folder: Path, text, tokenizer_dir: Path, *, seed: int = 0, original_format: bool = False) -> Path:
    """transformers' own save of a random `JinaEmbeddingsV3Model` (`save_original_format`: transformers 5's
    choice between its own names and the original jina-embeddings-v3 ones)."""
    from transformers import JinaEmbeddingsV3Model

    torch.manual_seed(seed)
    model = JinaEmbeddingsV3Model(text)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(folder, save_original_format=original_format)
    _copy_tokenizer(tokenizer_dir, folder)
    return folder


def oracle_v3_folder(remote: Path, out: Path) -> Path:
    """The remote-code checkpoint as transformers' JinaEmbeddingsV3 loader reads it: the LoRA parametrizations'
    base weights renamed to `.weight` and the adapters left out; transformers' own conversion mapping does the
    rest (emb_ln, encoder.layers, norm1/norm2, the Wqkv split)."""
    from transformers import JinaEmbeddingsV3Config

    out.mkdir(parents=True, exist_ok=True)
    sd = {}
    for key, value in load_file(remote / "model.safetensors").items():
        if ".lora_" in key:
            continue
        sd[key.replace(".parametrizations.weight.original", ".weight")] = value
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    source = json.loads((remote / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "layer_norm_eps", "type_vocab_size")
    config = JinaEmbeddingsV3Config(
        **{k: source[k] for k in keys}, rope_parameters={"rope_type": "default", "rope_theta": source["rotary_emb_base"]},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    config.save_pretrained(out)
    return out
