"""bort: make BERT-family encoders small and fast without losing accuracy."""

__version__ = "0.1.0"
