"""docs/lab.ipynb, the chapter and its exercises in a notebook, runs top to bottom."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "lab.ipynb"


@pytest.mark.slow
def test_the_notebook_runs_and_shows_its_figures(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat/nbclient/ipykernel are in the dev extra")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel imports this checkout's adamlab, whatever is installed
    src = str(Path(__file__).resolve().parents[2] / "src")
    env_path = os.pathsep.join([src, *sys.path])
    notebook.cells.insert(0, nbformat.v4.new_code_cell(f"import sys; sys.path[:0] = {env_path.split(os.pathsep)!r}"))
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5  # the chapter, the sweep, bias, decay, the counterexample
    text = "".join(o.get("text", "") for o in outputs)
    assert "adamlab.Adam reproduces torch.optim.Adam" in text and "same learning-rate schedule" in text
    assert '"schema_version": 2' in text
