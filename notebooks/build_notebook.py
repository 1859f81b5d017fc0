"""Write ``sparsenet_colab.ipynb`` from ``sparsenet_colab.py`` (jupytext's percent format).

    python notebooks/build_notebook.py            # rewrite the notebook
    python notebooks/build_notebook.py --check    # exit 1 if the notebook is out of date

Edit the ``.py``, which is linted with the rest of the code; the ``.ipynb`` is its rendering:
outputs empty, each cell's id taken from its marker (``# %% id="train"``), and Colab's TPU
runtime requested. ``tests/test_notebook.py`` checks the saved notebook equals what this
script writes, and runs it in quick mode.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

import jupytext
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "sparsenet_colab.py"
NOTEBOOK = HERE / "sparsenet_colab.ipynb"
METADATA = {
    # Colab opens the notebook on a v5e-1 TPU runtime.
    "accelerator": "TPU",
    "colab": {"provenance": [], "name": NOTEBOOK.name, "gpuType": "V5E1"},
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
}
FIRST_CELL = re.compile(r"^# %%", re.MULTILINE)


def build(source: pathlib.Path = SOURCE) -> nbformat.NotebookNode:
    """The notebook ``source`` describes, outputs empty.

    Raises:
      ValueError: no cell, a cell without an id, or an id used twice.
    """
    text = source.read_text(encoding="utf-8")
    first = FIRST_CELL.search(text)
    if first is None:
        raise ValueError(f"{source}: no '# %%' cell marker")
    # The lines above the first marker are notes on the source file, not notebook cells.
    parsed = jupytext.reads(text[first.start() :], fmt="py:percent")
    cells = []
    for cell in parsed.cells:
        cell_id = cell.metadata.pop("id", None)
        if not cell_id:
            raise ValueError(f'{source}: a cell has no id (# %% id="..."): {cell.source[:60]!r}')
        new = new_markdown_cell if cell.cell_type == "markdown" else new_code_cell
        cells.append(new(cell.source, id=cell_id, metadata=dict(cell.metadata)))
    ids = [cell.id for cell in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"{source}: cell ids used twice: {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    notebook = new_notebook(cells=cells, metadata=METADATA)
    nbformat.validate(notebook)
    return notebook


def render(source: pathlib.Path = SOURCE) -> str:
    """The notebook's file text."""
    return nbformat.writes(build(source)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the notebook differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = NOTEBOOK.read_text(encoding="utf-8") if NOTEBOOK.exists() else ""
        if current != text:
            print(f"{NOTEBOOK} is out of date: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
