"""``python -m sparsenet_jax.data prepare NAME --data-dir DIR``: runs ``cli.main``."""

import sys

from sparsenet_jax.data.cli import main

sys.exit(main())
