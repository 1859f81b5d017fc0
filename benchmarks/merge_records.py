"""Merge the ``metrics.jsonl`` of runs ``WORK/<model>-<seed>/`` into ``OUT/ours-<model>.jsonl``.

Usage: ``python benchmarks/merge_records.py WORK OUT MODEL...`` (``gpu_real_data.sh``).
Records of a one-seed run get the ``seed`` their folder names; a ``--seeds``
run's records already carry theirs.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence


def merged(work: pathlib.Path, model: str) -> list[dict]:
    records = []
    for run in sorted(work.glob(f"{model}-*")):
        metrics = run / "metrics.jsonl"
        if not (run.is_dir() and metrics.exists()):
            continue
        seed = int(run.name.rsplit("-", 1)[1])
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            record.setdefault("seed", seed)
            records.append(record)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    work, out, *models = argv if argv is not None else sys.argv[1:]
    for model in models:
        lines = [json.dumps(r) for r in merged(pathlib.Path(work), model)]
        (pathlib.Path(out) / f"ours-{model}.jsonl").write_text("".join(x + "\n" for x in lines))


if __name__ == "__main__":
    main()
