"""The quick-start notebook runs top to bottom (so it cannot rot)."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("gluonts", reason="the notebook's GluonTS cell needs it (pip install 'tirex[gluonts]')")
    from tirex import bundled_model_dir

    if not (bundled_model_dir() / "model.safetensors").is_file():
        pytest.fail("the bundled default model is missing; the notebook needs it")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (tmp_path / "quickstart_fan.png").is_file()
