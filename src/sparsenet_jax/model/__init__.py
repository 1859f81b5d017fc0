"""The network: the connection schedule, the aggregating block and its units, the
presets of the paper, parameter arithmetic, and moving weights in and out
(official PyTorch checkpoints, another label set, Flax NNX).

Imports nothing from :mod:`sparsenet_jax.training` or :mod:`sparsenet_jax.tools`.
"""
