"""Version floors that are true: the remote code of an exported folder works with transformers 5.4 (the
first release with `JinaEmbeddingsV3` and `CLIPImageProcessorPil`, pyproject's floor) and gives the same
embeddings as the installed transformers; under 5.3 and 4.57 every entry point fails with an error that
names the version to install. Each version runs in a subprocess with its own folder first on PYTHONPATH
(`make setup` installs them into .compat/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _compat import compat_folder, run_with
from _tiny import ROOT


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from _notebook_model import export_tiny_model

    return export_tiny_model(tmp_path_factory.mktemp("compat") / "tiny")


ENTRY_POINTS = """
import json, sys
import transformers
from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.models.auto.image_processing_auto import AutoImageProcessor

folder = sys.argv[1]
result = {"version": transformers.__version__}
for loader in (AutoConfig, AutoModel, AutoImageProcessor):
    try:
        loader.from_pretrained(folder, trust_remote_code=True)
        result[loader.__name__] = None
    except ImportError as err:
        result[loader.__name__] = str(err)
print(json.dumps(result))
"""


@pytest.mark.parametrize("name,version", [("transformers-5.3", "5.3.0"), ("transformers-4.57", "4.57.6")])
def test_older_transformers_names_the_version_to_install(exported, tmp_path, name, version):
    done = run_with(compat_folder(name), ENTRY_POINTS, str(exported), home=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("version") == version
    for loader, message in result.items():
        assert message is not None, f"{loader} loaded under transformers {version}"
        assert "transformers>=5.4" in message and version in message, (loader, message)
        assert "pip install" in message


FLOOR = """
import json, sys
import numpy as np
import transformers
from PIL import Image
from transformers import AutoModel

folder, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
texts = ["a dog ", "", "Ein Hund spielt im Schnee"]
np.savez(
    out,
    version=transformers.__version__,
    text=model.encode_text(texts),
    query=model.encode_text(texts, task="retrieval.query"),
    image=model.encode_image(paths),
)
"""


def test_the_floor_version_gives_the_same_embeddings(exported, tmp_path):
    from transformers import AutoModel

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((70, 95), (40, 61))):
        paths.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    out = tmp_path / "floor.npz"
    done = run_with(compat_folder("transformers-5.4"), FLOOR, str(exported), str(out), *paths, home=tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    floor = np.load(out)
    assert str(floor["version"]) == "5.4.0"
    model = AutoModel.from_pretrained(str(exported), trust_remote_code=True)
    texts = ["a dog ", "", "Ein Hund spielt im Schnee"]
    np.testing.assert_allclose(floor["text"], model.encode_text(texts), atol=1e-6)
    np.testing.assert_allclose(floor["query"], model.encode_text(texts, task="retrieval.query"), atol=1e-6)
    np.testing.assert_allclose(floor["image"], model.encode_image(paths), atol=1e-6)


EXPORT_AT_THE_FLOORS = """
import sys
import numpy as np
import sentence_transformers, transformers
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from jina_clip_v2.hub.export import main as export_main

source, out, result = sys.argv[1], sys.argv[2], sys.argv[3]
assert export_main(["--model", source, "--out", out]) == 0
texts = ["a dog ", "Ein Hund spielt im Schnee"]
st = SentenceTransformer(out, trust_remote_code=True, device="cpu")
np.savez(
    result,
    versions=[transformers.__version__, sentence_transformers.__version__],
    model=AutoModel.from_pretrained(out, trust_remote_code=True).encode_text(texts),
    st=st.encode(texts, normalize_embeddings=True),
)
"""


def test_export_and_sentence_transformers_at_the_floors(tmp_path):
    """`jina-clip export` under the oldest transformers and sentence-transformers pyproject admits (5.4 and
    5.4), and the folder it writes loads there (AutoModel and SentenceTransformer) with the embeddings this
    environment gets from it."""
    from _eval_fixtures import save_tiny_model

    from jina_clip_v2.modeling import JinaCLIPModel

    source = save_tiny_model(tmp_path / "source")
    folders = [compat_folder("transformers-5.4"), compat_folder("sentence-transformers-5.4")]
    done = run_with(folders, EXPORT_AT_THE_FLOORS, str(source), str(tmp_path / "out"), str(tmp_path / "r.npz"), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    result = np.load(tmp_path / "r.npz")
    assert list(result["versions"]) == ["5.4.0", "5.4.0"]
    expected = JinaCLIPModel.from_pretrained(tmp_path / "out").encode_text(["a dog ", "Ein Hund spielt im Schnee"])
    np.testing.assert_allclose(result["model"], expected, atol=1e-6)
    np.testing.assert_allclose(result["st"], expected, atol=1e-6)


def test_pyproject_floor_is_the_tested_one():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"transformers>=5.4,<6"' in text
    assert '"sentence-transformers>=5.4"' in text  # the st extra: tests/test_sentence_transformers.py
