"""The one training step of jina-clip-v2 (paper eq. 3, section 3.2), used by the training loop and timed by
``benchmarks/train_step.py``.

``TrainStep(cfg, model, accelerator)`` builds what a step needs around a model: the per-task temperatures,
AdamW with per-tower learning rates and layer-wise decay, the cosine schedule, and the Accelerate-wrapped
``DualEncoder`` (DDP / FSDP / autocast). Calling it with a ``TextBatch`` and an ``ImageTextBatch`` embeds
them in one wrapped forward (or chunk by chunk with gradient caching), computes eq. 3 (the text task's
InfoNCE / InfoNCE+ plus the image-text InfoNCE, each summed over the Matryoshka widths, in-batch negatives
gathered from every process) or the unified-batch ablation, backpropagates, clips, and steps the optimizer
and the schedule.
"""

from __future__ import annotations

import torch
from torch import nn

from jina_clip_v2.training.batches import ImageTextBatch, TextBatch
from jina_clip_v2.training.builders import Temperatures, initial_temperatures, matryoshka_dims
from jina_clip_v2.training.config import GradCacheSection, StageConfig
from jina_clip_v2.training.grad_cache import grad_cache_step, split_batch
from jina_clip_v2.training.images import augment_views
from jina_clip_v2.training.losses import LossOutput, average_gradients, contrastive_loss, joint_loss
from jina_clip_v2.training.optim import build_optimizer, build_scheduler

__all__ = ["DualEncoder", "TrainStep"]


class DualEncoder(nn.Module):
    """What Accelerate wraps (DDP / FSDP / autocast): one forward that embeds named text and image groups,
    so a training step is a single wrapped forward (DDP needs every use of the weights to go through
    its forward) and gradient caching can encode chunk by chunk through the same wrapper."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, texts: dict | None = None, images: dict | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for name, encoding in (texts or {}).items():
            # check_inputs=False: the data pipeline's own tokenizer/processor made these (no host sync per step)
            out[name] = self.model.get_text_features(
                input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"], check_inputs=False
            ).pooler_output
        for name, pixels in (images or {}).items():
            out[name] = self.model.get_image_features(pixel_values=pixels, check_inputs=False).pooler_output
        return out


class TrainStep:
    """One optimizer step per call; see the module docstring.

    Attributes:
        model: the bare ``JinaCLIPModel``.
        encoder, optimizer, scheduler: as prepared by the accelerator.
        temperatures: the learnable temperatures (outside the wrapper; registered for checkpointing).
        dims: the Matryoshka widths the losses are summed over.
        grad_cache: the gradient-caching settings (``train.grad_cache``); may be replaced between steps.
        last_grad_norm: the global gradient norm before the last clipping (None without clipping).
        update_filter: called with the step's detached loss before the update; False skips the
            optimizer step (the schedule still steps). The loop sets it for train.on_nonfinite_loss=skip.
    """

    def __init__(
        self, cfg: StageConfig, model: nn.Module, accelerator, *, temperatures: dict[str, float] | None = None
    ):
        self.cfg = cfg
        self.accelerator = accelerator
        self.model = model
        self.grad_cache: GradCacheSection = cfg.train.grad_cache
        self.dims = matryoshka_dims(cfg.loss, model.config.projection_dim, model.config.matryoshka_dimensions)
        self.temperatures = Temperatures(cfg.loss, temperatures or initial_temperatures(cfg, model))
        self.temperatures.to(accelerator.device)
        optimizer = build_optimizer({"": model, "temperatures": self.temperatures}, cfg.optim)
        scheduler = build_scheduler(
            optimizer, total_steps=cfg.train.steps, warmup_steps=cfg.optim.warmup_steps, min_lr_ratio=cfg.optim.min_lr_ratio
        )
        self.encoder, self.optimizer, self.scheduler = accelerator.prepare(DualEncoder(model), optimizer, scheduler)
        accelerator.register_for_checkpointing(self.temperatures)
        self.last_grad_norm: torch.Tensor | None = None
        self.update_filter = None

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + [
            p for p in self.temperatures.parameters() if p.requires_grad
        ]

    # -- the step ---------------------------------------------------------------------------------------

    def __call__(self, text: TextBatch, image: ImageTextBatch) -> LossOutput:
        """Forward, eq. 3 (or the unified loss), backward, clipping, optimizer and schedule step. Returns the
        detached loss of this process's rows (the mean over processes is the global-batch loss)."""
        device = self.accelerator.device
        text, image = text.to(device), image.to(device)
        self.encoder.train()
        texts, images = self.groups(text, image)
        if self.grad_cache.enabled:
            output = self._grad_cache_backward(texts, images, text.num_negatives)
        else:
            output = self.loss(self.encoder(texts=texts, images=images), text.num_negatives)
            self.accelerator.backward(output.loss)
            output = output.detach()
        average_gradients([p for p in self.temperatures.parameters() if p.requires_grad])
        if self.update_filter is not None and not self.update_filter(output):
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return output
        if self.cfg.optim.max_grad_norm is not None:
            self.last_grad_norm = self._clip_gradients(self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.temperatures.clamp_()
        return output

    def groups(self, text: TextBatch, image: ImageTextBatch) -> tuple[dict, dict]:
        """The named text and image groups the encoder embeds (the unified batch adds two augmented views
        of every image)."""
        texts = {**text.text_groups(), "caption": image.caption}
        images = {"image": image.pixel_values}
        loss = self.cfg.loss
        if loss.unified_batch and loss.ssl_views:
            scale = tuple(loss.ssl_crop_scale)
            images["view_a"] = augment_views(image.pixel_values, scale)
            images["view_b"] = augment_views(image.pixel_values, scale)
        return texts, images

    def loss(
        self, emb: dict[str, torch.Tensor], num_negatives: int = 0, *, dims: list[int] | None = None,
        gather: bool | None = None,
    ) -> LossOutput:
        """Eq. 3 (or the unified-batch InfoNCE) on named embeddings; ``dims`` / ``gather`` override the
        config's (the benchmark times the loss's parts)."""
        dims = self.dims if dims is None else dims
        gather = self.cfg.loss.gather if gather is None else gather
        if self.cfg.loss.unified_batch:
            first = [emb["image"], emb["query"]]
            second = [emb["caption"], emb["document"]]
            if "view_a" in emb:
                first.append(emb["view_a"])
                second.append(emb["view_b"])
            return contrastive_loss(
                torch.cat(first), torch.cat(second), self.temperatures("shared"), dims=dims, gather=gather
            )
        negatives = None
        if "negatives" in emb:
            negatives = emb["negatives"].view(emb["query"].shape[0], num_negatives, -1)
        return joint_loss(
            emb["query"],
            emb["document"],
            emb["caption"],
            emb["image"],
            text_temperature=self.temperatures("text"),
            image_temperature=self.temperatures("image_text"),
            text_negatives=negatives,
            dims=dims,
            gather=gather,
        )

    def _grad_cache_backward(self, texts: dict, images: dict, num_negatives: int) -> LossOutput:
        names = list(texts) + list(images)

        def encode_text(name):
            return lambda chunk: self.encoder(texts={name: chunk})[name]

        def encode_image(name):
            return lambda chunk: self.encoder(images={name: chunk})[name]

        groups = [(encode_text(n), split_batch(texts[n], self.grad_cache.text_chunk_size)) for n in texts]
        groups += [(encode_image(n), split_batch(images[n], self.grad_cache.image_chunk_size)) for n in images]
        return grad_cache_step(
            lambda *embeddings: self.loss(dict(zip(names, embeddings)), num_negatives),
            groups,
            accelerator=self.accelerator,
            model=self.encoder,
        )

    def _clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm. Under FSDP the norm of sharded gradients needs the wrapped
        model's own ``clip_grad_norm_`` (accelerate calls it when given exactly the model's parameters);
        the temperatures (outside the model, scalar) are then clipped on their own."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP:
            norm = acc.clip_grad_norm_(self.encoder.parameters(), max_norm)
            acc.clip_grad_norm_([p for p in self.temperatures.parameters() if p.requires_grad], max_norm)
            return norm
        return acc.clip_grad_norm_(self.trainable(), max_norm)
