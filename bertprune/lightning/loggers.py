"""Experiment loggers: Weights & Biases (offline unless the user configured W&B), CSV, or none.

``logger.kind``: wandb = a W&B run plus the CSV log (the fallback when W&B cannot start); csv = the CSV
log only; none = nothing is logged (results.json is still written: it is the job's result, not a log)."""

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


def make_loggers(logger_cfg, save_dir: str, name: str, group: str | None = None, config: dict | None = None):
    """Lightning loggers for one run: a CSVLogger (``logger.kind`` csv or wandb) and a WandbLogger (wandb);
    none for ``logger.kind=none``."""
    from pytorch_lightning.loggers import CSVLogger

    kind = logger_cfg.get("kind", "csv") if logger_cfg else "csv"
    if kind not in ("wandb", "csv", "none"):
        raise ValueError(f"logger.kind={kind!r}; expected wandb, csv or none")
    if kind == "none":
        return []
    loggers = [CSVLogger(save_dir=save_dir, name="csv", version="")]
    if kind == "wandb":
        try:
            from pytorch_lightning.loggers import WandbLogger

            mode = wandb_mode(logger_cfg.get("mode"))
            os.environ.setdefault("WANDB_SILENT", "true")
            wl = WandbLogger(project=logger_cfg.get("project", "bertprune"), entity=logger_cfg.get("entity"),
                             name=name, group=group, save_dir=save_dir, mode=mode, config=config,
                             reinit="finish_previous")
            _ = wl.experiment  # start now so a failure falls back to CSV here, not mid-run
            loggers.append(wl)
        except Exception as e:  # no network, bad key …: never lose the run over logging
            log.warning("W&B logging disabled (%s); metrics still go to CSV in %s", e, save_dir)
    return loggers


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
