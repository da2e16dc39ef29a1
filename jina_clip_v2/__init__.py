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
"""

__version__ = "0.1.0"
