"""bort: make BERT-family encoders small and fast without losing accuracy.

The public API, one function per step (cost, extract, pretrain, finetune, agora, bench, export) and `run` for all
of them. It is imported on first use, so `import bort` (and `bort --help`) does not pay for torch and transformers.
"""

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
