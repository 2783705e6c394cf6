"""The torch module that exports with the MLPerf BERT interface (``bertprune/interface.py``): MLPerf input names
in, the task kind's graph outputs out. Export, the parity check and the latency probe all wrap a model in it."""

from __future__ import annotations

import torch

from bertprune.models.adapters import adapter_for


class MLPerfWrapper(torch.nn.Module):
    """MLPerf names -> Hugging Face names; returns the kind's ``graph_outputs`` ((start, end) logits for
    qa, ``[batch, seq]`` each; else the logits ``[batch, num_labels]``). kind: a ``tasks.kinds.TaskKind``.

    ``segment_ids`` stays a graph input for every family: a family that reads no token types (its
    adapter's ``takes_token_types``: DistilBERT, RoBERTa) gets it through a zero-cost use (``input_ids
    + 0 * segment_ids``), so the exporter does not fold the input away."""

    def __init__(self, model, kind):
        super().__init__()
        self.model, self.kind = model, kind
        self.takes_token_types = adapter_for(model).takes_token_types

    def forward(self, input_ids, input_mask, segment_ids):
        if self.takes_token_types:
            out = self.model(input_ids=input_ids, attention_mask=input_mask, token_type_ids=segment_ids)
        else:
            out = self.model(input_ids=input_ids + 0 * segment_ids, attention_mask=input_mask)
        outs = self.kind.graph_outputs(out)
        return outs if len(outs) > 1 else outs[0]
