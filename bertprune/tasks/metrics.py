"""Metric functions of the text task kinds (numpy only, so summaries can read ``METRICS`` without torch).

Each metric takes predictions and references as 1-D arrays ``[N]``: class ids for the classification
metrics, floats for the regression ones. A task picks its metrics (``task.metrics``, the primary one
first, e.g. ``[mcc]`` for CoLA); its kind (``bertprune.tasks.kinds``) says which metrics it can compute.
Units: accuracy and F1 in %, correlations in [-1, 1], MSE in label units squared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    """Share of ``pred == ref``, in %."""
    return 100.0 * float(np.mean(np.asarray(pred) == np.asarray(ref)))


def f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """Binary F1 of the positive class 1 (GLUE's MRPC/QQP F1), in %; 0 when there is no true positive."""
    pred, ref = np.asarray(pred) == 1, np.asarray(ref) == 1
    tp = float(np.sum(pred & ref))
    denom = float(np.sum(pred) + np.sum(ref))
    return 100.0 * 2.0 * tp / denom if denom else 0.0


def mcc(pred: np.ndarray, ref: np.ndarray) -> float:
    """Matthews correlation coefficient (multiclass form of Gorodkin 2004; binary = the phi coefficient);
    0 when a marginal is constant (as scikit-learn returns)."""
    pred, ref = np.asarray(pred).astype(np.int64), np.asarray(ref).astype(np.int64)
    k = int(max(pred.max(initial=0), ref.max(initial=0))) + 1
    c = np.zeros((k, k), dtype=np.float64)
    np.add.at(c, (ref, pred), 1.0)
    t, p, n, correct = c.sum(axis=1), c.sum(axis=0), c.sum(), np.trace(c)
    cov = correct * n - float(t @ p)
    denom = np.sqrt(n * n - float(p @ p)) * np.sqrt(n * n - float(t @ t))
    return float(cov / denom) if denom else 0.0


def pearson(pred: np.ndarray, ref: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def spearman(pred: np.ndarray, ref: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties handled as scipy does)."""
    return pearson(_ranks(pred), _ranks(ref))


def mse(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared error, in the inputs' precision (float32 logits: float32, as bertprune always reported it)."""
    return float(np.mean((np.asarray(pred) - np.asarray(ref)) ** 2))


@dataclass(frozen=True)
class Metric:
    """A metric's function and how it reads: which way is better, and its display format."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float] | None  # None: computed by its kind's own scorer (SQuAD)
    higher_is_better: bool = True
    fmt: str = "{:.4f}"  # correlations: 4 digits; % metrics: 2 decimals


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", accuracy, fmt="{:.2f}"), Metric("f1", f1, fmt="{:.2f}"), Metric("mcc", mcc),
    Metric("pearson", pearson), Metric("spearman", spearman), Metric("mse", mse, higher_is_better=False, fmt="{:.4g}"),
    Metric("exact_match", None, fmt="{:.2f}"),  # SQuAD: scored by bertprune.tasks.squad
)}


def metric_format(name: str) -> str:
    """Display format of a metric (``{:.4g}`` for one not listed in ``METRICS``)."""
    m = METRICS.get(name)
    return m.fmt if m else "{:.4g}"
