"""bort: make BERT-family encoders small and fast without losing accuracy."""

__version__ = "0.1.0"

from bort.api import ExtractionResult, cost, extract  # noqa: E402
from bort.errors import BortError  # noqa: E402
from bort.families import register_family  # noqa: E402

__all__ = ["BortError", "ExtractionResult", "cost", "extract", "register_family"]
