"""The presets table of the README, computed from the code (``python -m sparsenet_jax.tools.tables``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sparsenet_jax.model.network import SparseNet, abstract_variables, count_params
from sparsenet_jax.model.presets import PAPER_PRESETS, create_model


def _family_label(model: SparseNet) -> str:
    schedule = model.schedule.kind
    if model.aggregation == "sum":
        return "SparseNet[+] (ours)" if schedule == "sparse" else "ResNet (pre-act)"
    return "SparseNet[⊕]" if schedule == "sparse" else "DenseNet"


def count_preset_params(name: str, num_classes: int, exact: bool = True) -> int:
    """Parameters of a preset: from the Flax module (``exact``) or the layout arithmetic."""
    model = create_model(name, num_classes=num_classes)
    if not exact:
        from sparsenet_jax.model.arithmetic import expected_params

        return expected_params(model)

    return count_params(abstract_variables(model))


def preset_table(names: Sequence[str] | None = None, exact: bool = True) -> str:
    """A markdown table of presets with their parameter counts, computed now."""
    rows = [
        "| preset | network | blocks × units | growth / width | params (10 classes) "
        "| params (100 classes) | params (1000 classes) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for name in names or PAPER_PRESETS:
        model = create_model(name)
        imagenet = model.stem == "imagenet"
        counts = ["", "", ""]
        if imagenet:
            counts[2] = f"{count_preset_params(name, 1000, exact):,}"
        else:
            counts[0] = f"{count_preset_params(name, 10, exact):,}"
            counts[1] = f"{count_preset_params(name, 100, exact):,}"
        sizes = "-".join(str(s) for s in model.block_sizes)
        growths = "-".join(str(g) for g in dict.fromkeys(model.growth_rates))
        rows.append(
            f"| `{name}` | {_family_label(model)} | {sizes} | {growths} | "
            + " | ".join(counts)
            + " |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sparsenet_jax.tools.tables",
        description="Print the presets table (markdown).",
    )
    parser.add_argument(
        "--fast", action="store_true", help="count with the layout arithmetic, not Flax"
    )
    parser.add_argument(
        "--readme", help="rewrite the table between the presets markers of this file"
    )
    args = parser.parse_args(argv)
    table = preset_table(exact=not args.fast)
    if args.readme:
        replace_between_markers(args.readme, table)
    print(table)


BEGIN, END = "<!-- presets:begin -->", "<!-- presets:end -->"


def readme_table(path: str) -> str:
    """The table currently between the presets markers of ``path``."""
    text = open(path, encoding="utf-8").read()
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def replace_between_markers(path: str, table: str) -> None:
    text = open(path, encoding="utf-8").read()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
