"""Inference speed: measured latency (cached per hardware and runtime), benchmarking and export."""
