"""The Colab notebooks in notebooks/: stored stripped (no outputs), each with an "Open in Colab" badge, a
Colab-only install cell and its model as a parameter; and each executes top to bottom (nbclient, a fresh
IPython kernel of this interpreter) on the tiny model, offline, in a temporary working directory, ending
in assertions of known properties.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from _notebook_model import NOTEBOOKS, export_tiny_model, notebook_env
from _tiny import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NAMES = ["01_quickstart", "02_multilingual_image_search", "03_finetune", "04_evaluate"]
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_URL = "https://colab.research.google.com/github/jina-clip-v2/jina-clip-v2/blob/main/notebooks/{name}.ipynb"
INSTALL = 'pip install -q "jina-clip-v2[train,eval,st] @ git+https://github.com/jina-clip-v2/jina-clip-v2"'
CELL_TIMEOUT = 600  # seconds per cell: generous for slow CI machines; a whole notebook takes 10-30 s here


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_stripped_and_valid(name):
    nb = _read(name)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"
        assert not {"execution", "collapsed", "scrolled"} & set(cell.metadata), f"{name} cell {index} metadata {dict(cell.metadata)}"
    assert "widgets" not in nb.metadata
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_badge_install_cell_and_model_parameter(name):
    nb = _read(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and BADGE in first.source
    assert COLAB_URL.format(name=name) in first.source
    code = _code(nb)
    # the first code cell holds the parameters: the model id comes from the environment in the tests
    assert 'os.environ.get("JINA_CLIP_NOTEBOOK_MODEL"' in code[0] and "MODEL_ID" in code[0]
    assert 'IN_COLAB = "google.colab" in sys.modules' in code[0]
    assert 'TEST_MODE = os.environ.get("JINA_CLIP_NOTEBOOK_TEST") == "1"' in code[0]
    # the second installs the package, on Colab only
    assert code[1].lstrip().startswith("if IN_COLAB:") and INSTALL in code[1]
    # the notebook ends by checking something, not only by printing
    assert "assert " in code[-1]


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("notebook_model") / "tiny-jina-clip")


def _kernel_manager(work: Path):
    """A kernel manager for an IPython kernel of *this* interpreter, whatever kernelspecs are installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = work / "kernels" / "jina-clip-notebook-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jina-clip-v2 notebook test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="jina-clip-notebook-test", kernel_spec_manager=specs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_on_the_tiny_model(name, tiny_model_dir, tmp_path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    work = tmp_path / "cwd"
    work.mkdir()
    nb = _read(name)
    watched = {folder: _tree_digest(folder) for folder in (ROOT / "data", NOTEBOOKS)}
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(work)}},
    )
    executed_path = tmp_path / f"{name}.executed.ipynb"  # kept by pytest, for a look at the outputs
    try:
        client.execute(env=notebook_env(tiny_model_dir, tmp_path), cwd=str(work))
    except CellExecutionError as err:
        pytest.fail(f"{name}.ipynb failed (outputs in {executed_path}):\n{err}")
    finally:
        nbformat.write(nb, executed_path)
    executed = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in executed), "a code cell did not run"
    errors = [out for cell in executed for out in cell.outputs if out.output_type == "error"]
    assert not errors
    # the notebooks write only into their working directory, never into the repository
    assert {folder: _tree_digest(folder) for folder in watched} == watched
