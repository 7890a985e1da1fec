"""bort: make BERT-family encoders small and fast without losing accuracy.

The public API, one function per step (cost, extract, pretrain, finetune, agora, bench, export) and `run` for all
of them. It is imported on first use, so `import bort` (and `bort --help`) does not pay for torch and transformers.
"""

import sys
import types

from bort.errors import BortError

__version__ = "0.1.0"
__all__ = ["BenchResult", "BortError", "CostResult", "ExportResult", "ExtractionResult", "PretrainResult",
           "RunResult", "TaskResult", "agora", "bench", "cost", "export", "extract", "finetune", "pretrain",
           "register_family", "run"]


def __getattr__(name: str):
    if name in __all__:
        from bort import api

        return getattr(api, name)
    raise AttributeError(f"module 'bort' has no attribute '{name}'")


class _Package(types.ModuleType):
    """`bort.agora` stays the API function once the `bort.agora` package is imported: the import system binds a
    subpackage to its parent's attribute, and this property takes that binding (the package itself is reached
    by its module path, `bort.agora.rounds`, as always)."""

    @property
    def agora(self):
        from bort.api import agora

        return agora

    @agora.setter
    def agora(self, package: types.ModuleType) -> None:
        pass


sys.modules[__name__].__class__ = _Package
