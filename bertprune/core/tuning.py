"""Mask tuning (Kwon et al. §4.3): layer-wise least squares for the scales of the kept units.

Layer by layer, bottom-up, on calibration tokens (padding removed):
  attention: fit scales s_h of the kept heads so that the student's pre-LayerNorm attention output
      x_s + b_o + Σ_h s_h W_o[:, h] ctx_h  matches the teacher's pre-LayerNorm output;
  FFN: fit scales s_j of the kept neurons so that x_s + b_2 + Σ_j s_j W_2[:, j] a_j matches the teacher's.
The student's inputs come from its own already-tuned lower layers; the teacher is a less-pruned
model (by default the search mask at constraint √C, as in the paper's code) or the dense model.
Normal equations are accumulated per batch, so nothing of size tokens × hidden × units is stored:
    G = Σ_t Y_tᵀ Y_t,   c = Σ_t Y_tᵀ r_t,   (G + λI) s = c + λ·1     (ridge toward 1)
A layer whose solve is non-finite or gives |s| > max_scale is re-solved with 10× the damping (up to
``retries`` times) and otherwise keeps its binary mask — and tuning continues with later layers
(the paper's code stops tuning all remaining layers instead).
``last_layer_tokens="cls"`` fits the last layer's FFN on the first ([CLS]) token of each sequence
only — the only token a sequence classifier reads (the paper's code does this for classification);
``"all"`` fits it on every real token like the other layers. docs/method.md lists every difference
from the paper's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bertprune.models.adapters import adapter_for

LAST_LAYER_TOKENS = ("cls", "all")


class _Stop(Exception):
    pass


def capture_encoder_inputs(model, batch: dict):
    """Hidden states after the embeddings ``[b, s, d]`` and the attention mask the layers receive."""
    adapter = adapter_for(model)
    encoder = adapter.encoder(model)
    captured = {}

    def hook(_module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["mask"] = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        raise _Stop

    handle = encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**adapter.model_inputs(batch))
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["hidden"], captured["mask"]


@dataclass
class TuneReport:
    """Per layer and sub-block: status (tuned / damped / binary / empty), damping used, residuals."""

    entries: list[dict] = field(default_factory=list)

    @property
    def fallbacks(self) -> int:
        return sum(e["status"] == "binary" for e in self.entries)


def _solve(G: torch.Tensor, c: torch.Tensor, damping: float, max_scale: float, retries: int):
    """Ridge solve toward 1; returns (scales, status, damping used)."""
    k = G.shape[0]
    scale_ref = float(G.diagonal().mean()) if k else 1.0
    lam = damping * max(scale_ref, 1e-12)
    for attempt in range(retries + 1):
        try:
            s = torch.linalg.solve(G + lam * torch.eye(k, dtype=G.dtype, device=G.device), c + lam)
        except RuntimeError:
            s = None
        if s is not None and torch.isfinite(s).all() and float(s.abs().max()) <= max_scale:
            return s, ("tuned" if attempt == 0 else "damped"), lam
        lam = 10.0 * lam if lam > 0 else 1e-4 * max(scale_ref, 1e-12)  # damping=0: retries still damp
    return torch.ones(k, dtype=G.dtype, device=G.device), "binary", lam


@torch.no_grad()
def tune_masks(model, head_mask: torch.Tensor, neuron_mask: torch.Tensor, teacher_head_mask: torch.Tensor,
               teacher_neuron_mask: torch.Tensor, batches, damping: float = 1e-2, max_scale: float = 10.0,
               retries: int = 3, device="cpu", progress: bool = True, last_layer_tokens: str = "all"):
    """Tuned masks for a dense, frozen model.

    head_mask ``[L, H]`` / neuron_mask ``[L, F]``: the binary student masks; teacher_*: the teacher's masks
    (ones for the dense model); batches: padded dicts with ``input_ids`` / ``attention_mask`` ``[b, s]``.
    last_layer_tokens: ``"cls"`` fits the last layer's FFN on position 0 only (sequence classification),
    ``"all"`` on every real token. Returns ``(head_mask [L, H], neuron_mask [L, F], TuneReport)`` where the
    kept entries now hold real-valued scales and pruned entries stay 0.
    """
    if last_layer_tokens not in LAST_LAYER_TOKENS:
        raise ValueError(f"last_layer_tokens={last_layer_tokens!r}; expected one of {LAST_LAYER_TOKENS}")
    model.eval()
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    H, d_head = adapter.num_heads(model.config), adapter.head_size(model.config)
    report = TuneReport()
    head_out = head_mask.detach().clone().float().to(device)
    neuron_out = neuron_mask.detach().clone().float().to(device)
    t_head, t_neuron = teacher_head_mask.float().to(device), teacher_neuron_mask.float().to(device)

    # Per batch: padded hidden states of student and teacher, the layers' attention mask, token mask.
    state = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden, amask = capture_encoder_inputs(model, batch)
        tok = batch["attention_mask"].bool()
        first = torch.zeros_like(tok)
        first[:, 0] = True
        state.append({"s": hidden, "t": hidden, "mask": amask, "tok": tok, "cls": first[tok]})  # cls: [T]

    for li, layer in enumerate(tqdm(layers, desc="tune", disable=not progress)):
        parts = adapter.parts(layer)
        W_o, b_o, ln_att = parts.attn_out.weight, parts.attn_out.bias, parts.ln_att
        W_1, b_1, act_fn = parts.ffn_in.weight, parts.ffn_in.bias, parts.act
        W_2, b_2, ln_ffn = parts.ffn_out.weight, parts.ffn_out.bias, parts.ln_ffn
        kept_h = torch.nonzero(head_out[li] != 0).flatten()
        kept_n = torch.nonzero(neuron_out[li] != 0).flatten()
        W_o_heads = W_o.view(W_o.shape[0], H, d_head)[:, kept_h]  # [d, k, d_h]

        # ---- attention: accumulate normal equations
        kh = len(kept_h)
        G = torch.zeros(kh, kh, dtype=torch.float64, device=device)
        c = torch.zeros(kh, dtype=torch.float64, device=device)
        for st in state:
            tok = st["tok"]
            ctx_s = adapter.context(layer, st["s"], st["mask"])[tok]  # [T, H*d_h]
            ctx_t = adapter.context(layer, st["t"], st["mask"])[tok]
            x_s, x_t = st["s"][tok], st["t"][tok]
            t_mask = t_head[li].repeat_interleave(d_head)
            pre_t = x_t + b_o + (ctx_t * t_mask) @ W_o.t()  # teacher pre-LN  [T, d]
            st["t_att"] = ln_att(pre_t)
            st["ctx_s"] = ctx_s
            if kh:
                y = torch.einsum("tkh,dkh->tkd", ctx_s.view(-1, H, d_head)[:, kept_h], W_o_heads)  # [T, k, d]
                r = pre_t - x_s - b_o
                G += torch.einsum("tkd,tjd->kj", y, y).double()
                c += torch.einsum("tkd,td->k", y, r).double()
        if kh:
            s, status, lam = _solve(G, c, damping, max_scale, retries)
            head_out[li, kept_h] = s.float()
            report.entries.append({"layer": li, "part": "heads", "kept": kh, "status": status, "damping": lam,
                                   "min_scale": float(s.min()), "max_scale": float(s.max())})
        else:
            report.entries.append({"layer": li, "part": "heads", "kept": 0, "status": "empty"})
        h_scale = head_out[li].repeat_interleave(d_head)

        # ---- FFN: student attention output with tuned scales, then normal equations
        kn = len(kept_n)
        cls_only = last_layer_tokens == "cls" and li == len(layers) - 1
        G_a = torch.zeros(kn, kn, dtype=torch.float64, device=device)
        c = torch.zeros(kn, dtype=torch.float64, device=device)
        W_2k = W_2[:, kept_n]  # [d, k]
        for st in state:
            tok = st["tok"]
            x_s = st["s"][tok]
            a_s_out = ln_att(x_s + b_o + (st.pop("ctx_s") * h_scale) @ W_o.t())  # student attention output [T, d]
            t_att = st.pop("t_att")
            a_t = act_fn(t_att @ W_1.t() + b_1)
            pre_t = t_att + b_2 + (a_t * t_neuron[li]) @ W_2.t()
            st["t_next"] = ln_ffn(pre_t)
            a_s = act_fn(a_s_out @ W_1.t() + b_1)  # [T, F]
            st["a_s"], st["att_s"] = a_s, a_s_out
            if kn:
                a, r = a_s[:, kept_n], pre_t - a_s_out - b_2
                if cls_only:  # the classifier reads only the first token of the last layer's output
                    a, r = a[st["cls"]], r[st["cls"]]
                G_a += (a.t() @ a).double()
                c += (a * (r @ W_2k)).sum(0).double()
        if kn:
            G = G_a * (W_2k.t() @ W_2k).double()
            s, status, lam = _solve(G, c, damping, max_scale, retries)
            neuron_out[li, kept_n] = s.float()
            report.entries.append({"layer": li, "part": "neurons", "kept": kn, "status": status, "damping": lam,
                                   "min_scale": float(s.min()), "max_scale": float(s.max()),
                                   "tokens": "cls" if cls_only else "all"})
        else:
            report.entries.append({"layer": li, "part": "neurons", "kept": 0, "status": "empty"})

        # ---- next layer's inputs (padding positions stay as they were: masked as keys, never read)
        for st in state:
            tok = st["tok"]
            out_s = ln_ffn(st.pop("att_s") + b_2 + (st.pop("a_s") * neuron_out[li]) @ W_2.t())
            s_next, t_next = st["s"].clone(), st["t"].clone()
            s_next[tok], t_next[tok] = out_s, st.pop("t_next")
            st["s"], st["t"] = s_next, t_next
    return head_out, neuron_out, report
