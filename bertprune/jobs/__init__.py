"""The jobs the root entry points run (train, prune, export, bench): cfg in, result out."""
