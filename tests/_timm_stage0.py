"""timm's side of the stage-0 tests, in one separate process (torchvision, which timm imports, stays out of
the test process; see benchmarks/timm_oracle.py):

    python _timm_stage0.py OUT WIDTH DEPTH HEADS CLASSES SEED SIZE

1. OUT/eva02_timm: an EVA02-CLIP-L/14-architecture tower (timm's `eva02_large_patch14_clip_224`, smaller) with
   random weights, written by timm's own Hub writer (`save_for_hf`: config.json + model.safetensors), i.e. in
   the layout of timm/eva02_large_patch14_clip_224.merged2b; OUT/EVA02_CLIP_L_psz14_s4B.pt: the same weights
   in EVA-CLIP's layout (`_stage0_fixtures.write_eva_clip_file`).
2. OUT/timm.safetensors: timm's `Eva` loaded the way timm loads pretrained weights, at SIZE px (its checkpoint
   filter resamples the position table and renames EVA-CLIP's keys), once from the folder (`local-dir:`) and
   once from the EVA-CLIP file (`pretrained_cfg_overlay=dict(file=...)`): the CLS features of OUT/pixels.safetensors
   (random, seeded), as `timm_layout` and `eva_clip_layout`.
3. OUT/timm_keys.json: the names and shapes of the real-size `eva02_large_patch14_clip_224` (num_classes 768,
   the published checkpoint's head), built on the meta device.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from _stage0_fixtures import write_eva_clip_file
from _tiny import import_timm


def main(out, width, depth, heads, classes, seed, size):
    timm = import_timm()
    from timm.models._hub import save_for_hf

    out = Path(out)
    torch.manual_seed(seed)
    model = timm.create_model(
        "eva02_large_patch14_clip_224", pretrained=False, num_classes=classes, embed_dim=width, depth=depth, num_heads=heads
    )
    with torch.no_grad():  # fresh init leaves biases and norms trivial: randomise everything
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    save_for_hf(model, out / "eva02_timm", safe_serialization=True)
    eva_clip = write_eva_clip_file(out / "eva02_timm", out / "EVA02_CLIP_L_psz14_s4B.pt", heads=heads)

    args = {"embed_dim": width, "depth": depth, "num_heads": heads}
    models = {
        "timm_layout": timm.create_model(f"local-dir:{out / 'eva02_timm'}", pretrained=True, img_size=size, num_classes=0),
        "eva_clip_layout": timm.create_model(
            "eva02_large_patch14_clip_224", pretrained=True, pretrained_cfg_overlay={"file": str(eva_clip), "num_classes": classes},
            img_size=size, num_classes=0, **args,
        ),
    }
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    save_file({"pixel_values": pixels}, out / "pixels.safetensors")
    result = {}
    for name, oracle in models.items():
        oracle.eval()
        for block in oracle.blocks:
            block.attn.fused_attn = False  # eager softmax attention, as our eager path
        with torch.no_grad():
            result[name] = oracle(pixels).contiguous()
    save_file(result, out / "timm.safetensors")
    with torch.device("meta"):
        real = timm.create_model("eva02_large_patch14_clip_224", pretrained=False, num_classes=768)
    (out / "timm_keys.json").write_text(json.dumps({k: list(v.shape) for k, v in real.state_dict().items()}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *map(int, a[1:]))
