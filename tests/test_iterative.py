"""Reconstruction of the output projections (bertprune/core/reconstruct.py) and the iterative method
(bertprune/core/iterative.py, ``method=iterative``): exact on a planted linear map, rolled back on a planted bad fit,
never over budget, 0-head layers reachable, parity of the physically pruned model, the job's config and results."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_realistic
from test_guard import _setup

import bertprune.core.reconstruct as reconstruct_mod
from bertprune.core.cost import MacCost
from bertprune.core.iterative import prune_iterative
from bertprune.core.masks import MaskHooks, mask_shapes, ones_masks
from bertprune.core.iterative import Iterative
from bertprune.core.kwon import Kwon
from bertprune.core.pipeline import prune_model
from bertprune.core.reconstruct import LayerwiseReconstructor, NormalEquations, reconstruct
from bertprune.core.search import mac_ratio, search_fixed, search_masks
from bertprune.models import model_inputs
from bertprune.models.adapters import adapter_for
from bertprune.tasks.kinds import get_kind


def test_normal_equations_solve_a_planted_linear_map_exactly():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    ne = NormalEquations(7, 5)
    for _ in range(4):  # accumulated batch by batch
        x = torch.randn(30, 7, generator=g, dtype=torch.float64)
        ne.add(x, x @ W.t() + b)
    W_fit, b_fit = ne.solve(torch.zeros(5, 7, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), damping=0.0)
    assert torch.allclose(W_fit, W, atol=1e-9) and torch.allclose(b_fit, b, atol=1e-9)
    assert ne.error(W_fit, b_fit) == pytest.approx(0.0, abs=1e-12)
    assert ne.error(W * 0, b * 0) == pytest.approx(ne.yy)
    # the ridge pulls toward the given weights: huge damping returns them, whatever the data says
    W0 = torch.randn(5, 7, generator=g, dtype=torch.float64)
    W_r, _ = ne.solve(W0, b * 0, damping=1e9)
    assert torch.allclose(W_r, W0, atol=1e-6)


def _layer_batches(n=4, b=6):
    model, batches = _setup(n_batches=n, b=b)
    return model, batches


def test_reconstruction_recovers_planted_output_projections():
    """A copy whose output projections (weights and biases) were corrupted, every unit kept: the refit restores the
    dense ones, so the student's outputs are the dense model's again."""
    model, batches = _layer_batches()
    work = copy.deepcopy(model)
    adapter = adapter_for(work)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in adapter.layers(work):
            parts = adapter.parts(layer)
            for lin in (parts.attn_out, parts.ffn_out):
                lin.weight.add_(torch.randn(lin.weight.shape, generator=g))
                lin.bias.add_(torch.randn(lin.bias.shape, generator=g))
    H, F = ones_masks(model)
    rec = LayerwiseReconstructor(model, work, batches[:3], batches[3:], damping=0.0)
    for li in range(rec.L):
        rec.attention(li, H[li])
        rec.ffn(li, F[li])
    assert all(e["status"] == "fitted" for e in rec.report.entries)
    for lt, ls in zip(adapter.layers(model), adapter.layers(work)):
        pt, ps = adapter.parts(lt), adapter.parts(ls)
        for a, b in ((pt.attn_out, ps.attn_out), (pt.ffn_out, ps.ffn_out)):
            assert torch.allclose(a.weight, b.weight, atol=1e-4) and torch.allclose(a.bias, b.bias, atol=1e-4)
    batch = batches[0]
    with torch.no_grad():
        assert torch.allclose(work(**model_inputs(work, batch)).logits, model(**model_inputs(model, batch)).logits,
                              atol=1e-4)


def test_a_planted_bad_fit_is_rolled_back_and_recorded(monkeypatch):
    model, batches = _layer_batches()
    real = NormalEquations.solve

    def bad(self, W0, b0, damping):  # a fit far from anything the data supports
        W, b = real(self, W0, b0, damping)
        return W * -5.0, b + 3.0

    monkeypatch.setattr(reconstruct_mod.NormalEquations, "solve", bad)
    H, F = ones_masks(model)
    H[0, 0] = 0
    work, h, n, report = reconstruct(model, H, F, batches[:3], batches[3:], progress=False)
    assert report.entries and all(e["status"] == "rolled_back" for e in report.entries)
    assert all(e["held_out_error_after"] > e["held_out_error_before"] for e in report.entries)
    adapter = adapter_for(model)
    for lt, ls in zip(adapter.layers(model), adapter.layers(work)):  # nothing written
        assert torch.equal(adapter.parts(lt).attn_out.weight, adapter.parts(ls).attn_out.weight)
        assert torch.equal(adapter.parts(lt).ffn_out.bias, adapter.parts(ls).ffn_out.bias)


def test_reconstruction_needs_held_out_batches():
    model, batches = _layer_batches()
    with pytest.raises(ValueError, match="held-out calibration batches"):
        reconstruct(model, *ones_masks(model), batches, [], progress=False)


@pytest.mark.parametrize("seed", range(6))
def test_search_fixed_keeps_the_fixed_rows_and_the_budget(seed):
    g = torch.Generator().manual_seed(seed)
    L, H, F = 4, 3, 10
    cost = MacCost(seq_len=8.0, hidden_size=12, head_size=4)
    c = 0.2 + 0.1 * seed
    hi, ni = torch.rand(L, H, generator=g), torch.rand(L, F, generator=g)
    h, n = search_masks(hi, ni, c, cost)
    fixed_h = torch.tensor([True, True, False, False])
    fixed_n = torch.tensor([True, False, False, False])
    hi2, ni2 = torch.rand(L, H, generator=g) * 100, torch.rand(L, F, generator=g)  # new importances: a new answer
    h2, n2 = search_fixed(hi2, ni2, c, cost, h, n, fixed_h, fixed_n)
    assert torch.equal(h2[:2], h[:2]) and torch.equal(n2[0], n[0])
    assert mac_ratio(h2, n2, cost) <= c + 1e-12
    assert set(h2.unique().tolist()) <= {0.0, 1.0}


def test_iterative_never_exceeds_the_budget_and_reaches_zero_head_layers(monkeypatch):
    import bertprune.core.iterative as iterative

    model, batches = _setup(n_batches=5)
    kind = get_kind("classification")
    cost = MacCost.for_model(model, seq_len=10.0)
    (L, H), (_, F) = mask_shapes(model)
    g = torch.Generator().manual_seed(0)

    def planted(work, h, n, *args, **kwargs):  # every re-measure: layer 1's heads worthless, the rest random
        hi, ni = torch.rand(L, H, generator=g) + 0.5, torch.rand(L, F, generator=g) + 0.5
        hi[1] = 1e-9
        return hi, ni

    monkeypatch.setattr(iterative, "mask_importance", planted)
    for c in (0.15, 0.3, 0.5, 0.7, 0.9):
        hi, ni = planted(None, None, None)
        work, h, n, report = prune_iterative(model, batches[:4], batches[4:], kind, cost, c, hi, ni, 2,
                                             progress=False)
        assert mac_ratio(h, n, cost) <= c + 1e-12, c
        assert [s["part"] for s in report.steps] == ["heads", "neurons"] * L
        assert all(s["planned_heads"] * cost.head + s["planned_neurons"] * cost.neuron
                   <= c * cost.encoder(L * H, L * F) + 1e-6 for s in report.steps)  # every step's plan fits too
        if c <= 0.5:
            assert int((h[1] != 0).sum()) == 0, c  # a 0-head layer is reachable


def test_iterative_pipeline_parity_budget_and_report():
    model, batches = _setup(n_batches=8)
    cost = MacCost.for_model(model, seq_len=10.0)
    seen = []

    def evaluate(m, h, n, stage):
        seen.append((stage, m))
        return 0.0

    r = prune_model(model, batches, "classification", cost, 0.4,
                    Iterative(held_out_samples=16, importance_samples=24), progress=False, evaluate=evaluate)
    assert [s for s, _ in seen] == ["iterative"] and seen[0][1] is r.masked_model and r.masked_model is not model
    assert r.mac_ratio <= 0.4 and r.iterative_report is not None and r.fisher["head_grads"].shape[0] == 6
    assert set(r.head_mask.unique().tolist()) <= {0.0, 1.0}
    batch = batches[0]
    with torch.no_grad(), MaskHooks(r.masked_model, r.head_mask, r.neuron_mask):
        masked = r.masked_model(**model_inputs(model, batch)).logits
    assert torch.allclose(r.model(**model_inputs(r.model, batch)).logits, masked, atol=1e-5)
    assert "iterative" in r.timings and "rearrange" not in r.timings


def test_projection_tuning_in_the_kwon_pipeline_refits_and_lowers_the_reconstruction_error():
    model = make_realistic(_setup()[0])
    _, batches = _setup(n_batches=8)
    cost = MacCost.for_model(model, seq_len=10.0)
    r = prune_model(model, batches, "classification", cost, 0.5,
                    Kwon(tuning="projection", held_out_samples=16), progress=False)
    assert r.reconstruction_report is not None and r.tune_report is None
    fitted = [e for e in r.reconstruction_report.entries if e["status"] == "fitted"]
    assert fitted and all(e["held_out_error_after"] < e["held_out_error_before"] for e in fitted)
    assert r.masked_model is not model and r.mac_ratio <= 0.5


def test_job_config_and_results(tiny_cfg, tmp_path):
    from bertprune.jobs.prune import check_prune_config, prune

    with pytest.raises(Exception, match="method"):
        check_prune_config(tiny_cfg(extra=["method=fastest"]))
    with pytest.raises(ValueError, match="method=iterative holds these samples out"):
        check_prune_config(tiny_cfg(extra=["method=iterative", "num_samples=64", "method.held_out_samples=64"]))
    with pytest.raises(ValueError, match="method.importance_samples"):
        check_prune_config(tiny_cfg(extra=["method=iterative", "method.importance_samples=0"]))
    with pytest.raises(ValueError, match="method.damping"):
        check_prune_config(tiny_cfg(extra=["method=iterative", "method.damping=-1"]))
    with pytest.raises(Exception, match="last_layer_tokens"):
        check_prune_config(tiny_cfg(extra=["method=iterative", "method.last_layer_tokens=first"]))
    cfg = tiny_cfg(extra=["method=iterative", "num_samples=48", "batch_size=8", "method.held_out_samples=16",
                          "method.importance_samples=16", "export=false", "constraint=0.4"])
    r = prune(cfg, callbacks=[])
    assert r["method"] == "iterative" and r["prune/mac_ratio"] <= 0.4 and r["prune/parity_max_abs_diff"] <= 1e-4
    assert "eval/accuracy_iterative" in r and "eval/accuracy_tune" not in r and r["reconstruct/fitted"] >= 1
    assert r["time/prune_s"] >= r["time/iterative_s"] > 0 and "time/tune_s" not in r  # the pruning time counts it
    run = tmp_path / "run"
    steps = json.loads((run / "iterative.json").read_text())
    assert len(steps) == 2 * 2 and json.loads((run / "reconstruction.json").read_text())


def test_importance_from_a_layer_equals_the_whole_model_pass():
    """Running from layer l on the cached hidden states gives the whole model's mask gradients for rows >= l."""
    from bertprune.core.iterative import mask_importance
    from bertprune.core.tuning import capture_encoder_inputs

    model, batches = _setup(n_batches=3)
    kind = get_kind("classification")
    h, n = ones_masks(model)
    h[0, 1] = 0
    n[0, :5] = 0
    full_h, full_n = mask_importance(model, h, n, batches, kind, "cpu")
    hidden = []
    for b in batches:  # layer 1's input, computed by the masked model's layer 0
        x, amask = capture_encoder_inputs(model, b)
        with MaskHooks(model, h, n), torch.no_grad():
            out = adapter_for(model).layers(model)[0](x, amask)
        hidden.append(out[0] if isinstance(out, tuple) else out)
    part_h, part_n = mask_importance(model, h, n, batches, kind, "cpu", start=1, hidden=hidden)
    assert torch.allclose(part_h[1:], full_h[1:], rtol=1e-4, atol=1e-10)
    assert torch.allclose(part_n[1:], full_n[1:], rtol=1e-4, atol=1e-10)
    assert part_h[0].abs().sum() == 0 and len(adapter_for(model).layers(model)) == 3  # layers restored


def test_iterative_rearranges_each_step_within_its_count(monkeypatch):
    """With the dense per-batch gradients given (``rearrange=true``), each step's sub-layer is rearranged (which
    units, its count fixed) before it is committed: 2L calls, never over budget, counts unchanged by it."""
    import bertprune.core.iterative as iterative

    model, batches = _setup(n_batches=5)
    kind = get_kind("classification")
    cost = MacCost.for_model(model, seq_len=10.0)
    (L, H), (_, F) = mask_shapes(model)
    calls = []
    real = iterative.rearrange_layer

    def spy(mask, grads):
        out = real(mask, grads)
        calls.append((int((mask != 0).sum()), int((out != 0).sum()), grads.shape[0]))
        return out

    monkeypatch.setattr(iterative, "rearrange_layer", spy)
    g = torch.Generator().manual_seed(1)
    hg, ng = torch.randn(4, L, H, generator=g), torch.randn(4, L, F, generator=g)
    work, h, n, _ = prune_iterative(model, batches[:4], batches[4:], kind, cost, 0.4, hg.pow(2).sum(0),
                                    ng.pow(2).sum(0), 2, progress=False, head_grads=hg, neuron_grads=ng)
    assert len(calls) == 2 * L and all(a == b for a, b, _ in calls)
    assert calls[0][2] == 4 and calls[1][2] == 2  # step 1: the dense gradients; later: the re-measured ones
    assert mac_ratio(h, n, cost) <= 0.4
