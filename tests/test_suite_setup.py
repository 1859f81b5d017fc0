"""The test suite's own setup (conftest.py)."""

from __future__ import annotations

import os

import pytest


def test_the_suite_compiles_at_the_fast_optimisation_level():
    """conftest.py's -O0 reaches the tests and, through the environment, their subprocesses."""
    from train_helpers import FAST_COMPILE_FLAG, cli_env, fast_compile_on

    if not fast_compile_on():
        pytest.skip("SPARSENET_TESTS_XLA_OPT asks for XLA's default optimisation")
    assert FAST_COMPILE_FLAG in os.environ["XLA_FLAGS"].split()
    merged = cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")["XLA_FLAGS"].split()
    assert {FAST_COMPILE_FLAG, "--xla_force_host_platform_device_count=8"} <= set(merged)
    assert FAST_COMPILE_FLAG not in cli_env(optimised=True)["XLA_FLAGS"].split()
