"""Experiment loggers: Weights & Biases (offline unless the user configured W&B), CSV, or none.

The ``logger`` config group names one factory here (``_target_``): ``wandb_loggers`` = a W&B run plus
the CSV log (the fallback when W&B cannot start); ``csv_loggers`` = the CSV log only; ``no_loggers`` =
nothing is logged (results.json is still written: it is the job's result, not a log). Each takes the
run's ``RUNTIME_ARGS`` and returns a list of Lightning loggers."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def wandb_mode(requested: str | None) -> str:
    """online only when asked for or when the user configured W&B (API key / WANDB_MODE); else offline,
    so that a machine with no network never hangs on a login."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


RUNTIME_ARGS = ("save_dir", "name", "group", "config")  # what a job passes; the rest comes from the config


def no_loggers(save_dir: str, name: str, group: str | None = None, config: dict | None = None) -> list:
    """``logger=none``: nothing is logged."""
    return []


def csv_loggers(save_dir: str, name: str, group: str | None = None, config: dict | None = None) -> list:
    """``logger=csv``: ``<save_dir>/csv/metrics.csv``."""
    from pytorch_lightning.loggers import CSVLogger

    return [CSVLogger(save_dir=save_dir, name="csv", version="")]


def wandb_loggers(save_dir: str, name: str, group: str | None = None, config: dict | None = None,
                  project: str = "bertprune", entity: str | None = None, mode: str | None = None) -> list:
    """``logger=wandb``: the CSV log and a W&B run (``mode`` null: see ``wandb_mode``); a W&B run that cannot
    start leaves the CSV log alone, with a warning."""
    loggers = csv_loggers(save_dir, name)
    try:
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        wl = WandbLogger(project=project, entity=entity, name=name, group=group, save_dir=save_dir,
                         mode=wandb_mode(mode), config=config, reinit="finish_previous")
        _ = wl.experiment  # start now so a failure falls back to CSV here, not mid-run
        loggers.append(wl)
    except Exception as e:  # no network, bad key …: never lose the run over logging
        log.warning("W&B logging disabled (%s); metrics still go to CSV in %s", e, save_dir)
    return loggers


def make_loggers(logger_cfg, save_dir: str, name: str, group: str | None = None, config: dict | None = None):
    """The Lightning loggers of one run, built by the factory ``logger_cfg`` names (``_target_``)."""
    from hydra.utils import instantiate

    factory = instantiate(logger_cfg, _partial_=True)  # the run's arguments are passed as they are
    return factory(save_dir=save_dir, name=name, group=group, config=config)


def finish_wandb(exit_code: int = 0, error: str | None = None) -> None:
    """End the current W&B run (sweeps run many jobs in one process); exit_code != 0 marks it failed."""
    try:
        import wandb

        if wandb.run is not None:
            if error:
                wandb.run.summary["error"] = error
            wandb.finish(exit_code=exit_code)
    except Exception:  # pragma: no cover - logging must never break a run
        pass


class JobLoggers:
    """The loggers of one job as a context: ``open`` them once the inputs are checked, ``log`` the
    results; leaving the context always ends the W&B run, with exit code 1 if the job raised (255 if it
    was interrupted), so a failed job leaves a run marked failed, never a missing or dangling one."""

    def __init__(self) -> None:
        self.loggers: list = []

    def open(self, logger_cfg, save_dir: str, name: str, group: str | None = None, config: dict | None = None):
        self.loggers = make_loggers(logger_cfg, save_dir, name=name, group=group, config=config)
        return self.loggers

    def log(self, metrics: dict) -> None:
        """The numeric entries of ``metrics``."""
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for lg in self.loggers:
            lg.log_metrics(numeric)
            lg.save()

    def __enter__(self) -> "JobLoggers":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.loggers:
            if exc_type is None:
                finish_wandb()
            else:
                code = 255 if issubclass(exc_type, KeyboardInterrupt) else 1
                finish_wandb(code, f"{exc_type.__name__}: {exc}")
        return False
