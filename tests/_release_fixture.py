"""A tiny snapshot in the exact layout of the original jinaai/jina-clip-v2 release, for converter tests.

Written from the release reference (shared/reference/jina-clip-v2-release.md, sections 1, 2 and 5), not
from the converter: key names and shapes are spelled out here, every `nn.Linear` / `nn.Embedding` of the
text tower carries a LoRA parametrization (`parametrizations.weight.original`, `.0.lora_A`, `.0.lora_B`)
with random non-zero A and B, and the fused `mixer.Wqkv` rows are [Q; K; V]. The "merged reference" in our
layout is computed here independently: in float64, with the rank-r products written as sums of outer
products, and the q/k/v split by explicit row ranges.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

R = "text_model.transformer.roberta."
ADAPTER_NAMES = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
QUERY_INSTRUCTION = "Represent the query for retrieving evidence documents: "


def release_header(config) -> dict:
    """The top of a release config.json (v1 and v2 alike) for our `config`."""
    return {
        "architectures": ["JinaCLIPModel"],
        "auto_map": {
            "AutoConfig": "jinaai/jina-clip-implementation--configuration_clip.JinaCLIPConfig",
            "AutoModel": "jinaai/jina-clip-implementation--modeling_clip.JinaCLIPModel",
        },
        "model_type": "jina_clip",
        "add_projections": False,
        "projection_dim": config.projection_dim,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
    }


def release_backbone_kwargs(t) -> dict:
    """The tiny text backbone's sizes, as hf_model_config_kwargs (the real releases inherit their backbone's)."""
    names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
             "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "type_vocab_size", "pad_token_id")
    return {"use_flash_attn": False, **{name: getattr(t, name) for name in names}}


def release_vision_config(v, **differences) -> dict:
    """The release's EVA vision_config for our vision config (v1 and v2 differ in the `differences`)."""
    width = v.hidden_size
    mlp_ratio = 2.6667 if int(width * 2.6667) == v.intermediate_size else (v.intermediate_size + 0.5) / width
    assert int(width * mlp_ratio) == v.intermediate_size
    return {
        "model_type": "jina_clip_vision",
        "embed_dim": width,
        "width": width,
        "layers": v.num_hidden_layers,
        "head_width": width // v.num_attention_heads,
        "mlp_ratio": mlp_ratio,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "ls_init_value": None,
        "patch_dropout": 0.0,
        "qkv_bias": True,
        "fused_layer_norm": False,
        "post_norm": False,
        "rope_embeddings": True,
        "pt_hw_seq_len": v.rope_grid_size,
        "naive_swiglu": True,
        "subln": True,
        "proj_type": None,
        **differences,
    }


def release_config_dict(
    config, *, lora_rank: int = 4, lora_alpha: float = 4, adapters: list[str] | None = None
) -> dict:
    """A release-format config.json for our `config` (tiny backbone sizes go into hf_model_config_kwargs,
    which the release `.update()`s onto the jina-embeddings-v3 config)."""
    t = config.text_config
    return {
        **release_header(config),
        "matryoshka_dimensions": list(config.matryoshka_dimensions),
        "truncate_dim": None,
        "use_text_flash_attn": None,
        "use_vision_xformers": None,
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "jina_clip_text",
            "embed_dim": t.hidden_size,
            "hf_model_name_or_path": "jinaai/jina-embeddings-v3",
            "default_instruction_task": None,
            "default_lora_task": "retrieval.query",
            "pooler_type": "mean_pooler",
            "proj_type": None,
            "proj_bias": False,
            "hf_model_config_kwargs": {
                "load_trained_adapters": False,
                "lora_adaptations": list(adapters or ["retrieval.query"]),
                "lora_alpha": lora_alpha,
                "lora_rank": lora_rank,
                "lora_dropout_p": 0.0,
                "lora_main_params_trainable": False,
                "task_instructions": {"retrieval.query": QUERY_INSTRUCTION},
                **release_backbone_kwargs(t),
                "position_embedding_type": "rotary",
                "rotary_emb_base": t.rope_parameters["rope_theta"],
            },
        },
        "vision_config": release_vision_config(config.vision_config, x_attention=True, intp_freq=True),
    }


def _release_tensors(config, n_adapters: int, rank: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    t, v = config.text_config, config.vision_config
    h, inter, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    sd: dict[str, torch.Tensor] = {}

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * std

    def lora_linear(name, out, inp, bias=True):
        sd[f"{R}{name}.parametrizations.weight.original"] = randn(out, inp, std=inp**-0.5)
        sd[f"{R}{name}.parametrizations.weight.0.lora_A"] = randn(n_adapters, rank, inp, std=0.3)
        sd[f"{R}{name}.parametrizations.weight.0.lora_B"] = randn(n_adapters, out, rank, std=0.3)
        if bias:
            sd[f"{R}{name}.bias"] = randn(out, std=0.1)

    def lora_embedding(name, num, dim):
        sd[f"{R}{name}.parametrizations.weight.original"] = randn(num, dim, std=0.5)
        sd[f"{R}{name}.parametrizations.weight.0.lora_A"] = randn(n_adapters, num, rank, std=0.3)
        sd[f"{R}{name}.parametrizations.weight.0.lora_B"] = randn(n_adapters, rank, dim, std=0.3)

    def layer_norm(prefix, dim):
        sd[f"{prefix}.weight"] = 1.0 + randn(dim, std=0.1)
        sd[f"{prefix}.bias"] = randn(dim, std=0.1)

    def linear(prefix, out, inp, bias=True):
        sd[f"{prefix}.weight"] = randn(out, inp, std=inp**-0.5)
        if bias:
            sd[f"{prefix}.bias"] = randn(out, std=0.1)

    # text tower (reference section 2.2)
    lora_embedding("embeddings.word_embeddings", t.vocab_size, h)
    lora_embedding("embeddings.token_type_embeddings", t.type_vocab_size, h)
    layer_norm(R + "emb_ln", h)
    for i in range(layers):
        p = f"encoder.layers.{i}."
        lora_linear(p + "mixer.Wqkv", 3 * h, h)
        lora_linear(p + "mixer.out_proj", h, h)
        layer_norm(R + p + "norm1", h)
        lora_linear(p + "mlp.fc1", inter, h)
        lora_linear(p + "mlp.fc2", h, inter)
        layer_norm(R + p + "norm2", h)

    # vision tower (reference section 2.3)
    w, vi, ps = v.hidden_size, v.intermediate_size, v.patch_size
    grid = v.image_size // ps
    sd["vision_model.cls_token"] = randn(1, 1, w, std=0.5)
    sd["vision_model.pos_embed"] = randn(1, grid * grid + 1, w, std=0.1)
    fan_in = v.num_channels * ps * ps
    sd["vision_model.patch_embed.proj.weight"] = randn(w, v.num_channels, ps, ps, std=fan_in**-0.5)
    sd["vision_model.patch_embed.proj.bias"] = randn(w, std=0.1)
    for i in range(v.num_hidden_layers):
        b = f"vision_model.blocks.{i}."
        layer_norm(b + "norm1", w)
        linear(b + "attn.q_proj", w, w, bias=False)
        linear(b + "attn.k_proj", w, w, bias=False)
        linear(b + "attn.v_proj", w, w, bias=False)
        sd[b + "attn.q_bias"] = randn(w, std=0.1)
        sd[b + "attn.v_bias"] = randn(w, std=0.1)
        layer_norm(b + "attn.inner_attn_ln", w)
        linear(b + "attn.proj", w, w)
        layer_norm(b + "norm2", w)
        linear(b + "mlp.w1", vi, w)
        linear(b + "mlp.w2", vi, w)
        layer_norm(b + "mlp.ffn_ln", vi)
        linear(b + "mlp.w3", w, vi)
    layer_norm("vision_model.norm", w)
    sd["logit_scale"] = torch.tensor(4.0, dtype=torch.float64) + randn(())
    return sd


def _outer_sum(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left [m, r], right [r, n] -> sum_k outer(left[:, k], right[k, :]), written as an explicit loop."""
    total = torch.zeros(left.shape[0], right.shape[1], dtype=torch.float64)
    for k in range(left.shape[1]):
        total += torch.outer(left[:, k].double(), right[k, :].double())
    return total


def merged_reference(sd: dict[str, torch.Tensor], config, *, scaling: float, adapter: int) -> dict[str, torch.Tensor]:
    """Our layout, computed in float64 from the release tensors (independently of the converter)."""
    t = config.text_config
    h = t.hidden_size
    out: dict[str, torch.Tensor] = {}

    def merged(name, embedding):
        w = sd[f"{R}{name}.parametrizations.weight.original"].double()
        a = sd[f"{R}{name}.parametrizations.weight.0.lora_A"][adapter].double()
        b = sd[f"{R}{name}.parametrizations.weight.0.lora_B"][adapter].double()
        # Linear: B [out, r] . A [r, in]; Embedding: A [num, r] . B [r, dim]
        return w + scaling * (_outer_sum(a, b) if embedding else _outer_sum(b, a))

    out["text_model.embeddings.word_embeddings.weight"] = merged("embeddings.word_embeddings", True)
    out["text_model.embeddings.token_type_embeddings.weight"] = merged("embeddings.token_type_embeddings", True)
    out["text_model.embeddings.LayerNorm.weight"] = sd[R + "emb_ln.weight"]
    out["text_model.embeddings.LayerNorm.bias"] = sd[R + "emb_ln.bias"]
    for i in range(t.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"text_model.layers.{i}."
        wqkv, bqkv = merged(src + "mixer.Wqkv", False), sd[R + src + "mixer.Wqkv.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{dst}self_attn.{name}.weight"] = wqkv[j * h : (j + 1) * h]
            out[f"{dst}self_attn.{name}.bias"] = bqkv[j * h : (j + 1) * h]
        out[dst + "self_attn.o_proj.weight"] = merged(src + "mixer.out_proj", False)
        out[dst + "self_attn.o_proj.bias"] = sd[R + src + "mixer.out_proj.bias"]
        for ours, theirs in (("post_attention_layernorm", "norm1"), ("post_mlp_layernorm", "norm2")):
            out[f"{dst}{ours}.weight"] = sd[f"{R}{src}{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = sd[f"{R}{src}{theirs}.bias"]
        for fc in ("fc1", "fc2"):
            out[f"{dst}mlp.{fc}.weight"] = merged(f"{src}mlp.{fc}", False)
            out[f"{dst}mlp.{fc}.bias"] = sd[f"{R}{src}mlp.{fc}.bias"]
    for key, value in sd.items():
        if key.startswith("vision_model.") or key == "logit_scale":
            out[key] = value
    return {key: value.double() for key, value in out.items()}


def write_release_snapshot(
    folder,
    config,
    seed: int = 0,
    fmt: str = "safetensors",
    n_adapters: int = 1,
    *,
    lora_rank: int = 4,
    lora_alpha: float = 4,
    query_adapter: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Write config.json and weights of a tiny release snapshot into `folder`.

    fmt: "safetensors" (model.safetensors), "bin" (pytorch_model.bin, torch.save) or "sharded"
    (model-0000k-of-00003.safetensors + model.safetensors.index.json). `query_adapter`: position of
    "retrieval.query" among the `n_adapters` adapters.

    Returns {"release_config": dict, "release_state_dict": tensors as written, "merged": our layout in
    float64 (from the written tensors), "scaling", "adapter_index", "files"}.
    """
    if not 0 <= query_adapter < n_adapters:
        raise ValueError("query_adapter must index one of the adapters")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    others = [name for name in ADAPTER_NAMES if name != "retrieval.query"]
    adapters = others[:query_adapter] + ["retrieval.query"] + others[query_adapter : n_adapters - 1]
    release_config = release_config_dict(config, lora_rank=lora_rank, lora_alpha=lora_alpha, adapters=adapters)
    generator = torch.Generator().manual_seed(seed)
    tensors = _release_tensors(config, n_adapters, lora_rank, generator)
    state_dict = {key: value.to(dtype).contiguous() for key, value in tensors.items()}

    (folder / "config.json").write_text(json.dumps(release_config, indent=2), encoding="utf-8")
    files = []
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(folder / "model.safetensors"), metadata={"format": "pt"})
        files.append("model.safetensors")
    elif fmt == "bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
        files.append("pytorch_model.bin")
    elif fmt == "sharded":
        from safetensors.torch import save_file

        keys = list(state_dict)
        parts = [keys[i::3] for i in range(3)]
        weight_map = {}
        for k, part in enumerate(parts, start=1):
            name = f"model-{k:05d}-of-{len(parts):05d}.safetensors"
            save_file({key: state_dict[key] for key in part}, str(folder / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
            files.append(name)
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        files.append("model.safetensors.index.json")
    else:
        raise ValueError(f"unknown fmt {fmt!r}")

    scaling = lora_alpha / lora_rank
    return {
        "release_config": release_config,
        "release_state_dict": state_dict,
        "merged": merged_reference(state_dict, config, scaling=scaling, adapter=query_adapter),
        "scaling": scaling,
        "adapter_index": query_adapter,
        "files": files,
    }
