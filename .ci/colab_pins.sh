#!/usr/bin/env bash
# The Colab job: install the project under Colab's TPU-runtime versions
# (.ci/colab-constraints.txt) into a fresh venv, then run the fast suite and
# the notebook in quick mode. These pins are the oldest versions we test, and
# pyproject's lower bounds for jax, flax, optax, chex, orbax-checkpoint and
# tensorflow-datasets are set to them.
#
# Colab runs Python 3.13; this job uses the machine's python3 (3.11 in CI).
# Set COLAB_PYTHON to another interpreter (e.g. python3.13) to use that one.
# pip's cache is reused on purpose: a warm cache saves the downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

python=${COLAB_PYTHON:-python3}
# A venv outside the work tree: nothing to ignore, and nothing left behind.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$python" -m venv "$scratch/venv-colab"
# shellcheck disable=SC1091
. "$scratch/venv-colab/bin/activate"

echo "== Colab pins: pip install -c .ci/colab-constraints.txt -e '.[test]' ($(python --version))"
pip install -q -c .ci/colab-constraints.txt -e '.[test]'

echo "== tested versions"
pip freeze | grep -iE '^(jax|jaxlib|flax|optax|chex|orbax-checkpoint|tensorflow-datasets|numpy)=='

echo "== Colab pins: fast tests (python -m pytest -n 2)"
python -m pytest -n 2

echo "== Colab pins: the notebook in quick mode (python -m pytest -m slow tests/test_notebook.py)"
python -m pytest -n 0 -m slow tests/test_notebook.py
