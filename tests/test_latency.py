"""cost=latency: the piecewise-linear fit, the latency search (every head count tried against the full
budget, never over budget, 0-head / 0-neuron layers), the lookup-table cache, the config checks, and
(integration) a table measured with ONNX Runtime on a tiny model and prune.py's job end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from bertprune.core.cost import LatencyCost, MacCost, PiecewiseLinear, isotonic
from bertprune.core.search import check_constraint, cost_ratio, search_latency, search_masks
from bertprune.onnx import latency as lat


def _cost(L=3, H=4, F=16, fixed=1.031, jump=2.013, per_head=0.517, per_neuron=0.1037) -> LatencyCost:
    """A synthetic table: attention costs a jump for its first head, then per head; FFN linear (values that
    put no split exactly on the budget, where float rounding alone would decide)."""
    mha = PiecewiseLinear(tuple(range(H + 1)), (0.0, *(jump + per_head * h for h in range(1, H + 1))))
    ffn = PiecewiseLinear((0, F), (0.0, per_neuron * F))
    return LatencyCost(mha, ffn, fixed=fixed, num_layers=L, mac=MacCost(seq_len=8, hidden_size=16, head_size=4))


def _counts(mask: torch.Tensor) -> list[int]:
    return (mask != 0).sum(1).tolist()


def _policy_best(hi, ni, constraint, cost) -> tuple[float, int]:
    """Brute force over every head count n of the search's policy (top-n heads, then the most top-ranked
    neurons that fit the *full* budget): (best retained importance, its head count)."""
    L, H = hi.shape
    F = ni.shape[1]
    budget = constraint * cost.dense_total()
    h_order, n_order = hi.flatten().argsort(descending=True), ni.flatten().argsort(descending=True)
    best = (-math.inf, -1)
    for n in range(L * H + 1):
        hm = torch.zeros(L * H)
        hm[h_order[:n]] = 1
        nm = torch.zeros(L * F)
        m = 0
        while m < L * F:
            nm[n_order[m]] = 1
            if cost.total(_counts(hm.view(L, H)), _counts(nm.view(L, F))) > budget:
                nm[n_order[m]] = 0
                break
            m += 1
        if cost.total(_counts(hm.view(L, H)), _counts(nm.view(L, F))) > budget:
            continue
        score = float(hi.flatten()[h_order[:n]].sum() + ni.flatten()[n_order[:m]].sum())
        if score > best[0] + 1e-9:
            best = (score, n)
    return best


# ---- the fit


def test_isotonic_and_piecewise_fit():
    assert isotonic([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    f = PiecewiseLinear.fit([8, 0, 4], [4.0, 1.0, 0.5])  # unsorted, noisy dip at 4
    assert f.counts == (0, 4, 8) and list(f.values) == [0.75, 0.75, 4.0]
    assert f(6) == pytest.approx(0.75 + 0.5 * 3.25) and f(torch.tensor([0, 8])).tolist() == [0.75, 4.0]
    with pytest.raises(ValueError, match="outside the table"):
        f(9)


@pytest.mark.parametrize("points", [5, 9, 17])
def test_fit_is_accurate_on_synthetic_piecewise_latency(points):
    """A block with a launch cost for its first unit, a flat start (kernel granularity) then linear growth,
    timed with 3 % noise: fitting the samples reproduces every width; the launch jump needs the count 1."""
    F = 1536
    g = torch.Generator().manual_seed(points)

    def true(n):
        return 0.0 if n == 0 else 0.3 + 1e-3 * max(n, 32)

    def max_error(counts) -> float:
        noisy = [true(n) * (1 + 0.03 * float(torch.randn(1, generator=g))) for n in counts]
        fit = PiecewiseLinear.fit(counts, noisy)
        assert all(b >= a for a, b in zip(fit.values, fit.values[1:]))  # noise never makes a wider block cheaper
        got = fit(torch.arange(F + 1))
        want = torch.tensor([true(n) for n in range(F + 1)], dtype=torch.float64)
        return float(((got - want).abs() / want.clamp(min=1e-9))[1:].max())

    counts = lat.sample_counts(F, points)
    assert counts[:2] == [0, 1] and counts[-1] == F and len(counts) == points + 1
    assert max_error(counts) < 0.15  # noise at the samples + the flat start between 1 and the next sample
    assert max_error([c for c in counts if c != 1]) > 0.3  # without the count 1 the launch cost is smeared


def test_from_table_anchors_skeleton_and_dense():
    table = {"geometry": {"num_layers": 2}, "mha": {"counts": [0, 2, 4], "ms": [1.0, 2.0, 2.5]},
             "ffn": {"counts": [0, 8], "ms": [1.0, 3.0]}, "skeleton_ms": 1.5, "dense_ms": 1.5 + 2 * 3.5 * 1.2}
    c = LatencyCost.from_table(table)
    assert c.fixed == 1.5 and c.total([0, 0], [0, 0]) == 1.5
    assert c.dense_total() == pytest.approx(table["dense_ms"]) and c.table["scale"] == pytest.approx(1.2)
    assert c.mha(2) == pytest.approx(1.2) and c.ffn(4) == pytest.approx(1.2)


# ---- the search


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("constraint", [0.35, 0.5, 0.7])
def test_latency_search_explores_every_head_count(seed, constraint):
    """The search's retained importance is the best over all head counts 0 … L·H, each against the whole
    budget. The reference implementation shrank the budget inside its loop: it misses the best count."""
    g = torch.Generator().manual_seed(seed)
    cost = _cost()
    hi = torch.rand(3, 4, generator=g) * (3 if seed % 2 else 0.3)  # heads worth more than neurons, or less
    ni = torch.rand(3, 16, generator=g) * 0.1
    hm, nm = search_latency(hi, ni, constraint, cost)
    best, n_best = _policy_best(hi, ni, constraint, cost)
    got = float((hi * hm).sum() + (ni * nm).sum())
    assert got == pytest.approx(best, rel=1e-6)  # float32 importances summed in another order
    assert int(hm.sum()) == n_best


def test_latency_search_keeps_many_heads_when_they_matter():
    """Heads far more important than neurons: the best split keeps most heads, a count the cumulative
    budget of the reference never reaches."""
    cost = _cost()
    hi, ni = torch.full((3, 4), 10.0) + torch.arange(12.0).view(3, 4), torch.full((3, 16), 0.01)
    hm, nm = search_latency(hi, ni, 0.6, cost)
    assert int(hm.sum()) >= 8 and cost_ratio(hm, nm, cost) <= 0.6


@pytest.mark.parametrize("seed", range(10))
def test_latency_search_never_over_budget_and_fills_it(seed):
    g = torch.Generator().manual_seed(100 + seed)
    L, H, F = 4, 6, 40
    counts = [0, 1, 3, 6]
    mha = PiecewiseLinear.fit(counts, [0.0, *sorted(float(v) for v in torch.rand(3, generator=g) * 3)])
    ffn = PiecewiseLinear.fit([0, 10, 40], [0.0, *sorted(float(v) for v in torch.rand(2, generator=g) * 4)])
    cost = LatencyCost(mha, ffn, fixed=float(torch.rand(1, generator=g)), num_layers=L)
    hi, ni = torch.rand(L, H, generator=g), torch.rand(L, F, generator=g)
    for c in (0.3, 0.45, 0.6, 0.8, 0.95):
        try:
            check_constraint(c, cost, L * H, L * F)
        except ValueError:
            continue
        hm, nm = search_masks(hi, ni, c, cost)
        assert hm.shape == (L, H) and nm.shape == (L, F)
        assert cost_ratio(hm, nm, cost) <= c + 1e-12
        # maximal: the next-ranked neuron would not fit (unless every neuron is kept)
        order = ni.flatten().argsort(descending=True)
        kept = int(nm.sum())
        if kept < L * F:
            more = nm.clone().flatten()
            more[order[kept]] = 1
            assert cost.total(_counts(hm), _counts(more.view(L, F))) > c * cost.dense_total() - 1e-12


def test_latency_search_gives_zero_head_and_zero_neuron_layers():
    cost = _cost()
    hi = torch.tensor([[1e-6] * 4, [5.0] * 4, [4.0] * 4])
    ni = torch.cat([torch.full((1, 16), 1.0), torch.full((1, 16), 1e-6), torch.full((1, 16), 1.0)])
    hm, nm = search_latency(hi, ni, 0.6, cost)
    assert _counts(hm)[0] == 0 and _counts(nm)[1] == 0
    from bertprune.core.physical import prune_physically
    from bertprune.models import model_shape, tiny_bert

    model = tiny_bert("classification", 2, 100, hidden_size=16, num_layers=3, num_heads=4, intermediate_size=16)
    heads, ffn = model_shape(prune_physically(model, hm, nm))
    assert heads == _counts(hm) and ffn == _counts(nm) and heads[0] == 0 and ffn[1] == 0


def test_latency_constraint_below_the_fixed_cost_is_one_clear_error():
    cost = _cost(fixed=10.0)
    with pytest.raises(ValueError, match=r"constraint=0.2 leaves .* nothing could be kept; use constraint >"):
        search_latency(torch.rand(3, 4), torch.rand(3, 16), 0.2, cost)
    with pytest.raises(ValueError, match="latency table is for 3 layers"):
        search_latency(torch.rand(2, 4), torch.rand(2, 16), 0.8, cost)


def test_mac_search_is_unchanged_through_search_masks():
    from bertprune.core.search import search_mac

    cost = MacCost(seq_len=20, hidden_size=32, head_size=8)
    hi, ni = torch.rand(3, 4), torch.rand(3, 48)
    for a, b in zip(search_masks(hi, ni, 0.5, cost), search_mac(hi, ni, 0.5, cost)):
        assert torch.equal(a, b)
    assert cost.total([1, 2], [3, 4]) == cost.encoder(3, 7)


@pytest.mark.parametrize("method", ["kwon", "iterative"])
def test_prune_model_with_a_latency_cost(method):
    """Both methods (kwon: search, √C tuning teacher, rearrangement, tuning, physical; iterative: sub-layer
    steps under the remaining budget) run on a LatencyCost: the predicted latency ratio is within the
    constraint and the MAC figures come from its MAC model."""
    from bertprune.core.iterative import Iterative
    from bertprune.core.kwon import Kwon
    from bertprune.core.pipeline import prune_model
    from bertprune.models import tiny_bert

    torch.manual_seed(0)
    model = tiny_bert("classification", 2, 100, hidden_size=16, num_layers=3, num_heads=4, intermediate_size=16)
    batches = [{"input_ids": torch.randint(1, 100, (8, 10)), "attention_mask": torch.ones(8, 10, dtype=torch.long),
                "labels": torch.randint(0, 2, (8,))} for _ in range(3)]
    cost = _cost()
    chosen = Kwon(tuning_samples=16) if method == "kwon" else Iterative(held_out_samples=8, importance_samples=16)
    r = prune_model(model, batches, "classification", cost, 0.5, chosen, progress=False)
    assert r.cost_name == "latency" and r.cost_ratio <= 0.5
    assert r.cost_ratio > 0.3  # the budget was used, not only respected
    if method == "iterative":
        assert len(r.iterative_report.steps) == 2 * 3  # every sub-layer of the 3 layers was a step
    assert r.cost_total == pytest.approx(cost.total(r.heads_per_layer, r.ffn_per_layer))
    assert r.dense_cost_total == pytest.approx(cost.dense_total())
    assert r.mac_ratio == pytest.approx(cost.mac.encoder(sum(r.heads_per_layer), sum(r.ffn_per_layer))
                                        / cost.mac.encoder(12, 48))


# ---- the cache


def _fake_table(model, kind, s, progress=True):
    calls.append(s)
    return {"key": lat.table_key(lat.geometry(model, kind), lat.resolve_runtime(s), s),
            "geometry": lat.geometry(model, kind), "mha": {"counts": [0, 4], "ms": [1.0, 2.0]},
            "ffn": {"counts": [0, 64], "ms": [1.0, 3.0]}, "skeleton_ms": 1.0, "dense_ms": 7.0, "measure_s": 1.0}


calls: list = []


def test_table_cache_key_and_hit(tmp_path, monkeypatch):
    from bertprune.models import tiny_bert

    calls.clear()
    monkeypatch.setattr(lat, "measure_table", _fake_table)
    model = tiny_bert("classification", 2, 100)
    s = lat.LatencySettings(batch_size=1, seq_len=16, points=3)
    t1, hit1 = lat.load_or_measure(model, "classification", s, cache_root=tmp_path)
    t2, hit2 = lat.load_or_measure(model, "classification", s, cache_root=tmp_path)
    assert (hit1, hit2) == (False, True) and len(calls) == 1 and t1 == t2
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["batch_size"] == 1  # plain JSON
    # every part of the key makes another table: batch, seq, threads, geometry, kind
    for other, kind in ((lat.LatencySettings(batch_size=32, seq_len=16, points=3), "classification"),
                        (lat.LatencySettings(batch_size=1, seq_len=64, points=3), "classification"),
                        (lat.LatencySettings(batch_size=1, seq_len=16, points=3, threads=1), "classification"),
                        (s, "regression")):
        lat.load_or_measure(model, kind, other, cache_root=tmp_path)
    lat.load_or_measure(tiny_bert("classification", 2, 100, num_layers=3), "classification", s, cache_root=tmp_path)
    assert len(calls) == 6 and len(list(tmp_path.glob("*.json"))) == 6
    key = lat.table_key(lat.geometry(model, "classification"), lat.resolve_runtime(s), s)
    assert {"runtime", "provider", "device_name", "threads", "batch_size", "seq_len", "geometry"} <= set(key)
    assert key["runtime"].startswith("onnxruntime ") and key["provider"] == "CPUExecutionProvider"
    # a file holding another key (edited, or a hash collision) is measured again, not trusted
    path = lat.cache_path(key, tmp_path)
    path.write_text(json.dumps({**t1, "key": {**key, "threads": 99}}))
    _, hit = lat.load_or_measure(model, "classification", s, cache_root=tmp_path)
    assert not hit and len(calls) == 7
    _, hit = lat.load_or_measure(model, "classification", s, cache=False, cache_root=tmp_path)
    assert not hit and len(calls) == 8


def test_settings_come_from_the_scenario_and_the_task():
    from bertprune.tasks.data import Task

    task = Task(name="t", max_length=48)
    single = lat.settings_for(task, None, "single_stream", None, None, "onnxruntime", "cpu", 9)
    offline = lat.settings_for(task, None, "offline", None, None, "onnxruntime", "cpu", 9)
    assert (single.batch_size, single.seq_len, single.threads) == (1, 48, None)
    assert offline.batch_size == lat.scenario_serving("offline")[0] == 32  # conf/scenario/offline.yaml
    assert lat.settings_for(task, 16, "offline", 4, 1, "torch", "cpu", 3).seq_len == 16
    assert lat.sample_counts(12, 13) == list(range(13)) and lat.sample_counts(1536, 9)[:3] == [0, 1, 192]


# ---- config


@pytest.mark.parametrize("override,match", [
    ("cost.batch_size=0", r"cost.batch_size=0 must be an integer >= 1 \(or null"),
    ("cost.threads=0", r"cost.threads=0 must be an integer >= 1"),
    ("cost.points=1", r"cost.points=1 must be an integer >= 2"),
    ("cost.served_seq_len=0", r"cost.served_seq_len=0 must be"),
    ("cost.min_time_s=0", r"cost.min_time_s=0"),
    ("+cost.thread=2", r"cost.thread is not a config key \(did you mean cost.threads"),
])
def test_bad_latency_values_fail_before_the_teacher(tiny_cfg, override, match, monkeypatch):
    import bertprune.jobs.train as train
    from bertprune.jobs.prune import prune

    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    cfg = tiny_cfg("prune", ["export=false", "cost=latency", override])
    with pytest.raises(ValueError, match=match):
        prune(cfg)


@pytest.mark.parametrize("override,key", [("cost.runtime=tvm", "cost.runtime"), ("cost.scenario=batchy", "cost.scenario"),
                                          ("cost.batch_size=abc", "cost.batch_size")])
def test_bad_latency_choices_fail_at_composition(tiny_cfg, override, key):
    with pytest.raises(ConfigCompositionException) as info:
        tiny_cfg("prune", ["cost=latency", override])
    assert key in f"{info.value} {info.value.__cause__}"


def test_latency_cuda_without_a_gpu_fails_before_the_teacher(tiny_cfg, monkeypatch):
    import bertprune.jobs.train as train
    from bertprune.jobs.prune import prune
    from bertprune.onnx.runtime import cuda_usable

    if cuda_usable():
        pytest.skip("CUDA ONNX Runtime is usable here: the refusal cannot happen")
    monkeypatch.setattr(train, "ensure_teacher", lambda cfg: pytest.fail("teacher must not be trained"))
    cfg = tiny_cfg("prune", ["export=false", "cost=latency", "cost.device=cuda"])
    with pytest.raises(RuntimeError, match="runtime_device=cuda needs a CUDA GPU"):
        prune(cfg)


def test_latency_config_composes_with_the_task_and_hardware(tiny_cfg):
    cfg = tiny_cfg("prune", ["cost=latency", "cost.scenario=offline"])
    assert cfg.cost.device == cfg.hardware.runtime_device and cfg.cost.scenario == "offline"
    mac = tiny_cfg("prune", [])
    assert set(mac.cost) == {"_target_", "seq_len"}  # the MAC default gains no key


def test_not_measured_without_an_export(tmp_path):
    from bertprune.jobs.prune import measured_latency

    s = lat.LatencySettings(batch_size=1, seq_len=16, points=3)
    out = measured_latency(tmp_path, None, None, "classification", s, {})
    assert out["latency/measured_ms"] is None and "export=false" in out["latency/measured_on"]


# ---- measured on ONNX Runtime (integration)


@pytest.mark.integration
def test_prune_with_latency_cost_end_to_end(tiny_cfg, tmp_path):
    """A real table (3 points per block) measured with ONNX Runtime CPU on the tiny model, the latency
    search, export, and the latency of the exported ONNX measured with the same settings."""
    from bertprune.jobs.prune import prune

    cfg = tiny_cfg("prune", ["cost=latency", "cost.points=3", "cost.min_time_s=0.05", "cost.rounds=2",
                             "constraint=0.7", "num_samples=64", "batch_size=16",
                             "export=true", "training.epochs=2"])
    r = prune(cfg)
    assert r["prune/cost"] == "latency" and r["prune/latency_ratio"] <= 0.7
    assert r["latency/runtime"].startswith("onnxruntime") and r["latency/provider"] == "CPUExecutionProvider"
    assert (r["latency/batch_size"], r["latency/seq_len"]) == (1, 32)  # single_stream, task.max_length
    assert r["latency/predicted_ms"] > 0 and r["latency/measured_ms"] > 0 and r["latency/dense_measured_ms"] > 0
    assert r["latency/predicted_over_measured"] == pytest.approx(r["latency/predicted_ms"] / r["latency/measured_ms"])
    drift = r["latency/dense_measured_ms"] / r["latency/dense_predicted_ms"]
    assert r["latency/dense_measured_over_table"] == pytest.approx(drift)
    assert r["latency/predicted_rescaled_ms"] == pytest.approx(r["prune/latency_ratio"] * r["latency/dense_measured_ms"])
    assert r["latency/predicted_rescaled_over_measured"] == pytest.approx(
        r["latency/predicted_rescaled_ms"] / r["latency/measured_ms"])
    assert r["latency/measured_on"].endswith("onnx/model.onnx") and not r["latency/lut_cached"]
    assert r["latency/lut_measure_s"] > 0 and r["time/latency_lut_s"] >= r["latency/lut_measure_s"] * 0.9
    saved = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert saved["latency/measured_ms"] == r["latency/measured_ms"]
    luts = list((Path(tmp_path) / "cache" / "latency").glob("*.json"))
    assert len(luts) == 1
    table = json.loads(luts[0].read_text())
    assert table["mha"]["counts"] == [0, 1, 2, 4] and table["ffn"]["counts"] == [0, 1, 32, 64]
    assert table["dense_ms"] > table["skeleton_ms"] > 0


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
@pytest.mark.parametrize("kind", ["classification", "regression", "qa"])
def test_tables_of_every_family_and_kind_on_pytorch(family, kind):
    """The sample models (every layer cut alike, skeleton, dense) of every family and task kind, timed on
    the PyTorch runtime (no export: fast), fit into a LatencyCost."""
    from bertprune.models import tiny_bert

    model = tiny_bert(kind, 1 if kind == "regression" else 2, 100, family=family).eval()
    s = lat.LatencySettings(runtime="torch", batch_size=2, seq_len=12, points=2, min_time_s=0.01, rounds=1)
    table = lat.measure_table(model, kind, s, progress=False)
    assert table["runtime"].startswith("torch ") and table["provider"] == "cpu"
    assert table["mha"]["counts"] == [0, 1, 4] and table["ffn"]["counts"] == [0, 1, 64]
    assert min(table["mha"]["ms"] + table["ffn"]["ms"]) > 0 and table["dense_ms"] > 0
    assert table["mha"]["ms"][0] == table["ffn"]["ms"][0] == table["skeleton_ms"]  # count 0 = the skeleton
    cost = LatencyCost.from_table(table)  # (tiny timings are noise: the search on them is tested apart)
    assert cost.fixed == table["skeleton_ms"] and cost.num_layers == 2
    assert lat.time_served(model, kind, s, dense=model)["ms"] > 0


def test_qa_is_served_at_its_fixed_length():
    from bertprune.tasks.data import Task

    with pytest.raises(ValueError, match=r"cost.served_seq_len=128: expected null or task.max_length=384"):
        lat.settings_for(Task(name="squad", kind="qa", max_length=384), 128, "single_stream", None, None,
                         "onnxruntime", "cpu", 9)

