"""Tools around a run: ahead-of-time compiling for a TPU (``aot``), exporting
and loading ``jax.export`` artifacts, and the figures and tables.
"""
