"""Second-order unstructured pruning: the Optimal BERT Surgeon (oBERT), and the global magnitude baseline.

Plain PyTorch: the encoder's ``nn.Linear`` weights (``prunable_linears``) are pruned in place to a global
sparsity, with one of three patterns (``PATTERNS``): ``unstructured`` (single weights), ``block4``
(groups of 4 consecutive input weights of a row: the VNNI pattern of INT8 CPU kernels) and ``nm_2_4``
(2 zeros in every group of 4: the N:M pattern sparse GPU tensor cores run).

Each layer's flattened weight ``[n]`` is cut into blocks of ``B = fisher_block_size`` entries (the last
one padded), ``[nb, B]``. The empirical Fisher of a block is ``F = λI + (1/m) Σ_i g_i g_iᵀ`` over ``m``
gradients; its inverse gives

* the saliency of a weight ``ρ_q = w_q² / (2 [F⁻¹]_qq)`` (the loss increase of removing it, the others
  re-fitted), of a set ``Q`` (a 4-block, or a 2:4 pair) ``ρ_Q = ½ w_Qᵀ ([F⁻¹]_QQ)⁻¹ w_Q``;
* the optimal update of the remaining weights when the set ``Q`` of a block is removed:
  ``δw = −F⁻¹_{:,Q} ([F⁻¹]_QQ)⁻¹ w_Q`` (the minimiser of ``½ δwᵀ F δw`` subject to ``w_Q + δw_Q = 0``).

The inverse is built from the summed block outer products ``Σ g gᵀ`` (``GradientAccumulator``), not
gradient by gradient (Woodbury, ``F⁻¹ ← F⁻¹ − v vᵀ / (m + gᵀ v)``): both cost ``O(m · n · B)`` and give
the same matrix, but a sum of outer products is what several processes can all-reduce with SUM (each
rank sums its own gradients), while a Woodbury recursion is sequential over all ``m`` gradients in one
process. The blocks are inverted once (Cholesky, float64), ``O(n · B²)``.

Recomputations (``prune_unstructured``): the target sparsity is reached in ``k`` steps (a sparsity
schedule); before each step the gradients are collected again at the current (pruned and updated)
weights, with the gradients of pruned weights masked to 0 (they stay 0: their rows of ``F`` are ``λ eᵢ``,
so they decouple from the rest and cost nothing to keep pruned).
Memory: ``2 · 4 · n_pad · B`` bytes (block sums + inverses, float32) for ``n_pad`` padded weights
(``fisher_memory_bytes``), plus the buffered gradients.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

PATTERNS = ("unstructured", "block4", "nm_2_4")
METHODS = ("obs", "magnitude")
SCHEDULES = ("cubic", "linear")
GROUP = 4  # the group size of block4 and nm_2_4
# the 6 pairs (i, j) of a group of 4 that nm_2_4 may prune
PAIRS = torch.tensor([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
CHUNK = 1 << 14  # Fisher blocks per batched linear-algebra call (bounds the float64 temporaries)


@dataclass(frozen=True)
class OBSOptions:
    """How ``prune_unstructured`` runs (config group ``unstructured``)."""

    sparsity: float  # fraction of the encoder's linear weights set to 0, in (0, 1)
    method: str = "obs"  # obs | magnitude (global |w|, no gradients, no update)
    pattern: str = "unstructured"
    fisher_block_size: int = 32  # B; 1 = the diagonal Fisher
    damp: float = 1e-7  # λ
    num_recomputations: int = 1  # k: Fisher-inverse estimates while pruning to the target
    schedule: str = "cubic"  # the sparsity after step j of k: cubic s·(1 − (1 − j/k)³), or linear s·j/k

    def __post_init__(self) -> None:
        check_options(self)


def check_options(o: OBSOptions, prefix: str = "") -> None:
    """One clear error per bad value (names the key, the expectation and a fix)."""
    if o.method not in METHODS:
        raise ValueError(f"{prefix}method={o.method!r}; expected one of {', '.join(METHODS)}")
    if o.pattern not in PATTERNS:
        raise ValueError(f"{prefix}pattern={o.pattern!r}; expected one of {', '.join(PATTERNS)}")
    if o.schedule not in SCHEDULES:
        raise ValueError(f"{prefix}schedule={o.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if not (isinstance(o.sparsity, (int, float)) and 0.0 < o.sparsity < 1.0):
        raise ValueError(f"{prefix}sparsity={o.sparsity!r} must be in (0, 1): the fraction of the encoder's linear "
                         f"weights set to 0, e.g. {prefix}sparsity=0.5")
    if o.pattern == "nm_2_4" and o.sparsity != 0.5:
        raise ValueError(f"{prefix}sparsity={o.sparsity} with {prefix}pattern=nm_2_4: 2 of every 4 weights is "
                         f"sparsity 0.5; set {prefix}sparsity=0.5 (or pattern=unstructured / block4)")
    B = o.fisher_block_size
    if not isinstance(B, int) or isinstance(B, bool) or B < 1:
        raise ValueError(f"{prefix}fisher_block_size={B!r} must be an integer >= 1 (1 = diagonal Fisher), e.g. 32")
    if o.pattern != "unstructured" and B % GROUP:
        raise ValueError(f"{prefix}fisher_block_size={B} with {prefix}pattern={o.pattern}: its groups of {GROUP} must "
                         f"lie inside one Fisher block; use a multiple of {GROUP}, e.g. {prefix}fisher_block_size=32")
    if not (isinstance(o.damp, (int, float)) and math.isfinite(o.damp) and o.damp > 0):
        raise ValueError(f"{prefix}damp={o.damp!r} must be > 0 (λ of F = λI + GᵀG/m), e.g. {prefix}damp=1e-7")
    k = o.num_recomputations
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{prefix}num_recomputations={k!r} must be an integer >= 1 (1 = one Fisher estimate)")


# ----------------------------------------------------------------------------------------------
# Layers, blocks, memory


def prunable_linears(model) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules of the encoder (query/key/value/attention output/FFN in and out of every
    layer, whatever the family or physical pruning left), by their names in ``model``; empty ones skipped."""
    from bertprune.models.adapters import adapter_for

    encoder = adapter_for(model.config).encoder(model)
    prefix = next(n for n, m in model.named_modules() if m is encoder)
    return [(f"{prefix}.{n}", m) for n, m in encoder.named_modules()
            if isinstance(m, nn.Linear) and m.weight.numel() > 0]


def num_blocks(numel: int, block_size: int) -> int:
    return -(-numel // block_size)


def fisher_memory_bytes(numels: list[int], block_size: int) -> int:
    """Bytes of the Fisher state for layers of ``numels`` weights: block sums and inverses, float32,
    ``2 · 4 · B² · ⌈n/B⌉`` per layer (O(params × B))."""
    return sum(2 * 4 * block_size * block_size * num_blocks(n, block_size) for n in numels)


def available_memory_bytes(device) -> int:
    """Free memory of ``device``: CUDA's free memory, else the host's available RAM (/proc/meminfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(numels: list[int], block_size: int, limit_bytes: int, what: str = "") -> int:
    """Log the Fisher state's size and refuse (``MemoryError``, one message with the fix) if over ``limit_bytes``."""
    need = fisher_memory_bytes(numels, block_size)
    n = sum(numels)
    log.info("OBS Fisher state%s: %.2f GB (%d weights x fisher_block_size %d x 4 bytes x 2), limit %.2f GB",
             what, need / 1e9, n, block_size, limit_bytes / 1e9)
    if need > limit_bytes:
        fit = max(1, int(limit_bytes // (8 * max(n, 1))))
        raise MemoryError(f"OBS needs {need / 1e9:.2f} GB for its Fisher blocks ({n:,} weights x fisher_block_size="
                          f"{block_size} x 8 bytes){what}, more than the {limit_bytes / 1e9:.2f} GB allowed; use "
                          f"unstructured.fisher_block_size<={fit} or raise unstructured.max_memory_gb")
    return need


def to_blocks(flat: torch.Tensor, block_size: int, fill=0) -> torch.Tensor:
    """``[n]`` -> ``[nb, B]``, the last block padded with ``fill``."""
    nb = num_blocks(flat.numel(), block_size)
    out = flat.new_full((nb * block_size,), fill)
    out[:flat.numel()] = flat
    return out.view(nb, block_size)


# ----------------------------------------------------------------------------------------------
# Gradients -> Fisher blocks


class GradientAccumulator:
    """Σ g gᵀ per Fisher block of each prunable linear, over per-batch gradients of the task loss
    (SparseGPT-style: ``add_batch`` then read ``blocks``). Rank-local sums: several processes give the
    full sums with one all-reduce SUM of ``blocks`` (and ``seen``).

    masks: per linear, ``[out, in]`` bool, True = weight alive (pruned weights get gradient 0).
    blocks: per linear ``[nb, B, B]`` float32. seen: ``[num_batches]`` times each global batch was added.
    """

    def __init__(self, model, kind, linears: list[nn.Linear], masks: list[torch.Tensor], block_size: int,
                 num_batches: int, device=None, flush_every: int = 16):
        from bertprune.tasks.kinds import get_kind

        self.model, self.kind, self.linears, self.B = model, get_kind(kind), linears, block_size
        self.masks = [m.to(device) for m in masks]
        self.blocks = [torch.zeros(num_blocks(l.weight.numel(), block_size), block_size, block_size, device=device)
                       for l in linears]
        self.seen = torch.zeros(num_batches, device=device)
        self.flush_every = flush_every
        self._buffer: list[list[torch.Tensor]] = []

    def add_batch(self, batch: dict, batch_index: int) -> None:
        """Back-propagate the task loss of one batch (inputs ``[b, T]``) to the prunable weights; buffer it."""
        from bertprune.models import model_inputs

        weights = [l.weight for l in self.linears]
        for w in weights:
            w.requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = self.kind.loss(self.model(**model_inputs(self.model, batch)), batch)
                grads = torch.autograd.grad(loss, weights)
        finally:
            for w in weights:
                w.requires_grad_(False)
        self._buffer.append([to_blocks((g.detach() * m).reshape(-1).float(), self.B) for g, m in zip(grads, self.masks)])
        self.seen[batch_index] += 1
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Add the buffered gradients' outer products: per block ``Σ_c g_c g_cᵀ`` as one batched matmul."""
        if not self._buffer:
            return
        for i, acc in enumerate(self.blocks):
            g = torch.stack([b[i] for b in self._buffer], dim=2)  # [nb, B, c]
            acc.baddbmm_(g, g.transpose(1, 2))
        self._buffer.clear()


def inverse_blocks(block_sums: torch.Tensor, num_grads: int, damp: float) -> torch.Tensor:
    """``[nb, B, B]`` Σ g gᵀ -> ``[nb, B, B]`` (λI + Σ g gᵀ / m)⁻¹ (Cholesky, float64 in chunks, float32 out).

    Σ g gᵀ is positive semi-definite, but summed in float32 its rank-deficient part (m < B, or a small λ)
    can come out slightly indefinite: blocks whose Cholesky fails are inverted from their eigenvalues
    clamped at 0 (``(λI + V max(E, 0) Vᵀ)⁻¹``), the nearest positive semi-definite sum."""
    nb, B, _ = block_sums.shape
    out = torch.empty_like(block_sums)
    eye = torch.eye(B, dtype=torch.float64, device=block_sums.device)
    for s in range(0, nb, CHUNK):
        G = block_sums[s:s + CHUNK].double() / num_grads
        G = (G + G.transpose(1, 2)) / 2
        L, info = torch.linalg.cholesky_ex(G + damp * eye)
        inv = torch.cholesky_inverse(L)
        bad = info != 0
        if bad.any():
            e, V = torch.linalg.eigh(G[bad])
            inv[bad] = (V / (e.clamp(min=0) + damp)[:, None, :]) @ V.transpose(1, 2)
        out[s:s + CHUNK] = inv.float()
    return out


# ----------------------------------------------------------------------------------------------
# Saliencies and the optimal update (per block; Finv [nb, B, B], w [nb, B])


def weight_saliency(w: torch.Tensor, finv: torch.Tensor) -> torch.Tensor:
    """``[nb, B]`` ρ_q = w_q² / (2 [F⁻¹]_qq)."""
    return w.pow(2) / (2 * torch.diagonal(finv, dim1=1, dim2=2))


def _sub(finv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[nb, B, B]``, ``[G, k]`` index sets -> ``[nb, G, k, k]`` principal sub-matrices F⁻¹_QQ."""
    return finv[:, idx[:, :, None], idx[:, None, :]]


def set_saliency(w: torch.Tensor, finv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[nb, G]`` ρ_Q = ½ w_Qᵀ (F⁻¹_QQ)⁻¹ w_Q for the index sets ``idx [G, k]`` of each block."""
    out = torch.empty(w.shape[0], idx.shape[0], dtype=w.dtype, device=w.device)
    for s in range(0, w.shape[0], CHUNK):
        sub = _sub(finv[s:s + CHUNK].double(), idx)  # [c, G, k, k]
        wq = w[s:s + CHUNK].double()[:, idx]  # [c, G, k]
        x = torch.linalg.solve(sub, wq)  # LU: F⁻¹_QQ in float32 need not factor as exactly positive definite
        out[s:s + CHUNK] = (0.5 * (wq * x).sum(-1)).to(w.dtype)
    return out


def obs_update(w: torch.Tensor, finv: torch.Tensor, prune: torch.Tensor) -> torch.Tensor:
    """``[nb, B]`` weights after removing the set ``prune [nb, B]`` (bool) of each block jointly with the
    optimal update of the others: ``w − F⁻¹_{:,Q} (F⁻¹_QQ)⁻¹ w_Q``, pruned entries exactly 0.

    Batched over blocks of any |Q|: ``M = F⁻¹ ⊙ p pᵀ + diag(1 − p)`` is F⁻¹_QQ on Q and the identity
    elsewhere, so ``M x = p ⊙ w`` gives ``x_Q = (F⁻¹_QQ)⁻¹ w_Q`` and ``x = 0`` off Q; then δw = −F⁻¹ x.
    """
    out = w.clone()
    rows = prune.any(1).nonzero().squeeze(1)  # blocks with something to prune
    for s in range(0, len(rows), CHUNK):
        r = rows[s:s + CHUNK]
        f, p = finv[r].double(), prune[r].double()
        M = f * p[:, :, None] * p[:, None, :] + torch.diag_embed(1 - p)
        x = torch.linalg.solve(M, p * w[r].double()).unsqueeze(-1)
        out[r] = (w[r].double() - (f @ x).squeeze(-1)).to(w.dtype)
    out[prune] = 0
    return out


# ----------------------------------------------------------------------------------------------
# Global selection


def sparsity_schedule(target: float, steps: int, schedule: str = "cubic") -> list[float]:
    """The sparsity after each of ``steps`` steps, ending at ``target``: cubic ``s(1 − (1 − j/k)³)``
    (Zhu & Gupta: prunes the many redundant weights early, the last ones with the freshest Fisher) or linear."""
    if schedule == "linear":
        return [target * j / steps for j in range(1, steps + 1)]
    return [target * (1 - (1 - j / steps) ** 3) for j in range(1, steps + 1)]


def _smallest(scores: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Boolean masks (shapes of ``scores``) of the ``count`` globally smallest entries (ties: first index)."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.argsort(flat, stable=True)[:count]] = True
    return [c.view(s.shape) for c, s in zip(torch.split(chosen, [s.numel() for s in scores]), scores)]


@dataclass
class _Layer:
    """One prunable linear in block form: weights ``w [nb, B]``, ``alive``/``valid`` ``[nb, B]`` bool."""

    linear: nn.Linear
    w: torch.Tensor
    alive: torch.Tensor
    valid: torch.Tensor  # False on the padding of the last block

    @classmethod
    def of(cls, linear: nn.Linear, B: int) -> "_Layer":
        flat = linear.weight.detach().reshape(-1)
        return cls(linear, to_blocks(flat.float(), B), to_blocks(torch.ones_like(flat, dtype=torch.bool), B, False),
                   to_blocks(torch.ones_like(flat, dtype=torch.bool), B, False))

    def mask(self) -> torch.Tensor:
        """``[out, in]`` bool: alive weights."""
        return self.alive.reshape(-1)[:self.linear.weight.numel()].view_as(self.linear.weight)

    def write(self) -> None:
        n = self.linear.weight.numel()
        self.linear.weight.data.copy_(self.w.reshape(-1)[:n].view_as(self.linear.weight).to(self.linear.weight))


def _select(layers: list[_Layer], finvs: list[torch.Tensor] | None, pattern: str, sparsity: float,
            total: int) -> list[torch.Tensor]:
    """The prune masks ``[nb, B]`` (cumulative: every pruned weight, old and new) at ``sparsity`` of ``total``.

    finvs None = magnitude (w² in place of the saliencies). Already pruned weights/groups stay pruned."""
    if pattern == "unstructured":
        scores = []
        for i, l in enumerate(layers):
            s = l.w.pow(2) if finvs is None else weight_saliency(l.w, finvs[i])
            scores.append(s.masked_fill(~l.alive, -math.inf).masked_fill(~l.valid, math.inf))
        return _smallest(scores, round(sparsity * total))
    groups = torch.arange(layers[0].w.shape[1], device=layers[0].w.device).view(-1, GROUP)  # [B/4, 4]
    if pattern == "block4":
        scores = []
        for i, l in enumerate(layers):
            s = (l.w.pow(2).view(l.w.shape[0], -1, GROUP).sum(-1) if finvs is None
                 else set_saliency(l.w, finvs[i], groups))
            dead = ~l.alive.view(l.w.shape[0], -1, GROUP).any(-1)
            pad = ~l.valid.view(l.w.shape[0], -1, GROUP).all(-1)
            scores.append(s.masked_fill(dead, -math.inf).masked_fill(pad, math.inf))
        chosen = _smallest(scores, round(sparsity * total / GROUP))
        return [c.repeat_interleave(GROUP, dim=1) for c in chosen]
    # nm_2_4: a group is done (2 of its 4 pruned) or untouched; the schedule sets the fraction done.
    # Each group's candidate is its best pair (of 6) by joint saliency (or by Σ w²).
    pairs = PAIRS.to(groups.device)
    pair_idx = groups[:, pairs].reshape(-1, 2)  # [G*6, 2] positions in the block
    best, scores = [], []
    for i, l in enumerate(layers):
        nb = l.w.shape[0]
        s = l.w.pow(2)[:, pair_idx].sum(-1) if finvs is None else set_saliency(l.w, finvs[i], pair_idx)
        value, which = s.view(nb, -1, len(PAIRS)).min(-1)  # [nb, G]
        done = ~l.alive.view(nb, -1, GROUP).all(-1)
        pad = ~l.valid.view(nb, -1, GROUP).all(-1)
        best.append(which)
        scores.append(value.masked_fill(done, -math.inf).masked_fill(pad, math.inf))
    chosen = _smallest(scores, round(sparsity / 0.5 * total / GROUP))
    masks = []
    for l, c, which in zip(layers, chosen, best):
        nb = l.w.shape[0]
        new = torch.zeros(nb, groups.shape[0], GROUP, dtype=torch.bool, device=l.w.device)
        pick = pairs[which]  # [nb, G, 2]
        new.scatter_(2, pick, True)
        old = ~l.alive.view(nb, -1, GROUP)
        done = old.any(-1, keepdim=True)
        masks.append(torch.where(done, old, new & c[..., None]).view(nb, -1))
    return masks


# ----------------------------------------------------------------------------------------------
# The pruner


# collect(masks) -> (per-linear Σ g gᵀ blocks [nb, B, B], number of gradients m); masks: per linear [out, in] bool
GradientSource = Callable[[list[torch.Tensor]], tuple[list[torch.Tensor], int]]


@dataclass
class UnstructuredReport:
    """What ``prune_unstructured`` did."""

    sparsity: float  # pruned / total over the prunable linears' weights
    pruned: int
    total: int
    steps: list[dict] = field(default_factory=list)  # per recomputation: target sparsity, reached, seconds
    masks: list[torch.Tensor] = field(default_factory=list)  # per linear [out, in] bool, True = alive


def prune_unstructured(model, options: OBSOptions, gradients: GradientSource | None = None,
                       linears: list[nn.Linear] | None = None) -> UnstructuredReport:
    """Prune ``model``'s encoder linears in place to ``options.sparsity`` (global over all of them).

    obs: ``options.num_recomputations`` steps of the sparsity schedule; each calls ``gradients(masks)``
    for the Fisher block sums at the current weights, inverts them, selects globally by saliency and
    applies the joint optimal update per block. magnitude: one global |w| selection, no update.
    linears: the layers to prune (default ``prunable_linears(model)``).
    """
    if options.method == "obs" and gradients is None:
        raise ValueError("method=obs needs gradients (a GradientSource); method=magnitude needs none")
    linears = [m for _, m in prunable_linears(model)] if linears is None else linears
    if options.pattern != "unstructured":
        for l in linears:
            if l.in_features % GROUP:
                raise ValueError(f"pattern={options.pattern} needs in_features divisible by {GROUP}; a linear has "
                                 f"{l.in_features}: use pattern=unstructured")
    B = options.fisher_block_size if options.method == "obs" else GROUP
    layers = [_Layer.of(l, B) for l in linears]
    total = sum(l.weight.numel() for l in linears)
    steps = options.num_recomputations if options.method == "obs" else 1
    report = UnstructuredReport(sparsity=0.0, pruned=0, total=total)
    from tqdm.auto import tqdm

    for j, target in enumerate(tqdm(sparsity_schedule(options.sparsity, steps, options.schedule),
                                    desc=f"{options.method} prune", disable=steps == 1)):
        t = time.perf_counter()
        finvs = None
        if options.method == "obs":
            sums, m = gradients([l.mask() for l in layers])
            finvs = [inverse_blocks(s.to(l.w.device), m, options.damp) for s, l in zip(sums, layers)]
            del sums
        prune = _select(layers, finvs, options.pattern, target, total)
        for i, (l, p) in enumerate(zip(layers, prune)):
            l.w = obs_update(l.w, finvs[i], p) if finvs is not None else l.w.masked_fill(p, 0)
            l.alive = l.valid & ~p
            l.write()
        del finvs
        pruned = sum(int((~l.alive & l.valid).sum()) for l in layers)
        report.steps.append({"target": target, "sparsity": pruned / total, "time_s": time.perf_counter() - t})
        log.info("%s step %d/%d: sparsity %.4f (target %.4f) in %.1f s", options.method, j + 1, steps,
                 pruned / total, target, time.perf_counter() - t)
    report.pruned = sum(int((~l.alive & l.valid).sum()) for l in layers)
    report.sparsity = report.pruned / total
    report.masks = [l.mask().clone() for l in layers]
    return report


def linear_sparsity(model) -> tuple[int, int]:
    """(zeros, weights) over the encoder's linear weights."""
    ws = [m.weight for _, m in prunable_linears(model)]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)
