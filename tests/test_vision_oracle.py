"""The EVA02 vision tower equals timm's `Eva` with the same weights (DESIGN.md section 6).

Sizes other than 224 matter: at 224 px the grid is the 16x16 pretraining grid and a wrong RoPE position
scaling stays hidden."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _tiny import tiny_model

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("image_size", [56, 112, 70])
def test_vision_tower_equals_timm_eva(tmp_path, image_size):
    model = tiny_model(seed=image_size, image_size=image_size)
    model.set_attn_implementation("eager")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    pixels = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    save_file({"pixel_values": pixels}, tmp_path / "px.safetensors")
    vision = model.config.vision_config
    subprocess.run(
        [sys.executable, str(HERE / "_timm_oracle.py"), str(tmp_path / "w.safetensors"), str(tmp_path / "px.safetensors"),
         str(tmp_path / "out.safetensors"), str(vision.hidden_size), str(vision.num_hidden_layers),
         str(vision.num_attention_heads), str(image_size)],
        check=True, cwd=HERE,
    )
    from safetensors.torch import load_file

    expected = load_file(tmp_path / "out.safetensors")["embeds"]
    with torch.no_grad():
        ours = model.get_image_features(pixels).pooler_output
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-5
