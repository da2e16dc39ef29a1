"""The resolution switch inside a run (end of stage 1: 224 -> 384 px, paper section 3.2).

Changing the image size resamples the vision tower's position table, which replaces a parameter. The
optimizer's AdamW moments of the old table are resampled onto the new grid (the second moment as the
square of the resampled root, so it stays non-negative), and the wrappers that hold the old parameter are
rebuilt through accelerate's public API: ``free_memory`` drops its references to the prepared objects,
``prepare`` wraps the same model, optimizer and schedule again (DDP registers the new parameter; the
optimizer keeps its state, the schedule its position). Sharded backends cannot change a parameter's shape
in place: under FSDP / DeepSpeed run the high-resolution tail as its own stage instead.
"""

from __future__ import annotations

from accelerate.logging import get_logger

from jina_clip_v2.training.step import TrainStep

__all__ = ["set_image_size"]

logger = get_logger(__name__)


def set_image_size(step: TrainStep, image_size: int) -> bool:
    """Switch the model of ``step`` to ``image_size`` px mid-run; False when it is already there."""
    from accelerate.utils import DistributedType

    from jina_clip_v2.modeling.modeling_jina_clip import resample_position_embeddings

    acc, model = step.accelerator, step.model
    if image_size == model.config.vision_config.image_size:
        return False
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise NotImplementedError(
            "train.resolution_switch inside one FSDP/DeepSpeed run is not supported (sharded parameters "
            "cannot change shape); run the high-resolution tail as its own run with model.init_from "
            "pointing at the switch checkpoint's export and model.image_size set"
        )
    optimizer, scheduler = step.optimizer.optimizer, step.scheduler.scheduler  # the wrapped torch objects
    old = model.vision_model.pos_embed
    model.set_image_size(image_size)
    new = model.vision_model.pos_embed
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state:
        positions = new.shape[1]
        if "exp_avg" in state:
            state["exp_avg"] = resample_position_embeddings(state["exp_avg"], positions)
        if "exp_avg_sq" in state:
            state["exp_avg_sq"] = resample_position_embeddings(state["exp_avg_sq"].sqrt(), positions).square()
        optimizer.state[new] = state
    encoder = acc.unwrap_model(step.encoder, keep_fp32_wrapper=False)
    acc.free_memory()
    step.encoder, step.optimizer, step.scheduler = acc.prepare(encoder, optimizer, scheduler)
    logger.info("image size -> %d px (position table resampled)", image_size)
    return True
