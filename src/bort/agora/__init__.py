"""Agora: fine-tuning with scarce data by generating, labelling and adding points near the model's mistakes."""

from bort.agora.rounds import agora, carve_dev
from bort.agora.transforms import TRANSFORMS, MaskedInfilling, NeighbourSubstitution, Similarity

__all__ = ["TRANSFORMS", "MaskedInfilling", "NeighbourSubstitution", "Similarity", "agora", "carve_dev"]
