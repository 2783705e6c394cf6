"""The guard (bertprune/core/guard.py): stages after the search are kept per layer only where they lower the
task loss on held-out calibration samples that feed nothing else; every rollback is reported."""

from __future__ import annotations

import pytest
import torch
from conftest import make_realistic

import bertprune.core.kwon as kwon
from bertprune.core.kwon import Kwon
from bertprune.core.cost import MacCost
from bertprune.core.guard import Guard, split_held_out
from bertprune.core.masks import ones_masks
from bertprune.core.pipeline import prune_model
from bertprune.models import tiny_bert
from bertprune.tasks.kinds import get_kind


def _setup(n_batches: int = 6, b: int = 8):
    model = make_realistic(tiny_bert("classification", 2, vocab_size=120, num_layers=3, seed=1)).eval()
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(5, 120, (b, 12), generator=g)
        mask = torch.ones(b, 12, dtype=torch.long)
        mask[::2, 9:] = 0
        with torch.no_grad():  # labels the model itself predicts: the dense model has a low loss
            labels = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                        "labels": labels})
    return model, batches


def test_split_held_out_takes_the_last_whole_batches():
    batches = [{"input_ids": torch.zeros(8, 4)} for _ in range(6)]
    fit, held = split_held_out(batches, 12)
    assert (len(fit), len(held)) == (4, 2) and held[0] is batches[4]
    with pytest.raises(ValueError, match="would hold out all 6 calibration batches"):
        split_held_out(batches, 48)


def test_guard_rolls_back_exactly_the_layers_a_stage_made_worse():
    model, batches = _setup()
    guard = Guard(model, get_kind("classification"), batches[-2:], "cpu")
    head, neuron = ones_masks(model)
    bad_h = head.clone()
    bad_h[1] *= -4.0  # layer 1's heads flipped and blown up: a planted bad fit
    good_n = neuron.clone()
    good_n[2] *= 1.0  # layer 2 unchanged in value (a no-op stage there)
    kept_h, kept_n = guard.check("tune", (head, neuron), (bad_h, good_n))
    assert torch.equal(kept_h, head) and torch.equal(kept_n, neuron)
    (rb,) = guard.report.rollbacks
    assert rb["stage"] == "tune" and rb["layer"] == 1 and rb["loss_rolled_back"] < rb["loss_with_stage"]
    assert guard.report.losses["tune"] == pytest.approx(guard.loss(head, neuron))
    # a stage that lowers the loss stays: the dense masks after a destructive "before"
    guard = Guard(model, get_kind("classification"), batches[-2:], "cpu")
    kept_h, _ = guard.check("rearrange", (bad_h, neuron), (head, neuron))
    assert torch.equal(kept_h, head) and guard.report.rollbacks == []


def test_prune_model_guard_holds_out_its_batches_and_rolls_back_a_planted_bad_tuning(monkeypatch):
    model, batches = _setup()
    cost = MacCost.for_model(model, seq_len=10.0)
    options = Kwon(tuning_samples=24, guard=True, held_out_samples=16)
    real = kwon.tune_masks

    def bad_tuning(*args, **kwargs):  # every kept unit flipped and scaled by 4: far worse on any data
        h, n, report = real(*args, **kwargs)
        return h * -4.0, n * -4.0, report

    monkeypatch.setattr(kwon, "tune_masks", bad_tuning)
    r = prune_model(model, batches, "classification", cost, 0.5, options, progress=False)
    assert r.fisher["head_grads"].shape[0] == 4  # the 2 held-out batches fed no Fisher gradient
    tuned = [x for x in r.guard_report.rollbacks if x["stage"] == "tune"]
    assert tuned and all(x["loss_rolled_back"] < x["loss_with_stage"] for x in tuned)
    assert r.guard_report.losses["tune"] <= r.guard_report.losses["rearrange"] + 1e-9
    assert set(r.guard_report.losses) == {"search", "rearrange", "tune"} and r.mac_ratio <= 0.5
    # given Fisher gradients of every batch (the multi-process job's) are cut to the fit batches
    monkeypatch.setattr(kwon, "tune_masks", real)
    full = prune_model(model, batches, "classification", cost, 0.5, Kwon(tuning_samples=24), progress=False)
    again = prune_model(model, batches, "classification", cost, 0.5, options, fisher=full.fisher, progress=False)
    assert again.fisher["head_grads"].shape[0] == 4
    assert torch.equal(again.fisher["head_importance"], full.fisher["head_grads"][:4].pow(2).sum(0))
    with pytest.raises(ValueError, match="fisher holds 5 batches' gradients; expected one per calibration batch"):
        prune_model(model, batches, "classification", cost, 0.5, options, progress=False,
                    fisher={k: (v[:5] if k.endswith("grads") else v) for k, v in full.fisher.items()})
    # off (the default): nothing held out, no report
    assert full.guard_report is None and full.fisher["head_grads"].shape[0] == 6


def test_guard_config_is_checked_before_work(tmp_path):
    from conftest import compose_cfg

    from bertprune.jobs.prune import check_prune_config

    cfg = compose_cfg("prune", ["method=kwon", "method.guard=true", "method.held_out_samples=4096"], tmp_path)
    with pytest.raises(ValueError, match=r"method.held_out_samples=4096 must be smaller than num_samples=2048"):
        check_prune_config(cfg)
    with pytest.raises(ValueError, match=r"method.held_out_samples=0 must be an integer >= 1"):
        check_prune_config(compose_cfg("prune", ["method.held_out_samples=0"], tmp_path))


def test_held_out_samples_default_scales_with_the_calibration_sample(tmp_path):
    """method.held_out_samples=null (the default): 256 of the default 2,048, 1/8 of a small sample, so the default method
    (iterative, whose refits are checked on them) runs on a small calibration sample as typed."""
    from conftest import compose_cfg

    from bertprune.core.method import held_out_samples
    from bertprune.jobs.prune import check_prune_config, prune_method

    cfg = compose_cfg("prune", [], tmp_path)
    assert prune_method(cfg).name == "iterative" and cfg.method.held_out_samples is None
    assert prune_method(cfg).held_out(2048) == 256
    small = compose_cfg("prune", ["num_samples=64"], tmp_path)
    check_prune_config(small)  # no error: 8 samples held out, not 256 of 64
    assert prune_method(small).held_out(64) == 8
    assert prune_method(compose_cfg("prune", ["method.held_out_samples=100"], tmp_path)).held_out(2048) == 100
    assert held_out_samples(4, None) == 1 and held_out_samples(100_000, None) == 256
