"""Structured configs: every config in conf/ composes; bad keys, types and choices fail at composition
(or in validation), naming the key, before a teacher is trained and with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, compose_cfg
from hydra.errors import ConfigCompositionException

from bertprune.config import validate_export, validate_prune, validate_train

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"train": ("model", "task", "training", "logger", "hardware"),
          "prune": ("model", "task", "training", "method", "cost", "hardware", "logger", "unstructured"),
          "export": ("task", "hardware"), "bench": ("task", "scenario")}
REQUIRED = {"export": ["source=x"], "bench": ["source=x"]}
VALIDATE = {"train": validate_train, "prune": validate_prune, "export": validate_export}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


def test_every_group_in_conf_is_used_by_a_config():
    groups = {p.name for p in Path(CONF).iterdir() if p.is_dir()} - {"hydra"}  # hydra/: Hydra's own groups
    assert groups == {g for gs in GROUPS.values() for g in gs}
    assert {p.parent.name + "/" + p.stem for p in (Path(CONF) / "hydra").rglob("*.yaml")} == {"launcher/slurm"}


@pytest.mark.parametrize("config,group,option", [(c, g, o) for c, gs in GROUPS.items() for g in gs
                                                 for o in _options(g)])
def test_every_config_composes_and_validates(config, group, option, tmp_path):
    cfg = compose_cfg(config, [f"{group}={option}", *REQUIRED.get(config, [])], tmp_path)
    assert cfg[group] is not None
    if config in VALIDATE:
        VALIDATE[config](cfg)
    if config == "bench":
        from bertprune.scenarios import resolve_scenarios

        assert resolve_scenarios(dict(cfg.scenario))


def test_all_scenarios_at_once_and_a_sweep_value_compose(tmp_path):
    from bertprune.scenarios import resolve_scenarios

    cfg = compose_cfg("bench", ["source=x", "scenario=[offline,single_stream,server,multi_stream]"], tmp_path)
    assert len(resolve_scenarios(dict(cfg.scenario))) == 4
    cfg = compose_cfg("prune", ["constraint=0.4"], tmp_path)
    assert cfg.constraint == 0.4 and isinstance(cfg.constraint, float)
    assert cfg.hardware.accelerator == "cpu" and f"{cfg.hardware.accelerator}" == "cpu"  # choices compare as strings


@pytest.mark.parametrize("config,override,key", [
    ("prune", "logger=bogus", "logger"),
    ("train", "logger=bogus", "logger"),
    ("prune", "quantize=int4", "quantize"),
    ("prune", "hardware.runtime_device=tpu", "runtime_device"),
    ("prune", "num_samples=abc", "num_samples"),
    ("prune", "constraint=abc", "constraint"),
    ("prune", "constriant=0.5", "constriant"),
    ("prune", "hardware.accelerator=tpu", "hardware.accelerator"),
    ("prune", "cost=energy", "cost"),
    ("prune", "method=fastest", "method"),
    ("prune", "training.epochs=two", "training.epochs"),
    ("export", "quantize=int4", "quantize"),
    ("export", "hardware.runtime_device=tpu", "runtime_device"),
    ("bench", "mode=perf", "mode"),
    ("bench", "hardware.runtime_device=tpu", "runtime_device"),
])
def test_bad_values_fail_at_composition_naming_the_key(config, override, key, tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(config, [override, *REQUIRED.get(config, [])], tmp_path)
    message = f"{info.value} {info.value.__cause__}"
    assert key in message and override.split("=")[1] in message


@pytest.mark.parametrize("override,match", [
    ("hardware.precision=bogus", "hardware.precision='bogus' is not a Lightning precision"),
    ("eval_batch_size=0", "eval_batch_size=0 must be an integer >= 1"),
    ("batch_size=0", "^batch_size=0 must be"),
    ("num_samples=0", "^num_samples=0 must be"),
    ("+constriant=0.5", "constriant is not a config key .did you mean constraint"),
    ("+method.dampnig=1", "method.dampnig is not an option of bertprune.core.iterative.Iterative .did you mean method.damping"),
    ("method.last_layer_tokens=some", "method.last_layer_tokens='some': Invalid value 'some'"),
    ("+task.nmu_labels=3", "task.nmu_labels is not a key of the task group"),
    ("task.max_length=abc", "task.max_length='abc'"),
    ("training.epochs=0", "training.epochs=0"),
    ("hardware.devices=0", "hardware.devices=0"),
    ("cost.seq_len=-1", "cost.seq_len=-1"),
    ("logger.mode=onlin", "logger.mode='onlin'"),
    ("checkpoint=/my/fine-tuned", "checkpoint=/my/fine-tuned is now teacher=/my/fine-tuned"),
    ("cost._target_=bertprune.core.cost.EnergyCost", "cost._target_='bertprune.core.cost.EnergyCost' cannot be imported"),
    ("+cost.seq_length=40", r"cost.seq_length is not a config key \(did you mean cost.seq_len"),
    ("+logger.projet=x", r"logger.projet is not an argument of bertprune.lightning.loggers.wandb_loggers \(did you mean logger.project"),
    ("logger._target_=bertprune.lightning.loggers.tensorboard", "logger._target_='bertprune.lightning.loggers.tensorboard' cannot be"),
    ("model.random_init.num_heads=3", "model.random_init: hidden_size=32 must be a multiple of num_heads=3"),
    ("+model.random_init.hiden_size=3", "model.random_init.hiden_size is not an argument of bertprune.models.TinyBert"),
])
def test_bad_values_fail_validation_before_the_teacher(tiny_cfg, override, match, monkeypatch):
    import bertprune.jobs.train as train
    from bertprune.jobs.prune import prune

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    cfg = tiny_cfg("prune", ["export=false", "logger=wandb", override])
    with pytest.raises(ValueError, match=match):
        prune(cfg)
    assert not Path(cfg.output_dir).exists() or not any(Path(cfg.output_dir).iterdir())


def _cli(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BERTPRUNE_CACHE_DIR": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / script), *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


@pytest.mark.parametrize("script,override,message", [
    ("prune.py", "logger._target_=bertprune.lightning.loggers.tensorboard",
     "logger._target_='bertprune.lightning.loggers.tensorboard' cannot be imported"),
    ("prune.py", "eval_batch_size=0", "eval_batch_size=0 must be an integer >= 1"),
    ("prune.py", "checkpoint=/my/fine-tuned", "checkpoint=/my/fine-tuned is now teacher=/my/fine-tuned"),
    ("prune.py", "tuning.damping=0.1", "tuning.damping is now method=kwon method.damping"),
    ("prune.py", "rearrange=false", "rearrange is now method=kwon method.rearrange"),
    ("prune.py", "iterative.importance_samples=64", "iterative.importance_samples is now method.importance_samples"),
    ("prune.py", "guard.samples=64", "guard.samples is now method.held_out_samples"),
    ("prune.py", "quantize=int4", "full_key: quantize"),
    ("train.py", "hardware.precision=bogus", "hardware.precision='bogus' is not a Lightning precision"),
])
@pytest.mark.integration
def test_cli_refuses_bad_values_before_any_work(script, override, message, tmp_path):
    proc = _cli(script, [override, "logger=csv"], tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    run = tmp_path / "run"
    written = {p.name for p in run.iterdir()} if run.is_dir() else set()
    assert written <= {".hydra", "prune.log", "train.log", "status.json"}, written  # Hydra's record + the status
    if "status.json" in written:
        assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "cache" / "teachers").exists()  # no teacher was trained


def test_export_validates_opset_and_keys_before_work(tmp_path):
    cfg = compose_cfg("export", ["source=/nonexistent", "opset=12"], tmp_path)
    with pytest.raises(ValueError, match="opset=12"):
        validate_export(cfg)
    cfg = compose_cfg("export", ["source=/nonexistent", "+parity_tolerence=1"], tmp_path)
    with pytest.raises(ValueError, match="did you mean parity_tolerance"):
        validate_export(cfg)
