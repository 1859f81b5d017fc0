"""The module paths from before the model / training / tools wings, kept for one release.

``import sparsenet_jax.steps`` (or ``from sparsenet_jax.convert import …``,
or ``python -m sparsenet_jax.plot``) still works: it gives the module at its
new home and warns once, naming that home. Nothing here is a copy: the old
name is another key for the same module object.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

# Old module (below ``sparsenet_jax.``) → its new home.
MOVED = {
    "arithmetic": "model.arithmetic",
    "convert": "model.convert",
    "finetune": "model.finetune",
    "layers": "model.block",
    "model_checks": "model.checks",
    "models": "model.network",
    "nnx": "model.nnx",
    "norms": "model.norms",
    "presets": "model.presets",
    "schedule": "model.schedule",
    "units": "model.units",
    "build": "training.build",
    "checkpoints": "training.checkpoints",
    "cli": "training.cli",
    "config": "training.config",
    "errors": "training.errors",
    "flags": "training.flags",
    "input_pipeline": "training.input_pipeline",
    "memory": "training.memory",
    "reporting": "training.reporting",
    "signals": "training.signals",
    "steps": "training.steps",
    "workdir": "training.workdir",
    "curves": "tools.curves",
    "exported": "tools.artifact",
    "figures": "tools.figures",
    "plot": "tools.plot",
    "tables": "tools.tables",
    "tpu_chips": "tools.tpu_chips",
}
PACKAGE = "sparsenet_jax"
_warned: set[str] = set()


def warn_moved(old: str, new: str) -> None:
    """Warn once per old name (FutureWarning: shown to users, not only to tests)."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(
        f"{old} has moved to {new}; the old path works until the next release",
        FutureWarning,
        stacklevel=3,
    )


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finds ``sparsenet_jax.<old>`` and loads it as the module's new home."""

    def find_spec(
        self, fullname: str, path: Any = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        del path, target
        if self.new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    @staticmethod
    def new_name(fullname: str) -> str | None:
        package, _, old = fullname.partition(".")
        if package != PACKAGE or old not in MOVED:
            return None
        return f"{PACKAGE}.{MOVED[old]}"

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system reads the module back from sys.modules after this
        # call, so putting the real one there makes the old name an alias.
        new = self.new_name(module.__name__)
        assert new is not None
        warn_moved(module.__name__, new)
        sys.modules[module.__name__] = importlib.import_module(new)

    def get_source(self, fullname: str) -> str:
        """What ``python -m <old name>`` runs: the new module, as ``__main__``."""
        return (
            "import runpy\n"
            "from sparsenet_jax._legacy import warn_moved\n"
            f"warn_moved({fullname!r}, {self.new_name(fullname)!r})\n"
            f"runpy.run_module({self.new_name(fullname)!r}, run_name='__main__', alter_sys=True)\n"
        )


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def forward_attributes(entry: str, target: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for an entry module whose contents moved to ``target``.

    ``sparsenet_jax.train`` was the training loop and is now only the
    ``python -m`` entry: ``from sparsenet_jax.train import train_and_evaluate``
    keeps working, with a warning naming ``target``.
    """

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        module = importlib.import_module(target)
        if not hasattr(module, name):
            raise AttributeError(f"module {entry!r} has no attribute {name!r}")
        warn_moved(f"{entry}.{name}", f"{target}.{name}")
        return getattr(module, name)

    return __getattr__
