"""Lightning wrappers: fine-tuning a dense teacher and the data it reads. (The Fisher LightningModule
lives in ``bertprune.lightning.fisher``.)"""

from __future__ import annotations

import logging
import sys
import time

import pytorch_lightning as pl
import torch

from bertprune.models import model_inputs
from bertprune.tasks.data import Task, make_loader
from bertprune import results as R

log = logging.getLogger(__name__)


class TimedProgressLog(pl.Callback):
    """Fine-tuning progress as a log line every ``every_s`` seconds (step, epoch, elapsed, ETA, train/loss)
    and after each validation: for logs that are not a terminal (nohup, SLURM, CI), where Lightning's
    progress bar draws nothing until the run ends."""

    def __init__(self, every_s: float = 30.0, clock=time.perf_counter):
        self.every_s, self.clock = every_s, clock
        self.start = self.last = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self.last = self.clock()
        log.info("fine-tuning: %d steps (%d epochs)", trainer.estimated_stepping_batches, trainer.max_epochs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        if now - self.last < self.every_s:
            return
        self.last = now
        done, total = trainer.global_step, trainer.estimated_stepping_batches
        elapsed = now - self.start
        eta = elapsed / done * (total - done) if done else float("nan")
        loss = trainer.callback_metrics.get("train/loss")
        log.info("fine-tuning step %d/%d (%.0f%%), epoch %d/%d, %.0f s elapsed, ETA %.0f s%s", done, total,
                 100.0 * done / max(total, 1), trainer.current_epoch + 1, trainer.max_epochs, elapsed, eta,
                 f", train/loss {float(loss):.4f}" if loss is not None else "")

    def on_validation_end(self, trainer, pl_module) -> None:
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}
        log.info("fine-tuning epoch %d/%d validated after %.0f s: %s", trainer.current_epoch + 1, trainer.max_epochs,
                 self.clock() - self.start, ", ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items())))


def progress_options(stream=None) -> dict:
    """Trainer keyword arguments for progress: Lightning's bar on a terminal, else ``TimedProgressLog`` lines."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return {"enable_progress_bar": True, "callbacks": []}
    return {"enable_progress_bar": False, "callbacks": [TimedProgressLog()]}


class TaskDataModule(pl.LightningDataModule):
    """Tokenized train/validation splits of a task, dynamically padded."""

    def __init__(self, tokenized, tokenizer, batch_size: int, eval_batch_size: int = 128, seed: int = 0):
        super().__init__()
        self.tokenized, self.tokenizer = tokenized, tokenizer
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed

    def train_dataloader(self):
        return make_loader(self.tokenized["train"], self.tokenizer, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self):
        return make_loader(self.tokenized["validation"], self.tokenizer, self.eval_batch_size)


class FineTuneModule(pl.LightningModule):
    """Fine-tunes a dense teacher: AdamW + linear warmup/decay; logs train/loss, eval/loss and the task kind's
    metrics (``eval/accuracy`` %, ``eval/mse``) and the task's (``eval/mcc``, ``eval/f1`` %, ``eval/pearson`` ...), torchmetrics that sync across processes."""

    def __init__(self, model, task: Task, lr: float, weight_decay: float, warmup_ratio: float):
        super().__init__()
        self.model, self.task, self.kind = model, task, task.task_kind
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.val_metrics = torch.nn.ModuleDict(self.kind.fit_metrics(task.num_labels, task.metric_names))

    def on_fit_start(self):
        self.model.train()  # from_pretrained returns eval mode; fine-tuning wants dropout on

    def training_step(self, batch, _):
        loss = self.kind.loss(self.model(**model_inputs(self.model, batch)), batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        outputs = self.model(**model_inputs(self.model, batch))
        self.log(R.eval_key("loss"), self.kind.loss(outputs, batch), prog_bar=False)
        preds, target = self.kind.fit_metric_inputs(outputs, batch)
        for metric in self.val_metrics.values():
            metric.update(preds, target)

    def on_validation_epoch_end(self):
        for key, metric in self.val_metrics.items():
            self.log(R.eval_key(key), self.kind.fit_metric_value(key, metric.compute()), prog_bar=True)
            metric.reset()

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        no_decay = ("bias", "LayerNorm.weight")
        groups = [
            {"params": [p for n, p in self.model.named_parameters() if not n.endswith(no_decay)],
             "weight_decay": self.weight_decay},
            {"params": [p for n, p in self.model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=self.lr)
        steps = self.trainer.estimated_stepping_batches
        sched = get_linear_schedule_with_warmup(opt, int(self.warmup_ratio * steps), steps)
        return [opt], [{"scheduler": sched, "interval": "step"}]
