"""Lightning wrappers: fine-tuning a dense teacher and the data it reads. (The Fisher LightningModule
lives in ``bertprune.lightning.fisher``.)"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from bertprune.tasks.data import Task, make_loader
from bertprune.core.fisher import INPUT_KEYS, task_loss


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in INPUT_KEYS}


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
    """Fine-tunes a dense teacher: AdamW + linear warmup/decay; logs train/loss and eval/accuracy."""

    def __init__(self, model, task: Task, lr: float, weight_decay: float, warmup_ratio: float):
        super().__init__()
        self.model, self.task = model, task
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self._correct = self._count = 0

    def on_fit_start(self):
        self.model.train()  # from_pretrained returns eval mode; fine-tuning wants dropout on

    def training_step(self, batch, _):
        loss = task_loss(self.task.kind, self.model(**model_inputs(batch)), batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self):
        self._correct = self._count = 0
        self._sq_err = 0.0

    def validation_step(self, batch, _):
        outputs = self.model(**model_inputs(batch))
        logits = outputs.logits
        self.log("eval/loss", task_loss(self.task.kind, outputs, batch), prog_bar=False)
        if self.task.kind == "classification":
            self._correct += (logits.argmax(-1) == batch["labels"]).sum().item()
        else:
            self._sq_err += ((logits.squeeze(-1) - batch["labels"]) ** 2).sum().item()
        self._count += len(batch["labels"])

    def on_validation_epoch_end(self):
        if self.task.kind == "classification":
            self.log("eval/accuracy", 100.0 * self._correct / max(self._count, 1), prog_bar=True)
        else:
            self.log("eval/mse", self._sq_err / max(self._count, 1), prog_bar=True)

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
