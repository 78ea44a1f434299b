"""Noise schedule, forward process, DDIM sampler and losses."""
