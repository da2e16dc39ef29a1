"""Analytic FLOPs of jina-clip-v2, computed from the config, and model FLOPs utilization (MFU): the one
FLOPs module, behind the MFU of the training logs (``training.metrics``) and of the benchmarks
(``benchmarks/train_step.py``), which count a step with the same function, ``step_flops``.

Conventions (as in the PaLM / Megatron MFU accounting):

- Only matrix multiplications are counted, one multiply-add = 2 FLOPs (forward = 2 x MACs). LayerNorm,
  softmax, GELU/SiLU, RoPE, residual adds, biases and the mean pooling are not counted: they are O(n*D)
  element-wise work next to O(n*D^2) matmuls (a few tenths of a percent at real size), and
  ``torch.utils.flop_counter.FlopCounterMode`` does not count them either, which is what the tests compare with.
- Vision tower (EVA02), per image with a ``g x g`` patch grid and ``N = g^2 + 1`` tokens (CLS included),
  width D, SwiGLU width I, L blocks:
    patch embedding   2 * g^2 * (C * p^2) * D          (the 14x14 stride-14 convolution = one matmul)
    q, k, v, proj     2 * L * N * 4 * D^2
    attention         2 * L * 2 * N^2 * D              (Q K^T and A V over all heads)
    SwiGLU            2 * L * N * 3 * D * I            (w1, w2: D -> I; w3: I -> D)
- Text tower (XLM-R geometry, post-LN, GELU MLP), per sequence of s tokens, width D, MLP width I:
    q, k, v, o        2 * L * s * 4 * D^2
    attention         2 * L * 2 * s^2 * D              (grows with the sequence: per-token cost depends on s)
    MLP               2 * L * s * 2 * D * I
  The embedding lookup costs no FLOPs. *Model* FLOPs use each sequence's real length (what an unpadded
  kernel executes); padded paths execute more (``text_forward_flops(config, [padded_len] * batch)``) and
  their MFU is still quoted on the real-token FLOPs, so padding shows up as lost utilization.
- Training step: backward = 2 x forward, so a step is 3 x forward (model FLOPs, used for MFU). Gradient
  checkpointing recomputes the forward once more (+1 x forward) and gradient caching runs an extra
  no-grad embedding pass (+1 x forward); both are counted only in *hardware* FLOPs (HFU), never in MFU.
- A step (``step_flops``) is every text of the step at its real length (queries, documents, hard
  negatives, captions), every image at the training token count (patch dropout), and the losses on
  this process's rows against the global batch; ``model`` = 3 x that forward.
- Peak: dense (no 2:4 sparsity) tensor-core throughput of the detected GPU for the compute dtype;
  ``train.peak_tflops`` / ``--peak-tflops`` overrides it (and is the only way to get an MFU on a CPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from jina_clip_v2.training.batches import ImageTextBatch, TextBatch

__all__ = [
    "PEAK_TFLOPS",
    "contrastive_loss_flops",
    "detect_peak_tflops",
    "mfu",
    "peak_tflops_for",
    "step_flops",
    "text_flops_per_token",
    "text_forward_flops",
    "train_step_flops",
    "vision_forward_flops",
    "vision_train_tokens",
]

# Dense peak TFLOP/s per GPU (vendor datasheets, without sparsity), first match on the device name wins.
# Order matters: "GH200" contains "H200", and the H100/H200 variants must come before the plain names.
PEAK_TFLOPS: list[tuple[str, str, dict[str, float]]] = [
    ("GH200", "GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H200 NVL", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", "H200 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 NVL", "H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", "H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", "L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
]


# ----------------------------------------------------------------------------------------------------
# Towers
# ----------------------------------------------------------------------------------------------------


def vision_forward_flops(vision_config, image_size: int | None = None, num_tokens: int | None = None) -> dict[str, int]:
    """FLOPs of one image through the EVA02 tower, by component (keys: patch_embed, qkvo, attention, mlp, total).

    Args:
        vision_config: a ``JinaCLIPVisionConfig`` (or anything with its fields).
        image_size: input side in pixels (default: the config's); the grid floors (512 px / 14 -> 36).
        num_tokens: tokens through the blocks, if not ``grid^2 + 1`` (patch dropout keeps fewer at train time).
    """
    size = image_size if image_size is not None else vision_config.image_size
    patch = vision_config.patch_size
    grid = size // patch
    patches = grid * grid
    n = num_tokens if num_tokens is not None else patches + 1
    d, i, layers = vision_config.hidden_size, vision_config.intermediate_size, vision_config.num_hidden_layers
    channels = getattr(vision_config, "num_channels", 3)
    parts = {
        "patch_embed": 2 * patches * channels * patch * patch * d,
        "qkvo": 2 * layers * n * 4 * d * d,
        "attention": 2 * layers * 2 * n * n * d,
        "mlp": 2 * layers * n * 3 * d * i,
    }
    parts["total"] = sum(parts.values())
    return parts


def vision_train_tokens(vision_config, image_size: int | None = None) -> int:
    """Tokens through the blocks in training mode: patch dropout keeps int(g^2 * (1 - p)) patches + CLS."""
    size = image_size if image_size is not None else vision_config.image_size
    patches = (size // vision_config.patch_size) ** 2
    p = getattr(vision_config, "patch_dropout", 0.0) or 0.0
    return (max(1, int(patches * (1.0 - p))) if p > 0 else patches) + 1


def text_forward_flops(
    text_config, lengths: int | Iterable[int], attention_lengths: Iterable[int] | None = None
) -> dict[str, int]:
    """FLOPs of the text tower over sequences of the given lengths (one int = one sequence), by component
    (keys: qkvo, attention, mlp, total, tokens). Pass the real lengths for model FLOPs, or the padded length
    repeated for what a padded batch executes.

    ``attention_lengths``: the query-key blocks the attention really computes when they differ from the token
    counts (one entry per block of a x a): e.g. ``[T]`` for a (T, T) block-diagonal mask over a whole packed row.
    The projections and MLP still run on ``sum(lengths)`` tokens. (``JinaCLIPModel``'s unpadded eager / SDPA path
    runs padded length buckets: pass each text's bucket length as its length.)"""
    lengths = [int(lengths)] if isinstance(lengths, int) else [int(s) for s in lengths]
    d, i, layers = text_config.hidden_size, text_config.intermediate_size, text_config.num_hidden_layers
    # v2's MLP is fc1 + fc2; jina-clip-v1's JinaBERT has a gated unit: gate, up and down projections.
    mlp_matrices = 3 if getattr(text_config, "model_type", "") == "jina_bert" else 2
    tokens = sum(lengths)
    spans = lengths if attention_lengths is None else [int(a) for a in attention_lengths]
    squares = sum(s * s for s in spans)
    parts = {
        "qkvo": 2 * layers * tokens * 4 * d * d,
        "attention": 2 * layers * 2 * squares * d,
        "mlp": 2 * layers * tokens * mlp_matrices * d * i,
    }
    parts["total"] = sum(parts.values())
    parts["tokens"] = tokens
    return parts


def text_flops_per_token(text_config, seq_len: int) -> float:
    """Forward FLOPs per token of a sequence of ``seq_len`` tokens (attention makes it depend on the length)."""
    return text_forward_flops(text_config, seq_len)["total"] / seq_len


# ----------------------------------------------------------------------------------------------------
# Loss and training step
# ----------------------------------------------------------------------------------------------------


def contrastive_loss_flops(batch: int, dims: Sequence[int], num_negatives: int = 0, global_batch: int | None = None) -> int:
    """Forward FLOPs of one task's Matryoshka-summed InfoNCE (``training.losses.contrastive_loss``) on one rank.

    Per width d: query->document logits ``b x (N (1 + K)) x d`` and document->query logits ``b x N x d``
    (N: global batch, K: hard negatives per query). Small next to the towers (0.1 % at stage-1 sizes), counted
    for completeness."""
    n = global_batch if global_batch is not None else batch
    return sum(2 * batch * n * (1 + num_negatives) * d + 2 * batch * n * d for d in dims)


def train_step_flops(
    forward_flops: float,
    *,
    loss_forward_flops: float = 0.0,
    gradient_checkpointing: bool = False,
    grad_cache: bool = False,
) -> dict[str, float]:
    """Model and hardware FLOPs of one training step.

    ``model`` = 3 x (towers + loss) forward (the MFU numerator); ``hardware`` adds +1 x towers forward for the
    checkpointing recompute and +1 x for gradient caching's no-grad embedding pass (the HFU numerator)."""
    model = 3.0 * (forward_flops + loss_forward_flops)
    hardware = model + forward_flops * (int(gradient_checkpointing) + int(grad_cache))
    return {"forward": float(forward_flops), "loss_forward": float(loss_forward_flops), "model": model, "hardware": hardware}


def step_flops(
    config,
    text: TextBatch,
    image: ImageTextBatch,
    *,
    dims: Sequence[int],
    world_size: int = 1,
    unified_views: int | None = None,
    gradient_checkpointing: bool = False,
    grad_cache: bool = False,
) -> dict[str, float]:
    """FLOPs of one training step of one process (``training.step.TrainStep``) on these batches.

    Args:
        config: the ``JinaCLIPConfig``.
        text, image: the step's batches (this process's rows).
        dims: the Matryoshka widths the losses are summed over.
        world_size: processes; every row is scored against the global batch of ``world_size`` x rows.
        unified_views: the unified-batch ablation (one InfoNCE over every pair) with this many extra
            augmented image views per image (2 with SSL views, else 0); None: eq. 3.
        gradient_checkpointing, grad_cache: counted in ``hardware`` only.

    Returns ``text_forward``, ``vision_forward``, ``loss_forward``, ``towers_forward`` (FLOPs),
    ``model`` / ``hardware`` (``train_step_flops``), ``tokens`` (real text tokens + image tokens) and
    ``samples`` (text rows + image-text rows)."""
    text_cfg, vision_cfg = config.text_config, config.vision_config
    encodings = [*text.text_groups().values(), image.caption]
    lengths = [int(n) for e in encodings for n in e["attention_mask"].sum(dim=1).tolist()]
    text_forward = text_forward_flops(text_cfg, lengths)["total"]
    image_size = image.pixel_values.shape[-1]
    images = image.rows * (1 + (unified_views or 0))
    image_tokens = vision_train_tokens(vision_cfg, image_size)
    vision_forward = images * vision_forward_flops(vision_cfg, image_size, num_tokens=image_tokens)["total"]
    if unified_views is None:
        loss_forward = contrastive_loss_flops(text.rows, dims, text.num_negatives, text.rows * world_size)
        loss_forward += contrastive_loss_flops(image.rows, dims, 0, image.rows * world_size)
    else:
        rows = image.rows * (1 + unified_views // 2) + text.rows
        loss_forward = contrastive_loss_flops(rows, dims, 0, rows * world_size)
    towers = text_forward + vision_forward
    step = train_step_flops(
        towers, loss_forward_flops=loss_forward, gradient_checkpointing=gradient_checkpointing, grad_cache=grad_cache
    )
    return {
        "text_forward": float(text_forward),
        "vision_forward": float(vision_forward),
        "loss_forward": float(loss_forward),
        "towers_forward": float(towers),
        "model": step["model"],
        "hardware": step["hardware"],
        "tokens": float(sum(lengths) + images * image_tokens),
        "samples": float(text.rows + image.rows),
    }


# ----------------------------------------------------------------------------------------------------
# Peaks and MFU
# ----------------------------------------------------------------------------------------------------


def dtype_key(dtype: torch.dtype) -> str:
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


def peak_tflops_for(device_name: str, dtype: torch.dtype | str = torch.bfloat16) -> tuple[float | None, str | None]:
    """(peak dense TFLOP/s, matched table entry) for a ``torch.cuda.get_device_name`` string; (None, None) if unknown."""
    key = dtype if isinstance(dtype, str) else dtype_key(dtype)
    for pattern, name, peaks in PEAK_TFLOPS:
        if pattern.lower() in device_name.lower():
            return peaks.get(key), f"{name} {key} dense"
    return None, None


def detect_peak_tflops(
    device: torch.device | str, dtype: torch.dtype, override: float | None = None
) -> tuple[float | None, str | None]:
    """The peak to divide by: ``override`` (``--peak-tflops``) if given, else the table entry of the CUDA device,
    else (None, None) (CPU or an unknown GPU: MFU is then reported as null)."""
    if override is not None:
        return float(override), "--peak-tflops"
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, None
    return peak_tflops_for(torch.cuda.get_device_name(device), dtype)


def mfu(flops: float, seconds: float, peak_tflops: float | None, devices: int = 1) -> float | None:
    """FLOPs / (seconds * peak * devices): ``flops`` done by ``devices`` devices in ``seconds``; None
    without a peak or a time."""
    if not peak_tflops or not seconds or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12 * devices)
