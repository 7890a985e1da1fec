"""bort: make BERT-family encoders small and fast without losing accuracy.

The public API, one function per step: cost, extract, pretrain, finetune, agora, bench, export.
"""

__version__ = "0.1.0"

from bort.api import ExtractionResult, agora, bench, cost, export, extract, finetune, pretrain  # noqa: E402
from bort.errors import BortError  # noqa: E402
from bort.families import register_family  # noqa: E402

__all__ = ["BortError", "ExtractionResult", "agora", "bench", "cost", "export", "extract", "finetune", "pretrain",
           "register_family"]
