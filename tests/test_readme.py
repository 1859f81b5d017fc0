"""Every command the README shows parses (the long-running ones are run by .ci/run)."""

from __future__ import annotations

import json
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


# `python -m MODULE ARGS` in backticks, for the plot and tables tools, whatever path the README uses.
_TOOL_RE = re.compile(r"`python -m (sparsenet_jax(?:\.\w+)*\.(?:plot|tables))((?: [^`]*)?)`")


def _tool_commands() -> list[tuple[str, list[str]]]:
    return [(m[1], shlex.split(m[2])) for m in _TOOL_RE.finditer(README.read_text())]


def _run_module(module: str, argv: list[str], cwd: pathlib.Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert done.returncode == 0, f"python -m {module} {shlex.join(argv)}: {done.stderr[-2000:]}"
    return done.stdout


def test_readme_plot_and_tables_commands_run(tmp_path):
    """Issue 17: every plot and tables command the README shows runs, as written, and
    makes what it promises: `plot curves` reads a workdir's metrics.jsonl (made here
    under the README's workdir name), `plot schedule` draws, and `tables` prints
    the README's table (with --fast: the exact count takes minutes, and
    test_presets pins it to the same table)."""
    from sparsenet_jax.tools.tables import readme_table

    commands = _tool_commands()
    kinds = {(m.rsplit(".", 1)[1], (argv or ["-"])[0]) for m, argv in commands}
    assert {("plot", "curves"), ("plot", "schedule"), ("tables", "-")} <= kinds, commands
    for module, argv in commands:
        if module.endswith("tables"):
            assert _run_module(module, [*argv, "--fast"], tmp_path).strip() == readme_table(
                str(README)
            )
            continue
        if argv[0] == "curves":
            for workdir in argv[1 : argv.index("--out")]:
                records = [
                    {"split": "train", "step": s, "epoch": s / 2, "loss": 2.0 / s, "accuracy": 0.1 * s}
                    for s in range(1, 7)
                ] + [{"split": "test", "step": s, "epoch": s / 2, "loss": 1.5 / s, "accuracy": 0.1 * s}
                     for s in (2, 4, 6)]  # fmt: skip
                (tmp_path / workdir).mkdir(parents=True, exist_ok=True)
                lines = "".join(json.dumps(r) + "\n" for r in records)
                (tmp_path / workdir / "metrics.jsonl").write_text(lines)
        _run_module(module, argv, tmp_path)
        out = tmp_path / argv[argv.index("--out") + 1]
        assert out.stat().st_size > 5000, out


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
