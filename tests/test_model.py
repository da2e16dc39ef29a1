"""Model foundation: Hub round trip, text tower = stock JinaEmbeddingsV3, attention backends, gradient
checkpointing, gradients, batch invariance, resolution changes, real-size parameter counts, release
configs and the forward() contract. Everything on CPU with tiny random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers.modeling_layers import GradientCheckpointingLayer

from _tiny import BLOCK_REPO_IMPORTS, ROOT, build_processor, tiny_config, tiny_model
from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel, release_config_to_kwargs
from jina_clip_v2.modeling.modeling_jina_clip import resample_position_embeddings, vision_rotary_cos_sin

HERE = Path(__file__).resolve().parent
IMAGES = ROOT / "data" / "tuxpaint" / "images"
TEXTS = [
    "a frog",
    "Ein kleiner roter Vogel sitzt auf einem Ast im Garten",
    "un pingouin",
    "猫が窓のそばで眠っている",
    "a very long caption about a chicken standing in a farmyard next to a wooden fence on a sunny day",
]


def _pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _sample_images(n: int) -> list[Path]:
    return sorted(IMAGES.iterdir())[:: 97][:n]


# ----------------------------------------------------------------------------------------------------
# 1. save_pretrained -> Auto* with trust_remote_code in a fresh process that cannot see this repository
# ----------------------------------------------------------------------------------------------------

_CHILD = BLOCK_REPO_IMPORTS + r"""
import json, sys
from pathlib import Path
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
# The copied remote code must be what runs: nothing of the repository may be importable.
assert not any(Path(p or ".").resolve() == Path(sys.argv[3]) for p in sys.path), sys.path
try:
    import jina_clip_v2.modeling  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("the repository's modeling package is importable in the child")

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
texts = json.loads((folder.parent / "texts.json").read_text())
images = sorted(str(p) for p in (folder.parent / "images").iterdir())
tensors = {"state." + k: v.contiguous() for k, v in model.state_dict().items()}
tensors["text"] = model.encode_text(texts, convert_to_tensor=True, batch_size=2)
tensors["image"] = model.encode_image(images, convert_to_tensor=True, batch_size=2)
tensors["query"] = model.encode_text(texts[:2], task="retrieval.query", convert_to_tensor=True, truncate_dim=16)
from PIL import Image
tensors["pixels"] = processor(images=[Image.open(p) for p in images], return_tensors="pt")["pixel_values"]
tensors["ids"] = processor(text=texts, padding=True, return_tensors="pt")["input_ids"]
save_file(tensors, out / "child.safetensors")
info = {
    "config_class": type(config).__module__ + "." + type(config).__name__,
    "model_class": type(model).__module__ + "." + type(model).__name__,
    "image_processor_class": type(processor.image_processor).__module__ + "." + type(processor.image_processor).__name__,
    "tokenizer_class": type(processor.tokenizer).__name__,
    "auto_image_processor_class": type(image_processor).__module__ + "." + type(image_processor).__name__,
    "text_config": config.text_config.to_dict(),
    "vision_config": config.vision_config.to_dict(),
    "matryoshka_dimensions": config.matryoshka_dimensions,
    "task_instructions": config.task_instructions,
    "crop_size": dict(processor.image_processor.crop_size),
    "size": dict(processor.image_processor.size),
}
(out / "child.json").write_text(json.dumps(info))
"""


def test_save_pretrained_loads_as_remote_code_in_a_fresh_process(tmp_path, tokenizer):
    model = tiny_model(seed=3)
    processor = build_processor(tokenizer)
    model.processor = processor
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    files = set(os.listdir(folder))
    code = ["configuration_jina_clip.py", "modeling_jina_clip.py", "processing_jina_clip.py"]
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", *code} <= files
    for name in code:  # the copies are the package's files, byte for byte
        assert (folder / name).read_bytes() == (ROOT / "modeling" / name).read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_jina_clip.JinaCLIPConfig",
        "AutoModel": "modeling_jina_clip.JinaCLIPModel",
    }
    assert config["model_type"] == "jina_clip" and config["architectures"] == ["JinaCLIPModel"]
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["image_processor"]["auto_map"] == {
        "AutoImageProcessor": "processing_jina_clip.JinaCLIPImageProcessor"
    }
    assert processor_config["image_processor"]["image_processor_type"] == "JinaCLIPImageProcessor"

    # What the child must reproduce.
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    (tmp_path / "images").mkdir()
    for index, path in enumerate(_sample_images(3)):
        (tmp_path / "images" / f"{index}{path.suffix}").write_bytes(path.read_bytes())
    images = sorted(str(p) for p in (tmp_path / "images").iterdir())
    expected_text = model.encode_text(TEXTS, convert_to_tensor=True)
    expected_image = model.encode_image(images, convert_to_tensor=True)
    expected_query = model.encode_text(TEXTS[:2], task="retrieval.query", convert_to_tensor=True, truncate_dim=16)
    expected_pixels = processor(images=[Image.open(p) for p in images], return_tensors="pt")["pixel_values"]
    expected_ids = processor(text=TEXTS, padding=True, return_tensors="pt")["input_ids"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), TRANSFORMERS_VERBOSITY="error")
    # -I: isolated mode, neither the working directory nor PYTHONPATH lands on sys.path.
    result = subprocess.run(
        [sys.executable, "-I", "-c", _CHILD, str(folder), str(tmp_path), str(ROOT)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    child = load_file(tmp_path / "child.safetensors")
    info = json.loads((tmp_path / "child.json").read_text())

    assert info["config_class"].startswith("transformers_modules.") and info["config_class"].endswith(
        "configuration_jina_clip.JinaCLIPConfig"
    )
    assert info["model_class"].startswith("transformers_modules.") and info["model_class"].endswith(
        "modeling_jina_clip.JinaCLIPModel"
    )
    assert info["image_processor_class"].startswith("transformers_modules.") and info[
        "image_processor_class"
    ].endswith("processing_jina_clip.JinaCLIPImageProcessor")
    assert info["auto_image_processor_class"] == info["image_processor_class"]
    assert info["tokenizer_class"].startswith("XLMRoberta")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        assert info["text_config"][key] == getattr(model.config.text_config, key)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size"):
        assert info["vision_config"][key] == getattr(model.config.vision_config, key)
    assert info["matryoshka_dimensions"] == [8, 16, 32]
    assert info["task_instructions"] == model.config.task_instructions
    assert info["size"]["shortest_edge"] == 56 and info["crop_size"] == {"height": 56, "width": 56}

    state = model.state_dict()
    child_state = {k[len("state."):]: v for k, v in child.items() if k.startswith("state.")}
    assert child_state.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(child_state[key], value), key
    assert torch.equal(child["ids"], expected_ids)
    assert torch.equal(child["pixels"], expected_pixels)
    assert child["text"].shape == (len(TEXTS), 32) and child["image"].shape == (3, 32)
    assert (child["text"] - expected_text).abs().max().item() <= 1e-6
    assert (child["image"] - expected_image).abs().max().item() <= 1e-6
    assert (child["query"] - expected_query).abs().max().item() <= 1e-6


def test_from_pretrained_in_process_attaches_the_saved_processor(tmp_path, tokenizer):
    model = tiny_model(seed=4)
    processor = build_processor(tokenizer)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = JinaCLIPModel.from_pretrained(tmp_path).eval()
    assert type(loaded.processor.image_processor).__name__ == "JinaCLIPImageProcessor"
    model.processor = processor
    np.testing.assert_allclose(loaded.encode_text(TEXTS), model.encode_text(TEXTS), atol=1e-6, rtol=0)
    image = Image.open(_sample_images(1)[0])
    np.testing.assert_allclose(loaded.encode_image(image), model.encode_image(image), atol=1e-6, rtol=0)


def test_model_without_processor_says_how_to_get_one(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="has no processor.*model.processor = "):
        model.encode_text("hello")
    model.save_pretrained(tmp_path)  # weights only, no processor files
    with pytest.raises(ValueError, match="cannot load the processor.*processor.save_pretrained"):
        JinaCLIPModel.from_pretrained(tmp_path).encode_image(Image.new("RGB", (60, 60)))


# ----------------------------------------------------------------------------------------------------
# 2. The text tower is transformers' own JinaEmbeddingsV3Model + masked mean pooling
# ----------------------------------------------------------------------------------------------------


def test_text_tower_equals_stock_jina_embeddings_v3_with_masked_mean(tokenizer):
    from transformers import JinaEmbeddingsV3Model

    model = tiny_model(seed=1)
    stock = JinaEmbeddingsV3Model(model.config.text_config, add_pooling_layer=False).eval()
    text_state = {k[len("text_model."):]: v for k, v in model.state_dict().items() if k.startswith("text_model.")}
    stock.load_state_dict(text_state, strict=True)

    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding present, so the mask matters
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 1).all()
    with torch.no_grad():
        hidden = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ours = model.get_text_features(batch["input_ids"], attention_mask=batch["attention_mask"])
        ids_only = model.get_text_features(batch["input_ids"]).pooler_output  # mask derived from pad id 1
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    expected = (hidden * mask).sum(dim=1) / mask.sum(dim=1)  # every non-pad token, <s> and </s> included
    assert torch.equal(ours.last_hidden_state, hidden)
    assert (ours.pooler_output - expected).abs().max().item() <= 1e-6
    assert (ids_only - expected).abs().max().item() <= 1e-6
    # Pooling without the special tokens would be a different vector: the test can tell them apart.
    inner = mask.clone()
    inner[:, 0] = 0
    inner[torch.arange(len(TEXTS)), batch["attention_mask"].sum(1) - 1] = 0
    without_specials = (hidden * inner).sum(1) / inner.sum(1)
    assert (without_specials - expected).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------------------------------
# 3. Attention backends, gradient checkpointing, gradients
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def count_sdpa(monkeypatch):
    """Counts calls of transformers' registered SDPA attention, so a backend switch is seen to take effect."""
    from transformers.modeling_utils import AttentionInterface

    calls = []
    original = AttentionInterface._global_mapping["sdpa"]

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", counting)
    return calls


def test_eager_equals_sdpa_for_both_towers(tokenizer, count_sdpa, tmp_path):
    model = tiny_model(seed=2)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    pixels = _pixels(3, 56)
    results, calls = {}, {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.config.text_config._attn_implementation == implementation
        assert model.config.vision_config._attn_implementation == implementation
        count_sdpa.clear()
        with torch.no_grad():
            results[implementation] = (
                model.get_text_features(**batch).pooler_output,
                model.get_image_features(pixels).pooler_output,
            )
        calls[implementation] = len(count_sdpa)
    assert calls == {"eager": 0, "sdpa": 4}  # 2 text + 2 vision layers went through SDPA only when asked
    for eager, sdpa in zip(results["eager"], results["sdpa"]):
        assert (eager - sdpa).abs().max().item() <= 1e-5

    # The same switch through from_pretrained.
    model.save_pretrained(tmp_path)
    loaded = JinaCLIPModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config.vision_config._attn_implementation == "eager"
    assert loaded.config.text_config._attn_implementation == "eager"
    count_sdpa.clear()
    with torch.no_grad():
        image = loaded.get_image_features(pixels).pooler_output
    assert not count_sdpa
    assert (image - results["eager"][1]).abs().max().item() <= 1e-6


def _train_step(model, batch, pixels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels, return_loss=True)
    out.loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return out, grads


def test_gradient_checkpointing_changes_neither_outputs_nor_gradients(tokenizer):
    model = tiny_model(seed=5).train()  # tiny config: dropout 0, drop path 0, patch dropout 0
    batch = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    pixels = _pixels(4, 56, seed=3)
    reference, reference_grads = _train_step(model, batch, pixels)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation checkpointing
        model.gradient_checkpointing_enable()
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    assert len(layers) == 4  # 2 text layers + 2 vision blocks
    assert all(layer.gradient_checkpointing for layer in layers)
    checkpointed_calls = []
    for layer in layers:
        function = layer._gradient_checkpointing_func

        def spy(*args, _function=function, **kwargs):
            checkpointed_calls.append(1)
            return _function(*args, **kwargs)

        layer._gradient_checkpointing_func = spy
    out, grads = _train_step(model, batch, pixels)
    assert len(checkpointed_calls) == len(layers)  # every layer really ran under checkpointing

    assert torch.allclose(out.loss, reference.loss, atol=1e-6, rtol=0)
    assert (out.logits_per_text - reference.logits_per_text).abs().max().item() <= 1e-5
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, reference_grads[name], atol=1e-6, rtol=1e-5), name


def test_every_parameter_gets_a_gradient_from_the_contrastive_loss(tokenizer):
    model = tiny_model(seed=6).train()
    batch = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    _, grads = _train_step(model, batch, _pixels(4, 56, seed=4))
    names = [name for name, _ in model.named_parameters()]
    assert "logit_scale" in names and "vision_model.pos_embed" in names
    missing = [name for name in names if name not in grads or not grads[name].abs().sum() > 0]
    assert not missing, missing


# ----------------------------------------------------------------------------------------------------
# 4. Batch invariance at the tower level
# ----------------------------------------------------------------------------------------------------


def test_text_embedding_does_not_depend_on_batch_companions_or_padding(tokenizer):
    model = tiny_model(seed=7)
    with torch.no_grad():
        def embed(texts, **kwargs):
            batch = tokenizer(texts, padding=kwargs.pop("padding", True), return_tensors="pt", **kwargs)
            return model.get_text_features(**batch).pooler_output

        alone = embed([TEXTS[0]])
        with_long = embed([TEXTS[0], TEXTS[4]])[0]
        with_long_last = embed([TEXTS[4], TEXTS[2], TEXTS[0]])[2]
        padded = embed([TEXTS[0]], padding="max_length", max_length=40)[0]
    assert tokenizer(TEXTS[4])["input_ids"].__len__() > tokenizer(TEXTS[0])["input_ids"].__len__() + 10
    for other in (with_long, with_long_last, padded):
        assert (other - alone[0]).abs().max().item() <= 1e-5


def test_image_embedding_does_not_depend_on_batch_companions():
    model = tiny_model(seed=8)
    pixels = _pixels(4, 56, seed=5)
    with torch.no_grad():
        batch = model.get_image_features(pixels).pooler_output
        for index in range(4):
            alone = model.get_image_features(pixels[index : index + 1]).pooler_output[0]
            assert (alone - batch[index]).abs().max().item() <= 1e-5
        shuffled = model.get_image_features(pixels[[2, 0, 3, 1]]).pooler_output
    assert (shuffled - batch[[2, 0, 3, 1]]).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------------------------------
# 7. Resolution changes
# ----------------------------------------------------------------------------------------------------

_TIMM = r"""
import sys
sys.path.insert(0, sys.argv[2])
from _tiny import import_timm
from _timm_oracle import main as eva_oracle
from safetensors.torch import load_file, save_file
timm = import_timm()
from timm.layers import resample_abs_pos_embed
work = sys.argv[1]
tables = load_file(work + "/tables.safetensors")
out = {}
for name, table in tables.items():
    grid = int(name.split("_to_")[1])
    out[name] = resample_abs_pos_embed(table, new_size=(grid, grid), num_prefix_tokens=1).contiguous()
save_file(out, work + "/resampled.safetensors")
# timm's Eva built at 112 px on the weights of a 56 px model after set_image_size(112).
eva_oracle(work + "/resized.safetensors", work + "/pixels112.safetensors", work + "/eva112.safetensors", 32, 2, 4, 112)
"""

# (old grid, new grid): the tiny model's 56 -> 70 / 112 / 42 px, and the paper's 224 -> 384 -> 512 px stages.
_RESAMPLE_CASES = [(4, 5), (4, 8), (4, 3), (8, 4), (16, 27), (27, 36), (16, 36), (36, 16)]


def _resized_model() -> JinaCLIPModel:
    model = tiny_model(seed=9)
    model.set_image_size(112)
    return model


def _timm_references(work: Path) -> dict:
    """One timm subprocess (timm must stay out of this process) computing every timm reference below."""
    generator = torch.Generator().manual_seed(0)
    tables = {f"{old}_to_{new}": torch.randn(1, old * old + 1, 8, generator=generator) for old, new in _RESAMPLE_CASES}
    save_file(tables, work / "tables.safetensors")
    save_file({k: v.contiguous() for k, v in _resized_model().state_dict().items()}, work / "resized.safetensors")
    save_file({"pixel_values": _pixels(2, 112, seed=6)}, work / "pixels112.safetensors")
    subprocess.run([sys.executable, "-c", _TIMM, str(work), str(HERE)], check=True, cwd=work, timeout=300)
    return {
        "tables": tables,
        "resampled": load_file(work / "resampled.safetensors"),
        "eva112": load_file(work / "eva112.safetensors")["embeds"],
    }


def test_resolution_change_matches_timm(tmp_path):
    """resample_position_embeddings == timm.layers.resample_abs_pos_embed, and after set_image_size the
    whole tower (RoPE grid included) == timm's Eva built at the new size. One test, so that one timm
    subprocess serves both even when pytest-xdist spreads tests over workers."""
    references = _timm_references(tmp_path)
    expected = references["resampled"]
    for (old, new), (name, table) in zip(_RESAMPLE_CASES, references["tables"].items()):
        ours = resample_position_embeddings(table, new * new + 1)
        assert ours.shape == expected[name].shape == (1, new * new + 1, 8), name
        assert torch.equal(ours[:, 0], table[:, 0])  # CLS row kept
        assert (ours - expected[name]).abs().max().item() <= 1e-5, name
    with pytest.raises(ValueError, match="square"):
        resample_position_embeddings(references["tables"]["4_to_5"], 27)

    model = _resized_model()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ours = model.get_image_features(_pixels(2, 112, seed=6)).pooler_output
    assert ours.shape == references["eva112"].shape == (2, 32)
    assert (ours - references["eva112"]).abs().max().item() <= 1e-5


def test_set_image_size_resamples_and_images_at_the_new_size_encode(tokenizer):
    model = tiny_model(seed=9)
    old_table = model.vision_model.pos_embed.detach().clone()
    model.processor = build_processor(tokenizer)  # at 56 px; set_image_size must update it
    model.set_image_size(112)
    assert model.config.vision_config.image_size == 112
    assert model.vision_model.pos_embed.shape == (1, 8 * 8 + 1, 32)
    assert torch.equal(model.vision_model.pos_embed.detach(), resample_position_embeddings(old_table, 65))
    assert model.vision_model.pos_embed.requires_grad
    assert model.processor.image_processor.crop_size == {"height": 112, "width": 112}
    assert model.processor.image_processor.size == {"shortest_edge": 112}
    reference = _resized_model().state_dict()  # the weights the timm test compares
    assert all(torch.equal(value, reference[key]) for key, value in model.state_dict().items())

    image = Image.open(_sample_images(1)[0])
    pixels = model.processor.image_processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 112, 112)
    assert model.encode_image(image).shape == (32,)
    with pytest.raises(ValueError, match="image_size=112"):
        model.get_image_features(_pixels(1, 56))

    # RoPE follows the grid (compared with timm in test_resolution_change_matches_timm).
    # Positions are scaled to the pretraining grid: row 2 of an 8x8 grid sits where row 1 of a 4x4 grid does.
    cos8, _ = vision_rotary_cos_sin(model.config.vision_config, 8, 8)
    cos4, _ = vision_rotary_cos_sin(model.config.vision_config, 4, 4)
    assert cos8.shape == (64, 8) and torch.allclose(cos8[8 * 2], cos4[4 * 1]) and not torch.allclose(cos8[8], cos4[4])

    with pytest.raises(ValueError, match="patch_size"):
        model.set_image_size(10)
    assert model.config.vision_config.image_size == 112  # a refused size leaves the model as it was
    assert model.vision_model.pos_embed.shape == (1, 65, 32)


def test_loading_at_another_image_size_resamples(tmp_path, tokenizer):
    model = tiny_model(seed=10)
    model.save_pretrained(tmp_path)
    build_processor(tokenizer).save_pretrained(tmp_path)
    # Loading is transformers' own: weights load at the size they were saved at, then set_image_size resamples.
    loaded = JinaCLIPModel.from_pretrained(tmp_path).eval()
    loaded.set_image_size(70)
    assert loaded.config.vision_config.image_size == 70
    expected_table = resample_position_embeddings(model.vision_model.pos_embed.detach(), 26)
    assert torch.equal(loaded.vision_model.pos_embed.detach(), expected_table)
    for key, value in model.state_dict().items():
        if key != "vision_model.pos_embed":
            assert torch.equal(loaded.state_dict()[key], value), key
    # The processor loaded from the folder follows the model's size.
    image = Image.open(_sample_images(1)[0])
    assert loaded.processor.image_processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 70, 70)
    assert loaded.encode_image(image).shape == (32,)

    # A config of another size given to from_pretrained: the table of another shape is a strict error saying how.
    config = JinaCLIPConfig.from_pretrained(tmp_path)
    config.vision_config.image_size = 70
    with pytest.raises(ValueError, match=r"another shape.*pos_embed.*set_image_size"):
        JinaCLIPModel.from_pretrained(tmp_path, config=config)

    # The same through AutoModel (the registered model type) and through the folder's own copy of the code.
    from transformers import AutoModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    for auto in (AutoModel.from_pretrained(tmp_path), get_class_from_dynamic_module("modeling_jina_clip.JinaCLIPModel", str(tmp_path)).from_pretrained(tmp_path)):
        auto.set_image_size(70)
        assert auto.config.vision_config.image_size == 70
        assert torch.equal(auto.vision_model.pos_embed.detach(), expected_table)

    # Loading a state dict of another resolution into a model built at the new size resamples too.
    built = JinaCLIPModel(tiny_config(image_size=70)).eval()
    built.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(built.vision_model.pos_embed.detach(), expected_table)


# ----------------------------------------------------------------------------------------------------
# 8. Real-size configuration, release configs
# ----------------------------------------------------------------------------------------------------


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_config_is_the_real_model_on_the_meta_device():
    config = JinaCLIPConfig()
    with torch.device("meta"):
        model = JinaCLIPModel(config)
    total, text, vision = _count(model), _count(model.text_model), _count(model.vision_model)
    print(f"\nreal-size jina-clip-v2: total {total:,} text {text:,} vision {vision:,}")
    assert all(p.device.type == "meta" for p in model.parameters())
    # The paper's numbers: 865M = text 561M + vision 304M. Ours merges the 2.6M retrieval.query LoRA
    # parameters into the base weights, hence a little fewer on the text side.
    assert abs(total - 865e6) <= 0.01 * 865e6
    assert abs(text - 561e6) <= 0.01 * 561e6
    assert abs(vision - 304e6) <= 0.01 * 304e6
    # Exact counts from the geometry (XLM-R large without absolute positions; EVA02-L/14 at 512 px).
    layer = 3 * (1024 * 1024 + 1024) + (1024 * 1024 + 1024) + 2 * 2048 + (4096 * 1024 + 4096) + (1024 * 4096 + 1024)
    assert text == 250002 * 1024 + 1024 + 2048 + 24 * layer
    assert vision == 304_382_912  # timm eva02_large_patch14_clip_224 built at img_size=512
    assert total == text + vision + 1  # + logit_scale
    assert config.vision_config.num_positions == 1297 and config.vision_config.intermediate_size == 2730
    assert config.text_config.rope_parameters["rope_theta"] == 20000.0
    assert config.matryoshka_dimensions == [32, 64, 128, 256, 512, 768, 1024]


def _release_config() -> dict:
    """jinaai/jina-clip-v2's config.json, as documented in the release reference, section 1."""
    return {
        "_name_or_path": "jinaai/jina-clip-v2",
        "add_projections": False,
        "architectures": ["JinaCLIPModel"],
        "auto_map": {
            "AutoConfig": "jinaai/jina-clip-implementation--configuration_clip.JinaCLIPConfig",
            "AutoModel": "jinaai/jina-clip-implementation--modeling_clip.JinaCLIPModel",
        },
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "matryoshka_dimensions": [32, 64, 128, 256, 512, 768, 1024],
        "model_type": "jina_clip",
        "projection_dim": 1024,
        "text_config": {
            "default_instruction_task": None,
            "default_lora_task": "retrieval.query",
            "embed_dim": 1024,
            "hf_model_config_kwargs": {
                "load_trained_adapters": False,
                "lora_adaptations": ["retrieval.query"],
                "lora_alpha": 4,
                "lora_dropout_p": 0.0,
                "lora_main_params_trainable": False,
                "lora_rank": 4,
                "task_instructions": {"retrieval.query": "Represent the query for retrieving evidence documents: "},
                "use_flash_attn": True,
            },
            "hf_model_name_or_path": "jinaai/jina-embeddings-v3",
            "model_type": "jina_clip_text",
            "pooler_type": "mean_pooler",
            "proj_bias": False,
            "proj_type": None,
        },
        "torch_dtype": "bfloat16",
        "transformers.js_config": {"use_external_data_format": {"model.onnx": True}},
        "truncate_dim": None,
        "use_text_flash_attn": None,
        "use_vision_xformers": None,
        "vision_config": {
            "embed_dim": 1024,
            "fused_layer_norm": False,
            "head_width": 64,
            "image_size": 512,
            "intp_freq": True,
            "layers": 24,
            "ls_init_value": None,
            "mlp_ratio": 2.6667,
            "model_type": "jina_clip_vision",
            "naive_swiglu": True,
            "patch_dropout": 0.1,
            "patch_size": 14,
            "post_norm": False,
            "proj_type": None,
            "pt_hw_seq_len": 16,
            "qkv_bias": True,
            "rope_embeddings": True,
            "subln": True,
            "width": 1024,
            "x_attention": True,
        },
    }


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c,
        lambda c: {k: v for k, v in c.items() if k not in ("use_text_flash_attn", "use_vision_xformers", "add_projections", "initializer_factor", "vision_config")},
        lambda c: {"text_config": {"hf_model_config_kwargs": {}}},
        lambda c: {"vision_config": {"width": 1024, "layers": 24, "head_width": 64}},
        lambda c: {"use_text_flash_attn": None},
    ],
    ids=["full", "text_only", "hf_model_config_kwargs", "vision_width_layers", "use_text_flash_attn"],
)
def test_release_format_config_is_refused_with_the_converter_named(tmp_path, mutate):
    release = mutate(_release_config())
    with pytest.raises(ValueError, match=r"hub\.convert"):
        JinaCLIPConfig(**release)
    (tmp_path / "config.json").write_text(json.dumps(release))
    with pytest.raises(ValueError, match=r"hub\.convert"):
        JinaCLIPConfig.from_pretrained(tmp_path)


def test_release_config_maps_onto_the_default_config():
    release = _release_config()
    mapped = JinaCLIPConfig(**release_config_to_kwargs(release))
    default = JinaCLIPConfig()
    text_fields = [
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "layer_norm_eps", "type_vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "rope_parameters",
        "max_position_embeddings",
    ]
    for field in text_fields:
        assert getattr(mapped.text_config, field) == getattr(default.text_config, field), field
    vision_fields = [
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size",
        "num_channels", "rope_grid_size", "rope_theta", "layer_norm_eps", "head_dim", "grid_size", "num_positions",
    ]
    for field in vision_fields:
        assert getattr(mapped.vision_config, field) == getattr(default.vision_config, field), field
    for field in ("projection_dim", "logit_scale_init_value", "matryoshka_dimensions", "truncate_dim", "task_instructions"):
        assert getattr(mapped, field) == getattr(default, field), field
    assert mapped.vision_config.patch_dropout == 0.1  # training-only option carried over
    # Other values must reach the config: a 384 px stage snapshot maps to 384 px.
    release["vision_config"]["image_size"] = 384
    assert JinaCLIPConfig(**release_config_to_kwargs(release)).vision_config.num_positions == 27 * 27 + 1


def test_release_config_with_unsupported_heads_is_refused():
    for change in (
        {"add_projections": True},
        {"text_config": {**_release_config()["text_config"], "pooler_type": "cls_pooler"}},
        {"vision_config": {**_release_config()["vision_config"], "ls_init_value": 0.1}},
    ):
        with pytest.raises(ValueError):
            release_config_to_kwargs({**_release_config(), **change})


def test_config_validation_names_the_numbers():
    with pytest.raises(ValueError, match="32.*16.*32"):
        tiny_config(vision={"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 40})
    with pytest.raises(ValueError, match="truncate_dim=12"):
        tiny_config(truncate_dim=12)
    with pytest.raises(ValueError, match="matryoshka_dimensions"):
        tiny_config(matryoshka_dimensions=[16, 8, 32])


# ----------------------------------------------------------------------------------------------------
# 10. forward()
# ----------------------------------------------------------------------------------------------------


def test_forward_logits_loss_and_tuple_form(tokenizer):
    model = tiny_model(seed=11)
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    pixels = _pixels(3, 56, seed=7)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels, return_loss=True)
        text = F.normalize(model.get_text_features(**batch).pooler_output, dim=-1)
        image = F.normalize(model.get_image_features(pixels).pooler_output, dim=-1)
        as_tuple = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels,
            return_loss=True, return_dict=False,
        )
        no_loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels)
    assert torch.equal(out.logits_per_image, out.logits_per_text.t())
    assert (out.text_embeds - text).abs().max().item() <= 1e-6
    assert (out.image_embeds - image).abs().max().item() <= 1e-6
    assert torch.allclose(out.text_embeds.norm(dim=-1), torch.ones(3))
    scale = model.logit_scale.exp()
    assert (out.logits_per_text - scale * text @ image.t()).abs().max().item() <= 1e-5
    labels = torch.arange(3)
    expected_loss = (F.cross_entropy(scale * text @ image.t(), labels) + F.cross_entropy(scale * image @ text.t(), labels)) / 2
    assert abs(out.loss.item() - expected_loss.item()) <= 1e-5
    # Symmetric: swapping the roles of texts and images gives the same loss.
    swapped = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
    assert abs(out.loss.item() - swapped.item()) <= 1e-6
    assert no_loss.loss is None

    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], out.loss)
    assert torch.equal(as_tuple[1], out.logits_per_image) and torch.equal(as_tuple[2], out.logits_per_text)
    assert torch.equal(as_tuple[3], out.text_embeds) and torch.equal(as_tuple[4], out.image_embeds)

    with pytest.raises(ValueError, match="pairs"):
        model(input_ids=batch["input_ids"], pixel_values=pixels[:2], return_loss=True)
    # One modality alone (the transformers pipelines' call): that modality's normalized embeddings, no logits.
    with torch.no_grad():
        text_only = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        image_only = model(pixel_values=pixels)
    assert text_only.logits_per_image is None and text_only.image_embeds is None
    assert torch.equal(text_only.text_embeds, out.text_embeds) and torch.equal(text_only[0], out.text_embeds)
    assert torch.equal(image_only.image_embeds, out.image_embeds) and torch.equal(image_only[0], out.image_embeds)
    with pytest.raises(ValueError, match="both"):
        model(input_ids=batch["input_ids"], return_loss=True)
    with pytest.raises(ValueError, match="input_ids, pixel_values or both"):
        model()
