"""Cost model (MACs) of a BERT-family encoder (docs/method.md, "Cost model").

Per head: ``4·S·d·d_h + 2·S²·d_h`` (Q, K, V and output projections + the two attention matmuls);
per FFN neuron: ``2·S·d``. Embeddings, LayerNorms and the classifier are not counted.
S is the task's average token length.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def encoder(self, num_heads: int, num_neurons: int) -> float:
        """MACs of an encoder keeping ``num_heads`` heads and ``num_neurons`` FFN neurons in total."""
        return num_heads * self.head + num_neurons * self.neuron

    @classmethod
    def for_model(cls, model, seq_len: float) -> "MacCost":
        from bertprune.models.adapters import adapter_for

        adapter = adapter_for(model)
        return cls(seq_len=float(seq_len), hidden_size=adapter.hidden_size(model.config),
                   head_size=adapter.head_size(model.config))
