"""Experiment loggers: Weights & Biases (offline unless the user configured W&B) plus a CSV fallback."""

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
    """Lightning loggers for one run: always a CSVLogger; a WandbLogger when ``logger.kind=wandb``."""
    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=save_dir, name="csv", version="")]
    kind = logger_cfg.get("kind", "csv") if logger_cfg else "csv"
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
    elif kind not in ("csv", "none"):
        raise ValueError(f"logger.kind={kind!r}; expected wandb, csv or none")
    return loggers


def finish_wandb() -> None:
    """End the current W&B run (sweeps run many jobs in one process)."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception:  # pragma: no cover - logging must never break a run
        pass
