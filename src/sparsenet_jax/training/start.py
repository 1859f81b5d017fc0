"""Where a run starts: the newest healthy checkpoint, a chosen one, or fresh weights.

A fresh run starts from initialised weights, or with ``--init-from`` from
another run's checkpoint or an official PyTorch ``.pth`` file (fine-tuning:
a classifier of another size is re-initialised, and one line names it).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from sparsenet_jax.training import health, replicas, steps
from sparsenet_jax.training import mesh as mesh_lib
from sparsenet_jax.training.build import Run
from sparsenet_jax.training.checkpoints import Checkpoints
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.identity import read_saved

log = logging.getLogger("sparsenet_jax.training")


def starting_state(run: Run, workdir: pathlib.Path, checkpoints: Checkpoints) -> steps.TrainState:
    """The state the run's first step starts from (replicated on the run's mesh).

    Raises:
      TrainingError: the newest checkpoint was saved while the run was
        diverging (the message names the newest healthy one and the flag that
        resumes from it), or ``--init-from`` cannot be used.
    """
    initial = run.init_state()
    asked = run.config.restore_step
    restored = checkpoints.resume(initial, asked)
    if restored is None:
        return from_init(run, initial) if run.config.init_from else initial
    state, step = restored
    if asked is None:
        _refuse_if_diverged(run, workdir, checkpoints, step)
    log.info("resumed from step %d", step)
    return mesh_lib.replicate(state, run.mesh)


def _refuse_if_diverged(
    run: Run, workdir: pathlib.Path, checkpoints: Checkpoints, step: int
) -> None:
    records = health.read_records(workdir)
    classes = run.info.num_classes
    verdict = health.judge(records, step, classes)
    if verdict.healthy:
        return
    healthy = [
        s
        for s in checkpoints.saved_steps()
        if s < step and health.judge(records, s, classes).healthy
    ]
    advice = (
        f"the newest healthy checkpoint is step {healthy[0]}: resume from it with "
        f"--restore-step {healthy[0]} (and a lower --lr)"
        if healthy
        else "no checkpoint is healthy: use a new --workdir (and a lower --lr)"
    )
    raise TrainingError(
        f"checkpoint {step} in {checkpoints.folder} was saved while the run was diverging "
        f"(training loss {verdict.loss:.4g} logged at step {verdict.logged_at}, over "
        f"{health.loss_limit(classes):.3g}); {advice}"
    )


def from_init(run: Run, initial: steps.TrainState) -> steps.TrainState:
    """``initial`` with the weights of ``--init-from`` (optimizer state and step fresh).

    With ``--seeds`` every replica starts from those weights; a re-initialised
    classifier is drawn from each replica's own seed.
    """
    per_seed = [load_init_variables(run, seed) for seed in run.config.replica_seeds]
    variables = per_seed[0] if run.seeds == 1 else jax.tree.map(lambda *v: jnp.stack(v), *per_seed)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    init = run.tx.init if run.seeds == 1 else jax.vmap(run.tx.init)
    state = initial.replace(params=params, batch_stats=batch_stats, opt_state=init(params))
    return mesh_lib.replicate(state, run.mesh)


def load_init_variables(run: Run, seed: int | None = None) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` for ``run.model`` from ``--init-from``.

    A ``.pth``/``.npz`` is an official PyTorch checkpoint; anything else is one
    of our workdirs (its newest good checkpoint) or one of its checkpoint
    folders (``WORKDIR/checkpoints/STEP``). A re-initialised classifier is drawn
    from ``seed`` (default: the run's).
    """
    seed = run.config.seed if seed is None else seed
    from sparsenet_jax.model.convert import load_pretrained
    from sparsenet_jax.model.finetune import adapt_num_classes

    source = pathlib.Path(str(run.config.init_from))
    if source.suffix in (".pth", ".npz", ".pt"):
        try:
            return load_pretrained(
                run.model,  # load_pretrained reads the file's own number of classes
                source,
                num_classes=run.info.num_classes,
                seed=seed,
            )
        except (ValueError, TypeError, KeyError) as err:
            raise TrainingError(f"--init-from {source}: {err}") from None
    tree = _restore_other_run(source)
    variables = {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
    try:
        return adapt_num_classes(run.model, variables, seed)
    except ValueError as err:
        raise TrainingError(f"--init-from {source}: {err}") from None


def _restore_other_run(source: pathlib.Path) -> dict[str, Any]:
    step = None
    workdir = source
    if source.name.isdigit() and source.parent.name == "checkpoints":
        workdir, step = source.parent.parent, int(source.name)
    if not (workdir / "checkpoints").is_dir():
        raise TrainingError(
            f"--init-from {source}: not a workdir with checkpoints, a checkpoint folder, "
            "or a .pth file"
        )
    checkpoints = Checkpoints(workdir)
    try:
        restored = checkpoints.restore(None, step)
    finally:
        checkpoints.close()
    if restored is None:
        raise TrainingError(f"--init-from {source}: no checkpoint in {workdir / 'checkpoints'}")
    tree, found = restored
    log.info("initialised from step %d of %s", found, workdir)
    tree = {key: tree[key] for key in ("params", "batch_stats") if key in tree}
    seeds = int((read_saved(workdir) or {}).get("seeds", 1))
    if seeds > 1:  # a --seeds run: its first replica
        log.info("%s holds %d replicas (--seeds); starting from the first", workdir, seeds)
        tree = replicas.select(tree, 0, seeds)
    return jax.device_get(tree)
