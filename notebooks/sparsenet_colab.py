# The source of notebooks/sparsenet_colab.ipynb, in jupytext's percent format: edit this file,
# then run `python notebooks/build_notebook.py` (tests/test_notebook.py checks that the two
# agree, and runs the notebook in quick mode). Every cell marker carries a fixed id; the lines
# above the first marker are not part of the notebook.
# ruff: noqa: E402  (a notebook imports a module in the cell that first needs it)

# %% [markdown] id="title"
# # SparseNet in JAX on Colab
#
# *Sparsely Aggregated Convolutional Networks* (Zhu et al., ECCV 2018,
# [arXiv:1801.05895](https://arxiv.org/abs/1801.05895)) with the `sparsenet_jax` package:
# SparseNet, DenseNet and pre-activation ResNet as one network with two switches, the
# connection **schedule** (dense or sparse) and the **aggregation** (concatenation or sum).
#
# This notebook
#
# 1. installs the package (from the `SOURCE` field of the install cell);
# 2. shows the accelerators JAX sees;
# 3. draws which earlier layers each layer reads, dense vs sparse;
# 4. tabulates parameters and forward FLOPs of presets;
# 5. sets up the run, with its workdir and compilation cache on Google Drive in full mode;
# 6. checks ahead of time, without using the chip, that the train step fits a TPU v5e and how
#    long it compiles, and estimates what the whole run costs;
# 7. trains with live curves;
# 8. resumes after a disconnect;
# 9. evaluates;
# 10. restores the newest checkpoint and checks it;
# 11. loads PyTorch-layout weights with the converter and compares to PyTorch's logits.
#
# Every step calls the library (`build_run`, `train_and_evaluate`, `Checkpoints`, `plot`,
# `python -m sparsenet_jax.aot`); nothing here builds a model, an optimizer or a step itself.
#
# **Colab:** *Runtime → Change runtime type →* **v5e-1 TPU** (a GPU works too). `QUICK = True`
# runs everything in a few minutes on any machine (a tiny SparseNet on the handwritten digits
# that ship with scikit-learn); `QUICK = False` trains SparseNet-40-24 on CIFAR-10 with the
# paper's recipe (300 epochs: hours even on a TPU, over several Colab sessions: see step 6).

# %% id="flags"
import os
import sys

QUICK = True  # @param {type:"boolean"}

# CI runs this notebook headless with SPARSENET_NOTEBOOK_QUICK=1 (0 forces full mode).
if os.environ.get("SPARSENET_NOTEBOOK_QUICK", "").strip() in ("0", "1"):
    QUICK = os.environ["SPARSENET_NOTEBOOK_QUICK"].strip() == "1"
ON_COLAB = "google.colab" in sys.modules
print("mode:", "quick" if QUICK else "full", "| on Colab" if ON_COLAB else "")

# %% [markdown] id="install-md"
# ## 1. Install
#
# Fill **`SOURCE`** (the form field on the right of the cell on Colab) with where to install
# `sparsenet_jax` from, then run the cell:
#
# * a git URL, optionally with a branch or tag: `https://github.com/OWNER/sparsenet_jax.git`
#   or `https://github.com/OWNER/sparsenet_jax.git@main` (cloned, then installed: the clone
#   also provides `tests/data` for step 11);
# * a wheel, e.g. on Drive: `/content/drive/MyDrive/sparsenet_jax-0.1.0-py3-none-any.whl`
#   (Drive is mounted when the path is under `/content/drive`);
# * a folder holding a checkout.
#
# Left empty, the cell installs the checkout this notebook sits in, if any; if
# `sparsenet_jax` already imports (a local `pip install -e .`, or CI) it does nothing.
#
# Colab's TPU runtime ships a TPU-enabled jax (0.7.2 in 2026), which `sparsenet_jax`
# supports: the install keeps it. Only a jax older than the package's floor is upgraded (pip
# does that while installing), and then the runtime **restarts**: run the notebook again from
# the top. Colab's TPU runtimes are TPU VMs: `jax.tools.colab_tpu.setup_tpu()` is not needed.

# %% id="install"
import glob
import importlib
import importlib.metadata
import importlib.util
import pathlib
import shutil
import subprocess

SOURCE = ""  # @param {type:"string"}
CLONE = pathlib.Path("sparsenet_jax_repo").resolve()  # not "sparsenet_jax": no shadowing


def find_checkout(start: pathlib.Path) -> pathlib.Path | None:
    """The sparsenet_jax checkout holding ``start``, if any."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "src/sparsenet_jax").is_dir():
            return folder
    return None


def pip_install(*args: str) -> None:
    print("pip install", *args)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def on_tpu() -> bool:
    return bool(
        glob.glob("/dev/accel*")
        or glob.glob("/dev/vfio/[0-9]*")
        or os.environ.get("TPU_ACCELERATOR_TYPE")
    )


def local_source(source: str) -> pathlib.Path:
    """A path pip can install: a wheel or folder as given, a git URL cloned first."""
    if source.startswith(("https://", "http://", "git@", "git+")):
        url, ref = source.removeprefix("git+"), ""
        head, _, tail = url.rpartition("@")
        if head and "/" not in tail and ":" not in tail:  # URL@branch, not git@host:...
            url, ref = head, tail
        if not (CLONE / "pyproject.toml").is_file():
            branch = ["--branch", ref] if ref else []
            subprocess.run(["git", "clone", "--depth", "1", *branch, url, str(CLONE)], check=True)
        return CLONE
    if source.startswith("/content/drive") and ON_COLAB:
        from google.colab import drive

        drive.mount("/content/drive")
    path = pathlib.Path(source).expanduser().resolve()
    if not path.exists():
        raise SystemExit(f"SOURCE {source!r}: no such file or folder")
    return path


def install(source: str) -> pathlib.Path | None:
    """Install sparsenet_jax from ``source``; return the checkout it came from, if any."""
    checkout = find_checkout(pathlib.Path.cwd().resolve()) or find_checkout(CLONE)
    if importlib.util.find_spec("sparsenet_jax") is not None:
        print("sparsenet_jax is already installed: nothing to do")
        return checkout
    if source:
        checkout = local_source(source)
    elif checkout is None:
        raise SystemExit(
            "SOURCE is empty and this notebook is not inside a sparsenet_jax checkout: set "
            "SOURCE in the install cell to a git URL (https://github.com/OWNER/sparsenet_jax.git), "
            "a wheel (/content/drive/MyDrive/sparsenet_jax-0.1.0-py3-none-any.whl) or a folder "
            "holding a checkout, then run the cell again"
        )
    jax_before = version_of("jax")
    if jax_before is None:  # not Colab: pick the accelerator's build
        gpu = shutil.which("nvidia-smi") is not None
        pip_install("jax[tpu]" if on_tpu() else "jax[cuda12]" if gpu else "jax")
    pip_install(str(checkout))  # pip upgrades jax only if it is below the package's floor
    importlib.invalidate_caches()
    jax_now = version_of("jax")
    if jax_before is not None and jax_now != jax_before:
        if on_tpu():
            pip_install(f"jax[tpu]=={jax_now}")  # the libtpu that goes with the new jax
        print(f"jax {jax_before} is older than sparsenet_jax supports: pip installed {jax_now}.")
        print("The runtime restarts now to load it: then run the notebook again from the top.")
        if ON_COLAB:
            os.kill(os.getpid(), 9)  # Colab starts a fresh runtime, which imports the new jax
        raise SystemExit("restart the kernel, then run the notebook again from the top")
    print(f"installed sparsenet_jax {version_of('sparsenet_jax')}; jax {jax_now} kept")
    return checkout if checkout.is_dir() else None


REPO_ROOT = install(SOURCE.strip())
print("checkout:", REPO_ROOT)

# %% [markdown] id="devices-md"
# ## 2. Devices
#
# The trainer replicates the state and shards every batch over all devices on a 1-D `data`
# mesh. Colab's v5e-1 is one chip (16 GiB of HBM). On a TPU the run computes in bfloat16 and
# keeps its parameters in float32 (the config's `dtype="auto"`); elsewhere it computes in
# float32.

# %% id="devices"
import jax
import numpy as np

import sparsenet_jax

print(f"jax {jax.__version__}, sparsenet_jax {sparsenet_jax.__version__}")
print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}")
for device in jax.devices():
    print(" ", device, "|", device.device_kind)
if not QUICK and jax.default_backend() == "cpu":
    print("warning: full mode on a CPU takes days; pick a TPU or GPU runtime")

# %% [markdown] id="schedule-md"
# ## 3. The connection pattern: dense vs sparse
#
# Number a block's input $x_0$ and its layers' outputs $x_1 \dots x_n$. DenseNet's layer $l$
# reads every earlier output; SparseNet's reads only those at exponential offsets,
# $x_{l-1}, x_{l-2}, x_{l-4}, \dots$ — $O(\log l)$ inputs a layer, $O(n \log n)$ connections
# a block instead of $O(n^2)$. The block output (what the transition layer receives) follows
# the same rule as a virtual layer $n+1$. `plot.plot_schedule` draws both as heat maps.

# %% id="schedule"
import tempfile

from IPython.display import Image, Markdown, display

from sparsenet_jax.tools import plot

FIG_DIR = pathlib.Path(tempfile.mkdtemp(prefix="sparsenet_figures_"))
display(Image(filename=str(plot.plot_schedule(FIG_DIR / "schedule.png", num_layers=16))))

# %% [markdown] id="matrix-md"
# The same pattern as numbers: `plot.connectivity_matrix(schedule, n)` has a row per reader
# (layers $1 \dots n$, then the block output) and a column per source $x_0 \dots x_n$;
# entry 1 means "reads". Here an 8-layer block:

# %% id="matrix"
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

# %% [markdown] id="table-md"
# ## 4. Presets: parameters and FLOPs
#
# `tables.preset_table` counts each preset's parameters from the Flax module with
# `jax.eval_shape` (nothing is allocated), for the class counts of its datasets. The FLOPs
# come from XLA's cost analysis (`aot.compile_step`) of the eval step that `build_run` builds,
# for one image of `model.default_input_size` (32×32 for CIFAR presets, 224×224 for ImageNet
# ones), compiled for the host CPU so that the table costs no accelerator time; XLA counts a
# multiply-add as 2 FLOPs. Quick mode lists a few small presets, full mode the paper's main
# ones (`sparsenet_jax.list_models()` has them all).

# %% id="table"
import time

from sparsenet_jax.tools import aot as aot_lib
from sparsenet_jax.tools import tables
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training.build import build_run

if QUICK:
    TABLE_PRESETS = ["sparsenet-13-6", "densenet-13-6", "sparsenet-40-24", "densenet-40-12"]
else:
    TABLE_PRESETS = ["sparsenet-40-24", "densenet-40-12", "sparsenet-bc-100-24"]
    TABLE_PRESETS += ["densenet-bc-100-12", "sparsenet-121-32", "densenet-121"]


def forward_gflops(name: str) -> tuple[int, float]:
    """(input size, forward GFLOPs) of one image through ``name``'s eval step, on the CPU."""
    recipe = "imagenet" if sparsenet_jax.parse_name(name).family == "imagenet" else "cifar10"
    values = {**config_lib.RECIPES[recipe], "recipe": recipe, "model": name}
    run = build_run(config_lib.from_dict({**values, "eval_batch_size": 1}), jax.devices("cpu")[:1])
    cost = aot_lib.compile_step(run.eval_step, run.abstract_state(), run.abstract_batch(False))
    return run.model.default_input_size, cost.flops / 1e9


start = time.time()
display(Markdown(tables.preset_table(TABLE_PRESETS)))
flops_rows = ["| preset | input | GFLOPs/image (forward) |", "|---|---|---:|"]
for name in TABLE_PRESETS:
    size, gflops = forward_gflops(name)
    flops_rows.append(f"| `{name}` | {size}×{size} | {gflops:.3f} |")
display(Markdown("\n".join(flops_rows)))
print(f"{len(TABLE_PRESETS)} presets in {time.time() - start:.0f} s")

# %% [markdown] id="config-md"
# ## 5. The run: config, workdir and compilation cache
#
# A run is a `TrainConfig`: a named recipe sets the defaults and any field overrides them.
# `cifar10` is the paper's recipe (SGD, Nesterov 0.9, batch 64, 300 epochs, lr 0.1 ÷10 at
# epochs 150 and 225, weight decay 1e-4 on kernels, pad-4 crop + flip); `digits` is the
# offline quickstart, which quick mode stops after 30 steps (1.3 epochs: the mechanics, not a
# meaningful accuracy).
#
# Everything the run writes goes to `WORKDIR`: `config.json`, `metrics.jsonl`, TensorBoard
# events and checkpoints. In full mode on Colab the workdir, the prepared dataset and JAX's
# persistent compilation cache (`compilation_cache_dir`) live on **Google Drive**, so after a
# disconnect the run resumes from its newest checkpoint and skips compiling. `build_run`
# builds exactly what the trainer will run; its `config.dtype` is the resolved compute dtype.
#
# **`SEEDS`** (the form field): train that many replicas of the run at once, seeds 0 … N-1,
# each the run its seed gives alone up to rounding (which grows over the steps: the same
# distribution of results, not the same numbers), in one program (`--seeds N` on the command
# line). On Colab's v5e-1 it saves no time: the compiler estimates eight replicas take about
# 1.2× as long as eight runs in turn (benchmarks/results/tpu-v5e.md); it gives one run, one
# workdir and one summary for all the seeds. The
# curves then show the seeds' mean with a band of ± one standard deviation, and step 9 the
# test accuracy as mean ± std over the seeds. Each N gets its own workdir (a workdir refuses
# to resume with another N), and step 6 says the largest N that fits the chip.

# %% id="config"
from sparsenet_jax.training import cli

SEEDS = 1  # @param {type:"integer"}
if os.environ.get("SPARSENET_NOTEBOOK_SEEDS", "").strip():  # CI: a run of several seeds
    SEEDS = int(os.environ["SPARSENET_NOTEBOOK_SEEDS"])

if QUICK:
    RUN = {"recipe": "digits", "model": "sparsenet-13-6", "max_steps": 30, "log_every_steps": 5}
    STORAGE = pathlib.Path(tempfile.mkdtemp(prefix="sparsenet_quick_"))
else:
    RUN = {"recipe": "cifar10", "model": "sparsenet-40-24"}
    STORAGE = pathlib.Path("runs")
    if ON_COLAB:
        from google.colab import drive

        drive.mount("/content/drive")
        STORAGE = pathlib.Path("/content/drive/MyDrive/sparsenet_jax")
RUN["seeds"] = SEEDS
SEEDS_NAME = f"-{SEEDS}seeds" if SEEDS > 1 else ""  # another N: another workdir
WORKDIR = str(STORAGE / f"{RUN['model']}-{RUN['recipe']}{SEEDS_NAME}")
DATA_DIR = None if QUICK else str(STORAGE / "tensorflow_datasets")
config = config_lib.from_dict(
    {
        **config_lib.RECIPES[RUN["recipe"]],
        **RUN,
        "workdir": WORKDIR,
        "data_dir": DATA_DIR,
        "compilation_cache_dir": str(STORAGE / "jax_compilation_cache"),
        "progress": False,  # the live curves below say it
    }
)
print("compilation cache:", cli.setup_compilation_cache(config.compilation_cache_dir))
cli.setup_logging()  # the trainer's one-line notes ("resumed from step ...") show below cells
run = build_run(config)
replicas = f" × {config.seeds} seeds (seeds {config.seed} … {config.replica_seeds[-1]})"
print(
    f"{config.model} on {config.dataset} ({'×'.join(map(str, run.image_shape))} images): "
    f"{run.num_params:,} parameters, compute dtype {run.config.dtype} (parameters float32), "
    f"{run.steps_per_epoch} steps an epoch of {config.batch_size}, {run.total_steps} steps in all"
    + (replicas if config.seeds > 1 else "")
)
print("workdir:", WORKDIR)

# %% [markdown] id="aot-md"
# ## 6. Will it fit a v5e-1, and what will the run cost?
#
# `python -m sparsenet_jax.aot` compiles the train and eval steps that `build_run` builds for
# a TPU v5e with libtpu's compiler, without a TPU (it never touches the chip, so it works on
# any runtime with libtpu installed), and reports the compile times, the HBM the train step
# needs against the chip's 16 GiB, and its FLOPs and bytes accessed. Without libtpu (a CPU or
# GPU runtime) it says which extra to install and the check is skipped. In full mode a run
# that does not fit stops here. The check takes about as long as the compilation it measures
# (minutes for the paper's networks), so its report is kept beside the workdir and a
# resumed session reads it instead of checking again.

# %% id="aot"
import json

AOT = ["-m", "sparsenet_jax.aot", "--recipe", config.recipe, "--model", config.model, "--json"]
if config.seeds > 1:
    AOT[-1:-1] = ["--seeds", str(config.seeds)]
AOT_REPORT = STORAGE / f"aot_{config.model}_{config.recipe}{SEEDS_NAME}.json"
if AOT_REPORT.is_file():
    print(f"the check's report from an earlier session: {AOT_REPORT}")
    checked = subprocess.CompletedProcess(AOT, 0, AOT_REPORT.read_text(), "")
else:
    print("$ python", " ".join(AOT))
    # JAX_PLATFORMS=cpu: the check only compiles, and must not reach for the chip this kernel holds.
    checked = subprocess.run(
        [sys.executable, *AOT],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
said = (checked.stderr.strip() or "no message").splitlines()[-1]
aot = json.loads(checked.stdout) if checked.stdout.startswith("{") else None
if aot is not None:
    STORAGE.mkdir(parents=True, exist_ok=True)
    AOT_REPORT.write_text(checked.stdout)
    GiB = 1024**3
    print(
        f"{aot['model']}, {aot['dtype']}, batch {aot['batch_size']} on TPU {aot['topology']}: "
        f"fits {aot['fits']} ({aot['hbm_bytes'] / GiB:.2f} GiB of "
        f"{aot['hbm_capacity_bytes'] / GiB:.0f}); compile: train step {aot['train_compile_s']:.0f} s, "
        f"eval step {aot['eval_compile_s']:.0f} s; a train step: "
        f"{aot['flops_per_step'] / 1e9:.1f} GFLOP, {aot['bytes_accessed_per_step'] / 1e9:.2f} GB"
        + (f" ({aot['seeds']} seeds)" if aot.get("seeds", 1) > 1 else "")
    )
    if "max_seeds" in aot:  # reckoned from this compile: compile that SEEDS to confirm
        print(f"largest SEEDS that fits the chip's HBM: about {aot['max_seeds']}")
elif said.startswith("needs "):  # the TPU compiler itself ran out of HBM
    print(f"does not fit: {said}")
else:
    print(f"aot check skipped (exit {checked.returncode}): {said}")
if not QUICK and (said.startswith("needs ") or (aot is not None and not aot["fits"])):
    raise SystemExit(f"{config.model} does not fit the chip: pick a smaller model or batch")

# %% [markdown] id="cost-md"
# **What a full run costs on a v5e-1.** The *estimate* below is the roofline that `aot`
# reports for this config (the step time if the chip ran at its peak FLOPs or its peak HBM
# bandwidth, whichever binds; these networks are bound by memory traffic), times the steps of
# an epoch and of the recipe; compilation, evaluation and input are not included, so the real
# time is longer. *Measured* figure for a full run on a v5e-1: **none yet** (nobody has timed
# one); the trainer's `images_per_sec` in `metrics.jsonl` gives yours.

# %% id="cost"
from sparsenet_jax.training.reporting import duration


def seconds(value: float) -> str:
    return f"{value:.3g} s" if value < 60 else duration(value)


if aot is None:
    print("estimated: not available here (it needs the aot check above, i.e. libtpu)")
else:
    images_per_s = aot["roofline_images_per_s"]
    # The roofline counts every replica's images: an epoch is each seed's pass over the data.
    epoch_s = run.steps_per_epoch * config.batch_size * config.seeds / images_per_s
    print(
        f"estimated for {config.model} on {config.dataset} (roofline of {aot['chip']} at "
        f"{aot['peak_flops'] / 1e12:.0f} TFLOP/s and {aot['hbm_bandwidth'] / 1e9:.0f} GB/s, "
        f"{aot['roofline_bound']}-bound): {images_per_s:,.0f} images/s, {seconds(epoch_s)} an "
        f"epoch of training, {seconds(config.epochs * epoch_s)} for {config.epochs} epochs, "
        "at best"
    )
    compile_s = aot["train_compile_s"] + aot["eval_compile_s"]
    print(f"plus compiling once, about {seconds(compile_s)} on this runtime's CPU (then cached)")
print("measured on a v5e-1: none yet")

# %% [markdown] id="data-md"
# The digits come with scikit-learn. CIFAR-10 is read with tensorflow-datasets from
# `DATA_DIR`; the first time it is downloaded and prepared, which needs TensorFlow and
# internet (Colab has internet but no TensorFlow: the cell installs `tensorflow-cpu`).

# %% id="data"
from sparsenet_jax import data as data_lib

try:
    train_images, train_labels = data_lib.load_arrays(config.dataset, "train", config.data_dir)
except data_lib.DatasetNotFoundError as err:
    print(err)
    missing = [m for m in ("tensorflow", "importlib_resources") if not importlib.util.find_spec(m)]
    if missing:
        pip_install(*["tensorflow-cpu" if m == "tensorflow" else m for m in missing])
    prepare = [sys.executable, "-m", "sparsenet_jax.data", "prepare", config.dataset]
    if config.data_dir:
        prepare += ["--data-dir", config.data_dir]
    subprocess.run(prepare, check=True)
    train_images, train_labels = data_lib.load_arrays(config.dataset, "train", config.data_dir)
print(f"{config.dataset}: train images {train_images.shape} {train_images.dtype}")

# %% [markdown] id="train-md"
# ## 7. Train with live curves
#
# `train_and_evaluate(config, on_record=...)` trains (or resumes) the run and calls
# `on_record` with every record it appends to `metrics.jsonl`. The callback below redraws the
# curves from that file with `plot.plot_curves`, so after a resume they show the whole run,
# earlier sessions included. Stop the cell at any time (■ or *Runtime → Interrupt*): the
# trainer saves a checkpoint and returns.

# %% id="train"
import contextlib

from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.loop import RunResult, train_and_evaluate


class LiveCurves:
    """on_record callback: a status line and the curves of ``metrics.jsonl``, redrawn in place."""

    def __init__(self, workdir: str, label: str, min_interval_s: float) -> None:
        self.workdir, self.label, self.min_interval_s = workdir, label, min_interval_s
        self.status = display(Markdown("*waiting for the first record…*"), display_id=True)
        self.figure = display(Markdown(""), display_id=True)
        self.last_draw = 0.0
        self.latest: dict = {}  # split -> its newest record
        self.tests: dict = {}  # seed (None: a run of one) -> its newest test record
        with contextlib.suppress(FileNotFoundError, ValueError):  # a new run: nothing yet
            self.draw()  # a resumed run: its history so far

    def __call__(self, record: dict) -> None:
        self.latest[record["split"]] = record
        if record["split"] == "test":
            self.tests[record.get("seed")] = record
        parts = []
        if train := self.latest.get("train"):
            whose = f"seed {train['seed']} " if "seed" in train else ""
            parts += [
                f"step {train['step']} (epoch {train['epoch']:.2f})",
                f"{whose}train loss {train['loss']:.3f}, acc {100 * train['accuracy']:.1f}%",
                f"lr {train['lr']:.3g}, {train['images_per_sec']:.0f} img/s",
            ]
        if self.tests:  # with SEEDS > 1, each seed's newest
            step = max(test["step"] for test in self.tests.values())
            accuracies = ", ".join(f"{100 * t['accuracy']:.1f}%" for t in self.tests.values())
            parts.append(f"test (step {step}) acc {accuracies}")
        self.status.update(Markdown(" | ".join(parts)))
        if record["split"] == "test" or time.time() - self.last_draw >= self.min_interval_s:
            self.draw()

    def draw(self) -> None:
        png = plot.plot_curves(FIG_DIR / "live.png", [self.workdir], labels=[self.label])
        self.figure.update(Image(data=png.read_bytes()))
        self.last_draw = time.time()


def train(config: config_lib.TrainConfig) -> RunResult:
    """Train or resume ``config``'s run with live curves; one ``error:`` line if it cannot."""
    live = LiveCurves(config.workdir, config.model, min_interval_s=2.0 if QUICK else 30.0)
    try:
        result = train_and_evaluate(config, on_record=live)
    except TrainingError as err:
        raise SystemExit(f"error: {err}") from None
    live.draw()
    if result.stopped_by:
        print(f"{result.stopped_by} at step {result.final_step}: saved; run the resume cell")
    return result


result = train(config)

# %% [markdown] id="resume-md"
# ## 8. Resume after a disconnect
#
# Colab sessions end: idle time-outs, usage limits, a closed tab. The run is not lost: its
# checkpoints (one an epoch), `metrics.jsonl` and the compiled programs are on Drive. After
# reconnecting, run the notebook from the top (*Runtime → Run all*): the config cell builds
# the same config, and training resumes from the newest good checkpoint, draws the same
# batches as an uninterrupted run, and compiles nothing the cache already holds. The cell
# below continues the run too (after a stop with ■, run it alone); a finished run returns at
# once. Quick mode stands in for "the rest of the run" by raising `max_steps` to 2 epochs.
#
# Only one run may use a workdir: a second one (say, a second tab on the same Drive folder)
# stops at once with one line, `error: ... is in use by another run (PID ... on host ...)`.
# Quick mode shows that too.

# %% id="resume"
import dataclasses

if QUICK:
    config = dataclasses.replace(config, max_steps=2 * run.steps_per_epoch)
result = train(config)

# %% id="lock"
from sparsenet_jax.training.workdir import WorkdirLock

if QUICK:  # stand in for a second tab: hold the workdir's lock, then start the same run
    with WorkdirLock(pathlib.Path(WORKDIR)):
        try:
            train_and_evaluate(config)
        except TrainingError as err:
            print(f"error: {err}")

# %% [markdown] id="evaluate-md"
# ## 9. Evaluate
#
# `RunResult` summarises the run: the step it reached, the best test accuracy and its epoch,
# the parameter count, the wall time, and the last test metrics. With `SEEDS` > 1 its
# `per_seed` holds each seed's, and the line below is the mean ± std of the seeds' last test
# accuracy (the trainer's closing line). The full history is in `metrics.jsonl`
# (`plot.load_metrics`); `plot.plot_curves` draws it (several workdirs overlay runs).

# %% id="evaluate"
print(result)
if result.per_seed:  # SEEDS > 1: each seed's, and their mean ± std
    print(cli.seeds_summary(result.per_seed))
    for one in result.per_seed:
        if one["last_test"]:
            print(
                f"seed {one['seed']}: last test accuracy {100 * one['last_test']['accuracy']:.2f}%"
                f", best {100 * one['best_test_accuracy']:.2f}% (epoch {one['best_epoch']})"
            )
elif result.best_test_accuracy is not None:
    print(
        f"best test accuracy {100 * result.best_test_accuracy:.2f}% (epoch {result.best_epoch}), "
        f"{result.num_params:,} parameters, {result.final_step} steps"
    )
records = plot.load_metrics(WORKDIR)
print(f"metrics.jsonl: {len(records)} records, last step {max(r['step'] for r in records)}")
curves = plot.plot_curves(FIG_DIR / "curves.png", [WORKDIR], labels=[config.model])
display(Image(filename=str(curves)))

# %% [markdown] id="checkpoint-md"
# ## 10. Checkpoints: list, restore, check
#
# The trainer keeps the last `keep_checkpoints` Orbax checkpoints in `WORKDIR/checkpoints`,
# each with a manifest (checksums, and the identity of the run). `Checkpoints(workdir).restore(template)`
# restores the newest one that verifies, read-only (the trainer alone sets broken ones aside);
# the template is `build_run(config).abstract_state()`, the state's shapes. Two checks: the
# restored model evaluated on the test split gives exactly the test metrics the loop logged at
# that step, and plain Orbax (no template, no sparsenet_jax) reads the same arrays.

# %% id="checkpoint"
from sparsenet_jax.training import input_pipeline
from sparsenet_jax.training import mesh as mesh_lib
from sparsenet_jax.training.checkpoints import Checkpoints
from sparsenet_jax.training.loop import evaluate_seeds

run = build_run(config)
checkpoints = Checkpoints(pathlib.Path(WORKDIR))
print("checkpoints:", sorted(checkpoints.saved_steps()))
restored, step = checkpoints.restore(run.abstract_state())
raw = checkpoints.manager.restore(step)  # plain Orbax: nested dicts
checkpoints.close()
restored = mesh_lib.replicate(restored, run.mesh)
print(f"restored step {step}; plain Orbax keys: {sorted(raw)}")

# 1. The restored model reproduces the test metrics the loop logged at that step (with
#    SEEDS > 1, each seed's: the checkpoint holds every replica).
splits = input_pipeline.load_splits(run.config)
named = run.config.replica_seeds if run.seeds > 1 else [None]
for seed, again in zip(named, evaluate_seeds(run, restored, splits), strict=True):
    whose = "" if seed is None else f" (seed {seed})"
    print(
        f"restored model on the test split{whose}: loss {again['loss']}, "
        f"accuracy {again['accuracy']}"
    )
    logged = [
        r for r in records if r["split"] == "test" and r["step"] == step and r.get("seed") == seed
    ]
    if not logged:  # a run stopped between two evaluations
        print(f"no test record at step {step} to compare with")
        continue
    want = logged[-1]
    print(f"logged by the loop at step {step}: loss {want['loss']}, accuracy {want['accuracy']}")
    assert again["accuracy"] == want["accuracy"], (again, want)
    assert abs(again["loss"] - want["loss"]) <= 1e-5 * max(1.0, abs(want["loss"])), (again, want)
    print(f"test metrics match{whose}: OK")

# 2. Plain Orbax reads the same arrays; training moved them away from the initial state.
same = jax.tree.map(np.array_equal, restored.params, raw["params"])
moved = jax.tree.map(np.array_equal, restored.params, run.init_state().params)
assert all(jax.tree.leaves(same)) and not all(jax.tree.leaves(moved))
print(f"plain Orbax restore: the same {len(jax.tree.leaves(same))} parameter arrays: OK")

# %% [markdown] id="convert-md"
# ## 11. Load PyTorch weights with the converter
#
# `convert.load_pretrained(model, path)` reads an official PyTorch SparseNet/DenseNet
# `state_dict` (`.pth` via `torch.load(weights_only=True)`, or `.npz` without pickle), renames
# the keys and changes the layouts (conv OIHW → HWIO, linear (out, in) → (in, out)). The
# checkout's `tests/data/tiny_sparsenet_d25_k6_c10.npz` holds the weights of a small official
# SparseNet (depth 25, k = 6, under the prefix `sd/`), an input batch `x` (NCHW) and the logits
# PyTorch computed in eval mode (installed from a wheel, there is no checkout: skipped).
# Full-precision matmuls keep TPUs comparable. For the official full-size weights:
# `convert.load_pretrained(sparsenet_jax.create_model("sparsenet-40-24", num_classes=100), "sparsenet40_k24_c100.pth")`.

# %% id="convert"
from sparsenet_jax.model import convert

REFERENCE = "tests/data/tiny_sparsenet_d25_k6_c10.npz"
reference = REPO_ROOT / REFERENCE if REPO_ROOT else None
if reference is None or not reference.is_file():
    print(f"{REFERENCE} not found (no checkout of the repository here): skipped")
else:
    tiny = sparsenet_jax.create_model("sparsenet-25-6")
    variables = convert.load_pretrained(tiny, reference, prefix="sd/")
    with np.load(reference, allow_pickle=False) as ref:
        x = ref["x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
        expected = ref["logits_eval"]
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(tiny.apply)(variables, x))
    error = float(np.abs(ours - expected).max())
    print(f"{sparsenet_jax.count_params(variables):,} parameters loaded from {reference.name}")
    print(f"logits {ours.shape}, largest |logit| {np.abs(expected).max():.2f}")
    print(f"converter max abs error vs PyTorch: {error:.3e}")
    print("same predictions:", bool((ours.argmax(-1) == expected.argmax(-1)).all()))

# %% [markdown] id="next-md"
# ## Next
#
# * Full run: set `QUICK = False` on a v5e-1 TPU runtime and run all; after a disconnect, run
#   all again. `SEEDS = 3` trains seeds 0, 1 and 2 at once for a mean ± std.
# * Other networks: any name of `sparsenet_jax.list_models()` as `"model"`, e.g.
#   `"densenet-40-12"` for the paper's baseline, `"recipe": "cifar100"` for CIFAR-100.
# * Command line equivalent: `python -m sparsenet_jax.train --recipe cifar10 --workdir runs/c10`,
#   and `python -m sparsenet_jax.aot --recipe cifar10 --model sparsenet-40-24` for the TPU check.
