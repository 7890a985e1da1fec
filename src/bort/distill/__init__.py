"""Distillation pre-training: corpus data (packing, masking, cache, the batch plan), slicing init, `bort pretrain`."""
