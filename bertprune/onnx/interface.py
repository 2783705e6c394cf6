"""The MLPerf Inference BERT interface: the one definition of the ONNX graph's names, dtypes and order.

Inputs (in this order): ``input_ids``, ``input_mask``, ``segment_ids`` — int64 ``[batch, seq]``.
Outputs: ``output_start_logits``, ``output_end_logits`` (float32 ``[batch, seq]``, in that order) for
question answering (the MLPerf SQuAD v1.1 model); ``logits`` (float32 ``[batch, num_labels]``) for
classification and regression. Export, inspection and the LoadGen harness all read these names here.
"""

from __future__ import annotations

INPUTS = ("input_ids", "input_mask", "segment_ids")
INPUT_DTYPE = "int64"
# Hugging Face argument behind each MLPerf input name.
HF_INPUTS = {"input_ids": "input_ids", "input_mask": "attention_mask", "segment_ids": "token_type_ids"}
QA_OUTPUTS = ("output_start_logits", "output_end_logits")
LOGITS_OUTPUTS = ("logits",)
OUTPUT_DTYPE = "float32"
