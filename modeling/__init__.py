"""jina-clip-v2 (and jina-clip-v1) model code. The `*_jina_clip.py` and `*_jina_bert.py` files are also the
Hub remote code copied into every exported folder; this package wrapper only registers them for auto-class
use and `save_pretrained`."""

from .configuration_jina_bert import JinaBertConfig
from .configuration_jina_clip import JinaCLIPConfig, JinaCLIPVisionConfig, release_config_to_kwargs
from .processing_jina_clip import ImageLoadError, JinaCLIPImageProcessor, load_image

try:
    from .modeling_jina_bert import JinaBertModel
    from .modeling_jina_clip import JinaCLIPModel, JinaCLIPOutput, JinaCLIPPreTrainedModel, JinaCLIPVisionModel
except ModuleNotFoundError as err:  # serving with ONNX Runtime: the config and image processor need no torch
    if err.name != "torch":
        raise
else:
    # save_pretrained then writes `auto_map` and copies the modeling files, so folders load with
    # AutoModel.from_pretrained(..., trust_remote_code=True) on machines without this package.
    JinaCLIPModel.register_for_auto_class("AutoModel")
JinaCLIPConfig.register_for_auto_class()
# The image processor is custom (release crop rounding), so processor folders must carry its code too:
# CLIPProcessor.save_pretrained then copies processing_jina_clip.py and writes the image processor's auto_map.
JinaCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "ImageLoadError",
    "JinaBertConfig",
    "JinaBertModel",
    "JinaCLIPConfig",
    "JinaCLIPImageProcessor",
    "JinaCLIPVisionConfig",
    "JinaCLIPModel",
    "JinaCLIPOutput",
    "JinaCLIPPreTrainedModel",
    "JinaCLIPVisionModel",
    "load_image",
    "release_config_to_kwargs",
]
