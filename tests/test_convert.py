"""The release-checkpoint converter (modeling/convert_jina_clip_release.py) on tiny snapshots written in
the release's exact layout (tests/_release_fixture.py).

Three independent references:
- the fixture's merged weights (float64, explicit outer-product sums, explicit q/k/v row ranges);
- a from-scratch re-implementation of the release's text forward written here with plain torch ops,
  straight from the release tensors: fused Wqkv, LoRA applied at run time (W x + s * B (A x), embedding
  rows W[i] + s * A[i] B), post-LN blocks, half-split RoPE, exact GELU, masked mean pooling;
- a model loaded with the fixture's merged weights, for both towers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from _release_fixture import R, write_release_snapshot
from _tiny import tiny_config
from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel
from jina_clip_v2.modeling.convert_jina_clip_release import (
    ReleaseCheckpointError,
    config_from_release,
    convert_release_snapshot,
    convert_release_state_dict,
    expected_release_shapes,
    load_release_snapshot,
    load_release_weights,
    release_lora_settings,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def config() -> JinaCLIPConfig:
    return tiny_config()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("release")
    info = write_release_snapshot(folder, config, seed=0)
    return folder, info


def _text_ids(vocab_size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (3, 9), generator=generator)
    ids[:, 0] = 0  # <s>
    ids[0, -1] = 2  # </s>, full length
    ids[1, 5], ids[1, 6:] = 2, 1  # padded
    ids[2, 3], ids[2, 4:] = 2, 1  # padded more
    return ids


def _pixels(config, seed: int = 0) -> torch.Tensor:
    size = config.vision_config.image_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def release_text_forward(sd: dict, release_config: dict, ids: torch.Tensor) -> torch.Tensor:
    """The release's text embedding, in float64, from the release tensors and release config alone."""
    hf = release_config["text_config"]["hf_model_config_kwargs"]
    adapter = hf["lora_adaptations"].index(release_config["text_config"]["default_lora_task"])
    scaling = hf["lora_alpha"] / hf["lora_rank"]
    heads, eps, base, pad = hf["num_attention_heads"], hf["layer_norm_eps"], hf["rotary_emb_base"], hf["pad_token_id"]

    def p(name):
        return sd[R + name].double()

    def lora_linear(x, name):
        w = p(name + ".parametrizations.weight.original")
        a = p(name + ".parametrizations.weight.0.lora_A")[adapter]  # [r, in]
        b = p(name + ".parametrizations.weight.0.lora_B")[adapter]  # [out, r]
        return x @ w.T + scaling * ((x @ a.T) @ b.T) + p(name + ".bias")

    def lora_embedding(idx, name):
        w = p(name + ".parametrizations.weight.original")
        a = p(name + ".parametrizations.weight.0.lora_A")[adapter]  # [num, r]
        b = p(name + ".parametrizations.weight.0.lora_B")[adapter]  # [r, dim]
        return w[idx] + scaling * (a[idx] @ b)

    def layer_norm(x, name):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * p(name + ".weight") + p(name + ".bias")

    def rotate(x, cos, sin):  # GPT-NeoX half split
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    batch, length = ids.shape
    mask = ids != pad  # the release derives the mask from the ids
    token_types = torch.zeros_like(ids)  # type_vocab_size 1: row 0 for every token
    h = lora_embedding(ids, "embeddings.word_embeddings")
    h = h + lora_embedding(token_types, "embeddings.token_type_embeddings")
    h = layer_norm(h, "emb_ln")
    width = h.shape[-1]
    head_dim = width // heads
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [L, head_dim/2]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    for i in range(hf["num_hidden_layers"]):
        layer = f"encoder.layers.{i}."
        qkv = lora_linear(h, layer + "mixer.Wqkv").view(batch, length, 3, heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, D]
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, length, width)
        h = layer_norm(h + lora_linear(attn, layer + "mixer.out_proj"), layer + "norm1")
        hidden = lora_linear(h, layer + "mlp.fc1")
        hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0)))
        h = layer_norm(h + lora_linear(hidden, layer + "mlp.fc2"), layer + "norm2")
    weights = mask.double()[..., None]
    return (h * weights).sum(1) / weights.sum(1)


def _reference_model(config, merged: dict) -> JinaCLIPModel:
    model = JinaCLIPModel(config).eval()
    model.load_state_dict({k: v.float() for k, v in merged.items()}, strict=True)
    return model


# ----------------------------------------------------------------------------------------------------
# Conversion is right
# ----------------------------------------------------------------------------------------------------


def test_converted_state_dict_equals_independent_merge(snapshot, config):
    folder, info = snapshot
    converted_config, state_dict = load_release_snapshot(folder)
    expected_keys = set(JinaCLIPModel(config).state_dict())
    assert set(state_dict) == expected_keys == set(info["merged"])
    for key, value in state_dict.items():
        assert value.dtype == torch.float32, key
        torch.testing.assert_close(value.double(), info["merged"][key], atol=1e-6, rtol=0, msg=key)
    # The LoRA delta is large in the fixture: ignoring it would be caught by the comparisons above.
    original = info["release_state_dict"][R + "encoder.layers.0.mixer.out_proj.parametrizations.weight.original"]
    assert (state_dict["text_model.layers.0.self_attn.o_proj.weight"] - original).abs().max() > 0.1


def test_config_from_release_matches_the_tiny_config(snapshot, config):
    _, info = snapshot
    converted = config_from_release(info["release_config"])
    for name in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "hidden_act", "layer_norm_eps", "type_vocab_size", "pad_token_id", "rope_parameters",
    ):  # fmt: skip
        assert getattr(converted.text_config, name) == getattr(config.text_config, name), name
    vision_fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size")
    for name in (*vision_fields, "patch_size", "rope_grid_size"):
        assert getattr(converted.vision_config, name) == getattr(config.vision_config, name), name
    assert converted.projection_dim == config.projection_dim
    assert converted.matryoshka_dimensions == config.matryoshka_dimensions
    assert release_lora_settings(info["release_config"]) == {"lora_alpha": 4.0, "lora_rank": 4, "adapter_index": 0}


def test_converted_model_reproduces_the_release_forward(snapshot, config):
    folder, info = snapshot
    model = convert_release_snapshot(folder)
    assert not model.training and model.dtype == torch.float32
    reference = _reference_model(config, info["merged"])
    ids, pixels = _text_ids(config.text_config.vocab_size), _pixels(config)
    with torch.no_grad():
        text = model.get_text_features(ids).pooler_output
        image = model.get_image_features(pixels).pooler_output
        text_ref = reference.get_text_features(ids).pooler_output
        image_ref = reference.get_image_features(pixels).pooler_output
    release = release_text_forward(info["release_state_dict"], info["release_config"], ids)
    assert (text.double() - release).abs().max().item() <= TOL
    assert (text - text_ref).abs().max().item() <= TOL
    assert (image - image_ref).abs().max().item() <= TOL
    assert torch.equal(model.logit_scale.detach(), info["release_state_dict"]["logit_scale"].float())
    # padding is masked out: a padded row embeds as the same text without its padding
    with torch.no_grad():
        unpadded = model.get_text_features(ids[1:2, :6]).pooler_output
    assert (unpadded - text[1:2]).abs().max().item() <= TOL


def test_scaling_and_adapter_index_come_from_the_release_config(tmp_path, config):
    # alpha/rank = 0.5 and "retrieval.query" second of three adapters: a converter that hard-codes
    # scaling 1.0 or adapter 0 fails here.
    info = write_release_snapshot(tmp_path, config, seed=3, n_adapters=3, lora_alpha=2, lora_rank=4, query_adapter=1)
    assert release_lora_settings(info["release_config"]) == {"lora_alpha": 2.0, "lora_rank": 4, "adapter_index": 1}
    _, state_dict = load_release_snapshot(tmp_path)
    for key, value in state_dict.items():
        torch.testing.assert_close(value.double(), info["merged"][key], atol=1e-6, rtol=0, msg=key)
    model = convert_release_snapshot(tmp_path)
    ids = _text_ids(config.text_config.vocab_size, seed=1)
    with torch.no_grad():
        text = model.get_text_features(ids).pooler_output
    release = release_text_forward(info["release_state_dict"], info["release_config"], ids)
    assert (text.double() - release).abs().max().item() <= TOL


def test_bf16_checkpoint_merges_in_float32(tmp_path, config):
    info = write_release_snapshot(tmp_path, config, seed=1, dtype=torch.bfloat16)
    sd = info["release_state_dict"]
    base = R + "encoder.layers.1.mlp.fc1.parametrizations.weight."
    w, a, b = sd[base + "original"].float(), sd[base + "0.lora_A"][0].float(), sd[base + "0.lora_B"][0].float()
    merged32 = w + b @ a
    _, kept = load_release_snapshot(tmp_path)  # dtype=None: the checkpoint's dtype
    assert kept["text_model.layers.1.mlp.fc1.weight"].dtype == torch.bfloat16
    assert torch.equal(kept["text_model.layers.1.mlp.fc1.weight"], merged32.to(torch.bfloat16))
    model = convert_release_snapshot(tmp_path)  # float32 by default: merge not rounded to bf16
    assert torch.equal(model.text_model.layers[1].mlp.fc1.weight.detach(), merged32)
    model16 = convert_release_snapshot(tmp_path, dtype=torch.bfloat16)
    assert model16.dtype == torch.bfloat16


def test_convert_writes_a_loadable_folder(snapshot, config, tmp_path):
    folder, _ = snapshot
    model = convert_release_snapshot(folder, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file()
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "jina_clip" and "hf_model_config_kwargs" not in json.dumps(saved)
    reloaded = JinaCLIPModel.from_pretrained(tmp_path / "out").eval()
    ids = _text_ids(config.text_config.vocab_size)
    with torch.no_grad():
        assert torch.equal(model.get_text_features(ids).pooler_output, reloaded.get_text_features(ids).pooler_output)


def test_expected_release_shapes_of_the_real_config():
    shapes = expected_release_shapes(JinaCLIPConfig())  # meta device: no memory
    word = R + "embeddings.word_embeddings.parametrizations.weight."
    assert shapes[word + "original"] == (250002, 1024)
    assert shapes[word + "0.lora_A"] == (1, 250002, 4)
    assert shapes[word + "0.lora_B"] == (1, 4, 1024)
    qkv = R + "encoder.layers.23.mixer.Wqkv."
    assert shapes[qkv + "parametrizations.weight.original"] == (3072, 1024)
    assert shapes[qkv + "parametrizations.weight.0.lora_A"] == (1, 4, 1024)
    assert shapes[qkv + "parametrizations.weight.0.lora_B"] == (1, 3072, 4)
    assert shapes[qkv + "bias"] == (3072,)
    assert shapes[R + "encoder.layers.0.mlp.fc2.parametrizations.weight.0.lora_A"] == (1, 4, 4096)
    assert shapes["vision_model.pos_embed"] == (1, 1297, 1024)
    assert shapes["logit_scale"] == ()
    # 2 embeddings x 3 + emb_ln 2 + 24 layers x (4 linears x 4 + 2 norms x 2) = 488 text tensors
    assert sum(key.startswith(R) for key in shapes) == 488


# ----------------------------------------------------------------------------------------------------
# Strictness and readable errors
# ----------------------------------------------------------------------------------------------------


def _convert(state_dict, config):
    return convert_release_state_dict(state_dict, config, lora_alpha=4, lora_rank=4)


def test_missing_key_is_named(snapshot, config):
    _, info = snapshot
    sd = dict(info["release_state_dict"])
    key = R + "encoder.layers.1.mlp.fc1.bias"
    del sd[key]
    with pytest.raises(ReleaseCheckpointError) as err:
        _convert(sd, config)
    assert key in str(err.value) and "text_model.layers.1.mlp.fc1.bias" in str(err.value)
    assert "1 keys missing" in str(err.value)
    assert err.value.missing and key in err.value.missing[0]


def test_missing_lora_tensor_is_named(snapshot, config):
    _, info = snapshot
    sd = dict(info["release_state_dict"])
    key = R + "embeddings.word_embeddings.parametrizations.weight.0.lora_B"
    del sd[key]
    with pytest.raises(ReleaseCheckpointError, match=key.replace(".", r"\.")):
        _convert(sd, config)


def test_extra_key_is_named(snapshot, config):
    _, info = snapshot
    sd = dict(info["release_state_dict"])
    sd[R + "pooler.dense.weight"] = torch.zeros(32, 32)
    with pytest.raises(ReleaseCheckpointError) as err:
        _convert(sd, config)
    assert R + "pooler.dense.weight" in str(err.value)
    assert err.value.unexpected == [R + "pooler.dense.weight"]


def test_known_buffers_are_dropped_silently(snapshot, config):
    _, info = snapshot
    sd = dict(info["release_state_dict"])
    sd[R + "encoder.layers.0.mixer.Wqkv.parametrizations.weight.0.lora_dropout_mask"] = torch.ones(1)
    sd[R + "encoder.layers.0.mixer.rotary_emb.inv_freq"] = torch.ones(4)
    sd["vision_model.rope.freqs_cos"] = torch.ones(16, 8)
    assert set(_convert(sd, config)) == set(info["merged"])


def test_wrong_shape_is_named(snapshot, config):
    _, info = snapshot
    sd = dict(info["release_state_dict"])
    key = R + "encoder.layers.0.mixer.Wqkv.parametrizations.weight.original"
    sd[key] = torch.zeros(95, 32)
    with pytest.raises(ReleaseCheckpointError) as err:
        _convert(sd, config)
    assert f"{key}: checkpoint [95, 32], expected [96, 32]" in str(err.value)


def test_wrong_lora_rank_is_named(snapshot, config):
    _, info = snapshot
    with pytest.raises(ReleaseCheckpointError) as err:
        convert_release_state_dict(info["release_state_dict"], config, lora_alpha=4, lora_rank=8)
    assert "lora_A: checkpoint [1, 4, 32], expected [*, 8, 32]" in str(err.value)


def test_long_reports_are_truncated_with_counts(snapshot, config):
    _, info = snapshot
    sd = dict(info["release_state_dict"])
    for i in range(25):
        sd[f"extra.{i}"] = torch.zeros(1)
    with pytest.raises(ReleaseCheckpointError) as err:
        _convert(sd, config)
    message = str(err.value)
    assert "25 release keys not consumed" in message and "... and 5 more" in message
    assert len(err.value.unexpected) == 25


def test_a_config_for_other_weights_is_reported(snapshot):
    _, info = snapshot
    bigger = tiny_config(text={"num_hidden_layers": 3})
    with pytest.raises(ReleaseCheckpointError) as err:
        _convert(info["release_state_dict"], bigger)
    assert R + "encoder.layers.2.mixer.Wqkv.bias" in str(err.value)


# ----------------------------------------------------------------------------------------------------
# Files and formats
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bin", "sharded"])
def test_other_formats_load_the_same(tmp_path, config, snapshot, fmt, monkeypatch):
    info = write_release_snapshot(tmp_path, config, seed=0, fmt=fmt)
    _, reference = load_release_snapshot(snapshot[0])
    calls = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    _, state_dict = load_release_snapshot(tmp_path)
    assert calls == ([True] if fmt == "bin" else [])
    assert set(state_dict) == set(reference)
    for key in reference:
        assert torch.equal(state_dict[key], reference[key]), key
    assert len(info["files"]) == (1 if fmt == "bin" else 4)


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path, config):
    write_release_snapshot(tmp_path, config, fmt="safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save({"logit_scale": torch.ones(()), "payload": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ReleaseCheckpointError, match="weights_only"):
        load_release_weights(tmp_path)


def test_no_weights_is_a_clear_error(tmp_path, config):
    write_release_snapshot(tmp_path, config)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors.*pytorch_model.bin"):
        load_release_snapshot(tmp_path)


def test_add_projections_is_refused(tmp_path, config):
    info = write_release_snapshot(tmp_path, config)
    release = dict(info["release_config"], add_projections=True)
    (tmp_path / "config.json").write_text(json.dumps(release))
    with pytest.raises(ReleaseCheckpointError, match="add_projections"):
        load_release_snapshot(tmp_path)


def test_converted_folder_is_not_taken_for_a_release(tmp_path, config):
    config.save_pretrained(tmp_path)
    with pytest.raises(ReleaseCheckpointError, match="from_pretrained"):
        load_release_snapshot(tmp_path)


def test_dtype_none_keeps_the_checkpoint_dtype(tmp_path, config):
    write_release_snapshot(tmp_path, config, seed=2, dtype=torch.bfloat16)
    assert convert_release_snapshot(tmp_path, dtype=None).dtype == torch.bfloat16
