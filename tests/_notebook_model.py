"""The model and the environment the notebooks run with in the tests.

The notebooks take their model from ``JINA_CLIP_NOTEBOOK_MODEL`` (a folder or Hub id) and shrink their
workloads when ``JINA_CLIP_NOTEBOOK_TEST=1``. Here the model is the tiny random one of ``tests/_tiny.py``
(32-d embeddings, Matryoshka dims 8/16/32, 56 px images, a Unigram tokenizer trained on the demo
captions), exported with ``hub.export`` the way a real checkpoint is: the folder loads with
``AutoModel`` / ``AutoProcessor`` / ``SentenceTransformer`` and ``trust_remote_code=True``.

Run the notebooks by hand on it (offline, a few seconds each)::

    python tests/_notebook_model.py /tmp/tiny-jina-clip
    JINA_CLIP_NOTEBOOK_MODEL=/tmp/tiny-jina-clip JINA_CLIP_NOTEBOOK_TEST=1 HF_HUB_OFFLINE=1 jupyter lab notebooks/
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _tiny import ROOT, build_processor, build_tokenizer, tiny_model

NOTEBOOKS = ROOT / "notebooks"


def export_tiny_model(folder: str | os.PathLike) -> Path:
    """Export the tiny random model with its processor as a Hub-ready folder (``hub.export``)."""
    from jina_clip_v2.hub.export import export_model

    model = tiny_model(seed=0)
    processor = build_processor(build_tokenizer(), image_size=model.config.vision_config.image_size)
    return export_model(model, folder, processor=processor, repo_id="jina-clip-v2/tiny-notebook-test")


def notebook_env(model_dir: str | os.PathLike, work_dir: str | os.PathLike) -> dict[str, str]:
    """The kernel's environment: test mode, the tiny model, the Hub offline, a private HF cache, a
    non-interactive matplotlib backend and one CPU thread. The notebooks import the installed package
    (this interpreter's editable install) and take the demo data and the stage configs from it, as on Colab."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "JINA_CLIP_", "MPLBACKEND"))}
    env.update(
        JINA_CLIP_NOTEBOOK_TEST="1",
        JINA_CLIP_NOTEBOOK_MODEL=str(model_dir),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(Path(work_dir) / "hf_home"),
        MPLBACKEND="Agg",
        TOKENIZERS_PARALLELISM="false",
        # the tiny model's matrices are too small to share: one thread each is several times faster on a
        # busy 2-core machine than threads waiting for each other
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TRANSFORMERS_VERBOSITY="error",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/_notebook_model.py OUT_FOLDER")
    print(export_tiny_model(sys.argv[1]))
