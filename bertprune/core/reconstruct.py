"""Reconstruction of the output projections (attention output and FFN output dense layers) by ridge least squares.

After a sub-layer is pruned, its output projection is refitted so that the pruned sub-layer reproduces the
**dense** model's sub-layer output on the **pruned** model's own inputs (its lower layers already pruned
and refitted). For the attention of layer l, with the student's kept context columns ``x`` and the dense
model's pre-LayerNorm output ``z_t = h_t + b_o + W_o ctx_t``:

    min_{W, b}  Σ_tokens ‖(h_s + W x + b) − z_t‖²  +  λ ‖W − W_o[:, kept]‖²

(the same for the FFN with the kept post-activation neurons and ``W_2``). The whole projection is refitted,
not one scale per unit (what mask tuning fits), and the ridge pulls toward the original weights, so a
sub-layer with few tokens per parameter stays near its dense weights. Normal equations are accumulated per
batch (``NormalEquations``): ``A = Σ [x,1]ᵀ[x,1]`` and ``B = Σ [x,1]ᵀ y``, float64, so nothing of size
tokens × units is stored. Memory: ``8·(k+1)·(k+1+d)`` bytes for k kept units of a d-wide model — BERT-large's
dense FFN (k = 4,096, d = 1,024) needs 168 MB, at any sequence length (384-token SQuAD features included).

Every refit is checked on held-out calibration tokens (batches that fed no fit): it is kept only where it
lowers the held-out reconstruction error of its sub-layer, else that sub-layer keeps its unfitted weights,
and the rollback is recorded (``ReconstructionReport``).

``LayerwiseReconstructor`` walks a model bottom-up, one sub-layer at a time (attention, then FFN), carrying
the student's and the dense model's hidden states; ``reconstruct`` applies it to known masks (the Kwon
pipeline's ``tuning.method=projection``) and ``bertprune.core.iterative`` interleaves it with the search.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from bertprune.core.tuning import capture_encoder_inputs
from bertprune.models.adapters import adapter_for

LAST_LAYER_TOKENS = ("cls", "all")


class NormalEquations:
    """Ridge least squares ``y ≈ W x + b`` over tokens, accumulated batch by batch (float64)."""

    def __init__(self, k: int, d: int, device=None):
        self.k, self.d = k, d
        self.A = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=device)
        self.B = torch.zeros(k + 1, d, dtype=torch.float64, device=device)
        self.yy = 0.0  # Σ ‖y‖² (for the error of a solution)
        self.tokens = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x ``[T, k]`` features, y ``[T, d]`` targets."""
        xa = torch.cat([x.double(), x.new_ones(len(x), 1, dtype=torch.float64)], 1)
        self.A += xa.t() @ xa
        self.B += xa.t() @ y.double()
        self.yy += float(y.double().pow(2).sum())
        self.tokens += len(x)

    def solve(self, W0: torch.Tensor, b0: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [d, k], b [d])`` minimising the squared error + ``λ‖W − W0‖²`` with λ = damping × the mean
        diagonal of ``xᵀx`` (the bias is not damped). Non-finite solves raise ``FloatingPointError``."""
        k = self.k
        theta0 = torch.cat([W0.t().double(), b0.double()[None]], 0)  # [k+1, d]
        scale = float(self.A.diagonal()[:k].mean()) if k else 0.0
        R = torch.zeros_like(self.A)
        R.diagonal()[:k] = damping * max(scale, 1e-12)
        R[k, k] = 1e-9 * max(float(self.A[k, k]), 1.0)  # keeps a 0-token fit solvable
        theta = torch.linalg.solve(self.A + R, self.B + R @ theta0)
        if not torch.isfinite(theta).all():
            raise FloatingPointError("non-finite least-squares solution")
        return theta[:k].t().to(W0.dtype), theta[k].to(b0.dtype)

    def error(self, W: torch.Tensor, b: torch.Tensor) -> float:
        """Σ_tokens ‖y − W x − b‖² of a solution, from the accumulated statistics."""
        theta = torch.cat([W.t().double(), b.double()[None]], 0)
        return float((theta * (self.A @ theta)).sum() - 2 * (theta * self.B).sum()) + self.yy


@dataclass
class ReconstructionReport:
    """Per layer and sub-layer: kept units, tokens fitted, held-out error before/after, kept or rolled back."""

    entries: list[dict] = field(default_factory=list)

    @property
    def rollbacks(self) -> list[dict]:
        return [e for e in self.entries if e["status"] == "rolled_back"]


class LayerwiseReconstructor:
    """Bottom-up, sub-layer by sub-layer refit of ``work`` (a copy of the dense ``model``, modified in place)
    toward ``model``'s outputs. Call ``attention(li, head_row)`` then ``ffn(li, neuron_row)`` for li = 0 … L-1:
    each fits the sub-layer's output projection for the kept units (non-zero entries of the row), keeps the fit
    where it lowers the held-out error, writes it into ``work`` and carries the hidden states up."""

    def __init__(self, model, work, fit_batches: list[dict], held_out: list[dict], damping: float = 1e-2,
                 last_layer_tokens: str = "all", device="cpu"):
        if last_layer_tokens not in LAST_LAYER_TOKENS:
            raise ValueError(f"last_layer_tokens={last_layer_tokens!r}; expected one of {LAST_LAYER_TOKENS}")
        if not held_out:
            raise ValueError("the reconstruction needs held-out calibration batches to check each fit")
        self.model, self.work, self.damping, self.device = model, work, damping, device
        self.adapter = adapter_for(model)
        self.L = len(self.adapter.layers(model))
        self.H, self.d_head = self.adapter.num_heads(model.config), self.adapter.head_size(model.config)
        self.last_layer_tokens = last_layer_tokens
        self.report = ReconstructionReport()
        self.fit = [self._state(b) for b in fit_batches]
        self.held = [self._state(b) for b in held_out]

    @torch.no_grad()
    def _state(self, batch: dict) -> dict:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden, amask = capture_encoder_inputs(self.model, batch)
        tok = batch["attention_mask"].bool()
        first = torch.zeros_like(tok)
        first[:, 0] = True
        return {"s": hidden, "t": hidden, "mask": amask, "tok": tok, "cls": first[tok]}

    def _refit(self, li: int, part: str, linear: torch.nn.Linear, cols: torch.Tensor, rows) -> dict:
        """Fit ``linear``'s kept input columns and bias on ``rows(state) -> (x [T, k], y [T, d])``; returns the entry."""
        W0, b0 = linear.weight[:, cols].clone(), linear.bias.clone()
        fit, held = NormalEquations(len(cols), W0.shape[0], self.device), NormalEquations(len(cols), W0.shape[0], self.device)
        for ne, states in ((fit, self.fit), (held, self.held)):
            for st in states:
                ne.add(*rows(st))
        entry = {"layer": li, "part": part, "kept": len(cols), "tokens": fit.tokens}
        try:
            W, b = fit.solve(W0, b0, self.damping)
        except (FloatingPointError, RuntimeError) as e:
            entry.update(status="rolled_back", why=str(e))
            return entry
        before, after = held.error(W0, b0), held.error(W, b)
        entry.update(held_out_error_before=before / max(held.tokens, 1), held_out_error_after=after / max(held.tokens, 1))
        if after < before:
            linear.weight[:, cols] = W
            linear.bias.copy_(b)
            entry["status"] = "fitted"
        else:
            entry["status"] = "rolled_back"
        return entry

    @torch.no_grad()
    def attention(self, li: int, head_row: torch.Tensor) -> dict:
        """Refit layer ``li``'s attention output projection for the kept heads; student/dense attention outputs
        are kept for ``ffn``."""
        layer_t, layer_s = self.adapter.layers(self.model)[li], self.adapter.layers(self.work)[li]
        pt, ps = self.adapter.parts(layer_t), self.adapter.parts(layer_s)
        kept = torch.nonzero(head_row.to(self.device) != 0).flatten()
        cols = (kept[:, None] * self.d_head + torch.arange(self.d_head, device=self.device)[None, :]).flatten()
        for st in self.fit + self.held:
            tok = st["tok"]
            st["ctx_s"] = self.adapter.context(layer_s, st["s"], st["mask"])[tok][:, cols]  # [T, k·d_h]
            ctx_t = self.adapter.context(layer_t, st["t"], st["mask"])[tok]
            st["pre_t"] = pt.attn_out(ctx_t)  # W_o ctx_t + b_o (dense)  [T, d]
            st["pre_t"] += st["t"][tok]
        # no head kept: a 0-column fit, i.e. only the output bias (what a 0-head layer keeps) is refitted
        entry = self._refit(li, "heads", ps.attn_out, cols, lambda st: (st["ctx_s"], st["pre_t"] - st["s"][st["tok"]]))
        entry.update(kept=len(kept), columns=len(cols))
        W = ps.attn_out.weight[:, cols]
        for st in self.fit + self.held:
            tok = st["tok"]
            st["att_s"] = ps.ln_att(st["s"][tok] + ps.attn_out.bias + st.pop("ctx_s") @ W.t())
            st["att_t"] = pt.ln_att(st.pop("pre_t"))
        self.report.entries.append(entry)
        return entry

    @torch.no_grad()
    def ffn(self, li: int, neuron_row: torch.Tensor) -> dict:
        """Refit layer ``li``'s FFN output projection for the kept neurons and carry both models to layer li+1."""
        layer_t, layer_s = self.adapter.layers(self.model)[li], self.adapter.layers(self.work)[li]
        pt, ps = self.adapter.parts(layer_t), self.adapter.parts(layer_s)
        cols = torch.nonzero(neuron_row.to(self.device) != 0).flatten()
        cls_only = self.last_layer_tokens == "cls" and li == self.L - 1
        for st in self.fit + self.held:
            att_t = st["att_t"]
            st["pre_t"] = att_t + pt.ffn_out(pt.act(pt.ffn_in(att_t)))
            st["a_s"] = ps.act(ps.ffn_in(st["att_s"]))[:, cols]  # [T, k]

        def rows(st):
            x, y = st["a_s"], st["pre_t"] - st["att_s"]
            return (x[st["cls"]], y[st["cls"]]) if cls_only else (x, y)

        entry = self._refit(li, "neurons", ps.ffn_out, cols, rows)
        entry["tokens_fitted_on"] = "cls" if cls_only else "all"
        W = ps.ffn_out.weight[:, cols]
        for st in self.fit + self.held:
            tok = st["tok"]
            out_s = ps.ln_ffn(st.pop("att_s") + ps.ffn_out.bias + st.pop("a_s") @ W.t())
            s_next, t_next = st["s"].clone(), st["t"].clone()
            s_next[tok], t_next[tok] = out_s, pt.ln_ffn(st.pop("pre_t"))
            st.pop("att_t")
            st["s"], st["t"] = s_next, t_next
        self.report.entries.append(entry)
        return entry


def reconstruct(model, head_mask: torch.Tensor, neuron_mask: torch.Tensor, fit_batches: list[dict],
                held_out: list[dict], damping: float = 1e-2, last_layer_tokens: str = "all", device="cpu",
                progress: bool = True):
    """``(work, head_mask, neuron_mask, report)``: a copy of the dense, frozen ``model`` whose attention and FFN
    output projections are refitted bottom-up for the kept units of the masks ``[L, H]`` / ``[L, F]``; the
    returned masks are binary (any scales in the given ones are superseded by the fit). ``work`` with the
    masks is the pruned model (``prune_physically`` makes it smaller)."""
    from tqdm.auto import tqdm

    work = copy.deepcopy(model).eval()
    head = (head_mask != 0).float()
    neuron = (neuron_mask != 0).float()
    rec = LayerwiseReconstructor(model, work, fit_batches, held_out, damping, last_layer_tokens, device)
    for li in tqdm(range(rec.L), desc="reconstruct", disable=not progress):
        rec.attention(li, head[li])
        rec.ffn(li, neuron[li])
    return work, head.to(head_mask.device), neuron.to(neuron_mask.device), rec.report
