"""timm's side of the stage-0 tests, in a separate process (torchvision, which timm imports, stays out of the
test process; see benchmarks/timm_oracle.py):

    python _timm_stage0.py write OUT WIDTH DEPTH HEADS CLASSES SEED
        an EVA02-CLIP-L/14-architecture tower (timm's `eva02_large_patch14_clip_224`, smaller) with random
        weights, written by timm's own Hub writer (`save_for_hf`: config.json + model.safetensors), i.e. in
        the layout of timm/eva02_large_patch14_clip_224.merged2b
    python _timm_stage0.py embed FOLDER EVA_CLIP_PT PIXELS OUT SIZE KEYS
        timm's `Eva` loaded the way timm loads pretrained weights at SIZE px (its checkpoint filter resamples
        the position table and renames EVA-CLIP's keys), once from FOLDER (`local-dir:`) and once from the
        EVA-CLIP-layout file EVA_CLIP_PT (`pretrained_cfg_overlay=dict(file=...)`); the CLS features of PIXELS
        saved as `timm_layout` and `eva_clip_layout`. KEYS (JSON): the names and shapes of the real-size
        `eva02_large_patch14_clip_224` (num_classes 768, the published checkpoint's head), built on the meta device
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file

from _tiny import import_timm


def write(out, width, depth, heads, classes, seed):
    timm = import_timm()
    from timm.models._hub import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(
        "eva02_large_patch14_clip_224", pretrained=False, num_classes=classes, embed_dim=width, depth=depth, num_heads=heads
    )
    with torch.no_grad():  # fresh init leaves biases and norms trivial: randomise everything
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    save_for_hf(model, out, safe_serialization=True)


def embed(folder, eva_clip_pt, pixels, out, size, keys):
    timm = import_timm()
    with torch.device("meta"):
        real = timm.create_model("eva02_large_patch14_clip_224", pretrained=False, num_classes=768)
    with open(keys, "w") as handle:
        json.dump({k: list(v.shape) for k, v in real.state_dict().items()}, handle)

    saved = json.load(open(f"{folder}/config.json"))
    args = {k: v for k, v in saved["model_args"].items() if k not in ("img_size", "num_classes", "global_pool")}
    models = {
        "timm_layout": timm.create_model(f"local-dir:{folder}", pretrained=True, img_size=size, num_classes=0),
        "eva_clip_layout": timm.create_model(
            "eva02_large_patch14_clip_224", pretrained=True, pretrained_cfg_overlay={"file": eva_clip_pt, "num_classes": saved["num_classes"]},
            img_size=size, num_classes=0, **args,
        ),
    }
    x = load_file(pixels)["pixel_values"]
    result = {}
    for name, model in models.items():
        model.eval()
        for block in model.blocks:
            block.attn.fused_attn = False  # eager softmax attention, as our eager path
        with torch.no_grad():
            result[name] = model(x).contiguous()
    save_file(result, out)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "write":
        write(rest[0], *map(int, rest[1:]))
    else:
        embed(rest[0], rest[1], rest[2], rest[3], int(rest[4]), rest[5])
