"""Run timm's EVA02 on weights saved by our model:
`python _timm_oracle.py WEIGHTS PIXELS OUT W D H S [PATCH REF]` (PATCH: patch size, default 14 as
jina-clip-v2; REF: the RoPE reference grid side, default 16; jina-clip-v1's B/16 uses 16 and 14).

A separate process, so that torchvision (which timm imports) never enters the test process."""

import sys
from functools import partial

import torch
from safetensors.torch import load_file, save_file

from _tiny import import_timm


def main(weights, pixels, out, width, depth, heads, size, patch=14, ref=16):
    timm = import_timm()
    from timm.models.eva import Eva, checkpoint_filter_fn

    model = Eva(
        img_size=size, patch_size=patch, num_classes=0, global_pool="token", embed_dim=width, depth=depth,
        num_heads=heads, qkv_bias=True, qkv_fused=False, mlp_ratio=2.6667, swiglu_mlp=True, scale_mlp=True,
        scale_attn_inner=True, use_rot_pos_emb=True, rope_type="cat", rope_rotate_half=False,
        ref_feat_shape=(ref, ref), dynamic_img_size=False,
        norm_layer=partial(timm.layers.LayerNorm, eps=1e-6), init_values=None, use_post_norm=False,
    ).eval()
    state = {"visual." + k[len("vision_model."):]: v for k, v in load_file(weights).items() if k.startswith("vision_model.")}
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    for block in model.blocks:
        block.attn.fused_attn = False  # eager softmax attention, as our eager path
    with torch.no_grad():
        save_file({"embeds": model(load_file(pixels)["pixel_values"]).contiguous()}, out)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], *map(int, a[3:]))
