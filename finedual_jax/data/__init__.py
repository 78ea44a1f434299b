"""Batch contract, tokenizer, per-person text decomposition and the input pipeline."""
