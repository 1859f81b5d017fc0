"""Every command the README shows parses (the long-running ones are run by .ci/run)."""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys

import jax.numpy as jnp
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _commands(module: str) -> list[list[str]]:
    found = []
    for line in README.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        for part in line.split("&&"):
            part = part.strip().strip("`")
            if part.startswith(f"python -m {module} "):
                found.append(shlex.split(part)[3:])
    return found


def test_readme_train_commands_parse():
    from sparsenet_jax.training.flags import parse_args

    commands = [c for c in _commands("sparsenet_jax.train") if c != ["--help"]]
    assert len(commands) >= 5
    for argv in commands:
        config = parse_args(argv)
        assert config.workdir.startswith("runs/")


def test_readme_plot_and_tables_commands_run(tmp_path):
    from sparsenet_jax.tools.plot import main as plot_main

    for argv in _commands("sparsenet_jax.tools.plot"):
        if argv[0] == "schedule":
            argv = [*argv[:-1], str(tmp_path / "schedule.png")]
            plot_main(argv)
            assert (tmp_path / "schedule.png").stat().st_size > 5000
    result = subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.tools.tables", "--fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "`sparsenet-40-24`" in result.stdout


@pytest.mark.slow
def test_readme_api_snippet_runs():
    block = re.search(
        r"```python\n(import jax, jax.numpy as jnp\n.*?)```", README.read_text(), re.S
    )
    assert block, "the Python API snippet moved"
    code = block.group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (8, 10)
    assert namespace["sparsenet_jax"].count_params(namespace["variables"]) == 748_522


@pytest.mark.slow
def test_readme_features_and_nnx_snippets_run():
    """The API snippet, then the features/fine-tuning and NNX snippets that continue it."""
    text = README.read_text()
    blocks = [
        re.search(pattern, text, re.S)
        for pattern in (
            r"```python\n(import jax, jax.numpy as jnp\n.*?)```",
            r"```python\n(feats = model.apply.*?)```",
            r"```python\n(import optax\nfrom flax import nnx\n.*?)```",
        )
    ]
    assert all(blocks), "a README snippet moved"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert namespace["feats"].shape == (8, 96)
    assert len(namespace["maps"]) == 3
    assert namespace["cfg"]["crop_pct"] == 0.875
    assert namespace["variables5"]["params"]["classifier"]["kernel"].shape[-1] == 5
    assert bool(jnp.isfinite(namespace["loss"]))
    assert set(namespace["back"]) == {"params", "batch_stats"}


@pytest.mark.parametrize("flag", ["--help"])
def test_train_help_command(flag):
    result = subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.train", flag],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "--model-kwargs" in result.stdout
