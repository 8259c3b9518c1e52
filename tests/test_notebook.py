"""EDA.ipynb: committed with its figures, and runs top to bottom in a fresh kernel on the real data."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from conftest import real_dataset_path

PROJECT_DIR = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJECT_DIR / "EDA.ipynb"
CELL_TIMEOUT_S = 300


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _outputs(notebook, output_type):
    return [output for cell in _code_cells(notebook) for output in cell.outputs
            if output.output_type == output_type]


def _figure_count(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in _code_cells(notebook) for output in cell.outputs)


def _kernel_for_this_interpreter(folder: Path) -> Path:
    """A ``python3`` kernel spec running the interpreter of the tests, so no user-level spec can shadow it."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }))
    return folder


def test_committed_notebook_was_run_top_to_bottom():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    counts = [cell.execution_count for cell in _code_cells(notebook)]
    assert counts == list(range(1, len(counts) + 1))
    assert not _outputs(notebook, "error")
    assert [output.text for output in _outputs(notebook, "stream") if output.name == "stderr"] == []


def test_committed_notebook_shows_its_figures():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert _figure_count(notebook) >= 10


def test_every_section_ends_with_a_conclusion():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    markdown = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    sections = [index for index, text in enumerate(markdown) if re.match(r"## \d\. ", text)]
    assert len(sections) == 5
    for start, end in zip(sections, sections[1:] + [len(markdown)]):
        title = markdown[start].splitlines()[0]
        assert any(text.startswith("**Conclusion.**") for text in markdown[start:end]), title


def test_notebook_runs_top_to_bottom_on_the_real_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DSB_DATA", str(real_dataset_path()))
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_for_this_interpreter(tmp_path / "jupyter")))
    committed = nbformat.read(NOTEBOOK, as_version=4)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(PROJECT_DIR)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    nbformat.write(notebook, tmp_path / "EDA.executed.ipynb")  # for a look after a failure
    counts = [cell.execution_count for cell in _code_cells(notebook)]
    assert counts == list(range(1, len(counts) + 1))
    assert not _outputs(notebook, "error")
    assert _figure_count(notebook) == _figure_count(committed)
