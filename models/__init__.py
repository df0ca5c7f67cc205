"""Torch model code: the pixel-space CLIP wrapper, loading and checkpoints, the shipped mini models, and
the torch halves of zero-shot heads, purification, the attack score and TTC. Never imported by a server."""
