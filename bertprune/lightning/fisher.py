"""The LightningModule that owns the mask variables and accumulates their Fisher information.

Run with ``Trainer.test``: no DDP wrapping happens outside fitting, so the masks stay out of DDP's
gradient averaging (squaring averaged gradients would give a different, wrong estimate). Every
rank processes its own share of a fixed list of batches, keeps per-batch gradients in global slots,
and the results are all-reduced with SUM: any number of processes gives the importances of one.
A rank whose share is empty (fewer batches than processes) still runs one no-op step, so that it
reaches the all-reduce the others wait in.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
import torch

from bertprune.core.fisher import FisherAccumulator, freeze
from bertprune.io import atomic_write_bytes


NO_BATCH = -1  # the placeholder item of a rank with an empty share


class _Batches(torch.utils.data.Dataset):
    """Item i = (global batch index, collated batch) of this rank's share; an empty share yields one
    ``(NO_BATCH, {})`` item (Lightning skips the whole test loop, epoch-end hooks included, for an
    empty loader: that rank would never join the all-reduce and the others would wait forever)."""

    def __init__(self, dataset, batches: list[list[int]], collate, indices: list[int]):
        self.dataset, self.batches, self.collate = dataset, batches, collate
        self.indices = indices or [NO_BATCH]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        b = self.indices[i]
        if b == NO_BATCH:
            return b, {}
        return b, self.collate([self.dataset[j] for j in self.batches[b]])


class FisherModule(pl.LightningModule):
    """Masks ``[L, H]`` / ``[L, F]`` + Fisher accumulation over calibration batches.

    After ``trainer.test(module)`` rank 0 writes ``out_path`` (safetensors: head_grads [B, L, H],
    neuron_grads [B, L, F], head_importance [L, H], neuron_importance [L, F], batch_rank [B] (the rank
    that processed each batch), process_ranks [world_size] (1 for every rank that took part in the
    all-reduce)); with ``ddp_spawn`` that file is how the result reaches the launching process.
    """

    def __init__(self, model, kind, dataset, batches: list[list[int]], collate, out_path: str | Path):
        super().__init__()
        self.model = freeze(model)
        self.kind, self.dataset, self.batches, self.collate = kind, dataset, batches, collate
        self.out_path = Path(out_path)
        self.acc: FisherAccumulator | None = None

    def setup(self, stage: str) -> None:
        self.acc = self.accumulator()

    def accumulator(self):
        """What ``test_step`` feeds (``add_batch(batch, global batch index)``); subclasses accumulate other gradients."""
        return FisherAccumulator(self.model, self.kind, len(self.batches), device=self.device)

    def test_dataloader(self):
        rank, world = self.trainer.global_rank, self.trainer.world_size
        share = list(range(rank, len(self.batches), world))
        return torch.utils.data.DataLoader(_Batches(self.dataset, self.batches, self.collate, share),
                                           batch_size=None, shuffle=False)

    def on_test_start(self) -> None:
        self.acc = self.accumulator()
        self.batch_rank = torch.zeros(len(self.batches), device=self.device)

    def test_step(self, item, _):
        index, batch = item
        index = int(index)
        if index == NO_BATCH:
            return
        self.acc.add_batch(batch, index)
        self.batch_rank[index] = self.trainer.global_rank

    def on_test_epoch_end(self) -> None:
        acc = self.acc
        head_sq = acc.head_grads.pow(2).sum(0)  # this rank's Σ g²
        neuron_sq = acc.neuron_grads.pow(2).sum(0)
        reduce = self.trainer.strategy.reduce
        head_importance = reduce(head_sq, reduce_op="sum")
        neuron_importance = reduce(neuron_sq, reduce_op="sum")
        head_grads = reduce(acc.head_grads, reduce_op="sum")
        neuron_grads = reduce(acc.neuron_grads, reduce_op="sum")
        seen = reduce(acc.seen, reduce_op="sum")
        batch_rank = reduce(self.batch_rank, reduce_op="sum")  # each slot is filled by exactly one rank
        present = torch.zeros(self.trainer.world_size, device=self.device)
        present[self.trainer.global_rank] = 1
        process_ranks = reduce(present, reduce_op="sum")
        if not torch.all(seen == 1):
            raise RuntimeError(f"Fisher: every calibration batch must be seen exactly once, got counts {seen.tolist()}")
        if self.trainer.is_global_zero:
            from safetensors.torch import save

            atomic_write_bytes(self.out_path, save({
                "head_grads": head_grads.cpu().contiguous(), "neuron_grads": neuron_grads.cpu().contiguous(),
                "head_importance": head_importance.cpu().contiguous(),
                "neuron_importance": neuron_importance.cpu().contiguous(),
                "batch_rank": batch_rank.long().cpu(), "process_ranks": process_ranks.long().cpu()}))


class OBSGradientModule(FisherModule):
    """The same calibration loop (rank shares, empty-share no-op, SUM all-reduce) accumulating, for OBS,
    the Fisher block sums Σ g gᵀ of the encoder's linear weights (``bertprune.core.obs.GradientAccumulator``).

    ``linears``: names of the ``nn.Linear`` modules in ``model``; ``masks``: their ``[out, in]`` alive masks.
    Rank 0 writes ``out_path`` (safetensors: ``blocks.<i>`` [nb_i, B, B] for linear i, ``batch_rank``,
    ``process_ranks``, as ``FisherModule``).
    """

    def __init__(self, model, kind, dataset, batches, collate, out_path, linears: list[str],
                 masks: list[torch.Tensor], block_size: int):
        super().__init__(model, kind, dataset, batches, collate, out_path)
        self.linear_names, self.masks, self.block_size = list(linears), [m.cpu() for m in masks], int(block_size)

    def accumulator(self):
        from bertprune.core.obs import GradientAccumulator

        modules = dict(self.model.named_modules())
        return GradientAccumulator(self.model, self.kind, [modules[n] for n in self.linear_names], self.masks,
                                   self.block_size, len(self.batches), device=self.device)

    def on_test_epoch_end(self) -> None:
        acc = self.acc
        acc.flush()
        reduce = self.trainer.strategy.reduce
        blocks = [reduce(b, reduce_op="sum") for b in acc.blocks]
        seen = reduce(acc.seen, reduce_op="sum")
        batch_rank = reduce(self.batch_rank, reduce_op="sum")
        present = torch.zeros(self.trainer.world_size, device=self.device)
        present[self.trainer.global_rank] = 1
        process_ranks = reduce(present, reduce_op="sum")
        if not torch.all(seen == 1):
            raise RuntimeError(f"OBS gradients: every calibration batch must be seen exactly once, got {seen.tolist()}")
        if self.trainer.is_global_zero:
            from safetensors.torch import save

            atomic_write_bytes(self.out_path, save({
                **{f"blocks.{i}": b.cpu().contiguous() for i, b in enumerate(blocks)},
                "batch_rank": batch_rank.long().cpu(), "process_ranks": process_ranks.long().cpu()}))


class FisherProgressBar(TQDMProgressBar):
    """Lightning's bar, named for what runs: Fisher runs under ``Trainer.test``, which would say "Testing"."""

    def __init__(self, description: str = "fisher", **kwargs):
        super().__init__(**kwargs)
        self.description = description

    @property
    def test_description(self) -> str:
        return self.description


def load_fisher(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
