"""jina-clip-v1 training: the v1 stage configs, and a tiny v1 model (JinaBERT + EVA02-B/16) trained through
stage 1 -> 2 -> 3 on the demo data with the same runner as v2 (`training.stage.main`), each stage exported
and reloaded through AutoModel."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny import ROOT
from _tiny_v1 import build_bert_tokenizer

from jina_clip_v2.training.builders import DEFAULT_LORA_TARGETS, build_model, matryoshka_dims
from jina_clip_v2.training.config import LossSection, config_to_dict, load_config, validate_config
from jina_clip_v2.training.demo_data import demo_sources
from jina_clip_v2.training.stage import main as stage_main

TINY_V1 = ROOT / "training" / "configs" / "tiny_v1.yaml"
DEMO_LANGS = ["en", "de"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("v1_training_assets")
    build_bert_tokenizer().save_pretrained(root / "tokenizer")
    demo_sources(root / "demo", "train", DEMO_LANGS)
    return {"tokenizer": root / "tokenizer", "demo": root / "demo"}


def _overrides(assets: dict, output_dir: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={output_dir}",
        f"model.processor_from={assets['tokenizer']}",
        "model.config.text_config.vocab_size=600",  # the test tokenizer's size
        f"data.demo_dir={assets['demo']}",
        f"data.demo_langs={DEMO_LANGS}",
        "data.text.batch_size=16",
        "data.image_text.batch_size=16",
        "data.text.shuffle_buffer=64",
        "data.image_text.shuffle_buffer=64",
        "optim.warmup_steps=0",
        "train.log_with=[]",
        "train.progress_bar=false",
        *extra,
    ]


def test_v1_stage_configs_have_the_v1_shape():
    configs = {stage: load_config(ROOT / "training" / "configs" / f"v1_stage{stage}.yaml") for stage in (1, 2, 3)}
    kinds = {1: ("text_pairs", "image_text_short"), 2: ("text_pairs", "image_text_long"), 3: ("text_triplets", "image_text_long")}
    lengths = {1: 77, 2: 512, 3: 512}
    for stage, cfg in configs.items():
        validate_config(cfg)
        assert cfg.stage == stage and (cfg.data.text.kind, cfg.data.image_text.kind) == kinds[stage]
        assert cfg.data.text.max_length == cfg.data.image_text.max_length == lengths[stage]
        assert cfg.model.image_size == 224 and cfg.train.resolution_switch is None  # v1 is 224 px throughout
        assert cfg.loss.matryoshka_dims == [768]  # not trained for truncation
        assert cfg.model.attn_implementation in ("sdpa", "eager")  # ALiBi: no FlashAttention backend
        assert (tuple(cfg.optim.betas), cfg.optim.eps, cfg.optim.weight_decay) == ((0.9, 0.98), 1e-6, 0.02)
    assert configs[3].data.text.num_negatives == 7
    assert configs[2].model.init_from == configs[1].output_dir and configs[3].model.init_from == configs[2].output_dir
    # The stage configs share their keys with jina-clip-v2's (one schema, one runner).
    for stage in (1, 2, 3):
        v1 = config_to_dict(configs[stage])
        v2 = config_to_dict(load_config(ROOT / "training" / "configs" / f"stage{stage}.yaml"))
        assert v1.keys() == v2.keys()


def test_matryoshka_loss_defaults_to_the_full_width_for_models_not_trained_for_it():
    section = LossSection()
    assert matryoshka_dims(section, 768, []) == [768]
    assert matryoshka_dims(section, 1024, [32, 64, 128, 256, 512, 768, 1024]) == [64, 128, 256, 512, 768, 1024]
    assert "gate_proj" in DEFAULT_LORA_TARGETS["text"] and "down_proj" in DEFAULT_LORA_TARGETS["text"]


def test_tiny_v1_trains_through_three_stages_exported_and_reloaded(assets, tmp_path):
    from transformers import AutoModel

    from jina_clip_v2.modeling import JinaCLIPModel

    cfg = load_config(TINY_V1, _overrides(assets, tmp_path / "unused"))
    initial, _ = build_model(cfg.model, cfg.train.seed)
    assert initial.config.version == "v1" and type(initial.text_model).__name__ == "JinaBertModel"
    initial_state = {k: v.clone() for k, v in initial.state_dict().items()}

    texts = ["a red frog", "ein kleiner Hund"]
    lengths = {1: 16, 2: 32, 3: 32}
    previous = None
    for stage in (1, 2, 3):
        out = tmp_path / f"stage{stage}"
        extra = [f"stage={stage}", "train.steps=4", "train.checkpoint_every=1000", "train.export=true"]
        if previous is not None:
            extra.append(f"model.init_from={previous}")
        summary = stage_main(["--config", str(TINY_V1), *_overrides(assets, out, *extra)])
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 4 and all(math.isfinite(r["loss"]) for r in records)
        assert records[0]["max_length/text"] == lengths[stage] and records[-1]["image_size"] == 64
        if stage == 3:
            assert summary["config"]["data"]["text"]["kind"] == "text_triplets"
        folder = out / "model"
        saved = json.loads((folder / "config.json").read_text())
        assert saved["text_config"]["model_type"] == "jina_bert" and saved["matryoshka_dimensions"] == []
        assert saved["vision_config"]["patch_size"] == 16 and saved["vision_config"]["image_size"] == 64
        assert (folder / "modeling_jina_bert.py").is_file() and (folder / "tokenizer.json").is_file()

        reloaded = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
        assert type(reloaded.text_model).__name__ == "JinaBertModel"
        assert type(reloaded).__module__.startswith("transformers_modules.")
        local = JinaCLIPModel.from_pretrained(folder).eval()
        a, b = reloaded.encode_text(texts), local.encode_text(texts)
        assert a.shape == (2, 48) and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="Matryoshka"):
            reloaded.encode_text(texts, truncate_dim=16)
        previous = folder

    # Training moved the weights of both towers away from the initialisation.
    final = JinaCLIPModel.from_pretrained(previous).state_dict()
    for key in ("text_model.layers.0.mlp.gate_proj.weight", "vision_model.blocks.0.attn.q_proj.weight"):
        assert not torch.equal(final[key], initial_state[key]), key
