"""jina-clip-v1: the JinaBERT text tower (ALiBi against a float64 reference, eager == SDPA, batch
invariance, packed rows, long inputs), the EVA02-B/16 vision tower against timm, the one config for both
versions (real-size parameter counts, Matryoshka and instructions refused), save / load in a fresh process
through AutoModel and Sentence-Transformers, and the conversion of a v1 release snapshot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from _release_fixture_v1 import release_v1_config_dict, release_v1_state_dict, write_release_v1_snapshot
from _tiny import BLOCK_REPO_IMPORTS, ROOT, build_processor
from _tiny_v1 import build_bert_tokenizer, tiny_v1_config, tiny_v1_model
from jina_clip_v2.modeling import JinaBertConfig, JinaCLIPConfig, JinaCLIPModel
from jina_clip_v2.modeling.convert_jina_clip_release import (
    ReleaseCheckpointError,
    config_from_release,
    convert_release_state_dict,
)
from jina_clip_v2.modeling.modeling_jina_bert import alibi_attention_bias, alibi_slopes

HERE = Path(__file__).resolve().parent
TEXTS = [
    "a frog",
    "a small red bird sitting on a branch in the garden",
    "the penguin",
    "a very long caption about a chicken standing in a farmyard next to a wooden fence on a sunny day",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_bert_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    model = tiny_v1_model(seed=11)
    model.processor = build_processor(tokenizer, image_size=64)
    return model


# ----------------------------------------------------------------------------------------------------
# 1. One config for both versions; the real-size v1 model
# ----------------------------------------------------------------------------------------------------


def test_real_size_v1_parameter_counts_match_the_release():
    config = JinaCLIPConfig(text_config={"model_type": "jina_bert"})
    with torch.device("meta"):
        model = JinaCLIPModel(config)
    text = sum(p.numel() for p in model.text_model.parameters())
    vision = sum(p.numel() for p in model.vision_model.parameters())
    total = sum(p.numel() for p in model.parameters())
    # The release: 223M parameters (text ~137M: JinaBERT-v2 base; vision ~86M: EVA02-B/16).
    assert abs(text / 137e6 - 1) < 0.01, text
    assert abs(vision / 86e6 - 1) < 0.01, vision
    assert abs(total / 223e6 - 1) < 0.01, total
    assert (text, vision, total) == (136_777_728, 85_869_312, 222_647_041)  # measured, for the record


def test_v1_config_defaults_are_the_release_and_round_trip(tmp_path):
    config = JinaCLIPConfig(text_config={"model_type": "jina_bert"})
    assert config.version == "v1" and JinaCLIPConfig().version == "v2"
    assert isinstance(config.text_config, JinaBertConfig)
    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (30528, 768, 12, 12)
    assert (text.intermediate_size, text.layer_norm_eps, text.pad_token_id, text.type_vocab_size) == (3072, 1e-12, 0, 2)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (768, 12, 16, 224)
    assert (vision.intermediate_size, vision.rope_grid_size, vision.grid_size) == (2048, 14, 14)
    assert config.projection_dim == 768
    assert config.matryoshka_dimensions == [] and config.task_instructions == {}
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["text_config"]["model_type"] == "jina_bert"
    loaded = JinaCLIPConfig.from_pretrained(tmp_path)
    assert loaded.version == "v1" and loaded.to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="unknown text tower type.*'bert'"):
        JinaCLIPConfig(text_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="not trained with Matryoshka"):
        JinaCLIPConfig(text_config={"model_type": "jina_bert"}, truncate_dim=256)


def test_matryoshka_truncation_and_task_instructions_are_refused(model):
    with pytest.raises(ValueError, match="not trained with Matryoshka.*full 48-d"):
        model.encode_text(TEXTS, truncate_dim=16)
    with pytest.raises(ValueError, match="not trained with Matryoshka"):
        model.encode_image(Image.new("RGB", (70, 64)), truncate_dim=32)
    with pytest.raises(ValueError, match="no task instructions.*without task"):
        model.encode_text(TEXTS, task="retrieval.query")
    assert model.encode_text(TEXTS).shape == (len(TEXTS), 48)


# ----------------------------------------------------------------------------------------------------
# 2. ALiBi against a direct float64 computation
# ----------------------------------------------------------------------------------------------------


def _paper_slopes(n: int) -> list[float]:
    """ALiBi's slopes written out in closed form (Press et al., 2022, section 3 and its reference code):
    2^(-8 (h+1) / p) for the p = 2^floor(log2 n) first heads, then 2^(-8 (2k+1) / (2p)) for the rest."""
    p = 2 ** math.floor(math.log2(n))
    return [2.0 ** (-8.0 * (h + 1) / p) for h in range(p)] + [2.0 ** (-8.0 * (2 * k + 1) / (2 * p)) for k in range(n - p)]


@pytest.mark.parametrize("heads", [1, 3, 6, 8, 12, 16, 24])
def test_alibi_slopes_are_the_papers(heads):
    assert alibi_slopes(heads) == pytest.approx(_paper_slopes(heads), rel=1e-12, abs=0)
    if heads == 8:
        assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    if heads == 12:  # the release: 2^-1 .. 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
        assert alibi_slopes(12) == pytest.approx([2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5])


def test_alibi_bias_equals_the_formula_in_float64():
    heads, seq = 6, 9
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, 6:] = 0
    bias = alibi_attention_bias(torch.arange(seq)[None], heads, mask, dtype=torch.float32)
    slopes = _paper_slopes(heads)
    expected = np.zeros((2, heads, seq, seq))
    for b in range(2):
        for h in range(heads):
            for i in range(seq):
                for j in range(seq):
                    expected[b, h, i, j] = -slopes[h] * abs(i - j) if mask[b, j] else -np.inf
    got = bias.double().numpy()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-7, atol=0)
    assert (got[~finite] == torch.finfo(torch.float32).min).all()  # padded keys: the dtype's lowest value
    # Symmetric in i and j, zero on the diagonal, growing linearly with the distance.
    assert np.array_equal(got[0], got[0].transpose(0, 2, 1)) and (np.diagonal(got[0], axis1=1, axis2=2) == 0).all()


def _reference_jina_bert(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, alibi: bool = True) -> torch.Tensor:
    """The JinaBERT forward written out in float64 from the weights (reference doc, section 2.2): word +
    type-0 embeddings, LayerNorm, then per block softmax(q k^T / sqrt(d) - m_h |i - j| + pad mask) v, out
    projection, post-LN, gated GELU unit (first half gated), post-LN; mean over the real tokens."""
    config = model.config.text_config
    sd = {k[len("text_model."):]: v.double() for k, v in model.state_dict().items() if k.startswith("text_model.")}
    heads, dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    eps = config.layer_norm_eps

    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    def linear(x, name, bias=True):
        return x @ sd[f"{name}.weight"].T + (sd[f"{name}.bias"] if bias else 0)

    batch, seq = input_ids.shape
    x = sd["embeddings.word_embeddings.weight"][input_ids] + sd["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    slopes = torch.tensor(_paper_slopes(heads), dtype=torch.float64) * float(alibi)
    positions = torch.arange(seq, dtype=torch.float64)
    distance = (positions[None, :] - positions[:, None]).abs()
    bias = -slopes[:, None, None] * distance  # (heads, seq, seq)
    pad = torch.where(attention_mask.bool(), 0.0, -torch.inf).double()[:, None, None, :]
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."

        def split(t):
            return t.view(batch, seq, heads, dim).transpose(1, 2)

        q, k, v = (split(linear(x, p + f"self_attn.{n}")) for n in ("q_proj", "k_proj", "v_proj"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim) + bias + pad
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, -1)
        x = ln(x + linear(attn, p + "self_attn.o_proj"), p + "post_attention_layernorm")
        gate = F.gelu(linear(x, p + "mlp.gate_proj", bias=False))
        x = ln(x + linear(gate * linear(x, p + "mlp.up_proj", bias=False), p + "mlp.down_proj"), p + "post_mlp_layernorm")
    mask = attention_mask.double()[..., None]
    return (x * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_text_tower_equals_the_float64_reference(model, tokenizer, implementation):
    model.set_attn_implementation(implementation)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any() and (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    with torch.no_grad():
        ours = model.get_text_features(**batch).pooler_output  # token_type_ids (all 0) are passed and ignored
        ids_only = model.get_text_features(batch["input_ids"]).pooler_output  # mask from pad id 0, as the release
    expected = _reference_jina_bert(model, batch["input_ids"], batch["attention_mask"])
    assert (ours.double() - expected).abs().max().item() <= 1e-5
    assert (ids_only.double() - expected).abs().max().item() <= 1e-5
    # Without the ALiBi bias the reference is a different vector: the test can tell.
    without = _reference_jina_bert(model, batch["input_ids"], batch["attention_mask"], alibi=False)
    assert (without - expected).abs().max().item() > 1e-3
    model.set_attn_implementation("sdpa")


def test_eager_equals_sdpa_and_sdpa_is_used(model, tokenizer, monkeypatch):
    from transformers.modeling_utils import AttentionInterface

    calls = []
    original = AttentionInterface._global_mapping["sdpa"]
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", lambda *a, **k: calls.append(1) or original(*a, **k))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    results = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.config.text_config._attn_implementation == implementation
        calls.clear()
        with torch.no_grad():
            results[implementation] = (model.get_text_features(**batch).pooler_output, model.get_image_features(pixels).pooler_output)
        results[implementation + "_calls"] = len(calls)
    assert results["eager_calls"] == 0 and results["sdpa_calls"] == 4  # 2 text layers + 2 vision blocks
    for eager, sdpa in zip(results["eager"], results["sdpa"]):
        assert (eager - sdpa).abs().max().item() <= 1e-5


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_batch_invariance(model, tokenizer, implementation):
    """A text's embedding does not depend on what else is in its batch (padding is masked out of attention,
    ALiBi distances and pooling), nor on the batch size for images."""
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        together = model.get_text_features(**batch).pooler_output
        for index, text in enumerate(TEXTS):
            alone = model.get_text_features(**tokenizer([text], return_tensors="pt")).pooler_output[0]
            assert (alone - together[index]).abs().max().item() <= 1e-5
        pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        images = model.get_image_features(pixels).pooler_output
        for index in range(4):
            assert (model.get_image_features(pixels[index : index + 1]).pooler_output[0] - images[index]).abs().max().item() <= 1e-5
    model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_packed_rows_keep_per_text_alibi_distances(model, tokenizer, implementation):
    """The unpadded path (all texts in one row, block-diagonal mask, positions restarting per text) gives
    the padded path's embeddings: ALiBi measures distances between positions, not row indices."""
    model.set_attn_implementation(implementation)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = model.get_text_features(batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        packed = model.get_text_features(batch["input_ids"], attention_mask=batch["attention_mask"], unpadded=True).pooler_output
    assert (padded - packed).abs().max().item() <= 1e-5
    model.set_attn_implementation("sdpa")


def test_inputs_longer_than_the_training_length_run(model, tokenizer):
    """ALiBi has no position table: 1,500 tokens (3x the 512-token training length) run with finite outputs,
    eager and SDPA agree, and padding a long text next to a short one changes neither."""
    long_text = " ".join(["a small red bird sitting on a branch in the garden"] * 140)
    assert len(tokenizer(long_text).input_ids) > 1500
    with torch.no_grad():
        ids = tokenizer([long_text, "a frog"], padding=True, truncation=True, max_length=1500, return_tensors="pt")
        out = {}
        for implementation in ("eager", "sdpa"):
            model.set_attn_implementation(implementation)
            out[implementation] = model.get_text_features(**ids)
        short_alone = model.get_text_features(**tokenizer(["a frog"], return_tensors="pt")).pooler_output[0]
    assert ids["input_ids"].shape[1] == 1500
    for result in out.values():
        assert torch.isfinite(result.last_hidden_state).all() and torch.isfinite(result.pooler_output).all()
    assert (out["eager"].pooler_output - out["sdpa"].pooler_output).abs().max().item() <= 1e-4
    assert (out["sdpa"].pooler_output[1] - short_alone).abs().max().item() <= 1e-5
    embeddings = model.encode_text([long_text, "a frog"], max_length=2048)  # encode_text past its 512 default
    assert np.isfinite(embeddings).all() and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention"])
def test_backends_without_per_head_float_masks_are_refused(model, tokenizer, implementation):
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    model.config.text_config._attn_implementation = implementation  # as a benchmark toggling backends does
    try:
        with pytest.raises(ValueError, match=r"ALiBi.*sdpa.*alibi_slopes"):
            model.get_text_features(**batch)
    finally:
        model.config.text_config._attn_implementation = "sdpa"


def test_gradients_reach_every_parameter(tokenizer):
    model = tiny_v1_model(seed=5).train()
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels, return_loss=True)
    out.loss.backward()
    # token type 1 is never used (as in the release) and the pad row has padding_idx: no gradient there.
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == [], missing
    assert model.text_model.embeddings.word_embeddings.weight.grad[0].abs().max() == 0


def test_gradient_checkpointing_changes_neither_loss_nor_gradients(tokenizer):
    model = tiny_v1_model(seed=6).train()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))

    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels, return_loss=True)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.text_model.layers)
    loss_gc, grads_gc = step()
    assert torch.allclose(loss, loss_gc, atol=1e-6, rtol=0) and grads.keys() == grads_gc.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_gc[name], atol=1e-6, rtol=1e-5), name


# ----------------------------------------------------------------------------------------------------
# 3. The vision tower at B/16 against timm's Eva
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [224, 112])
def test_b16_vision_tower_equals_timm_eva(tmp_path, image_size):
    """EVA02-B/16 with jina-clip-v1's RoPE (no interpolation: the 14x14 grid of 224 px, timm
    ref_feat_shape 14). At 224 px positions are the plain indices; at 112 px (7x7) they are scaled by 2,
    which a wrong scaling would get wrong."""
    model = tiny_v1_model(seed=image_size, image_size=image_size)
    model.set_attn_implementation("eager")
    vision = model.config.vision_config
    assert (vision.patch_size, vision.rope_grid_size) == (16, 14)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(3))
    save_file({"pixel_values": pixels}, tmp_path / "px.safetensors")
    args = [vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, image_size, 16, 14]
    subprocess.run(
        [sys.executable, str(HERE / "_timm_oracle.py"), str(tmp_path / "w.safetensors"), str(tmp_path / "px.safetensors"),
         str(tmp_path / "out.safetensors"), *map(str, args)],
        check=True, cwd=HERE,
    )
    expected = load_file(tmp_path / "out.safetensors")["embeds"]
    with torch.no_grad():
        ours = model.get_image_features(pixels).pooler_output
    assert ours.shape == expected.shape == (2, 48)
    assert (ours - expected).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------------------------------
# 4. save_pretrained / export -> a fresh process: AutoModel and Sentence-Transformers
# ----------------------------------------------------------------------------------------------------

FRESH = BLOCK_REPO_IMPORTS + textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from PIL import Image

    folder, out, repo, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    assert not any(os.path.realpath(p or ".") == os.path.realpath(repo) for p in sys.path), sys.path
    try:
        import jina_clip_v2.modeling  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the repository's modeling package is importable in the fresh process")
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig, AutoModel

    texts = json.loads(os.environ["PROBE_TEXTS"])
    images = [Image.open(p) for p in paths]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    errors = []
    for call in (lambda: model.encode_text(texts, truncate_dim=16), lambda: model.encode_text(texts, task="retrieval.query")):
        try:
            call()
        except ValueError as err:
            errors.append(str(err))
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    np.savez(
        out,
        text=model.encode_text(texts),
        image=model.encode_image(images),
        st_text=st.encode(texts),
        st_image=st.encode(images),
        st_mixed=st.encode([texts[0], images[0], texts[1], images[1]]),
    )
    print(json.dumps({
        "config": type(config).__module__ + "." + type(config).__name__,
        "text_config": type(config.text_config).__name__,
        "text_model": type(model.text_model).__module__ + "." + type(model.text_model).__name__,
        "tokenizer": type(model.processor.tokenizer).__name__,
        "st_modules": [type(m).__name__ for m in st],
        "st_prompts": st.prompts,
        "errors": errors,
    }))
    """
)


def _run_fresh(folder: Path, work: Path, image_paths: list[Path]) -> tuple[dict, dict]:
    script = work / "load.py"
    script.write_text(FRESH, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(work / "hf_home"), PROBE_TEXTS=json.dumps(TEXTS), TOKENIZERS_PARALLELISM="false")
    out = work / "emb.npz"
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(folder), str(out), str(ROOT), *map(str, image_paths)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), dict(np.load(out))


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("v1_images")
    rng = np.random.default_rng(4)
    paths = []
    for index, (h, w) in enumerate(((70, 95), (64, 64))):
        paths.append(folder / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_export_loads_in_a_fresh_process_through_automodel_and_sentence_transformers(model, image_paths, tmp_path):
    from jina_clip_v2.hub.export import export_model

    folder = export_model(model, tmp_path / "tiny-jina-clip-v1", repo_id="someone/tiny-jina-clip-v1")
    for name in ("configuration_jina_bert.py", "modeling_jina_bert.py"):
        assert (folder / name).read_bytes() == (ROOT / "modeling" / name).read_bytes()
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert set(st_config["prompts"].values()) <= {""}  # no instruction in v1 (ST's own empty query / document)
    card = (folder / "README.md").read_text()
    assert "jina-clip-v1" in card and "not trained for truncation" in card and "truncate_dim=" not in card
    from jina_clip_v2.hub.model_card import validate_model_card

    data = validate_model_card(folder / "README.md")
    assert data.language == ["en"] and "matryoshka" not in data.tags and "2405.20204" in card
    info, emb = _run_fresh(folder, tmp_path, image_paths)
    assert info["config"].startswith("transformers_modules.") and info["text_config"] == "JinaBertConfig"
    assert info["text_model"].startswith("transformers_modules.") and info["text_model"].endswith("modeling_jina_bert.JinaBertModel")
    assert info["tokenizer"] in ("TokenizersBackend", "PreTrainedTokenizerFast")  # tokenizer.json as written
    assert info["st_modules"] == ["JinaCLIPTransformer", "Normalize"] and set(info["st_prompts"].values()) <= {""}
    assert len(info["errors"]) == 2 and "Matryoshka" in info["errors"][0] and "no task instructions" in info["errors"][1]
    images = [Image.open(p) for p in image_paths]
    text, image = model.encode_text(TEXTS), model.encode_image(images)
    for got, expected in ((emb["text"], text), (emb["image"], image), (emb["st_text"], text), (emb["st_image"], image)):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(emb["st_mixed"], np.stack([text[0], image[0], text[1], image[1]]), atol=1e-5, rtol=0)


def test_save_pretrained_round_trip_in_process(model, tmp_path):
    model.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    loaded = JinaCLIPModel.from_pretrained(tmp_path).eval()
    assert loaded.config.version == "v1" and type(loaded.text_model).__name__ == "JinaBertModel"
    state = model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    np.testing.assert_allclose(loaded.encode_text(TEXTS), model.encode_text(TEXTS), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# 5. Converting a v1 release snapshot
# ----------------------------------------------------------------------------------------------------


def test_v1_release_snapshot_converts_to_a_folder_that_embeds_as_the_model(model, tokenizer, image_paths, tmp_path):
    from jina_clip_v2.hub.convert import convert_release

    snapshot = tmp_path / "jina-clip-v1"
    written = write_release_v1_snapshot(snapshot, model, tokenizer)
    assert not any(key.startswith("text_model.layers.") for key in written["release_state_dict"])
    folder = convert_release(snapshot, tmp_path / "converted")  # checks AutoModel / ST reload internally
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["model_type"] == "jina_bert" and config["matryoshka_dimensions"] == []
    assert config["vision_config"]["patch_size"] == 16 and config["vision_config"]["rope_grid_size"] == 14
    card = (folder / "README.md").read_text()
    assert "apache-2.0" in card and "jinaai/jina-clip-v1" in card
    converted = JinaCLIPModel.from_pretrained(folder).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    images = [Image.open(p) for p in image_paths]
    np.testing.assert_allclose(converted.encode_text(TEXTS), model.encode_text(TEXTS), atol=1e-6, rtol=0)
    np.testing.assert_allclose(converted.encode_image(images), model.encode_image(images), atol=1e-6, rtol=0)
    _, emb = _run_fresh(folder, tmp_path, image_paths)
    np.testing.assert_allclose(emb["text"], model.encode_text(TEXTS), atol=1e-5, rtol=0)
    np.testing.assert_allclose(emb["st_image"], model.encode_image(images), atol=1e-5, rtol=0)


def test_v1_release_config_maps_onto_the_v1_config():
    config = config_from_release(release_v1_config_dict(tiny_v1_config(image_size=224)))
    assert config.version == "v1"
    assert (config.vision_config.rope_grid_size, config.vision_config.grid_size) == (14, 14)
    # The real release's vision config (intp_freq false, the plain 14x14 grid) with JinaBERT's own sizes.
    release = release_v1_config_dict(JinaCLIPConfig(text_config={"model_type": "jina_bert"}))
    release["text_config"]["hf_model_config_kwargs"] = {"use_flash_attn": False}
    assert release["vision_config"]["intp_freq"] is False and release["vision_config"]["pt_hw_seq_len"] == 14
    real = config_from_release(release)
    assert real.to_dict()["text_config"] == JinaCLIPConfig(text_config={"model_type": "jina_bert"}).to_dict()["text_config"]
    assert real.vision_config.to_dict() == JinaCLIPConfig(text_config={"model_type": "jina_bert"}).vision_config.to_dict()
    bad = json.loads(json.dumps(release))
    bad["text_config"]["hf_model_config_kwargs"]["use_qk_norm"] = True
    with pytest.raises(ReleaseCheckpointError, match="use_qk_norm=True"):
        config_from_release(bad)
    bad = json.loads(json.dumps(release))
    bad["vision_config"]["pt_hw_seq_len"] = 16  # intp_freq false on a 14x14 grid: the release could not run it
    with pytest.raises(ReleaseCheckpointError, match="intp_freq=false"):
        config_from_release(bad)
    with pytest.raises(ValueError, match="jina-clip-v1 or jina-clip-v2 release"):
        JinaCLIPConfig(**release)


def test_v1_conversion_reports_unexpected_missing_and_mismatched_keys_by_name(model):
    config = model.config
    release = release_v1_state_dict(model)
    assert convert_release_state_dict(release, config).keys() == model.state_dict().keys()
    broken = dict(release)
    broken.pop("text_model.transformer.encoder.layers.1.mlp.gated_layers.weight")
    broken["text_model.transformer.encoder.layers.0.mixer.Wqkv.weight"] = torch.zeros(3 * 48 + 3, 48)
    broken["text_model.transformer.pooler.dense.weight"] = torch.zeros(48, 48)
    broken["text_model.transformer.encoder.layers.0.mixer.inner_attn.linear_biases"] = torch.zeros(1, 6, 4, 4)  # a buffer
    with pytest.raises(ReleaseCheckpointError) as info:
        convert_release_state_dict(broken, config)
    err = info.value
    assert err.unexpected == ["text_model.transformer.pooler.dense.weight"]
    assert err.missing == [
        "text_model.transformer.encoder.layers.1.mlp.gated_layers.weight "
        "(-> text_model.layers.1.mlp.gate_proj.weight, text_model.layers.1.mlp.up_proj.weight)"
    ]
    assert err.mismatched == ["text_model.transformer.encoder.layers.0.mixer.Wqkv.weight: checkpoint [147, 48], expected [144, 48]"]
    # A v2 checkpoint is not a v1 one: its keys are all unexpected, v1's all missing.
    with pytest.raises(ReleaseCheckpointError, match="unexpected"):
        convert_release_state_dict({"text_model.transformer.roberta.emb_ln.weight": torch.zeros(48), **release}, config)


# ----------------------------------------------------------------------------------------------------
# 6. Evaluation runs the same suites on a v1 model
# ----------------------------------------------------------------------------------------------------


def test_evaluation_runs_v1_with_queries_encoded_without_an_instruction(model, tmp_path):
    """The document-retrieval task asks for the query instruction (`query_task="retrieval.query"`); a model
    without instructions (v1) encodes its queries as plain texts, as its paper evaluates it, instead of
    failing."""
    import _eval_fixtures as fx

    from jina_clip_v2.evaluation.runner import evaluate
    from jina_clip_v2.evaluation.tasks import CrossModalRetrievalTask, DocumentRetrievalTask

    tasks = [
        CrossModalRetrievalTask(name="Flickr-like", dataset=str(fx.write_flickr_like(tmp_path / "flickr", n_images=6))),
        DocumentRetrievalTask(name="DocBeir", dataset=str(fx.write_vidore_beir(tmp_path / "vbeir", n_pages=6))),
    ]
    assert tasks[1].query_task == "retrieval.query"
    result = evaluate(model, tasks, None, tmp_path / "out", show_progress=False)
    assert not result["errors"], result["errors"]
    assert result["embedding_dim"] == 48
    kinds = {entry["type"] for entry in result["results"]}
    assert kinds == {"text-to-image retrieval", "image-to-text retrieval", "document retrieval"}
    for entry in result["results"]:
        assert entry["truncate_dim"] in (None, 48) and all(0 <= v <= 100 for v in entry["metrics"].values())


def test_text_flops_count_the_gated_mlp():
    """The benchmarks' FLOPs function counts 2 FLOPs per matmul weight per token: for JinaBERT that is
    q, k, v, o and the three matrices of the gated unit (the embeddings do no matmul)."""
    from jina_clip_v2.training.flops import text_forward_flops

    config = JinaCLIPConfig(text_config={"model_type": "jina_bert"})
    with torch.device("meta"):
        text = JinaCLIPModel(config).text_model
    matmul_weights = sum(
        p.numel() for n, p in text.named_parameters() if n.endswith("weight") and p.ndim == 2 and "embeddings" not in n
    )
    parts = text_forward_flops(config.text_config, 1)
    assert parts["qkvo"] + parts["mlp"] == 2 * matmul_weights
