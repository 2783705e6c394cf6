"""The algorithm core: plain PyTorch, no Hydra, no Lightning.

One module per stage, in pipeline order: ``fisher`` (mask importances) -> ``search`` (masks under the
``cost`` budget) -> ``rearrange`` -> ``tuning`` -> ``physical`` (a smaller model); ``masks`` applies
masks, ``pipeline.prune_model`` runs the stages in order."""
