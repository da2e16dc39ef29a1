"""Training both versions with one runner (`training.stage.main`), parametrised over jina-clip-v1 (JinaBERT +
EVA02-B/16) and jina-clip-v2 where the behaviour is the same: the three stage configs share one schema and the
paper's stage structure, and a tiny model trains through stage 1 -> 2 -> 3 on the demo data, each stage exported
and reloaded through every loading path with the same embeddings. What only one version has (v2's Table 6
values, Matryoshka widths, the resolution switch) is in tests/test_training.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _tiny import ROOT
from _training import TINY, tiny_overrides, write_training_assets

from jina_clip_v2.training.builders import DEFAULT_LORA_TARGETS, build_model, matryoshka_dims
from jina_clip_v2.training.config import LossSection, config_to_dict, load_config, validate_config
from jina_clip_v2.training.stage import main as stage_main

CONFIGS = ROOT / "training" / "configs"
# Per version: the stage config files, image sizes by stage, the Matryoshka widths trained, the tiny model's
# text tower class, width, and image size at each tiny stage.
VERSIONS = {
    "v1": dict(files="v1_stage{}.yaml", image_sizes=(224, 224, 224), matryoshka=[768], text_tower="JinaBertModel",
               width=48, tiny_sizes=(64, 64, 64), dims=[]),
    "v2": dict(files="stage{}.yaml", image_sizes=(224, 384, 512), matryoshka=[64, 128, 256, 512, 768, 1024],
               text_tower="JinaEmbeddingsV3Model", width=64, tiny_sizes=(56, 70, 84), dims=[16, 32, 64]),
}


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def assets(request, tmp_path_factory) -> dict:
    return write_training_assets(tmp_path_factory.mktemp(f"{request.param}_training_assets"), request.param)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_stage_configs_have_the_papers_stage_structure(version):
    expected = VERSIONS[version]
    configs = {stage: load_config(CONFIGS / expected["files"].format(stage)) for stage in (1, 2, 3)}
    kinds = {1: ("text_pairs", "image_text_short"), 2: ("text_pairs", "image_text_long"), 3: ("text_triplets", "image_text_long")}
    for stage, cfg in configs.items():
        validate_config(cfg)
        assert cfg.stage == stage and (cfg.data.text.kind, cfg.data.image_text.kind) == kinds[stage]
        assert cfg.data.text.max_length == cfg.data.image_text.max_length == (77, 512, 512)[stage - 1]
        assert cfg.model.image_size == expected["image_sizes"][stage - 1]
        assert cfg.loss.matryoshka_dims == expected["matryoshka"]
        assert (tuple(cfg.optim.betas), cfg.optim.eps, cfg.optim.weight_decay) == ((0.9, 0.98), 1e-6, 0.02)
    assert configs[3].data.text.num_negatives == 7
    assert configs[2].model.init_from == configs[1].output_dir and configs[3].model.init_from == configs[2].output_dir
    if version == "v1":
        assert all(cfg.train.resolution_switch is None for cfg in configs.values())  # 224 px throughout
        assert all(cfg.model.attn_implementation in ("sdpa", "eager") for cfg in configs.values())  # ALiBi: no flash
    # One schema: the stage configs of both versions have the same keys.
    other = VERSIONS["v2" if version == "v1" else "v1"]["files"]
    for stage in (1, 2, 3):
        assert config_to_dict(configs[stage]).keys() == config_to_dict(load_config(CONFIGS / other.format(stage))).keys()


def test_matryoshka_loss_defaults_to_the_full_width_for_models_not_trained_for_it():
    section = LossSection()
    assert matryoshka_dims(section, 768, []) == [768]
    assert matryoshka_dims(section, 1024, [32, 64, 128, 256, 512, 768, 1024]) == [64, 128, 256, 512, 768, 1024]
    assert "gate_proj" in DEFAULT_LORA_TARGETS["text"] and "down_proj" in DEFAULT_LORA_TARGETS["text"]


def test_tiny_model_trains_through_three_stages_exported_and_reloaded(assets, tmp_path):
    from transformers import AutoModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from jina_clip_v2.modeling import JinaCLIPModel

    version = assets["version"]
    expected = VERSIONS[version]
    tiny = TINY[version]
    cfg = load_config(tiny, tiny_overrides(assets, tmp_path / "unused"))
    initial, _ = build_model(cfg.model, cfg.train.seed)
    assert initial.config.version == version and type(initial.text_model).__name__ == expected["text_tower"]
    initial_state = {k: v.clone() for k, v in initial.state_dict().items()}

    texts = ["a red frog", "ein kleiner Hund"]
    previous = None
    for stage in (1, 2, 3):
        out = tmp_path / f"stage{stage}"
        extra = [f"stage={stage}", "train.steps=4", "train.checkpoint_every=1000", "train.export=true"]
        if previous is not None:
            extra.append(f"model.init_from={previous}")
        summary = stage_main(["--config", str(tiny), *tiny_overrides(assets, out, *extra)])
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 4 and all(math.isfinite(r["loss"]) for r in records)
        assert records[0]["max_length/text"] == (16, 32, 32)[stage - 1]
        assert records[-1]["image_size"] == expected["tiny_sizes"][stage - 1]
        if stage == 3:
            assert summary["config"]["data"]["text"]["kind"] == "text_triplets"
        folder = out / "model"
        saved = json.loads((folder / "config.json").read_text())
        assert saved["matryoshka_dimensions"] == expected["dims"]
        assert saved["vision_config"]["image_size"] == expected["tiny_sizes"][stage - 1]
        assert (folder / "modeling_jina_bert.py").is_file() and (folder / "tokenizer.json").is_file()

        # The folder's own code (what trust_remote_code runs without this package), the registered model type
        # (AutoModel after `import jina_clip_v2`), and the package's class: one embedding.
        own = get_class_from_dynamic_module(saved["auto_map"]["AutoModel"], str(folder)).from_pretrained(str(folder)).eval()
        assert type(own).__module__.startswith("transformers_modules.")
        assert type(own.text_model).__name__ == expected["text_tower"]
        registered = AutoModel.from_pretrained(str(folder)).eval()
        assert type(registered) is JinaCLIPModel
        local = JinaCLIPModel.from_pretrained(folder).eval()
        reference = local.encode_text(texts)
        assert reference.shape == (2, expected["width"]) and np.isfinite(reference).all()
        for loaded in (own, registered):
            np.testing.assert_allclose(loaded.encode_text(texts), reference, atol=1e-6, rtol=0)
        if expected["dims"]:
            np.testing.assert_allclose(own.encode_text(texts, truncate_dim=16), local.encode_text(texts, truncate_dim=16), atol=1e-6, rtol=0)
        else:
            with pytest.raises(ValueError, match="Matryoshka"):
                own.encode_text(texts, truncate_dim=16)
        previous = folder

    # Training moved the weights of both towers away from the initialisation.
    final = JinaCLIPModel.from_pretrained(previous).state_dict()
    text_key = next(k for k in final if k.startswith("text_model.layers.0.") and k.endswith("weight") and final[k].ndim == 2)
    for key in (text_key, "vision_model.blocks.0.attn.q_proj.weight"):
        assert not torch.equal(final[key], initial_state[key]), key
