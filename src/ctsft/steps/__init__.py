"""Hydra entry points, one per workflow step: `python -m ctsft.steps.<step> key=value ...`."""
