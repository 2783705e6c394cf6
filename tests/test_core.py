"""The algorithm core on a tiny random BERT: masks, cost, search, rearrangement, tuning, physical pruning."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_realistic

from bertprune.core.cost import MacCost
from bertprune.core.masks import MaskHooks, ones_masks
from bertprune.models import load_model, model_shape, resize_layers, save_checkpoint, tiny_bert
from bertprune.core.physical import prune_physically
from bertprune.core.rearrange import rearrange_layer, rearrange_masks
from bertprune.core.search import check_constraint, mac_ratio, search_mac
from bertprune.core.tuning import tune_masks

VOCAB = 200


def batch(seed=0, b=6, s=14):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (b, s), generator=g)
    am = torch.ones(b, s, dtype=torch.long)
    am[1, 9:] = 0
    am[4, 3:] = 0
    return {"input_ids": ids, "attention_mask": am, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (b,), generator=g)}


@pytest.fixture
def realistic_model():
    """The fixture's architecture with trained-looking weights (logits O(1)): for parity tests."""
    return make_realistic(tiny_bert("classification", 2, VOCAB, num_layers=3, hidden_size=32, num_heads=4,
                                    intermediate_size=48)).eval()


@pytest.fixture
def model():
    return tiny_bert("classification", 2, VOCAB, num_layers=3, hidden_size=32, num_heads=4,
                     intermediate_size=48).eval()


def logits(m, batches, hm=None, nm=None):
    with torch.no_grad():
        if hm is None:
            return torch.cat([m(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
        with MaskHooks(m, hm, nm):
            return logits(m, batches)


def test_cost_model_matches_design():
    # BERT-base at S≈39: one head costs about 131 FFN neurons (docs/method.md, "Cost model").
    c = MacCost(seq_len=39, hidden_size=768, head_size=64)
    assert c.head == 4 * 39 * 768 * 64 + 2 * 39 * 39 * 64
    assert c.neuron == 2 * 39 * 768
    assert round(c.head / c.neuron) == 131


def test_masks_ones_is_identity_and_zero_head_changes_output(model):
    b = [batch()]
    hm, nm = ones_masks(model)
    ref = logits(model, b)
    assert torch.allclose(logits(model, b, hm, nm), ref, atol=1e-6)
    hm2 = hm.clone()
    hm2[0, 1] = 0
    assert (logits(model, b, hm2, nm) - ref).abs().max() > 1e-6
    hooks = MaskHooks(model, hm2, nm)
    hooks.remove()
    assert torch.allclose(logits(model, b), ref)  # detached hooks leave no trace
    with pytest.raises(ValueError, match="masks must be"):
        MaskHooks(model, torch.ones(2, 4), nm)


@pytest.mark.parametrize("constraint", [0.3, 0.5, 0.7])
def test_search_meets_budget_and_keeps_most_important(constraint):
    torch.manual_seed(1)
    cost = MacCost(seq_len=20, hidden_size=32, head_size=8)
    hi, ni = torch.rand(3, 4), torch.rand(3, 48)
    hm, nm = search_mac(hi, ni, constraint, cost)
    ratio = mac_ratio(hm, nm, cost)
    assert ratio <= constraint + 1e-9
    # the budget is used up to one neuron, or to one head once every neuron is kept
    slack = cost.head if nm.all() else cost.neuron
    assert constraint - ratio < slack / cost.encoder(12, 144) + 1e-9
    # kept units are the globally most important of their kind
    kept_h = hi[hm.bool()]
    if kept_h.numel() and (~hm.bool()).any():
        assert kept_h.min() >= hi[~hm.bool()].max()
    if (~nm.bool()).any():
        assert ni[nm.bool()].min() >= ni[~nm.bool()].max()


def test_search_prefers_important_heads():
    cost = MacCost(seq_len=20, hidden_size=32, head_size=8)
    hi, ni = torch.full((3, 4), 100.0), torch.full((3, 48), 1e-3)
    hm, nm = search_mac(hi, ni, 0.5, cost)
    assert hm.sum() == 12 or hm.sum() * cost.head > 0.5 * cost.encoder(12, 144) - cost.head


def _retained(hi, ni, hm, nm):
    return float(hi[hm.bool()].sum() + ni[nm.bool()].sum())


def test_search_finds_the_optimal_split_not_the_most_heads():
    """Two strong heads, six weak ones: a weak head costs ~21 neurons but is worth 5, so the optimum keeps
    2 heads and spends the rest on neurons, although the budget could buy 6 heads."""
    cost = MacCost(seq_len=20, hidden_size=32, head_size=8)  # head 26,880 MACs = 21 neurons of 1,280
    hi = torch.tensor([[100.0, 5, 5, 5], [5, 100.0, 5, 5]])
    ni = torch.ones(2, 48)
    hm, nm = search_mac(hi, ni, 0.5, cost)
    budget = 0.5 * cost.encoder(8, 96)
    most_heads = int(budget // cost.head)
    assert most_heads == 6  # what "most heads first" would keep (and 6 neurons with the rest)
    assert hm.sum() == 2 and hm[0, 0] == 1 and hm[1, 1] == 1 and nm.sum() == 90
    assert mac_ratio(hm, nm, cost) <= 0.5
    assert _retained(hi, ni, hm, nm) == 290 > 100 + 100 + 4 * 5 + 6  # the most-heads split retains 226


@pytest.mark.parametrize("seed", range(5))
def test_search_equals_exhaustive_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    cost = MacCost(seq_len=20, hidden_size=32, head_size=8)
    hi, ni = torch.rand(3, 4, generator=g) * 30, torch.rand(3, 48, generator=g)
    C = 0.2 + 0.6 * float(torch.rand(1, generator=g))
    hm, nm = search_mac(hi, ni, C, cost)
    budget = C * cost.encoder(12, 144)
    hs, ns = hi.flatten().sort(descending=True)[0], ni.flatten().sort(descending=True)[0]
    best = max(float(hs[:n].sum() + ns[:min(144, int((budget - n * cost.head) // cost.neuron))].sum())
               for n in range(13) if n * cost.head <= budget)
    assert _retained(hi, ni, hm, nm) == pytest.approx(best, rel=1e-6)
    assert mac_ratio(hm, nm, cost) <= C + 1e-12


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, "abc", float("nan")])
def test_bad_constraint(bad):
    cost = MacCost(seq_len=20, hidden_size=32, head_size=8)
    with pytest.raises(ValueError, match="constraint"):
        check_constraint(bad, cost, 12, 144)


def test_constraint_too_small_to_keep_anything():
    cost = MacCost(seq_len=20, hidden_size=32, head_size=8)
    with pytest.raises(ValueError, match="nothing could be kept"):
        check_constraint(1e-6, cost, 12, 144)


def _set_loss(grads, mask):
    return grads[:, mask == 0].sum(1).pow(2).sum().item()


def test_rearrangement_keeps_counts_and_lowers_loss():
    # Units 0 and 1 are the least important but push the loss the same way; unit 2 cancels unit 0.
    grads = torch.tensor([[1.0, 1.0, -1.2, 3.0], [0.0, 0.1, 0.0, 3.0]])  # [B=2, N=4]
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0])  # the search's choice: the two lowest
    new = rearrange_layer(mask, grads)
    assert new.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert _set_loss(grads, new) == pytest.approx(0.04) and _set_loss(grads, mask) == pytest.approx(4.01)
    torch.manual_seed(0)
    B, N = 16, 40
    grads = torch.randn(B, N) * torch.linspace(0.5, 2, N)
    mask = torch.ones(N)
    mask[grads.pow(2).sum(0).argsort()[:25]] = 0
    new = rearrange_layer(mask, grads)
    assert int(new.sum()) == int(mask.sum())
    assert _set_loss(grads, new) <= _set_loss(grads, mask) + 1e-9
    # all-kept / all-pruned layers are left alone; [L, N] version works layer by layer
    assert torch.equal(rearrange_layer(torch.ones(N), grads), torch.ones(N))
    masks = torch.stack([mask, torch.ones(N)])  # [L=2, N]
    out = rearrange_masks(masks, torch.stack([grads, grads], 1))
    assert torch.equal(out[0], new) and torch.equal(out[1], torch.ones(N))


def test_tuning_dense_teacher_recovers_ones_and_reduces_error(model):
    batches = [batch(i) for i in range(4)]
    H1, N1 = ones_masks(model)
    h, n, rep = tune_masks(model, H1, N1, H1, N1, batches, progress=False)
    assert torch.allclose(h, H1, atol=1e-3) and torch.allclose(n, N1, atol=1e-3)
    hm, nm = H1.clone(), N1.clone()
    hm[0, 1] = 0
    hm[1, :3] = 0
    nm[:, ::2] = 0
    nm[2] = 0  # a layer left with 0 neurons
    h, n, rep = tune_masks(model, hm, nm, H1, N1, batches, progress=False)
    assert torch.equal(h == 0, hm == 0) and torch.equal(n == 0, nm == 0)  # pruned stay pruned
    ref = logits(model, batches)
    err_binary = (logits(model, batches, hm, nm) - ref).pow(2).mean()
    err_tuned = (logits(model, batches, h, n) - ref).pow(2).mean()
    assert err_tuned < err_binary
    assert any(e["status"] == "empty" for e in rep.entries)


def _last_pre_ln(model, batches, hm, nm):
    """Pre-LayerNorm output of the last layer's FFN (``[T, d]``, real tokens) and the CLS rows' selector."""
    layer = model.bert.encoder.layer[-1].output
    seen = []
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(mod.dense(args[0]) + args[1]))
    try:
        logits(model, batches, hm, nm)
    finally:
        handle.remove()
    toks = [b["attention_mask"].bool() for b in batches]
    rows = torch.cat([o[t] for o, t in zip(seen, toks)])
    first = torch.cat([torch.nn.functional.pad(t[:, :1], (0, t.shape[1] - 1))[t] for t in toks])
    return rows, first


def test_tuning_last_layer_on_cls_fits_the_cls_token(realistic_model):
    """Only the last layer's FFN prunes: ``cls`` minimises that layer's error on the [CLS] token, ``all``
    on every token; everything else is identical. (Tiny damping: both are plain least squares.)"""
    model = realistic_model
    batches = [batch(i) for i in range(4)]
    H1, N1 = ones_masks(model)
    hm, nm = H1.clone(), N1.clone()
    nm[2, ::2] = 0
    kw = dict(damping=1e-9, max_scale=1e6, progress=False)
    h_all, n_all, rep_all = tune_masks(model, hm, nm, H1, N1, batches, last_layer_tokens="all", **kw)
    h_cls, n_cls, rep_cls = tune_masks(model, hm, nm, H1, N1, batches, last_layer_tokens="cls", **kw)
    assert torch.equal(h_all, h_cls) and torch.equal(n_all[:2], n_cls[:2]) and not torch.equal(n_all[2], n_cls[2])
    assert rep_cls.entries[-1]["tokens"] == "cls" and rep_all.entries[-1]["tokens"] == "all"
    assert all(e.get("tokens", "all") == "all" for e in rep_cls.entries[:-1])
    ref, first = _last_pre_ln(model, batches, H1, N1)
    err = {}
    for name, n in (("all", n_all), ("cls", n_cls), ("binary", nm)):
        out, _ = _last_pre_ln(model, batches, hm, n)
        err[name] = ((out - ref).pow(2).sum(1)[first].sum(), (out - ref).pow(2).sum())  # (CLS rows, all rows)
    assert err["cls"][0] <= err["all"][0] * (1 + 1e-4) and err["cls"][0] < err["binary"][0]
    assert err["all"][1] <= err["cls"][1] * (1 + 1e-4) and err["all"][1] < err["binary"][1]
    with pytest.raises(ValueError, match="last_layer_tokens"):
        tune_masks(model, hm, nm, H1, N1, batches, last_layer_tokens="first", progress=False)


def test_tuning_absurd_scales_fall_back_per_layer_and_continue(model, monkeypatch):
    import bertprune.core.tuning as tuning

    batches = [batch(i) for i in range(2)]
    H1, N1 = ones_masks(model)
    hm, nm = H1.clone(), N1.clone()
    nm[:, ::2] = 0
    calls = {"n": 0}
    real_solve = torch.linalg.solve

    def flaky(A, b):
        calls["n"] += 1
        if calls["n"] <= 4:  # first sub-block: every attempt gives absurd scales
            return torch.full_like(b, 1e6)
        return real_solve(A, b)

    monkeypatch.setattr(tuning.torch.linalg, "solve", flaky)
    h, n, rep = tune_masks(model, hm, nm, H1, N1, batches, progress=False)
    assert rep.entries[0]["status"] == "binary" and torch.equal(h[0], H1[0])
    assert all(e["status"] == "tuned" for e in rep.entries[1:])  # later layers are still tuned
    assert rep.fallbacks == 1


TOL = 1e-4  # the parity tolerance prune.py enforces


def _uneven_masks(seed=3):
    """Uneven scaled masks for the 3-layer fixture: layer 1 keeps 0 heads, layer 2 keeps 0 neurons."""
    g = torch.Generator().manual_seed(seed)
    hm = torch.tensor([[1.0, 0, 1.6, 0], [0, 0, 0, 0], [0.6, 1, 1.4, 1]])
    nm = (torch.rand(3, 48, generator=g) > 0.5).float() * (0.3 + 1.4 * torch.rand(3, 48, generator=g))
    nm[2] = 0
    return hm, nm


def test_tuning_with_zero_damping_still_damps_its_retries(model, monkeypatch):
    import bertprune.core.tuning as tuning

    batches = [batch(i) for i in range(2)]
    H1, N1 = ones_masks(model)
    hm = H1.clone()
    hm[0, 0] = 0
    calls = {"n": 0}
    real_solve = torch.linalg.solve

    def absurd_once(A, b):
        calls["n"] += 1
        return torch.full_like(b, 1e6) if calls["n"] == 1 else real_solve(A, b)

    monkeypatch.setattr(tuning.torch.linalg, "solve", absurd_once)
    _, _, rep = tune_masks(model, hm, N1, H1, N1, batches, damping=0.0, progress=False)
    first = rep.entries[0]
    assert first["status"] == "damped" and first["damping"] > 0  # 10 × 0 would retry the same failed solve


def test_physical_pruning_matches_masked_model_and_reloads(realistic_model, tmp_path):
    model = realistic_model
    batches = [batch(i) for i in range(2)]
    hm, nm = _uneven_masks()
    masked = logits(model, batches, hm, nm)
    assert masked.abs().max() > 0.5  # O(1) logits: a tolerance of 1e-4 means something
    # The tolerance separates right from wrong: each classic mistake moves the logits far beyond it.
    assert (logits(model, batches, (hm != 0).float(), (nm != 0).float()) - masked).abs().max() > 100 * TOL
    for bias in (model.bert.encoder.layer[1].attention.output.dense.bias, model.bert.encoder.layer[2].output.dense.bias):
        kept = bias.detach().clone()
        with torch.no_grad():
            bias.zero_()
        assert (logits(model, batches, hm, nm) - masked).abs().max() > 100 * TOL  # an empty layer's bias matters
        with torch.no_grad():
            bias.copy_(kept)
    sa = model.bert.encoder.layer[0].attention.self
    sa.scaling, real_scaling = 2 ** -0.5 * sa.scaling, sa.scaling
    assert (logits(model, batches, hm, nm) - masked).abs().max() > 100 * TOL  # so does the attention scaling
    sa.scaling = real_scaling

    pruned = prune_physically(copy.deepcopy(model), hm, nm).eval()
    assert model_shape(pruned) == ([2, 0, 4], [int((nm[0] != 0).sum()), int((nm[1] != 0).sum()), 0])
    out = logits(pruned, batches)
    assert (out - masked).abs().max() <= TOL
    assert not torch.isnan(out).any()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    save_checkpoint(pruned, None, tmp_path / "p")
    again = load_model(str(tmp_path / "p"))
    assert (logits(again, batches) - masked).abs().max() <= TOL
    assert model_shape(again) == model_shape(pruned)


def _prune_and_check_placement(model, device, dtype, tol):
    model = model.to(device=device, dtype=dtype).eval()
    batches = [{k: v.to(device) for k, v in batch(i).items()} for i in range(2)]
    hm, nm = _uneven_masks()
    masked = logits(model, batches, hm.to(device), nm.to(device))
    pruned = prune_physically(copy.deepcopy(model), hm, nm).eval()
    assert {(p.device.type, p.dtype) for p in pruned.parameters()} == {(torch.device(device).type, dtype)}
    out = logits(pruned, batches)  # a LayerNorm left on CPU/fp32 raised a device/dtype mismatch here
    assert out.dtype == dtype and (out - masked).abs().max() <= tol
    fresh = tiny_bert("classification", 2, VOCAB, num_layers=3, hidden_size=32, num_heads=4,
                      intermediate_size=48).to(device=device, dtype=dtype)
    resize_layers(fresh, *model_shape(pruned))  # what load_model does for a pruned checkpoint
    assert {(p.device.type, p.dtype) for p in fresh.parameters()} == {(torch.device(device).type, dtype)}
    fresh.load_state_dict(pruned.state_dict())
    assert (logits(fresh.eval(), batches) - out).abs().max() == 0


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float16, 2e-2)])
def test_empty_layers_keep_the_model_dtype(realistic_model, dtype, tol):
    _prune_and_check_placement(realistic_model, "cpu", dtype, tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_empty_layers_stay_on_the_gpu(realistic_model, dtype):
    _prune_and_check_placement(realistic_model, "cuda", dtype, 1e-4 if dtype == torch.float32 else 2e-2)


def test_pruned_model_is_faster_at_half_macs():
    """Not a timing assertion: the pruned encoder does strictly fewer multiply-adds (counted by FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = tiny_bert("classification", 2, VOCAB, num_layers=2, hidden_size=64, num_heads=4, intermediate_size=256).eval()
    hm, nm = ones_masks(m)
    hm[:, :2] = 0
    nm[:, :128] = 0
    p = prune_physically(copy.deepcopy(m), hm, nm)
    b = batch()
    inputs = {k: v for k, v in b.items() if k != "labels"}
    counts = []
    for net in (m, p):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            net(**inputs)
        counts.append(fc.get_total_flops())
    assert counts[1] < 0.6 * counts[0]


PRUNE_MODEL_WITHOUT_HYDRA = r"""
import json, sys
import torch
from bertprune.core.cost import MacCost
from bertprune.core.masks import MaskHooks
from bertprune.core.kwon import Kwon
from bertprune.core.pipeline import prune_model
from bertprune.models import model_shape, tiny_bert

torch.manual_seed(0)
model = tiny_bert("classification", 2, vocab_size=120, num_layers=3, seed=1).eval()
with torch.no_grad():  # O(1) logits (a tiny random BERT's are ~0.02: parity could not fail)
    for name, p in model.named_parameters():
        p.copy_(1.0 + 0.3 * torch.randn_like(p) if "LayerNorm.weight" in name else 0.3 * torch.randn_like(p))
batches = []
for i in range(6):
    ids = torch.randint(5, 120, (8, 12))
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[::2, 9:] = 0  # padded rows
    batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (8,))})
cost = MacCost.for_model(model, seq_len=10.0)
stages = []
result = prune_model(model, batches, "classification", cost, 0.5, Kwon(tuning_samples=24), progress=False,
                     evaluate=lambda m, hm, nm, stage: stages.append(stage) or float(hm.sum()))
diff = 0.0
with torch.no_grad():
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        with MaskHooks(model, result.head_mask, result.neuron_mask):
            masked = model(**inputs).logits
        pruned = result.model(**inputs).logits
        diff = max(diff, float((pruned - masked).abs().max()))
again = prune_model(model, batches, "classification", cost, 0.5, Kwon(tuning_samples=24), progress=False,
                    fisher=result.fisher)
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf", "pytorch_lightning", "lightning")),
    "mac_ratio": result.mac_ratio, "shape": list(model_shape(result.model)),
    "heads": result.heads_per_layer, "ffn": result.ffn_per_layer,
    "kept": [int((result.head_mask != 0).sum(1).tolist()[i]) for i in range(3)],
    "kept_ffn": [int(x) for x in (result.neuron_mask != 0).sum(1).tolist()],
    "macs": [result.macs, cost.encoder(sum(result.heads_per_layer), sum(result.ffn_per_layer)), result.dense_macs],
    "timings": list(result.timings), "again_timings": list(again.timings), "stages": stages,
    "stage_metrics": result.stage_metrics, "diff": diff, "scaled": bool(((result.head_mask != 0) & (result.head_mask != 1)).any()),
    "same_masks": bool(torch.equal(again.head_mask, result.head_mask) and torch.equal(again.neuron_mask, result.neuron_mask)),
    "params": [sum(p.numel() for p in result.model.parameters()), sum(p.numel() for p in model.parameters())],
}))
"""


@pytest.mark.integration
def test_prune_model_runs_without_hydra_or_lightning(tmp_path):
    """The cfg-free pipeline, as a notebook calls it: no Hydra, OmegaConf or Lightning is imported, the MAC
    budget holds, the pruned model has the masks' shape and the masked model's outputs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "prune_model_plain.py"
    script.write_text(PRUNE_MODEL_WITHOUT_HYDRA)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["modules"] == []  # neither Hydra nor Lightning was imported
    assert 0.45 <= r["mac_ratio"] <= 0.5
    assert r["shape"] == [r["heads"], r["ffn"]] and r["heads"] == r["kept"] and r["ffn"] == r["kept_ffn"]
    assert r["macs"][0] == r["macs"][1] and r["macs"][0] / r["macs"][2] == pytest.approx(r["mac_ratio"])
    assert sum(r["heads"]) < 12 or sum(r["ffn"]) < 3 * 64
    assert r["params"][0] < r["params"][1]
    assert r["timings"] == ["fisher", "search", "eval_search", "rearrange", "eval_rearrange", "tune", "eval_tune",
                            "physical"]
    assert r["stages"] == ["search", "rearrange", "tune"] and set(r["stage_metrics"]) == set(r["stages"])
    assert r["scaled"]  # tuning gave the kept heads real-valued scales, folded into the pruned weights
    assert r["diff"] <= 1e-4
    # precomputed Fisher gradients (the multi-process job's): no Fisher step, the same masks
    assert "fisher" not in r["again_timings"] and r["same_masks"]
