"""Write ``sparsenet_colab.ipynb`` (outputs cleared) from the cells below.

    python notebooks/make_notebook.py            # rewrite the notebook
    python notebooks/make_notebook.py --check    # exit 1 if the notebook is out of date

Edit the cells here, not in the ``.ipynb``: ``tests/test_notebook.py`` checks that the
saved notebook equals what this script writes, and runs it in quick mode.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = pathlib.Path(__file__).with_name("sparsenet_colab.ipynb")

# (kind, id, source): "md" for markdown, "py" for code. Ids are fixed so that
# regenerating the notebook gives the same file.
CELLS: list[tuple[str, str, str]] = [
    (
        "md",
        "title",
        """
        # SparseNet in JAX on Colab

        *Sparsely Aggregated Convolutional Networks* (Zhu et al., ECCV 2018,
        [arXiv:1801.05895](https://arxiv.org/abs/1801.05895)) with the `sparsenet_jax` package:
        SparseNet, DenseNet and pre-activation ResNet as one network with two switches, the
        connection **schedule** (dense or sparse) and the **aggregation** (concatenation or sum).

        This notebook

        1. installs the package;
        2. shows the accelerators JAX sees (TPU, else GPU, else CPU);
        3. draws which earlier layers each layer reads, dense vs sparse;
        4. tabulates parameters and forward FLOPs of presets, computed here;
        5. trains with live loss/accuracy curves;
        6. evaluates the run and plots its curves;
        7. restores the latest checkpoint and checks it reproduces the trained model;
        8. loads PyTorch-layout weights with the converter and compares to PyTorch's logits.

        **Colab:** *Runtime → Change runtime type →* TPU (or a GPU). Set `QUICK` below:
        `True` runs everything in a few minutes on any machine (a tiny SparseNet on the
        handwritten digits that ship with scikit-learn); `False` trains SparseNet-40-24 on
        CIFAR-10 with the paper's recipe (300 epochs: hours, even on a TPU).
        """,
    ),
    (
        "py",
        "flags",
        """
        import os

        QUICK = True  # False: SparseNet-40-24 on CIFAR-10, the paper's recipe (long)

        # CI runs this notebook headless with SPARSENET_NOTEBOOK_QUICK=1 (0 forces full mode).
        if os.environ.get("SPARSENET_NOTEBOOK_QUICK", "").strip() in ("0", "1"):
            QUICK = os.environ["SPARSENET_NOTEBOOK_QUICK"].strip() == "1"
        print("mode:", "quick" if QUICK else "full")
        """,
    ),
    (
        "md",
        "install-md",
        """
        ## 1. Install

        If `sparsenet_jax` already imports (a local checkout installed with `pip install -e .`,
        or CI), this cell does nothing. Otherwise it installs the package in editable mode from
        the checkout this notebook sits in, or, on Colab, from a fresh clone of `REPO_URL`
        (the clone also provides `tests/data`, used in step 8).

        Colab's TPU runtimes are TPU VMs whose image already has a TPU-enabled JAX, and its GPU
        runtimes a CUDA one; `jax[tpu]`/`jax[cuda12]` is installed only when JAX is missing.
        (The old `jax.tools.colab_tpu.setup_tpu()` was for the retired TPU-node runtime: do not
        call it.)
        """,
    ),
    (
        "py",
        "install",
        """
        import glob
        import importlib
        import importlib.util
        import pathlib
        import shutil
        import subprocess
        import sys

        REPO_URL = "https://github.com/OWNER/sparsenet_jax.git"  # placeholder: the project's repo


        def find_repo_root(start: pathlib.Path) -> pathlib.Path | None:
            \"\"\"The sparsenet_jax checkout holding ``start``, if any.\"\"\"
            for folder in (start, *start.parents):
                if (folder / "pyproject.toml").is_file() and (folder / "src/sparsenet_jax").is_dir():
                    return folder
            return None


        def pip_install(*args: str) -> None:
            print("pip install", *args)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


        CLONE = pathlib.Path("sparsenet_jax_repo").resolve()  # not "sparsenet_jax": no shadowing
        REPO_ROOT = find_repo_root(pathlib.Path.cwd().resolve())
        if REPO_ROOT is None and (CLONE / "pyproject.toml").is_file():
            REPO_ROOT = CLONE  # cloned by an earlier run

        spec = importlib.util.find_spec("sparsenet_jax")
        if spec is not None and spec.origin is not None:
            print("sparsenet_jax is already installed: nothing to do")
        else:
            if REPO_ROOT is None:
                if "OWNER" in REPO_URL:
                    raise RuntimeError("set REPO_URL to the sparsenet_jax repository first")
                subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(CLONE)], check=True)
                REPO_ROOT = CLONE
            if importlib.util.find_spec("jax") is None:
                on_tpu = bool(
                    glob.glob("/dev/accel*")
                    or glob.glob("/dev/vfio/[0-9]*")
                    or os.environ.get("TPU_ACCELERATOR_TYPE")
                )
                on_gpu = shutil.which("nvidia-smi") is not None
                pip_install("jax[tpu]" if on_tpu else "jax[cuda12]" if on_gpu else "jax")
            pip_install("-e", str(REPO_ROOT))
            # A running kernel does not read the .pth file of a new editable install.
            sys.path.insert(0, str(REPO_ROOT / "src"))
            importlib.invalidate_caches()
        print("checkout:", REPO_ROOT)
        """,
    ),
    (
        "md",
        "devices-md",
        """
        ## 2. Devices

        The trainer replicates the state and shards every batch over all devices on a 1-D
        `data` mesh, so the same code uses one CPU, several GPUs, or all TPU cores.
        """,
    ),
    (
        "py",
        "devices",
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        import sparsenet_jax

        print(f"jax {jax.__version__}, sparsenet_jax {sparsenet_jax.__version__}")
        print(
            f"backend: {jax.default_backend()}, devices: {jax.device_count()} "
            f"({jax.local_device_count()} local), processes: {jax.process_count()}"
        )
        for device in jax.devices():
            print(" ", device, "|", device.device_kind)
        if not QUICK and jax.default_backend() == "cpu":
            print("warning: full mode on a CPU takes days; pick a TPU or GPU runtime")
        """,
    ),
    (
        "md",
        "schedule-md",
        """
        ## 3. The connection pattern: dense vs sparse

        Number a block's input $x_0$ and its layers' outputs $x_1 \\dots x_n$. DenseNet's
        layer $l$ reads every earlier output; SparseNet's reads only those at exponential
        offsets, $x_{l-1}, x_{l-2}, x_{l-4}, \\dots$ — $O(\\log l)$ inputs a layer, $O(n \\log n)$
        connections a block instead of $O(n^2)$. The block output (what the transition layer
        receives) follows the same rule as a virtual layer $n+1$.
        `sparsenet_jax.plot.plot_schedule` draws both schedules as heat maps.
        """,
    ),
    (
        "py",
        "schedule",
        """
        import tempfile

        from IPython.display import Image, Markdown, display

        from sparsenet_jax import plot

        FIG_DIR = pathlib.Path(tempfile.mkdtemp(prefix="sparsenet_figures_"))
        display(Image(filename=str(plot.plot_schedule(FIG_DIR / "schedule.png", num_layers=16))))
        """,
    ),
    (
        "md",
        "matrix-md",
        """
        The same pattern as numbers: `connectivity_matrix(schedule, n)` has a row per reader
        (layers $1 \\dots n$, then the block output) and a column per source
        $x_0 \\dots x_n$; entry 1 means "reads". Here an 8-layer block:
        """,
    ),
    (
        "py",
        "matrix",
        """
        from sparsenet_jax import Schedule

        LAYERS = 8
        for kind in ("dense", "sparse"):
            matrix = plot.connectivity_matrix(Schedule(kind), LAYERS)[1:]  # row 0 (x_0) reads nothing
            print(f"{kind}: {int(matrix.sum())} connections")
            print("        x: " + " ".join(str(c) for c in range(LAYERS + 1)))
            for row, reads in enumerate(matrix, start=1):
                name = f"layer {row}" if row <= LAYERS else "output "
                sources = np.flatnonzero(reads).tolist()
                print(f"  {name}: " + " ".join(".#"[v] for v in reads) + f"   reads {sources}")
            print()
        """,
    ),
    (
        "md",
        "table-md",
        """
        ## 4. Presets: parameters and FLOPs

        Parameters come from `jax.eval_shape` (no memory is allocated). Forward FLOPs per image
        (eval mode, batch 1) come from XLA's cost analysis of the compiled `model.apply`, on the
        current backend; XLA counts a multiply-add as 2 FLOPs. CIFAR presets are measured on
        32×32 inputs with 10 classes, ImageNet ones on 224×224 with 1000. Quick mode measures a
        few small presets; full mode all of `sparsenet_jax.list_models()` (compiling the deepest
        ones takes a few minutes).
        """,
    ),
    (
        "py",
        "table",
        """
        import time

        if QUICK:
            TABLE_PRESETS = ["sparsenet-13-6", "densenet-13-6", "sparsenet-40-24", "densenet-40-12"]
        else:
            TABLE_PRESETS = sparsenet_jax.list_models()


        def preset_row(name: str) -> dict:
            imagenet = sparsenet_jax.parse_name(name).family == "imagenet"
            model = sparsenet_jax.create_model(name, num_classes=1000 if imagenet else 10)
            size = 224 if imagenet else 32
            x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
            variables = jax.eval_shape(model.init, jax.random.key(0), x)
            cost = jax.jit(model.apply).lower(variables, x).compile().cost_analysis()
            if isinstance(cost, list):  # older jax: one dict per computation
                cost = cost[0]
            return {
                "preset": name,
                "schedule": model.schedule.kind,
                "aggregation": model.aggregation,
                "units a block": "-".join(map(str, model.block_sizes)),
                "growth/width": "-".join(map(str, dict.fromkeys(model.growth_rates))),
                "input": f"{size}x{size}",
                "params": sparsenet_jax.count_params(variables),
                "GFLOPs/image": cost["flops"] / 1e9,
            }


        start = time.time()
        rows = [preset_row(name) for name in TABLE_PRESETS]
        print(f"{len(rows)} presets measured in {time.time() - start:.1f} s on {jax.default_backend()}")
        try:
            import pandas as pd

            display(
                pd.DataFrame(rows)
                .set_index("preset")
                .style.format({"params": "{:,}", "GFLOPs/image": "{:.3f}"})
            )
        except ImportError:
            header = list(rows[0])
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row in rows:
                params, gflops = f"{row['params']:,}", f"{row['GFLOPs/image']:.3f}"
                shown = {**row, "params": params, "GFLOPs/image": gflops}
                lines.append("| " + " | ".join(str(shown[k]) for k in header) + " |")
            display(Markdown("\\n".join(lines)))
        """,
    ),
    (
        "md",
        "config-md",
        """
        ## 5. Train with live curves

        A run is a `TrainConfig`: a named recipe sets the defaults and any field overrides
        them. `cifar10` is the paper's recipe (SGD, Nesterov 0.9, batch 64, 300 epochs,
        lr 0.1 ÷10 at epochs 150 and 225, weight decay 1e-4 on kernels, pad-4 crop + flip);
        `digits` is the offline quickstart. Quick mode stops the digits recipe after 30 steps
        (about 1.3 epochs): enough to show the mechanics, far too few for a meaningful accuracy;
        delete `"max_steps"` below for the whole recipe (20 epochs: on a 2-core CPU, 3 minutes
        and 98–99% test accuracy). Everything the run writes goes to `workdir`:
        `config.json`, `metrics.jsonl`, TensorBoard events and Orbax checkpoints. Running the
        training cell again resumes from the newest checkpoint, so in full mode on Colab put
        `WORKDIR` on Google Drive (`from google.colab import drive; drive.mount("/content/drive")`)
        and rerun after a disconnect. For speed on TPU/GPU add `"dtype": "bfloat16"` (bf16
        compute, fp32 parameters).
        """,
    ),
    (
        "py",
        "config",
        """
        from sparsenet_jax import config as config_lib
        from sparsenet_jax import data as data_lib
        from sparsenet_jax import train as train_lib

        DATA_DIR = None  # tfds data_dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets
        if QUICK:
            WORKDIR = tempfile.mkdtemp(prefix="sparsenet_quick_")
            RUN = {
                "recipe": "digits",
                "model": "sparsenet-13-6",
                "max_steps": 30,
                "log_every_steps": 5,
            }
        else:
            WORKDIR = "runs/sparsenet-40-24-cifar10"  # e.g. "/content/drive/MyDrive/sparsenet/c10"
            RUN = {"recipe": "cifar10", "model": "sparsenet-40-24", "data_dir": DATA_DIR}

        config = config_lib.from_dict(
            {**config_lib.RECIPES[RUN["recipe"]], **RUN, "workdir": WORKDIR, "progress": False}
        )
        print(config_lib.to_json(config))
        """,
    ),
    (
        "md",
        "data-md",
        """
        The digits come with scikit-learn. CIFAR-10 is read with tensorflow-datasets from
        `DATA_DIR`; the first time it has to be downloaded and prepared, which needs TensorFlow
        (preinstalled on Colab) and internet: the cell below does that in full mode.
        """,
    ),
    (
        "py",
        "data",
        """
        try:
            train_images, train_labels = data_lib.load_arrays(config.dataset, "train", config.data_dir)
        except data_lib.DatasetNotFoundError as err:
            print(err)
            missing = [m for m in ("tensorflow", "importlib_resources") if not importlib.util.find_spec(m)]
            if missing:
                pip_install(*["tensorflow-cpu" if m == "tensorflow" else m for m in missing])
            prepare = [sys.executable, "-m", "sparsenet_jax.data", "prepare", config.dataset]
            subprocess.run(
                prepare + (["--data-dir", config.data_dir] if config.data_dir else []), check=True
            )
            train_images, train_labels = data_lib.load_arrays(config.dataset, "train", config.data_dir)
        print(
            f"{config.dataset}: train images {train_images.shape} {train_images.dtype}, "
            f"{len(np.unique(train_labels))} classes"
        )
        """,
    ),
    (
        "md",
        "train-md",
        """
        `train_and_evaluate(config, on_record=...)` calls `on_record` with every record it
        appends to `metrics.jsonl` (train records every `log_every_steps` steps, a test record
        after each epoch and at the end). The callback below redraws the curves with
        `plot.plot_curves` from that file and replaces the image in place (at most every few
        seconds, and at every test record), plus a status line.
        """,
    ),
    (
        "py",
        "train",
        """
        class LiveCurves:
            \"\"\"on_record callback: redraw loss/accuracy curves in place as records arrive.\"\"\"

            def __init__(self, workdir: str, label: str, min_interval_s: float) -> None:
                self.workdir, self.label, self.min_interval_s = workdir, label, min_interval_s
                self.status = display(Markdown("*waiting for the first record…*"), display_id=True)
                self.figure = display(Markdown(""), display_id=True)
                self.last_draw = 0.0
                self.latest: dict = {}  # split -> its newest record

            def __call__(self, record: dict) -> None:
                self.latest[record["split"]] = record
                parts = []
                if train := self.latest.get("train"):
                    parts += [
                        f"step {train['step']} (epoch {train['epoch']:.2f})",
                        f"train loss {train['loss']:.3f}, acc {100 * train['accuracy']:.1f}%",
                        f"lr {train['lr']:.3g}, {train['images_per_sec']:.0f} img/s",
                    ]
                if test := self.latest.get("test"):
                    parts.append(
                        f"test (step {test['step']}) loss {test['loss']:.3f}, "
                        f"acc {100 * test['accuracy']:.1f}%"
                    )
                self.status.update(Markdown(" | ".join(parts)))
                if record["split"] == "test" or time.time() - self.last_draw >= self.min_interval_s:
                    self.draw()

            def draw(self) -> None:
                png = plot.plot_curves(FIG_DIR / "live.png", [self.workdir], labels=[self.label])
                self.figure.update(Image(data=png.read_bytes()))
                self.last_draw = time.time()


        live = LiveCurves(WORKDIR, config.model, min_interval_s=2.0 if QUICK else 30.0)
        result = train_lib.train_and_evaluate(config, on_record=live)
        live.draw()
        """,
    ),
    (
        "md",
        "evaluate-md",
        """
        ## 6. Evaluate

        `RunResult` summarises the run: the step it reached, the best test accuracy and its
        epoch, the parameter count, the wall time, and the last test metrics. The full history
        is in `metrics.jsonl`; `plot.plot_curves` draws it (several workdirs overlay runs).
        """,
    ),
    (
        "py",
        "evaluate",
        """
        print(result)
        if result.best_test_accuracy is not None:
            print(
                f"best test accuracy {100 * result.best_test_accuracy:.2f}% (epoch {result.best_epoch}), "
                f"{result.num_params:,} parameters, {result.final_step} steps in {result.wall_time_s:.0f} s"
            )
        if result.last_test:
            last = result.last_test
            print(f"last test: loss {last['loss']:.4f}, accuracy {100 * last['accuracy']:.2f}%")
        curves = plot.plot_curves(FIG_DIR / "curves.png", [WORKDIR], labels=[config.model])
        display(Image(filename=str(curves)))
        """,
    ),
    (
        "md",
        "checkpoint-md",
        """
        ## 7. Checkpoints: save, list, restore

        The trainer saved Orbax checkpoints (the last `keep_checkpoints`) in
        `WORKDIR/checkpoints`, one folder a step. To restore, build a template `TrainState`
        of the same structure (model, optimizer and shapes; the values do not matter) and
        call `Checkpoints(workdir, keep).restore_latest(template)`, which skips unreadable
        checkpoints. Two checks: the restored model evaluated on the test split gives exactly
        the test metrics the training loop logged at that step, and restoring with plain Orbax
        (no template) gives the same eval logits on a batch.
        """,
    ),
    (
        "py",
        "checkpoint",
        """
        from sparsenet_jax import steps

        checkpoint_dir = pathlib.Path(WORKDIR) / "checkpoints"
        print("checkpoints:", sorted((p.name for p in checkpoint_dir.iterdir()), key=lambda s: (len(s), s)))

        # A template state built the way the trainer builds it.
        info = data_lib.dataset_info(config.dataset)
        model = sparsenet_jax.create_model(
            config.model,
            num_classes=info.num_classes,
            in_channels=info.channels,
            dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
            **config.model_kwargs,
        )
        steps_per_epoch = info.num_train // config.batch_size
        lr = steps.piecewise_lr(config.lr, steps_per_epoch, config.lr_boundaries, config.lr_decay)
        tx = steps.make_optimizer(lr, config.momentum, config.nesterov, config.weight_decay)
        mesh = steps.data_mesh()
        template = steps.create_train_state(
            model, tx, config.seed, (1, info.image_size, info.image_size, info.channels), mesh
        )

        checkpoints = train_lib.Checkpoints(pathlib.Path(WORKDIR), config.keep_checkpoints)
        restored = checkpoints.restore_latest(template)
        raw = checkpoints.manager.restore(checkpoints.manager.latest_step())  # plain Orbax: nested dicts
        checkpoints.close()
        print(f"restored step {int(restored.step)}; plain Orbax keys: {sorted(raw)}")

        # 1. The restored model reproduces the test metrics logged at that step.
        splits = train_lib.load_splits(config)
        preprocess = train_lib.make_preprocess(config, info)
        eval_step = steps.jit_eval_step(
            steps.make_eval_step(model, preprocess, top_k=5 if info.num_classes > 10 else 0), mesh
        )
        again = train_lib.evaluate(eval_step, restored, config, splits, mesh)
        step = int(restored.step)
        logged = [r for r in plot.load_metrics(WORKDIR) if r["split"] == "test" and r["step"] == step]
        print(f"restored model on the test split: loss {again['loss']}, accuracy {again['accuracy']}")
        if logged:
            want = logged[-1]
            print(f"logged by the loop at step {step}: loss {want['loss']}, accuracy {want['accuracy']}")
            assert again["accuracy"] == want["accuracy"], (again, want)
            assert abs(again["loss"] - want["loss"]) <= 1e-5 * max(1.0, abs(want["loss"])), (again, want)
            print("test metrics match: OK")

        # 2. Same eval logits on a batch, restored with and without the template.
        test_images, test_labels = splits.test
        batch = preprocess(jax.random.key(0), jnp.asarray(test_images[:64]), False)
        apply = jax.jit(model.apply)
        logits = apply({"params": restored.params, "batch_stats": restored.batch_stats}, batch)
        logits_raw = apply({"params": raw["params"], "batch_stats": raw["batch_stats"]}, batch)
        logits_init = apply({"params": template.params, "batch_stats": template.batch_stats}, batch)
        same = float(jnp.abs(logits - logits_raw).max())
        moved = float(jnp.abs(logits - logits_init).max())
        print(f"eval logits, Checkpoints vs plain Orbax restore: max abs difference {same:.3g}")
        print(f"eval logits, restored vs untrained template:     max abs difference {moved:.3g}")
        assert same <= 1e-6 * float(jnp.abs(logits).max()) and moved > 0.0, (same, moved)
        batch_accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_labels[:64]))
        print(f"restored model, accuracy on this batch of 64: {100 * batch_accuracy:.1f}%")
        """,
    ),
    (
        "md",
        "convert-md",
        """
        ## 8. Load PyTorch weights with the converter

        `convert.load_pretrained(model, path)` reads an official PyTorch SparseNet/DenseNet
        `state_dict` (`.pth` via `torch.load(weights_only=True)`, or `.npz` without pickle),
        renames the keys and changes the layouts (conv OIHW → HWIO, linear (out, in) → (in, out)).
        The checkout's `tests/data/tiny_sparsenet_d25_k6_c10.npz` holds the weights of a small
        official SparseNet (depth 25, k = 6, under the prefix `sd/`), an input batch `x` (NCHW)
        and the logits PyTorch computed in eval mode. Full-precision matmuls keep TPUs (bf16 by
        default) comparable. For the official full-size weights:
        `convert.load_pretrained(sparsenet_jax.create_model("sparsenet-40-24", num_classes=100), "sparsenet40_k24_c100.pth")`.
        """,
    ),
    (
        "py",
        "convert",
        """
        from sparsenet_jax import convert

        REFERENCE = "tests/data/tiny_sparsenet_d25_k6_c10.npz"
        candidates = [folder / REFERENCE for folder in (REPO_ROOT, pathlib.Path.cwd().parent) if folder]
        reference = next((path for path in candidates if path.is_file()), None)
        if reference is None:
            print(f"{REFERENCE} not found (looked in {[str(c) for c in candidates]}): skipped")
        else:
            tiny = sparsenet_jax.create_model("sparsenet-25-6")
            variables = convert.load_pretrained(tiny, reference, prefix="sd/")
            with np.load(reference, allow_pickle=False) as ref:
                x = jnp.asarray(ref["x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
                expected = ref["logits_eval"]
            with jax.default_matmul_precision("highest"):
                ours = np.asarray(jax.jit(tiny.apply)(variables, x))
            error = float(np.abs(ours - expected).max())
            print(f"{sparsenet_jax.count_params(variables):,} parameters loaded from {reference.name}")
            print(f"logits {ours.shape}, largest |logit| {np.abs(expected).max():.2f}")
            print(f"converter max abs error vs PyTorch: {error:.3e}")
            print("same predictions:", bool((ours.argmax(-1) == expected.argmax(-1)).all()))
        """,
    ),
    (
        "md",
        "next-md",
        """
        ## Next

        * Full run: set `QUICK = False` (TPU or GPU runtime, `WORKDIR` on Drive) and run all.
        * Other networks: any name of `sparsenet_jax.list_models()` as `"model"`, e.g.
          `"densenet-40-12"` for the paper's baseline, `"recipe": "cifar100"` for CIFAR-100.
        * Command line equivalent: `python -m sparsenet_jax.train --recipe cifar10 --workdir runs/c10`.
        """,
    ),
]


def build() -> nbformat.NotebookNode:
    """The notebook, outputs empty."""
    cells = []
    for kind, cell_id, source in CELLS:
        text = textwrap.dedent(source).strip("\n")
        cell = new_markdown_cell(text) if kind == "md" else new_code_cell(text)
        cell["id"] = cell_id
        cells.append(cell)
    notebook = new_notebook(cells=cells)
    notebook.metadata.update(
        {
            "accelerator": "TPU",
            "colab": {"provenance": [], "name": NOTEBOOK.name},
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        }
    )
    return notebook


def render() -> str:
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
