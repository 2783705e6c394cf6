"""Head and neuron masks applied with forward pre-hooks.

transformers 5 removed the ``head_mask`` argument (and SDPA never supported it), so masks act on the
inputs of the two output projections of every layer (named by the family's adapter):
  head mask   ``[L, H]`` scales each head's context vector before the attention output projection
              (BERT ``attention.output.dense``, DistilBERT ``attention.out_lin``);
  neuron mask ``[L, F]`` scales each post-activation FFN neuron before the FFN output projection
              (BERT ``output.dense``, DistilBERT ``ffn.lin2``).
Values need not be 0/1: tuned scales are masks too. Lifecycle (as in torch.ao.pruning):
``MaskHooks(model, head_mask, neuron_mask)`` attaches; ``.remove()`` detaches;
``bertprune.core.physical.prune_physically`` makes a mask permanent.
"""

from __future__ import annotations

import torch

from bertprune.models.adapters import adapter_for


def mask_shapes(model) -> tuple[tuple[int, int], tuple[int, int]]:
    """``([L, H], [L, F])`` of a dense model of a supported family."""
    adapter = adapter_for(model)
    L = len(adapter.layers(model))
    return (L, adapter.num_heads(model.config)), (L, adapter.ffn_width(model.config))


def ones_masks(model, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    (L, H), (_, F) = mask_shapes(model)
    return torch.ones(L, H, device=device), torch.ones(L, F, device=device)


class MaskHooks:
    """Attach ``head_mask [L, H]`` and ``neuron_mask [L, F]`` to a dense model (context manager too).

    The tensors are used by reference: changing them in place (or their ``requires_grad``) takes
    effect on the next forward pass, which is how Fisher collects mask gradients.
    """

    def __init__(self, model, head_mask: torch.Tensor, neuron_mask: torch.Tensor):
        (L, H), (_, F) = mask_shapes(model)
        if tuple(head_mask.shape) != (L, H) or tuple(neuron_mask.shape) != (L, F):
            raise ValueError(f"masks must be [{L}, {H}] and [{L}, {F}], got {list(head_mask.shape)} and "
                             f"{list(neuron_mask.shape)}")
        self.head_mask, self.neuron_mask = head_mask, neuron_mask
        adapter = adapter_for(model)
        d_head = adapter.head_size(model.config)
        self._handles = []
        for i, layer in enumerate(adapter.layers(model)):
            self._handles.append(adapter.attn_out(layer).register_forward_pre_hook(self._head_hook(i, H, d_head)))
            self._handles.append(adapter.ffn_out(layer).register_forward_pre_hook(self._neuron_hook(i)))

    def _head_hook(self, i: int, H: int, d_head: int):
        def hook(_module, args):
            ctx = args[0]  # [batch, seq, H * d_head]
            shape = ctx.shape
            ctx = (ctx.view(*shape[:-1], H, d_head) * self.head_mask[i].to(ctx.dtype)[:, None]).view(shape)
            return (ctx, *args[1:])
        return hook

    def _neuron_hook(self, i: int):
        def hook(_module, args):
            return (args[0] * self.neuron_mask[i].to(args[0].dtype), *args[1:])
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
