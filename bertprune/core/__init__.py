"""The algorithm core: plain PyTorch, no Hydra, no Lightning."""
