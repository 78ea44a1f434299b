"""Flax modules: text encoder and denoisers."""
