from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from sparsenet_jax.model.schedule import Schedule
from sparsenet_jax.tools.plot import (
    connectivity_matrix,
    load_metrics,
    main,
    plot_curves,
    plot_schedule,
)

SPARSE = Schedule("sparse", 2)
DENSE = Schedule("dense")


def _reads(row: np.ndarray) -> list[int]:
    return sorted(np.flatnonzero(row).tolist(), reverse=True)


def test_matrix_matches_worked_example_base2_eight_layers():
    m = connectivity_matrix(SPARSE, 8)
    assert m.shape == (10, 9)
    expected = {
        1: [0],
        2: [1, 0],
        3: [2, 1],
        4: [3, 2, 0],
        5: [4, 3, 1],
        6: [5, 4, 2],
        7: [6, 5, 3],
        8: [7, 6, 4, 0],
        9: [8, 7, 5, 1],  # block output, the virtual layer n + 1
    }
    assert not m[0].any()  # row 0 is the block input: it reads nothing
    for row, reads in expected.items():
        assert _reads(m[row]) == reads
    # x_0 is read only by layers whose index is a power of 2.
    assert np.flatnonzero(m[1:9, 0]).tolist() == [0, 1, 3, 7]


@pytest.mark.parametrize("n", [1, 8, 16])
def test_dense_matrix_is_full_lower_triangle(n):
    m = connectivity_matrix(DENSE, n)
    assert m.shape == (n + 2, n + 1)
    np.testing.assert_array_equal(m, np.tril(np.ones((n + 2, n + 1), dtype=m.dtype), k=-1))


@pytest.mark.parametrize("schedule", [SPARSE, Schedule("sparse", 3), DENSE], ids=str)
@pytest.mark.parametrize("n", [0, 5, 12, 16])
def test_row_sums_are_numbers_of_inputs(schedule, n):
    m = connectivity_matrix(schedule, n)
    assert set(np.unique(m).tolist()) <= {0, 1}
    assert m[0].sum() == 0
    for layer in range(1, n + 1):
        assert m[layer].sum() == len(schedule.inputs(layer))
    assert m[n + 1].sum() == len(schedule.block_output(n))
    assert not np.triu(m).any()  # nobody reads itself or a later output


def test_matrix_rejects_negative_layers():
    with pytest.raises(ValueError):
        connectivity_matrix(SPARSE, -1)


def _distinct_colours(png: Path) -> int:
    from matplotlib.image import imread

    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return len(np.unique(image[..., :3].reshape(-1, 3), axis=0))


def test_plot_schedule_png_and_svg(tmp_path):
    png = plot_schedule(tmp_path / "sched.png", num_layers=8)
    assert png == tmp_path / "sched.png"
    assert png.stat().st_size > 5_000
    assert _distinct_colours(png) >= 4  # white, grey cells, blue, orange (plus text)
    svg = plot_schedule(tmp_path / "sub" / "sched.svg", num_layers=16, kinds=("sparse",), base=3)
    text = svg.read_text()
    assert "<svg" in text and len(text) > 5_000


def test_plot_schedule_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="format"):
        plot_schedule(tmp_path / "sched.jpg")
    with pytest.raises(ValueError, match="num_layers"):
        plot_schedule(tmp_path / "sched.png", num_layers=0)
    with pytest.raises(ValueError, match="kind"):
        plot_schedule(tmp_path / "sched.png", kinds=("dense", "ladder"))


def _write_run(workdir: Path, epochs: int = 5, scale: float = 1.0, extra: str = "") -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    lines = []
    step = 0
    for epoch in range(1, epochs + 1):
        for k in range(1, 4):
            step += 10
            e = epoch - 1 + k / 3
            loss = scale * 2.3 / (1 + e)
            lines.append(
                {"split": "train", "step": step, "epoch": e, "loss": loss, "accuracy": 1 - loss / 3}
            )
        loss = scale * 2.5 / (1 + epoch)
        lines.append(
            {
                "split": "test",
                "step": step,
                "epoch": float(epoch),
                "loss": loss,
                "accuracy": 1 - loss / 3,
            }
        )
    text = "\n".join(json.dumps(r) for r in lines) + "\n" + extra
    (workdir / "metrics.jsonl").write_text(text)
    return workdir


def test_plot_curves_two_runs(tmp_path):
    a = _write_run(tmp_path / "run_a")
    b = _write_run(tmp_path / "run_b", scale=1.3)
    png = plot_curves(tmp_path / "curves.png", [a, b], labels=["sparse", "dense"])
    assert png.stat().st_size > 5_000
    assert _distinct_colours(png) >= 4
    svg = plot_curves(tmp_path / "curves.svg", [a])  # default label: the workdir name
    assert "run_a" in svg.read_text()


def _write_seeds_run(workdir: Path, seeds: tuple[int, ...] = (3, 4, 5)) -> Path:
    """A --seeds run's records: at each step one a replica, each with its seed."""
    workdir.mkdir(parents=True, exist_ok=True)
    records = []
    for epoch in (1, 2):
        for seed in seeds:
            loss = 2.0 / epoch + 0.1 * seed
            records.append(
                {
                    "split": "train",
                    "step": 10 * epoch,
                    "epoch": float(epoch),
                    "seed": seed,
                    "loss": loss,
                    "accuracy": 0.5 + 0.01 * seed,
                }
            )
        for seed in seeds:
            records.append(
                {
                    "split": "test",
                    "step": 10 * epoch,
                    "epoch": float(epoch),
                    "seed": seed,
                    "loss": 1.0,
                    "accuracy": 0.6 + 0.1 * seed,
                }
            )
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return workdir


def _drawn(monkeypatch, tmp_path, workdirs, labels=None):
    """The figure plot_curves draws (its axes), caught before it is saved."""
    from sparsenet_jax.tools import curves

    caught = []
    real_save = curves.save
    monkeypatch.setattr(curves, "save", lambda fig, out: caught.append(fig) or real_save(fig, out))
    plot_curves(tmp_path / "c.png", workdirs, labels)
    return caught[0].axes


def test_a_seeds_run_is_its_mean_with_a_band_of_one_std(tmp_path, monkeypatch):
    run = _write_seeds_run(tmp_path / "seeds")
    loss, accuracy = _drawn(monkeypatch, tmp_path, [run], ["three"])
    assert [line.get_label() for line in loss.lines] == [
        "three — train (mean ± std of 3 seeds)",
        "three — test (mean ± std of 3 seeds)",
    ]
    train, test = accuracy.lines
    np.testing.assert_allclose(train.get_xydata(), [[1.0, 0.54], [2.0, 0.54]])
    np.testing.assert_allclose(test.get_xydata(), [[1.0, 1.0], [2.0, 1.0]])
    band = accuracy.collections[1]  # the test split's: seeds 3, 4, 5 → 0.9, 1.0, 1.1
    lows, highs = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    np.testing.assert_allclose([lows, highs], [0.9, 1.1])  # mean ± 0.1 (sample std)


def test_a_one_seed_run_is_drawn_as_before(tmp_path, monkeypatch):
    run = _write_run(tmp_path / "one", epochs=2)
    loss, _ = _drawn(monkeypatch, tmp_path, [run], ["one"])
    assert [line.get_label() for line in loss.lines] == ["one — train", "one — test"]
    assert not loss.collections  # no band
    assert len(loss.lines[0].get_xydata()) == 6  # every record a point


def test_malformed_lines_skipped_with_warning(tmp_path):
    run = _write_run(tmp_path / "run", epochs=2, extra='not json\n[1, 2]\n{"loss": 1.0}\n\n')
    with pytest.warns(UserWarning, match="skipped") as record:
        records = load_metrics(run)
    assert len(record) == 3
    assert len(records) == 2 * 4
    with pytest.warns(UserWarning, match="skipped"):
        assert plot_curves(tmp_path / "c.png", [run]).exists()


def test_curves_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_run"):
        plot_curves(tmp_path / "c.png", [tmp_path / "missing_run"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no usable records"):
        plot_curves(tmp_path / "c.png", [empty])
    run = _write_run(tmp_path / "run", epochs=1)
    with pytest.raises(ValueError, match="labels"):
        plot_curves(tmp_path / "c.png", [run], labels=["a", "b"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.tools.plot", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli(tmp_path):
    out = tmp_path / "schedule.png"
    proc = _cli("schedule", "--layers", "16", "--base", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and out.stat().st_size > 5_000

    a = _write_run(tmp_path / "a")
    b = _write_run(tmp_path / "b", scale=1.2)
    out = tmp_path / "curves.svg"
    proc = _cli("curves", str(a), str(b), "--out", str(out), "--labels", "x", "y")
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "<svg" in out.read_text()

    proc = _cli("schedule", "--no-such-flag")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [
        ["schedule", "--layers", "many"],
        ["schedule", "--layers", "0"],
        ["schedule", "--out", "schedule.jpg"],
        ["curves", "MISSING", "--out", "c.png"],
        ["curves", "RUN", "--labels", "a", "b", "--out", "c.png"],
        [],
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv):
    run = _write_run(tmp_path / "run", epochs=1)
    argv = [str(tmp_path / "missing") if a == "MISSING" else a for a in argv]
    argv = [str(run) if a == "RUN" else a for a in argv]
    argv = [str(tmp_path / a) if a.endswith((".png", ".jpg")) else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m sparsenet_jax.tools.plot") and "error:" in err[-1]
