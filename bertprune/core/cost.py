"""Cost models of a BERT-family model (docs/method.md, "Cost model" and "Latency cost model").

``MacCost``: multiply-accumulates of the encoder. Per head: ``4·S·d·d_h + 2·S²·d_h`` (Q, K, V and output
projections + the two attention matmuls); per FFN neuron: ``2·S·d``. Embeddings, LayerNorms and the
classifier are not counted. S is the task's average token length.

``LatencyCost``: milliseconds of the whole served model, ``fixed + Σ_l mha(h_l) + ffn(n_l)`` with ``mha``
and ``ffn`` piecewise-linear fits of a lookup table measured on the serving runtime
(``bertprune.onnx.latency``; this module only fits and evaluates it, it runs nothing).

Both offer ``mha_cost(h)``, ``ffn_cost(n)`` (one layer) and ``total(heads_per_layer, ffn_per_layer)``
(``CostModel``), which is what the search (``bertprune.core.search.search_masks``) reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class MacCost:
    seq_len: float  # S
    hidden_size: int  # d
    head_size: int  # d_h

    @property
    def head(self) -> float:
        S, d, dh = self.seq_len, self.hidden_size, self.head_size
        return 4 * S * d * dh + 2 * S * S * dh

    @property
    def neuron(self) -> float:
        return 2 * self.seq_len * self.hidden_size

    name = "mac"
    unit = "MACs"

    def encoder(self, num_heads: int, num_neurons: int) -> float:
        """MACs of an encoder keeping ``num_heads`` heads and ``num_neurons`` FFN neurons in total."""
        return num_heads * self.head + num_neurons * self.neuron

    def mha_cost(self, heads):
        return heads * self.head

    def ffn_cost(self, neurons):
        return neurons * self.neuron

    def total(self, heads_per_layer, ffn_per_layer) -> float:
        return self.encoder(int(sum(heads_per_layer)), int(sum(ffn_per_layer)))

    @classmethod
    def for_model(cls, model, seq_len: float) -> "MacCost":
        from bertprune.models.adapters import adapter_for

        adapter = adapter_for(model)
        return cls(seq_len=float(seq_len), hidden_size=adapter.hidden_size(model.config),
                   head_size=adapter.head_size(model.config))


# ----------------------------------------------------------------------------------------------
# Latency (docs/method.md, "Latency cost model"): a lookup table measured on the serving runtime, fitted


def isotonic(values) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators):
    latency never falls when a block keeps more units, so timing noise is not allowed to say it does."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in map(float, values):
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return [m for m, w in blocks for _ in range(int(w))]


@dataclass(frozen=True)
class PiecewiseLinear:
    """A non-decreasing piecewise-linear function of a unit count through fitted sample points.

    counts: the sampled unit counts, strictly increasing from 0 (e.g. 0, 192, ..., 1536 FFN neurons);
    values: the fitted cost at each (non-decreasing, ``isotonic`` of the measured medians)."""

    counts: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.counts) < 2 or len(self.counts) != len(self.values) or self.counts[0] != 0:
            raise ValueError(f"a piecewise-linear cost needs >= 2 sample points starting at 0, got counts "
                             f"{list(self.counts)} and {len(self.values)} values")
        if any(b <= a for a, b in zip(self.counts, self.counts[1:])):
            raise ValueError(f"sample counts must increase strictly: {list(self.counts)}")
        if any(b < a for a, b in zip(self.values, self.values[1:])):
            raise ValueError("sample values must not decrease (fit them with PiecewiseLinear.fit)")

    @classmethod
    def fit(cls, counts, values) -> "PiecewiseLinear":
        """Through the isotonic fit of measured ``values`` at ``counts`` (sorted here)."""
        pairs = sorted(zip((int(c) for c in counts), (float(v) for v in values)))
        return cls(tuple(c for c, _ in pairs), tuple(isotonic(v for _, v in pairs)))

    @property
    def max_count(self) -> int:
        return self.counts[-1]

    def __call__(self, n) -> torch.Tensor | float:
        """The cost at ``n`` units (an int, or an integer tensor of any shape -> float64 tensor of that shape)."""
        x = torch.as_tensor(n, dtype=torch.float64)
        xs = torch.tensor(self.counts, dtype=torch.float64)
        ys = torch.tensor(self.values, dtype=torch.float64)
        if bool(((x < 0) | (x > xs[-1])).any()):
            raise ValueError(f"unit count outside the table's 0..{self.max_count}: {n}")
        i = torch.searchsorted(xs, x.contiguous(), right=True).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        out = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return float(out) if out.dim() == 0 else out


@dataclass(frozen=True)
class LatencyCost:
    """Latency (ms) of a whole served model: ``fixed + Σ_layers mha(h_l) + ffn(n_l)``.

    fixed: the model with every head and neuron pruned (embeddings, the classifier / span head and each
    layer's remaining biases and LayerNorms); mha / ffn: what a layer's attention with h heads / FFN with
    n neurons adds to it (``mha(0) = ffn(0) = 0``). ``table``: the measured lookup table it was fitted
    from (plain data: settings, samples, timings; ``bertprune.onnx.latency`` measures and caches it).
    mac: the MAC model of the same encoder, for the MAC figures reported next to latency."""

    mha: PiecewiseLinear
    ffn: PiecewiseLinear
    fixed: float
    num_layers: int  # L
    table: dict = field(default_factory=dict, compare=False, hash=False)
    mac: MacCost | None = None
    name = "latency"
    unit = "ms"

    def __post_init__(self) -> None:
        if self.mha.values[0] != 0 or self.ffn.values[0] != 0:
            raise ValueError("mha(0) and ffn(0) must be 0 (a pruned block's remaining cost is part of fixed)")
        if not (self.fixed >= 0 and self.num_layers >= 1):
            raise ValueError(f"fixed={self.fixed} must be >= 0 and num_layers={self.num_layers} >= 1")

    @property
    def num_heads(self) -> int:  # H
        return self.mha.max_count

    @property
    def num_neurons(self) -> int:  # F
        return self.ffn.max_count

    def mha_cost(self, heads):
        return self.mha(heads)

    def ffn_cost(self, neurons):
        return self.ffn(neurons)

    def total(self, heads_per_layer, ffn_per_layer) -> float:
        """Predicted latency of a model with these per-layer head counts and FFN widths (``[L]`` each)."""
        if len(heads_per_layer) != self.num_layers or len(ffn_per_layer) != self.num_layers:
            raise ValueError(f"{len(heads_per_layer)} head counts / {len(ffn_per_layer)} FFN widths for a "
                             f"{self.num_layers}-layer latency table")
        h = torch.as_tensor(list(heads_per_layer)).reshape(-1)
        n = torch.as_tensor(list(ffn_per_layer)).reshape(-1)
        return self.fixed + float(self.mha(h).sum()) + float(self.ffn(n).sum())

    def dense_total(self) -> float:
        return self.total([self.num_heads] * self.num_layers, [self.num_neurons] * self.num_layers)

    @classmethod
    def from_table(cls, table: dict, mac: MacCost | None = None) -> "LatencyCost":
        """Fit a measured table (``bertprune.onnx.latency.measure_table``'s plain data) into the cost model.

        The table holds median times (ms) of models whose ``sample_layers`` layers (default 1) all keep the
        same width: ``mha`` = {counts, ms} with the FFN pruned away, ``ffn`` = {counts, ms} with the
        attention pruned away (count 0: nothing kept), and two whole models, ``skeleton_ms`` (every unit
        pruned) and ``dense_ms``. A layer's block costs its increment over count 0, divided by
        ``sample_layers``; the increments are scaled by one factor so that the dense prediction equals the
        measured dense model (the two blocks together run a little differently than each alone), and
        ``fixed`` is the skeleton."""
        L = int(table["geometry"]["num_layers"])
        per = int(table.get("sample_layers", 1))
        mha = PiecewiseLinear.fit(table["mha"]["counts"], table["mha"]["ms"])
        ffn = PiecewiseLinear.fit(table["ffn"]["counts"], table["ffn"]["ms"])
        d_mha = [(v - mha.values[0]) / per for v in mha.values]
        d_ffn = [(v - ffn.values[0]) / per for v in ffn.values]
        fixed, dense = float(table["skeleton_ms"]), float(table["dense_ms"])
        per_layer = d_mha[-1] + d_ffn[-1]
        scale = (dense - fixed) / (L * per_layer) if per_layer > 0 and dense > fixed else 1.0
        return cls(PiecewiseLinear(mha.counts, tuple(v * scale for v in d_mha)),
                   PiecewiseLinear(ffn.counts, tuple(v * scale for v in d_ffn)),
                   fixed=fixed, num_layers=L, table={**table, "scale": scale}, mac=mac)


class CostModel(Protocol):
    """What the search and the pipeline need of a cost model (``MacCost``, ``LatencyCost``)."""

    name: str

    def mha_cost(self, heads): ...  # a layer's attention keeping ``heads`` heads (int or tensor)

    def ffn_cost(self, neurons): ...  # a layer's FFN keeping ``neurons`` neurons

    def total(self, heads_per_layer, ffn_per_layer) -> float: ...


def mac_model(cost) -> MacCost | None:
    """The MAC model of a cost model: itself, or the one a latency model carries (None: none)."""
    return cost if isinstance(cost, MacCost) else getattr(cost, "mac", None)
