"""Stage 0 (`jina-clip init`, hub/stage0.py + modeling/convert_pretrained_towers.py): the folder stage 1 starts
from, built from EVA02-CLIP-L/14 and Jina-XLM-RoBERTa checkpoints in their own layouts (tests/_stage0_fixtures.py),
checked against what the libraries that own those layouts compute from the same files: timm's `Eva` for the
vision tower (at the stage's resolution, position table resampled by timm's own loader) and transformers'
`JinaEmbeddingsV3Model` for the text tower; then stage 1 of the tiny recipe trains from the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _once import build_once
from _stage0_fixtures import oracle_v3_folder, tiny_text_config, write_timm_sources, write_v3_native_folder, write_v3_remote_folder
from _tiny import ROOT, build_tokenizer

from jina_clip_v2.cli import main as cli_main
from jina_clip_v2.hub.stage0 import build_stage0, init_stage0
from jina_clip_v2.modeling import JinaCLIPConfig, JinaCLIPModel
from jina_clip_v2.modeling.convert_jina_clip_release import ReleaseCheckpointError, expected_release_shapes
from jina_clip_v2.modeling.convert_pretrained_towers import (
    convert_text_state_dict,
    convert_vision_state_dict,
    expected_tower_shapes,
    stage0_config,
    text_config_from,
    vision_geometry,
)

SIZE = 56  # tiny.yaml's stage-1 resolution (a 4x4 grid, resampled from the checkpoints' 16x16)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sources, `jina-clip init` on the timm + jina-embeddings-v3 layouts, and timm's outputs (built once
    per session: read-only for the tests)."""

    def build(root: Path) -> dict:
        text = tiny_text_config(vocab_size=1000)  # tiny.yaml's text tower with the small test tokenizer's vocabulary
        build_tokenizer().save_pretrained(root / "tokenizer")
        write_timm_sources(root, size=SIZE)
        write_v3_remote_folder(root / "jina-embeddings-v3", text, root / "tokenizer")
        write_v3_native_folder(root / "jina-embeddings-v3-hf", text, root / "tokenizer")
        # --no-check: the folder's reload check is `jina-clip convert`'s (tests/test_hub_convert.py); the tests
        # below load the folder themselves.
        out = root / "outputs" / "stage0"
        command = ["init", "--vision", str(root / "eva02_timm"), "--text", str(root / "jina-embeddings-v3"), "--out", str(out)]
        assert cli_main([*command, "--image-size", str(SIZE), "--no-check"]) == 0
        return {"root": str(root)}

    root = Path(build_once(tmp_path_factory, "stage0_sources", build)["root"])
    sources = {"timm": root / "eva02_timm", "eva_clip": root / "EVA02_CLIP_L_psz14_s4B.pt",
               "v3": root / "jina-embeddings-v3", "v3_hf": root / "jina-embeddings-v3-hf"}  # fmt: skip
    return {
        "root": root, "sources": sources, "out": root / "outputs" / "stage0",
        "pixels": load_file(root / "pixels.safetensors")["pixel_values"], "timm": load_file(root / "timm.safetensors"),
        "timm_keys": json.loads((root / "timm_keys.json").read_text()),
    }  # fmt: skip


def _ids(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, vocab, (3, 9), generator=torch.Generator().manual_seed(2))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    ids[2, 6:], mask[2, 6:] = 1, 0  # a padded row
    return ids, mask


def _eager(model):
    model.set_attn_implementation("eager")
    return model.float().eval()


def _oracle_text(folder: Path):
    from transformers import JinaEmbeddingsV3Model

    model, info = JinaEmbeddingsV3Model.from_pretrained(folder, dtype=torch.float32, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    return model.eval()


def _assert_text_tower_equals(ours: JinaCLIPModel, oracle) -> None:
    ids, mask = _ids(ours.config.text_config.vocab_size)
    with torch.no_grad():
        expected = oracle(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = ours.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = ours.get_text_features(ids, attention_mask=mask).pooler_output
    keep = mask.bool()
    assert (hidden[keep] - expected[keep]).abs().max().item() <= 1e-5
    mean = (expected * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # the release's masked mean
    assert (pooled - mean).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------------------------------
# The built folder against timm and transformers
# ----------------------------------------------------------------------------------------------------


def test_vision_tower_equals_timm_eva_from_the_same_weights(built):
    model = _eager(JinaCLIPModel.from_pretrained(built["out"]))
    assert model.config.vision_config.image_size == SIZE
    with torch.no_grad():
        ours = model.get_image_features(built["pixels"]).pooler_output
    assert (ours - built["timm"]["timm_layout"]).abs().max().item() <= 1e-5
    # EVA-CLIP's own file (fp16, `visual.` names, RoPE buffers, CLIP text tower) gives the tower timm builds from it.
    eva, _, reports = build_stage0(built["sources"]["eva_clip"], built["sources"]["v3_hf"], image_size=SIZE, vision_heads=4)
    with torch.no_grad():
        ours = _eager(eva).get_image_features(built["pixels"]).pooler_output
    assert (ours - built["timm"]["eva_clip_layout"]).abs().max().item() <= 1e-5
    assert reports["vision"].layout == "eva_clip" and reports["resampled"] == "position table 16x16 (224 px) -> 4x4 (56 px)"
    dropped = reports["vision"].dropped
    assert sum(map(len, dropped.values())) == 14  # head 2, rope 2 + 2 x 2 blocks, text tower 5, logit_scale 1
    # ... and its text tower is transformers' model loaded from the -hf layout folder.
    _assert_text_tower_equals(_eager(eva), _oracle_text(built["sources"]["v3_hf"]))


def test_text_tower_equals_transformers_jina_embeddings_v3(built, tmp_path):
    model = _eager(JinaCLIPModel.from_pretrained(built["out"]))
    oracle = _oracle_text(oracle_v3_folder(built["sources"]["v3"], tmp_path / "v3_oracle"))
    _assert_text_tower_equals(model, oracle)
    # The tokenizer is the text checkpoint's own file: the same ids as the `tokenizers` library gives from it.
    from tokenizers import Tokenizer

    theirs = Tokenizer.from_file(str(built["sources"]["v3"] / "tokenizer.json"))
    for text in ("Hello world", "a ", "Ein Hund spielt im Schnee", "雪の中で遊ぶ犬"):
        assert model.processor.tokenizer(text).input_ids == theirs.encode(text).ids


def test_the_folder_says_where_its_towers_come_from(built):
    summary = json.loads((built["out"] / "training_summary.json").read_text())
    init = summary["init"]
    assert init["vision"]["layout"] == "timm" and init["text"]["layout"] == "jina_v3_remote"
    assert init["vision"]["dropped"] == {"the projection head into the EVA-CLIP text space": 2}
    assert init["text"]["dropped"] == {
        "the LoRA adapters of jina-embeddings-v3's tasks": 22, "the CLS pooler (jina-clip mean-pools the last hidden states)": 2,
    }  # fmt: skip
    assert summary["stages"] == []
    card = (built["out"] / "README.md").read_text()
    assert "not a trained dual encoder" in card and "Not trained: Initial weights (stage 0" in card
    assert "as in the jina-clip-v2 paper" not in card


def test_stage1_of_the_tiny_recipe_trains_from_the_folder(built, tmp_path):
    """`accelerate launch training/stage.py --config training/configs/tiny.yaml` with init_from = the folder."""
    out, demo = tmp_path / "stage1", tmp_path / "demo"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(ROOT / "training" / "stage.py"), "--config", str(ROOT / "training" / "configs" / "tiny.yaml"),
        f"model.init_from={built['out']}", "model.processor_from=null", f"output_dir={out}", f"data.demo_dir={demo}", "data.demo_langs=[en, de]",
        "data.text.batch_size=8", "data.image_text.batch_size=8", "data.text.shuffle_buffer=16",
        "data.image_text.shuffle_buffer=16", "optim.warmup_steps=0", "train.steps=2", "train.checkpoint_every=2",
        "train.log_with=[]", "train.progress_bar=false", "train.resolution_switch=null",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["image_size"] == SIZE for r in records)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["matryoshka_dimensions"] == [16, 32, 64]  # tiny.yaml's loss.matryoshka_dims, the trained widths
    assert config["task_instructions"] == {"retrieval.query": ""}  # trained without a query instruction
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["init"]["text"]["layout"] == "jina_v3_remote"
    assert summary["stages"][0]["recipe"] == "custom" and "train.steps: 2 (paper 100000)" in summary["stages"][0]["differences"]
    card = (out / "model" / "README.md").read_text()
    assert "not the jina-clip-v2 paper's recipe" in card and "train.steps: 2 (paper 100000)" in card
    assert "Trained with the three stages" not in card


# ----------------------------------------------------------------------------------------------------
# The Hub code path, on a local Hub cache
# ----------------------------------------------------------------------------------------------------


def _cache_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """`files` as huggingface_hub's cache holds a snapshot of `repo_id` (refs/main -> snapshots/<commit>)."""
    commit = "0" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, source in files.items():
        shutil.copyfile(source, snapshot / name)


def test_hub_ids_go_through_snapshot_download(built, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    timm, v3 = built["sources"]["timm"], built["sources"]["v3"]
    _cache_repo(cache, "timm/eva02_large_patch14_clip_224.merged2b", {n: timm / n for n in ("config.json", "model.safetensors")})
    _cache_repo(cache, "jinaai/jina-embeddings-v3", {n: v3 / n for n in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")})
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, init = init_stage0(tmp_path / "stage0", image_size=SIZE, check=False)  # the default Hub ids
    assert init["vision"]["source"] == "timm/eva02_large_patch14_clip_224.merged2b"
    assert init["text"]["source"] == "jinaai/jina-embeddings-v3"
    ours, theirs = load_file(out / "model.safetensors"), load_file(built["out"] / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    card = (out / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card  # jina-embeddings-v3's, the more restrictive of the two
    assert "timm/eva02_large_patch14_clip_224.merged2b" in card and "- jinaai/jina-embeddings-v3" in card
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        init_stage0(tmp_path / "x", vision="./no/such/folder", check=False)


# ----------------------------------------------------------------------------------------------------
# Strictness and the real-size layouts (meta device)
# ----------------------------------------------------------------------------------------------------


def test_every_tensor_is_mapped_or_dropped_and_shapes_are_checked(built):
    vision = load_file(built["sources"]["timm"] / "model.safetensors")
    text = load_file(built["sources"]["v3"] / "model.safetensors")
    text_config = json.loads((built["sources"]["v3"] / "config.json").read_text())
    config = stage0_config(vision_geometry(vision, num_heads=4), text_config_from(text_config, "jina_v3_remote"))
    extra = {**vision, "fc_norm.weight": torch.ones(64)}
    with pytest.raises(ReleaseCheckpointError, match=r"unexpected\):\n  fc_norm.weight") as err:
        convert_vision_state_dict(extra, config)
    assert err.value.unexpected == ["fc_norm.weight"]
    missing = {k: v for k, v in text.items() if k != "roberta.encoder.layers.1.mixer.Wqkv.bias"}
    with pytest.raises(ReleaseCheckpointError, match=r"roberta\.encoder\.layers\.1\.mixer\.Wqkv\.bias \(-> text_model\.layers\.1\.self_attn\.q_proj\.bias"):
        convert_text_state_dict(missing, config)
    wrong = {**text, "roberta.emb_ln.weight": torch.ones(65)}
    with pytest.raises(ReleaseCheckpointError, match=r"roberta\.emb_ln\.weight: checkpoint \[65\], expected \[64\]"):
        convert_text_state_dict(wrong, config)
    with pytest.raises(ReleaseCheckpointError, match="same width"):
        stage0_config(vision_geometry(vision, num_heads=4), {**text_config_from(text_config, "jina_v3_remote"), "hidden_size": 32})


def test_real_size_layouts_on_the_meta_device(built):
    """The keys and shapes each public checkpoint must hold for the real jina-clip-v2 (meta device, no memory),
    against the libraries' own real-size models."""
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model, XLMRobertaConfig, XLMRobertaForMaskedLM

    config = JinaCLIPConfig(vision_config={"image_size": 224})
    # timm's eva02_large_patch14_clip_224 (timm/eva02_large_patch14_clip_224.merged2b), less its 768-d head.
    timm = {k: tuple(v) for k, v in built["timm_keys"].items() if not k.startswith("head.")}
    assert expected_tower_shapes(config, "vision", "timm") == timm
    assert timm["pos_embed"] == (1, 257, 1024) and timm["blocks.23.mlp.fc1_g.weight"] == (2730, 1024)
    assert expected_tower_shapes(config, "vision", "open_clip") == {"visual.trunk." + k: v for k, v in timm.items()}
    # jinaai/jina-embeddings-v3: the release's text layout (reference section 2.2) under `roberta.`, base weights.
    release = expected_release_shapes(config, num_adapters=5)
    remote = expected_tower_shapes(config, "text", "jina_v3_remote")
    bases = {"roberta." + k[len("text_model.transformer.roberta."):]: v for k, v in release.items() if k.startswith("text_model.") and ".lora_" not in k}
    assert remote == bases and len(remote) == 2 + 2 + 24 * 12
    assert remote["roberta.encoder.layers.23.mixer.Wqkv.parametrizations.weight.original"] == (3072, 1024)
    assert remote["roberta.embeddings.word_embeddings.parametrizations.weight.original"] == (250002, 1024)
    # jinaai/jina-embeddings-v3-hf: transformers' own model.
    with torch.device("meta"):
        native = JinaEmbeddingsV3Model(JinaEmbeddingsV3Config())
        xlmr = XLMRobertaForMaskedLM(XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, type_vocab_size=1))
    expected = {k: tuple(v.shape) for k, v in native.state_dict().items() if not k.startswith("pooler.")}
    assert expected_tower_shapes(config, "text", "jina_v3_native", prefix="") == expected
    # FacebookAI/xlm-roberta-large: everything but the absolute position table and the MLM head.
    xlmr_keys = {k: tuple(v.shape) for k, v in xlmr.state_dict().items() if not k.startswith("lm_head.") and "position_embeddings" not in k}
    assert expected_tower_shapes(config, "text", "xlm_roberta") == xlmr_keys


def test_xlm_roberta_large_option_drops_the_absolute_positions(tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    torch.manual_seed(0)
    xlmr = XLMRobertaForMaskedLM(XLMRobertaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, type_vocab_size=1))
    xlmr.save_pretrained(tmp_path / "xlmr")
    state = load_file(tmp_path / "xlmr" / "model.safetensors")
    source_config = json.loads((tmp_path / "xlmr" / "config.json").read_text())
    text = text_config_from(source_config, "xlm_roberta")
    assert "max_position_embeddings" not in text
    config = JinaCLIPConfig(text_config=text, vision_config={"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 170}, projection_dim=64)
    converted, report = convert_text_state_dict(state, config)
    assert report.layout == "xlm_roberta"
    assert torch.equal(converted["text_model.layers.1.self_attn.k_proj.weight"], state["roberta.encoder.layer.1.attention.self.key.weight"])
    assert torch.equal(converted["text_model.layers.0.post_mlp_layernorm.bias"], state["roberta.encoder.layer.0.output.LayerNorm.bias"])
    reasons = {reason: keys for reason, keys in report.dropped.items()}
    absolute = [r for r in reasons if r.startswith("XLM-R's absolute position table")]
    assert absolute and reasons[absolute[0]] == ["roberta.embeddings.position_embeddings.weight"]


# ----------------------------------------------------------------------------------------------------
# True claims: the recipe, the Matryoshka widths, the query instruction
# ----------------------------------------------------------------------------------------------------


def test_the_card_claims_the_recipe_only_for_runs_that_followed_it():
    from jina_clip_v2.hub.model_card import training_claim
    from jina_clip_v2.training.config import load_config
    from jina_clip_v2.training.recipe import recipe_differences

    real = JinaCLIPConfig()
    configs = {n: load_config(ROOT / "training" / "configs" / f"stage{n}.yaml") for n in (1, 2, 3)}
    for n, cfg in configs.items():
        assert recipe_differences(cfg, real, start_image_size=cfg.model.image_size) == [], n
    changed = load_config(ROOT / "training" / "configs" / "stage2.yaml", ["optim.text_lr=1e-4", "data.text.query_instruction=Frage"])
    assert recipe_differences(changed, real, 384) == ["data.text.query_instruction: 'Frage' (paper None)", "optim.text_lr: 0.0001 (paper 5e-05)"]
    tiny = JinaCLIPConfig(text_config={"hidden_size": 64, "num_attention_heads": 4}, vision_config={"hidden_size": 64, "num_attention_heads": 4}, projection_dim=64)
    assert "model text_config.hidden_size: 64 (paper 1024)" in recipe_differences(configs[1], tiny, 224)
    init = {"vision": {"source": "timm/eva02_large_patch14_clip_224.merged2b", "layout": "timm"},
            "text": {"source": "jinaai/jina-embeddings-v3", "layout": "jina_v3_remote"}}  # fmt: skip
    paper = [{"name": f"stage{n}", "recipe": "paper"} for n in (1, 2, 3)]
    assert training_claim({"init": init, "stages": paper}).startswith("Trained with the three stages of the jina-clip-v2 paper's recipe")
    assert training_claim({"init": init, "stages": paper[:1]}).startswith("Trained with stage 1 of the jina-clip-v2 paper's recipe")
    local = {**init, "text": {"source": "/data/v3", "layout": "jina_v3_remote"}}
    assert "not the jina-clip-v2 paper's recipe" in training_claim({"init": local, "stages": paper})
    custom = paper[:2] + [{"name": "stage3", "recipe": "custom", "differences": ["train.steps: 10 (paper 16000)"]}]
    assert "stage3: train.steps: 10 (paper 16000)" in training_claim({"init": init, "stages": custom})
    assert "not the jina-clip-v2 paper's recipe" in training_claim({"stages": paper})  # no stage 0 recorded
    assert training_claim({"stages": [{"name": "finetune"}]}) == "Training stages as recorded in the training summary:"


def test_exports_list_the_trained_matryoshka_widths_and_instruction():
    from jina_clip_v2.training.config import load_config
    from jina_clip_v2.training.export import record_training_settings

    config = JinaCLIPConfig()  # the release's widths, 32 included
    assert config.matryoshka_dimensions[0] == 32
    cfg = load_config(ROOT / "training" / "configs" / "stage1.yaml")
    record_training_settings(config, cfg, [64, 128, 256, 512, 768, 1024])
    assert config.matryoshka_dimensions == [64, 128, 256, 512, 768, 1024]  # the recipe trains 64..1024 (section 3.4)
    assert config.task_instructions == {"retrieval.query": ""}
    cfg = load_config(ROOT / "training" / "configs" / "stage1.yaml", ["data.text.query_instruction=Frage"])
    record_training_settings(config, cfg, [256, 1024])
    assert config.matryoshka_dimensions == [256, 1024] and config.task_instructions == {"retrieval.query": "Frage"}
    v1 = JinaCLIPConfig(text_config={"model_type": "jina_bert"})
    record_training_settings(v1, load_config(ROOT / "training" / "configs" / "v1_stage1.yaml"), [768])
    assert v1.matryoshka_dimensions == [] and v1.task_instructions == {}
