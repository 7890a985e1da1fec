"""Distillation: one core (losses, data, the student+projection objective) shared by the search's
surrogate runs and by pre-training."""
