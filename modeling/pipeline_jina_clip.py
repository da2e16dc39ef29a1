"""transformers pipelines for jina-clip-v2 that read images with the model's own decoder.

transformers' `zero-shot-image-classification` and `image-feature-extraction` pipelines first open every
input with `transformers.image_utils.load_image`, which applies the EXIF orientation tag and fetches URLs
without a deadline or a size cap. The release reads images without the EXIF rotation, and this package's
image processor (`processing_jina_clip.JinaCLIPImageProcessor`) decodes paths, URLs (bounded fetch), data
URIs, bytes, arrays and PIL images itself, with the options saved in the folder. These subclasses hand the
raw input to that processor and change nothing else, so the pipelines give exactly `encode_image`'s
embeddings for every input. An exported folder's config.json names them under `custom_pipelines`, so
`pipeline(task, model=folder, trust_remote_code=True)` picks them.

This file is Hub remote code: it imports only transformers, nothing of this repository.
"""

from __future__ import annotations

from transformers import ImageFeatureExtractionPipeline, ZeroShotImageClassificationPipeline


def _fetch_options(timeout) -> dict:
    # The pipelines' `timeout` bounds a URL fetch; the processor's own deadline applies otherwise.
    return {} if timeout is None else {"fetch_timeout": float(timeout)}


class JinaCLIPZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """transformers' zero-shot image classification (softmax of `logits_per_image`), images decoded as
    `encode_image` decodes them."""

    def check_model_type(self, supported_models):
        # transformers checks the model class against its own zero-shot mapping, which a remote-code class is
        # never in, and logs "JinaCLIPModel is not supported" although this pipeline is the one written for it.
        if type(self.model).__name__ != "JinaCLIPModel":
            super().check_model_type(supported_models)

    def preprocess(self, image, candidate_labels=None, hypothesis_template="This is a photo of {}.", timeout=None, tokenizer_kwargs=None):
        inputs = self.image_processor(images=[image], return_tensors="pt", **_fetch_options(timeout))
        inputs = inputs.to(self.dtype)
        inputs["candidate_labels"] = candidate_labels
        sequences = [hypothesis_template.format(label) for label in candidate_labels]
        text_inputs = self.tokenizer(sequences, return_tensors="pt", **{"padding": True, **(tokenizer_kwargs or {})})
        inputs["text_inputs"] = [text_inputs]
        return inputs


class JinaCLIPImageFeatureExtractionPipeline(ImageFeatureExtractionPipeline):
    """transformers' image feature extraction (the first output of `forward(pixel_values=...)`: the
    L2-normalized image embedding), images decoded as `encode_image` decodes them."""

    def preprocess(self, image, timeout=None, **image_processor_kwargs):
        inputs = self.image_processor(image, return_tensors="pt", **_fetch_options(timeout), **image_processor_kwargs)
        return inputs.to(self.dtype)


# config.json `custom_pipelines`: task -> implementation in this file, loaded through AutoModel.
CUSTOM_PIPELINES = {
    "zero-shot-image-classification": {
        "impl": "pipeline_jina_clip.JinaCLIPZeroShotImageClassificationPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    },
    "image-feature-extraction": {
        "impl": "pipeline_jina_clip.JinaCLIPImageFeatureExtractionPipeline",
        "pt": ["AutoModel"],
        "type": "image",
    },
}

__all__ = ["CUSTOM_PIPELINES", "JinaCLIPImageFeatureExtractionPipeline", "JinaCLIPZeroShotImageClassificationPipeline"]
