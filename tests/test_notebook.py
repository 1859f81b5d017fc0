"""The Colab notebook: generated from its linted source, saved clean, and runs top to bottom.

``notebooks/sparsenet_colab.py`` (jupytext's percent format) is the source;
``notebooks/build_notebook.py`` writes ``sparsenet_colab.ipynb`` from it. The run (marked
slow) executes the notebook headless with nbclient in quick mode
(``SPARSENET_NOTEBOOK_QUICK=1``) on CPU, in a kernel that uses this interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = NOTEBOOKS / "sparsenet_colab.ipynb"
SOURCE = NOTEBOOKS / "sparsenet_colab.py"
KERNEL_NAME = "sparsenet-notebook-test"


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _generator():
    if importlib.util.find_spec("jupytext") is None:
        pytest.fail("jupytext is missing: pip install -e '.[test]' (the test extra lists it)")
    spec = importlib.util.spec_from_file_location("build_notebook", NOTEBOOKS / "build_notebook.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_is_saved_without_outputs():
    notebook = _read()
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.id} has saved outputs"
            assert cell.execution_count is None, f"cell {cell.id} has an execution count"


def test_notebook_matches_its_source():
    assert NOTEBOOK.read_text(encoding="utf-8") == _generator().render(), (
        "notebooks/sparsenet_colab.ipynb is out of date: run python notebooks/build_notebook.py"
    )


def test_generator_needs_an_id_on_every_cell(tmp_path):
    source = tmp_path / "nb.py"
    source.write_text('# a note\n\n# %% id="a"\nx = 1\n\n# %% [markdown]\n# text\n')
    with pytest.raises(ValueError, match="a cell has no id"):
        _generator().build(source)
    source.write_text('# %% id="a"\nx = 1\n\n# %% [markdown] id="b"\n# *text*\n')
    notebook = _generator().build(source)
    assert [(c.id, c.cell_type, c.source) for c in notebook.cells] == [
        ("a", "code", "x = 1"),
        ("b", "markdown", "*text*"),
    ]


# What the notebook must call the library for, not write itself (the run setup, the steps,
# the input size of a preset).
REIMPLEMENTED = (
    "create_train_state",
    "make_optimizer",
    "piecewise_lr",
    "make_train_step",
    "make_eval_step",
    "jit_train_step",
    "jit_eval_step",
    "data_mesh",
    "create_model(config",
    "224 if",
    ".init(",
)


def test_notebook_calls_the_library_instead_of_rewriting_it():
    code = "\n".join(c.source for c in _read().cells if c.cell_type == "code")
    for text in REIMPLEMENTED:
        assert text not in code, f"the notebook builds {text!r} itself: call the library"
    for call in ("build_run(config)", "train_and_evaluate(config", "restore(run.abstract_state())"):
        assert call in code


def _cells_source(*ids: str) -> str:
    cells = {cell.id: cell for cell in _read().cells}
    return "\n\n".join(cells[i].source for i in ids)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "",
            "SOURCE is empty and this notebook is not inside a sparsenet_jax checkout: set SOURCE",
        ),
        ("/nonexistent/sparsenet_jax.whl", "SOURCE '/nonexistent/sparsenet_jax.whl': no such file"),
    ],
)
def test_install_cell_says_what_to_fill_in(tmp_path, source, message):
    """Where sparsenet_jax does not import (``python -S``: no site-packages), outside a
    checkout, a missing SOURCE stops the cell with one line and installs nothing."""
    code = _cells_source("flags", "install")
    empty = 'SOURCE = ""  # @param {type:"string"}'
    assert empty in code
    code = code.replace(empty, f"SOURCE = {source!r}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr
    assert "pip install" not in result.stdout


def _kernelspec(folder: pathlib.Path) -> pathlib.Path:
    """A kernelspec that runs ipykernel with this interpreter (this venv), whatever else is installed."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "sparsenet_jax test kernel",
                "language": "python",
            }
        )
    )
    return folder


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output and "text/plain" in output.data:
            parts.append(output.data["text/plain"])
    return "".join(parts)


def _has_image(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def _libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def test_seeds_is_a_form_field_that_reaches_the_config():
    code = _cells_source("config")
    assert 'SEEDS = 1  # @param {type:"integer"}' in code
    namespace: dict = {}
    # The config cell's lines up to the config, with SEEDS = 3, in full mode off Colab.
    head = code[: code.index("config = config_lib.from_dict")]
    head = head.replace('SEEDS = 1  # @param {type:"integer"}', "SEEDS = 3")
    exec(  # the notebook's own source
        "import os, pathlib, tempfile\nQUICK, ON_COLAB = False, False\n" + head, namespace
    )
    assert namespace["RUN"]["seeds"] == 3
    assert namespace["WORKDIR"] == str(pathlib.Path("runs") / "sparsenet-40-24-cifar10-3seeds")


def _run_notebook(tmp_path, monkeypatch, **env: str) -> dict:
    """Execute the notebook in quick mode on CPU; its cells by id, with their outputs."""
    # The kernel inherits this environment.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SPARSENET_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's workdir and figures go here
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))

    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    notebook = _read()
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute()  # raises CellExecutionError naming the cell if any cell fails
    finally:  # kept with pytest's temporary folders, for a look at what each cell printed
        nbformat.write(notebook, tmp_path / "executed.ipynb")

    cells = {cell.id: cell for cell in notebook.cells}
    for cell in notebook.cells:
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"cell {cell.id}: {errors}"
    # Quick mode writes nothing next to the notebook.
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before
    return cells


@pytest.mark.slow  # about 3 minutes on a 2-core CPU, most of it XLA compiling
def test_notebook_runs_in_quick_mode(tmp_path, monkeypatch):
    cells = _run_notebook(tmp_path, monkeypatch)
    assert "mode: quick" in _text(cells["flags"])
    assert "already installed" in _text(cells["install"])
    assert "backend: cpu" in _text(cells["devices"])
    assert _has_image(cells["schedule"])
    matrix = _text(cells["matrix"])
    assert "dense: 45 connections" in matrix and "sparse: 25 connections" in matrix
    table = json.dumps([o.get("data", {}) for o in cells["table"].outputs], ensure_ascii=False)
    for name, params in (("sparsenet-40-24", "748,522"), ("densenet-40-12", "1,059,298")):
        assert name in table and params in table
    assert "GFLOPs/image (forward)" in table and "| `sparsenet-40-24` | 32×32 |" in table

    config = _text(cells["config"])
    assert "sparsenet-13-6 on digits" in config and "compute dtype float32" in config
    cache = re.search(r"compilation cache: (\S+)", config)
    assert cache and pathlib.Path(cache.group(1)).is_relative_to(tmp_path), config
    assert any(pathlib.Path(cache.group(1)).iterdir()), "nothing in the compilation cache"

    aot = _text(cells["aot"])
    assert "$ python -m sparsenet_jax.aot --recipe digits --model sparsenet-13-6 --json" in aot
    if _libtpu_installed():
        assert "fits True" in aot, aot
    else:  # the command's one line, naming the extra to install
        assert "aot check skipped (exit 1)" in aot and "sparsenet_jax[tpu]" in aot, aot
    assert "measured on a v5e-1: none yet" in _text(cells["cost"])

    assert _has_image(cells["train"])  # the live figure, updated in place
    resume = _text(cells["resume"])
    assert "resumed from step 30" in resume and _has_image(cells["resume"])
    cached = re.search(r"\((\d+) programs from the persistent cache\)", resume)
    assert cached and int(cached.group(1)) >= 1, resume  # the resumed run did not recompile
    lock = _text(cells["lock"]).strip()
    assert lock.startswith("error: ") and "is in use by another run" in lock
    assert len(lock.splitlines()) == 1, lock

    evaluate = _text(cells["evaluate"])
    assert "best test accuracy" in evaluate and "last step 46" in evaluate
    assert _has_image(cells["evaluate"])
    checkpoint = _text(cells["checkpoint"])
    assert "checkpoints: [23, 30, 46]" in checkpoint, checkpoint
    assert "restored step 46" in checkpoint and "test metrics match: OK" in checkpoint
    assert "parameter arrays: OK" in checkpoint
    converter = _text(cells["convert"])
    match = re.search(r"converter max abs error vs PyTorch: (\S+)", converter)
    assert match, converter
    assert float(match.group(1)) < 1e-4
    assert "same predictions: True" in converter


@pytest.mark.slow  # as long as the quick mode above, and more for the second replica
def test_notebook_runs_with_two_seeds(tmp_path, monkeypatch):
    cells = _run_notebook(tmp_path, monkeypatch, SPARSENET_NOTEBOOK_SEEDS="2")
    assert "× 2 seeds (seeds 0 … 1)" in _text(cells["config"])
    assert "--seeds 2 --json" in _text(cells["aot"])
    evaluate = _text(cells["evaluate"])
    assert "test accuracy over 2 seeds" in evaluate and "(mean ± std of the last" in evaluate
    assert "seed 0: last test accuracy" in evaluate and "seed 1: last test accuracy" in evaluate
    checkpoint = _text(cells["checkpoint"])
    assert "test metrics match (seed 0): OK" in checkpoint
    assert "test metrics match (seed 1): OK" in checkpoint
