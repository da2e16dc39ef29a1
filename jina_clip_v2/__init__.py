"""jina-clip-v2: multilingual text + image embeddings as a Hugging Face model, and the training recipe.

Everything of this distribution lives under this one namespace (nothing generic at the top level of
site-packages). In a checkout the subpackages are the repository's top-level folders:

| import                      | folder         | what it holds                                               |
|-----------------------------|----------------|-------------------------------------------------------------|
| ``jina_clip_v2.modeling``   | ``modeling/``  | the Hub remote code: config, model, processor, converter    |
| ``jina_clip_v2.training``   | ``training/``  | the three training stages (Accelerate), data, losses, demo  |
| ``jina_clip_v2.hub``        | ``hub/``       | convert the release, export a Hub-ready folder, card, push  |
| ``jina_clip_v2.evaluation`` | ``evaluation/``| the paper's benchmarks, metrics and reports                 |
| ``jina_clip_v2.corpus``     | ``corpus/``    | embed a corpus into Parquet shards, LanceDB index, search   |
| ``jina_clip_v2.benchmarks`` | ``benchmarks/``| speed and memory benchmarks                                  |
| ``jina_clip_v2.data``       | ``data/``      | the bundled multilingual demo data (Tux Paint stamps)        |

The command line is ``jina-clip <command>`` (``jina-clip --help``).

Importing the package registers the model type ``jina_clip`` with transformers' auto classes (their public
``register`` APIs): ``AutoConfig``, ``AutoModel`` (and ``AutoModelForZeroShotImageClassification``, which the
zero-shot pipeline loads), ``AutoProcessor`` and ``AutoImageProcessor``. After ``import jina_clip_v2``,
``AutoModel.from_pretrained(folder)`` needs no ``trust_remote_code`` and runs this installed code, never the
copies in the folder; the folders keep their ``auto_map`` for machines with transformers alone (then
``trust_remote_code=True`` runs the folder's copies). Without torch (ONNX serving) only the config and the
processors are registered.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, CLIPProcessor

from .modeling import JinaCLIPConfig, JinaCLIPImageProcessor

__version__ = "0.1.0"

AutoConfig.register(JinaCLIPConfig.model_type, JinaCLIPConfig, exist_ok=True)
AutoProcessor.register(JinaCLIPConfig, CLIPProcessor, exist_ok=True)
try:
    AutoImageProcessor.register(JinaCLIPConfig, image_processor_classes={"pil": JinaCLIPImageProcessor}, exist_ok=True)
except ImportError:  # transformers 5.4 without torchvision: AutoImageProcessor is a placeholder there
    pass
try:
    from .modeling import JinaCLIPModel
except ImportError:  # no torch: serving with ONNX Runtime needs the config and the processors only
    pass
else:
    from transformers import AutoModel, AutoModelForZeroShotImageClassification

    AutoModel.register(JinaCLIPConfig, JinaCLIPModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(JinaCLIPConfig, JinaCLIPModel, exist_ok=True)
