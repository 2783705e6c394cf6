"""The MLPerf Inference BERT interface: the one definition of the ONNX graph's names, dtypes and order.

Inputs (in this order): ``input_ids``, ``input_mask``, ``segment_ids`` — int64 ``[batch, seq]``.
Outputs: ``output_start_logits``, ``output_end_logits`` (float32 ``[batch, seq]``, in that order) for
question answering (the MLPerf SQuAD v1.1 model); ``logits`` (float32 ``[batch, num_labels]``) for
classification and regression. Export, inspection and the LoadGen harness all read these names here,
and all check a graph with the one ``check_interface``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INPUTS = ("input_ids", "input_mask", "segment_ids")
INPUT_DTYPE = "int64"
# Hugging Face argument behind each MLPerf input name.
HF_INPUTS = {"input_ids": "input_ids", "input_mask": "attention_mask", "segment_ids": "token_type_ids"}
QA_OUTPUTS = ("output_start_logits", "output_end_logits")
LOGITS_OUTPUTS = ("logits",)
OUTPUT_DTYPE = "float32"

INT64, FLOAT = 7, 1  # onnx.TensorProto elem_type codes


class InterfaceError(ValueError):
    """An ONNX graph that does not have the MLPerf BERT interface of its task kind."""


@dataclass
class Signature:
    """An ONNX graph's interface as the harness uses it (what ``check_interface`` returns).

    onnx_seq_len: the graph's fixed sequence length, None when that dimension is dynamic (length
    bucketing allowed); outputs: the interface outputs, in ``onnx_outputs`` order; output_dims: the
    logits' static column count (text kinds), else None."""

    onnx_seq_len: int | None
    outputs: list[str]
    output_dims: int | None


def _dims(value_info) -> tuple:
    """Static sizes, None for a symbolic (dynamic) dimension."""
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim)


def inspect_onnx(model) -> tuple[list[tuple], list[tuple]]:
    """(inputs, outputs) of ``model`` (a path or an ``onnx.ModelProto``) as lists of (name, elem_type, dims);
    dims None = symbolic. Initializers listed as graph inputs are left out. A file that is not readable
    ONNX gives one clear error."""
    import onnx

    path = model
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf DecodeError, truncated file ...
            raise InterfaceError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); the file is corrupt "
                                 "or not ONNX. Re-export it (python export.py ...).") from e
        if model.ir_version == 0 or not model.graph.output:
            raise InterfaceError(f"{path} is not a valid ONNX model (no IR version or no graph outputs); the file is "
                                 "corrupt or empty. Re-export it.")
    init = {i.name for i in model.graph.initializer}
    ins = [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.input if v.name not in init]
    outs = [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.output]
    return ins, outs


def check_interface(model, kind, max_length: int | None = None, num_labels: int | None = None,
                    exported: bool = False, where: str | None = None) -> Signature:
    """Check that ``model`` (a path or an ``onnx.ModelProto``) has the MLPerf BERT interface of ``kind``
    (a ``tasks.kinds.TaskKind``: ``get_kind(name)``); one clear ``InterfaceError`` otherwise. The one check of the interface:
    export runs it on what it wrote, the harness on what it is about to run.

    Inputs: exactly ``INPUTS``, int64 ``[batch, seq]``, one sequence dimension; a fixed one must equal
    ``max_length``. Outputs: the kind's ``onnx_outputs`` (in that order), float32 rank 2; logits
    ``[batch, num_labels]`` when their width is static and ``num_labels`` is given.
    exported=True (the exporter's own output): also the inputs in interface order, the outputs exactly the
    kind's, a dynamic batch dimension and (``max_length`` given) exactly that fixed sequence length.
    """
    where = where or str(model if isinstance(model, (str, Path)) else "exported graph")
    ins, outs = inspect_onnx(model)
    names = [n for n, _, _ in ins]
    if sorted(names) != sorted(INPUTS) or (exported and tuple(names) != INPUTS):
        raise InterfaceError(f"{where}: inputs {names} do not match the MLPerf BERT interface, which needs exactly "
                             f"{list(INPUTS)} in that order (int64 [batch, seq]; an input folded away by the exporter "
                             "means the model ignores it). Export with bertprune.onnx.export.")
    seqs = set()
    for name, elem, dims in ins:
        if elem != INT64 or len(dims) != 2:
            raise InterfaceError(f"{where}: input {name} must be int64 [batch, seq], got elem_type={elem} "
                                 f"rank={len(dims)}")
        if exported and dims[0] is not None:
            raise InterfaceError(f"{where}: input {name} has a fixed batch dimension {dims[0]}; the interface's "
                                 "batch is dynamic")
        seqs.add(dims[1])
    if len(seqs) != 1:
        raise InterfaceError(f"{where}: inputs disagree on the sequence dimension: {sorted(map(str, seqs))}")
    onnx_seq_len = seqs.pop()
    if exported and max_length is not None and onnx_seq_len != max_length:
        raise InterfaceError(f"{where}: sequence dimension {onnx_seq_len or 'dynamic'}; expected fixed {max_length}")
    if onnx_seq_len is not None and max_length is not None and onnx_seq_len != max_length:
        raise InterfaceError(f"{where}: fixed sequence length {onnx_seq_len} but the task's max_length is "
                             f"{max_length}; re-export with the task's length or a dynamic sequence dimension")
    out_names = [n for n, _, _ in outs]
    want = kind.onnx_outputs
    if [n for n in out_names if n in want] != list(want) or (exported and tuple(out_names) != want):
        if want == LOGITS_OUTPUTS:
            hint = "Is this a question-answering model? (then pass task=squad)"
            shape = f"[batch, {num_labels or 'num_labels'}]"
        else:
            hint = "Is this a classification model?"
            shape = "(float32 [batch, seq])"
        raise InterfaceError(f"{where}: outputs {out_names}; a {kind.name} model must output "
                             f"{list(want) if len(want) > 1 else repr(want[0])} {shape}. {hint}")
    by_name = {n: (elem, dims) for n, elem, dims in outs}
    for name in (out_names if exported else want):
        elem, dims = by_name[name]
        if len(dims) != 2 or elem != FLOAT:
            raise InterfaceError(f"{where}: output {name} must be float32 rank 2, got elem_type={elem} "
                                 f"rank {len(dims)}")
    output_dims = None
    if want == LOGITS_OUTPUTS:
        output_dims = by_name[want[0]][1][1]
        if output_dims is not None and num_labels is not None and output_dims != num_labels:
            raise InterfaceError(f"{where}: logits have {output_dims} columns but the task has num_labels={num_labels}")
    return Signature(onnx_seq_len=onnx_seq_len, outputs=list(want), output_dims=output_dims)
