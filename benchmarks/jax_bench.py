"""Our side of the benchmarks: the trainer's own steps, built by ``build_run``, measured.

Every measurement builds its run with :func:`sparsenet_jax.training.build.build_run`
from the cifar10 recipe (see :func:`bench_config`), so what is timed and
compiled is exactly the trainer's step: uint8 images in, on-device
augmentation and normalisation, SGD update, with the state donated.
FLOPs and memory come from XLA's analysis of the compiled objects.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from machine import BusyMeter, log, peak_rss_mib
from timing import Repeats, register_steps, time_train_eval

RECIPE = "cifar10"  # 32×32×3 uint8 images, 10 classes: the networks' CIFAR shape
MiB = 2**20
# Without a "dtype" override: float32 on every backend (the config's "auto" would pick
# bfloat16 on TPU), so a figure never changes dtype silently.
DEFAULT_DTYPE = "float32"


def setup_jax() -> None:
    """The trainer's platform setup (on CPU: its malloc settings, which must come before
    the backend starts); no persistent compilation cache: it would turn compile times
    into cache reads."""
    import jax

    from sparsenet_jax.training.platforms import setup_platforms

    jax.config.update("jax_enable_compilation_cache", False)
    setup_platforms()


def bench_config(
    preset: str, batch: int, model_kwargs: dict[str, Any] | None = None, seed: int = 0
) -> Any:
    """The ``TrainConfig`` of a benchmark: the cifar10 recipe with this model and batch.

    Args:
      preset: the model name.
      batch: the global batch of both the train and the eval step.
      model_kwargs: ``create_model`` overrides. A ``"dtype"`` among them becomes
        the config's compute dtype (the run owns it); default :data:`DEFAULT_DTYPE`.
      seed: initialisation and augmentation seed.

    Returns:
      A validated config; a bad name or override raises ``ConfigError`` naming it.
    """
    from sparsenet_jax.training import config as config_lib
    from sparsenet_jax.training.build import check_model

    kwargs = dict(model_kwargs or {})
    dtype = str(kwargs.pop("dtype", DEFAULT_DTYPE))
    config = config_lib.from_dict(
        {
            **config_lib.RECIPES[RECIPE],
            **{"recipe": RECIPE, "model": preset, "model_kwargs": kwargs, "dtype": dtype},
            **{"batch_size": batch, "eval_batch_size": batch, "seed": seed},
        }
    )
    check_model(config)
    return config


def fake_arrays(
    batch: int, image_shape: tuple[int, ...], num_classes: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random uint8 images and int32 labels, as an in-memory dataset stores them."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8),
        "label": rng.integers(0, num_classes, batch, dtype=np.int32),
    }


def fake_batch(run: Any, train: bool, seed: int = 0) -> dict[str, Any]:
    """One global batch on ``run.mesh``, as the trainer's input pipeline delivers it."""
    from sparsenet_jax.training import mesh as mesh_lib

    size = run.config.batch_size if train else run.config.eval_batch_size
    arrays = fake_arrays(size, run.image_shape, run.info.num_classes, seed)
    if not train:  # eval batches mark their real examples (padding has 0)
        arrays["mask"] = np.ones(size, np.float32)
    return mesh_lib.global_batch(arrays, run.mesh)


def flops(compiled: Any) -> float | None:
    """XLA's FLOP count of a compiled computation (``None`` if the backend has none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    return float(value) if value is not None else None


def memory(compiled: Any) -> dict[str, float | None]:
    """XLA's memory analysis of a compiled computation, in MiB."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {"xla_peak_mib": None}
    fields = ("temp", "argument", "output", "alias", "generated_code")
    out: dict[str, float | None] = {
        f"{f}_mib": getattr(stats, f"{f}_size_in_bytes", 0) / MiB for f in fields
    }
    # temp + arguments + outputs: what the step holds at once, counting donated
    # (aliased) state twice — an upper bound; alias_mib says how much is shared.
    out["xla_peak_mib"] = sum(out[f"{f}_mib"] or 0.0 for f in ("temp", "argument", "output"))
    peak = getattr(stats, "peak_memory_in_bytes", None)
    out["xla_reported_peak_mib"] = peak / MiB if peak else None
    return out


def matmul_peak(
    n: int = 2048,
    repeats: int = 10,
    max_background: float | None = None,
    max_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Float32 matmul FLOP/s of XLA on this machine: the best of ``repeats`` n×n×n products."""
    import jax
    import jax.numpy as jnp

    setup_jax()
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    # Three products a sample: long enough for /proc/stat's 10 ms ticks to see contention.
    how = Repeats(2, repeats, 3, max_background, max_wait_s)
    timing = how.time(lambda: matmul(a, b).block_until_ready())
    best = min(timing["repeats_s"])
    return {
        "n": n,
        "best_s": best,
        "gflops": 2 * n**3 / best / 1e9,
        "median_gflops": 2 * n**3 / timing["median_s"] / 1e9,
        "background_cores": timing["background_cores"],
        "discarded_repeats": timing["discarded_repeats"],
    }


def compile_train(
    run: Any, state: Any, data: Any, compiler_options: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Lower and compile ``run``'s train step for these inputs (real or abstract).

    ``compiler_options``: XLA options for this compile only (``DebugOptions`` fields,
    e.g. ``{"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"}``).

    Returns:
      (the compiled step, its fields: ``train_lower_s``, ``train_compile_s``, the
      load other processes put on the CPU meanwhile, ``train_flops`` and the
      ``train_*_mib`` of :func:`memory`).
    """
    with BusyMeter() as lowering:
        lowered = run.train_step.lower(state, data)
    with BusyMeter() as compiling:
        compiled = lowered.compile(compiler_options=compiler_options or None)
    fields: dict[str, Any] = {
        "train_lower_s": lowering.seconds,
        "train_compile_s": compiling.seconds,
        "train_lower_background_cores": lowering.cores,
        "train_compile_background_cores": compiling.cores,
        "train_flops": flops(compiled),
    }
    fields.update({f"train_{k}": v for k, v in memory(compiled).items()})
    return compiled, fields


def compile_steps(
    run: Any, state: Any, train_data: Any, eval_data: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Lower and compile ``run``'s train and eval steps on real inputs.

    Returns:
      (compiled train step, compiled eval step, the fields of :func:`compile_train`
      with the eval step's ``eval_lower_compile_s`` and ``eval_flops``).
    """
    train, fields = compile_train(run, state, train_data)
    start = time.perf_counter()
    evaluate = run.eval_step.lower(state, eval_data).compile()
    fields["eval_lower_compile_s"] = time.perf_counter() - start
    fields["eval_flops"] = flops(evaluate)
    return train, evaluate, fields


def conv_impl_kwargs(impl: str, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``model_kwargs`` with the model's ``conv_impl`` option set to ``impl``.

    ``"xla"``: XLA's convolutions; ``"shift-dw"``: 3×3 weight gradients as GEMMs;
    ``"gemm"``: all three products as GEMMs; ``"auto"``: the trainer's CPU default
    (:data:`sparsenet_jax.model.cpu_conv.CONV_IMPLS`). Same parameters either way.

    Raises:
      ValueError: an impl the model does not have (before anything compiles).
    """
    from sparsenet_jax.model.cpu_conv import CONV_IMPLS

    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r}: expected one of {', '.join(CONV_IMPLS)}")
    return {**(model_kwargs or {}), "conv_impl": impl}


def prepare_jax(
    name: str, batch: int = 64, model_kwargs: dict[str, Any] | None = None, seed: int = 0
) -> tuple[dict[str, Any], Any, Any]:
    """Build and compile our steps: (fields, ``train_once``, ``eval_once``).

    The fields: preset, batch, devices, init_s, params and those of :func:`compile_steps`.
    """
    import jax

    import sparsenet_jax as sj
    from sparsenet_jax.training.build import build_run

    setup_jax()
    run = build_run(bench_config(name, batch, model_kwargs, seed))
    result: dict[str, Any] = {"preset": name, "batch": batch, "devices": run.mesh.size}
    start = time.perf_counter()
    holder = {"state": run.init_state()}  # the train step donates it: keep the newest
    jax.block_until_ready(holder["state"])
    result["init_s"] = time.perf_counter() - start
    result["params"] = sj.count_params(holder["state"].params)
    train_data, eval_data = fake_batch(run, True, seed), fake_batch(run, False, seed)
    train, evaluate, fields = compile_steps(run, holder["state"], train_data, eval_data)
    result.update(fields)

    def train_once() -> None:
        holder["state"], metrics = train(holder["state"], train_data)
        jax.block_until_ready((holder["state"], metrics))

    def eval_once() -> None:
        jax.block_until_ready(evaluate(holder["state"], eval_data))

    log(f"  jax {name}: compiled in {result['train_compile_s']:.1f} s")
    return result, train_once, eval_once


def bench_jax(
    name: str,
    batch: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    how: Repeats | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Parameters, FLOPs, compile time, memory and train/eval images/s of our steps.

    ``how`` says how to time them (default :class:`timing.Repeats`).
    """
    result, train_once, eval_once = prepare_jax(name, batch, model_kwargs, seed)
    result.update(time_train_eval(f"jax {name}", train_once, eval_once, how or Repeats(), batch))
    for kind in ("train", "eval"):
        count = result[f"{kind}_flops"]
        step_s = result[f"{kind}_step_s"]
        result[f"{kind}_gflops_per_s"] = count / step_s / 1e9 if count is not None else None
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def jax_contender(
    name: str,
    batch: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    conv_impl: str = "xla",
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Set up our steps in this (spawned) process for :func:`timing.interleave`.

    Returns the fields of :func:`prepare_jax` with ``framework``, ``conv_impl``
    and ``compile_s`` (trace + lower + compile of the train step, then the eval
    step's), after ``warmup`` calls of each step.
    """
    kwargs = conv_impl_kwargs(conv_impl, model_kwargs)
    result, train_once, eval_once = prepare_jax(name, batch, kwargs, seed)
    for _ in range(warmup):
        train_once()
        eval_once()
    register_steps(train=train_once, eval=eval_once)
    result.update(framework="jax", conv_impl=conv_impl, peak_rss_mib=peak_rss_mib())
    result["train_compile_total_s"] = result["train_lower_s"] + result["train_compile_s"]
    return result


def compile_point(
    name: str, batch: int = 64, model_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Trace/lower and compile time of one preset's train step, on abstract inputs.

    Nothing runs: the step is compiled for ``run.abstract_state()`` and
    ``run.abstract_batch(True)``, exactly what the trainer compiles.
    """
    from sparsenet_jax.training.build import build_run

    setup_jax()
    run = build_run(bench_config(name, batch, model_kwargs))
    _, fields = compile_train(run, run.abstract_state(), run.abstract_batch(True))
    lower_s, compile_s = fields["train_lower_s"], fields["train_compile_s"]
    return {
        "preset": name,
        "schedule": run.model.schedule.kind,
        "units": int(sum(run.model.block_sizes)),
        "params": run.num_params,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "total_s": lower_s + compile_s,
        "train_flops": fields["train_flops"],
        "peak_rss_mib": peak_rss_mib(),
        # Other processes' load while lowering and compiling (cores; 0 = undisturbed).
        "background_cores": max(
            fields["train_lower_background_cores"], fields["train_compile_background_cores"]
        ),
    }
