"""The README's Python snippets run as written, on a tiny exported model in place of the real one."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

from _notebook_model import export_tiny_model
from _tiny import ROOT


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# jina-clip-v2\n\n```bash\nmake demo"), "the README must open with the two commands"
    assert "make test" in readme.split("```")[1]
    # The fastembed snippet runs in fastembed's own venv (tests/test_clients.py, with the Node snippet).
    snippets = [s for s in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "from fastembed" not in s]
    assert len(snippets) >= 2
    model_dir = export_tiny_model(tmp_path / "jina-clip-v2-converted")
    monkeypatch.chdir(tmp_path)
    for name in ("dog.jpg", "cat.png"):
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(name)
    for snippet in snippets:
        # The tiny model is 32-d with Matryoshka dims 8/16/32: the README's 256 becomes 16.
        code = snippet.replace("truncate_dim=256", "truncate_dim=16")
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        for value in namespace.values():
            if isinstance(value, np.ndarray) and value.ndim == 2:
                assert value.shape[1] == 16
                np.testing.assert_allclose(np.linalg.norm(value, axis=1), 1.0, atol=1e-5)
    assert Path(model_dir).name == "jina-clip-v2-converted"
