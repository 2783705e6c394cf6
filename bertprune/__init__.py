"""bertprune: retraining-free post-training pruning of BERT-family models.

Pipeline (one module per stage): ``train`` (dense teacher) -> ``prune`` (Fisher -> search ->
rearrange -> tune -> physically smaller model) -> ``export`` (ONNX, MLPerf interface) -> ``bench``
(MLPerf LoadGen). The algorithm core (masks, fisher, search, rearrange, tuning, cost, physical)
imports neither Hydra nor Lightning.
"""

__version__ = "0.1.0"
