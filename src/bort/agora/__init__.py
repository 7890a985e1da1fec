"""Agora: fine-tuning with scarce data by generating, labelling and adding points near the model's mistakes."""
