"""Training: the run's configuration and flags, building the jitted steps, the
input pipeline, the loop, checkpoints and the workdir, and the command line.

Builds on :mod:`sparsenet_jax.model` and :mod:`sparsenet_jax.data`; imports
nothing from :mod:`sparsenet_jax.tools`.
"""
