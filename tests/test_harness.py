"""MLPerf LoadGen harness (bertprune.mlperf.*, bertprune.onnx.variants / interface): SUT/QSL bookkeeping,
interface checks, LoadGen runs
with tiny durations, accuracy mode == direct evaluation (classification and SQuAD)."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import VOCAB, csv_task, minilm_dir, tiny_onnx, write_variant

from bertprune import scenarios
from bertprune.mlperf import logs, qsl, runs, settings, sut
from bertprune.mlperf.runs import RunSpec
from bertprune.scenarios import ScenarioSettings
from bertprune.mlperf.sut import OrtSUT
from bertprune import interface
from bertprune.onnx import variants
from bertprune.tasks.data import Task
from bertprune.tasks.features import Features
FAST = dict(min_duration_ms=500, calibration_s=0.3)


# ----------------------------------------------------------------------------------------------
# Helpers (tiny_onnx, write_variant, minilm_dir, csv_task are conftest's, shared with test_bench.py)


def synthetic_features(n=37, length=16, seed=0, num_labels=2) -> Features:
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, length + 1, n)
    ids = np.zeros((n, length), np.int64)
    mask = np.zeros_like(ids)
    for i, l in enumerate(lens):
        ids[i, :l] = rng.integers(1000, 2000, l)
        mask[i, :l] = 1
    return Features(ids, mask, np.zeros_like(ids), labels=rng.integers(0, num_labels, n))


def save_features(features: Features, base: Path) -> Path:
    np.savez(f"{base}.npz", input_ids=features.input_ids, input_mask=features.input_mask,
             segment_ids=features.segment_ids, labels=features.labels)
    return base


def session_for(path):
    from bertprune.onnx.runtime import make_session

    return make_session(path, "cpu")[0]


class Recorder:
    """Stands in for LoadGen's QuerySamplesComplete: records (id, output row) per completed sample."""

    def __init__(self):
        self.lock = threading.Lock()
        self.done: list[tuple[int, np.ndarray | None]] = []

    def __call__(self, samples, outputs):
        with self.lock:
            for i, s in enumerate(samples):
                self.done.append((s.id, None if outputs is None else outputs[i].copy()))


def query(indices, start_id=0):
    return [SimpleNamespace(id=start_id + k, index=int(i)) for k, i in enumerate(indices)]


# ----------------------------------------------------------------------------------------------
# Scenarios, batching


def test_scenario_names_and_settings():
    assert scenarios.scenario_key("Offline") == "offline"
    assert scenarios.scenario_key("single-stream") == "single_stream"
    assert scenarios.scenario_key("MultiStream") == "multi_stream"
    with pytest.raises(ValueError, match=r"unknown scenario 'offlin'.*multi_stream"):
        scenarios.scenario_key("offlin")
    with pytest.raises(ValueError, match="LoadGen's 'Offline'"):
        ScenarioSettings(name="offline", loadgen="Server")
    with pytest.raises(ValueError, match="unknown keys"):
        ScenarioSettings.from_config("offline", {"batchsize": 4})
    with pytest.raises(ValueError, match="batch_size=0"):
        ScenarioSettings(name="offline", batch_size=0)
    with pytest.raises(ValueError, match="mode='fast'"):
        scenarios.resolve_modes("fast")
    assert scenarios.resolve_modes("both") == ["performance", "accuracy"]
    assert [s.loadgen for s in scenarios.resolve_scenarios(["server", "MultiStream"])] == ["Server", "MultiStream"]
    with pytest.raises(ValueError, match="no scenario selected"):
        scenarios.resolve_scenarios([])


def test_plan_batches_sorts_by_length_and_keeps_the_partial_batch():
    lengths = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 3])
    idx = np.array([9, 0, 3, 3, 7, 1, 10, 2, 5, 4, 6, 8])  # repeated index 3, as LoadGen may issue
    batches = sut.plan_batches(idx, 5, lengths)
    assert [len(b) for b in batches] == [5, 5, 2]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(idx)))  # every position exactly once
    assert np.all(np.diff(lengths[idx[flat]]) >= 0)  # sorted by real length
    unsorted = sut.plan_batches(idx, 5, None)
    assert np.concatenate(unsorted).tolist() == list(range(len(idx)))


# ----------------------------------------------------------------------------------------------
# SUT: every sample completed exactly once


@pytest.fixture(scope="module")
def cls_session(tmp_path_factory):
    return session_for(tiny_onnx(tmp_path_factory.mktemp("m") / "c.onnx"))


@pytest.mark.parametrize("name,batch,workers", [("offline", 8, 1), ("offline", 8, 3), ("single_stream", 1, 1),
                                                ("multi_stream", 8, 1), ("server", 8, 3)])
def test_sut_completes_every_sample_exactly_once(cls_session, name, batch, workers):
    feats = synthetic_features(37)
    rec = Recorder()
    sc = ScenarioSettings(name=name, batch_size=batch, workers=workers)
    sut = OrtSUT(cls_session, feats, sc, "classification", onnx_seq_len=None, complete=rec)
    expected = {i: sut.infer(np.array([i]))[0] for i in range(37)}  # each sample alone, full reference
    order = np.random.default_rng(1).permutation(37)
    with sut:
        if name == "offline":
            sut.issue_queries(query(order))  # one query, 37 samples: 4 full batches + 1 partial
        elif name == "multi_stream":
            for k in range(0, 37, 8):
                sut.issue_queries(query(order[k:k + 8], start_id=k))
        else:
            for k, i in enumerate(order):  # Server / SingleStream: one sample per query
                sut.issue_queries(query([i], start_id=k))
        sut.flush_queries()
    ids = [i for i, _ in rec.done]
    assert sorted(ids) == list(range(37)), "every sample completed exactly once"
    for sid, row in rec.done:
        assert row is not None and row.shape == (2,) and row.dtype == np.float32
        np.testing.assert_allclose(row, expected[int(order[sid])], rtol=1e-5, atol=1e-5)
    if name == "offline":
        assert sut.batches == math.ceil(37 / 8)
    assert sut.completed == 37 and not sut.errors


def test_sut_trims_dynamic_classification_batches_but_not_fixed_or_qa(tmp_path):
    feats = synthetic_features(37, length=16)
    seen = []

    class Spy:
        def __init__(self, s):
            self.s = s

        def run(self, names, feeds):
            seen.append(feeds["input_ids"].shape)
            return self.s.run(names, feeds)

    spy = Spy(session_for(tiny_onnx(tmp_path / "c.onnx")))
    sut = OrtSUT(spy, feats, ScenarioSettings(name="offline", batch_size=8), "classification", onnx_seq_len=None)
    out = sut.run_all()
    assert out.shape == (37, 2)
    assert all(L <= 16 for _, L in seen) and min(L for _, L in seen) < 16  # bucketed, trimmed
    seen.clear()
    fixed = OrtSUT(spy, feats, ScenarioSettings(name="offline", batch_size=8), "classification", onnx_seq_len=16)
    np.testing.assert_allclose(fixed.run_all(), out, rtol=1e-5, atol=1e-6)  # padding never changes the logits
    assert {L for _, L in seen} == {16}


def test_sut_failed_batch_completes_samples_and_reports(tmp_path):
    class Broken:
        def run(self, names, feeds):
            raise RuntimeError("boom")

    rec = Recorder()
    sut = OrtSUT(Broken(), synthetic_features(37), ScenarioSettings(name="offline", batch_size=8),
                 "classification", complete=rec)
    with sut:
        sut.issue_queries(query(range(37)))
    assert sorted(i for i, _ in rec.done) == list(range(37))  # LoadGen never hangs
    assert all(row is None for _, row in rec.done)
    assert len(sut.errors) == 5 and "boom" in sut.errors[0]


def test_qa_sut_stacks_start_end_as_seq_by_2(tmp_path):
    feats = synthetic_features(5, length=24)
    sess = session_for(tiny_onnx(tmp_path / "q.onnx", kind="qa", seq=24))
    sut = OrtSUT(sess, feats, ScenarioSettings(name="offline", batch_size=2), "qa", onnx_seq_len=24)
    rows = sut.infer(np.arange(5))
    start, end = sess.run(list(interface.QA_OUTPUTS), {k: getattr(feats, k) for k in interface.INPUTS})
    assert rows.shape == (5, 24, 2) and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows[..., 0], start)
    np.testing.assert_array_equal(rows[..., 1], end)


# ----------------------------------------------------------------------------------------------
# Interface checks (bad inputs fail before anything runs)


def test_bad_variants_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="bench source not found"):
        variants.discover_variants(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        variants.load_variant(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00\xffnot an onnx file" * 50)
    with pytest.raises(ValueError, match="corrupt"):
        variants.check_variant(variants.load_variant(corrupt), "classification", 2, 32)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt or empty"):
        variants.check_variant(variants.load_variant(empty), "classification", 2, 32)
    wrong = variants.load_variant(tiny_onnx(tmp_path / "w.onnx", names=("input_ids", "attention_mask", "token_type_ids")))
    with pytest.raises(ValueError, match=r"inputs .*attention_mask.* MLPerf BERT interface"):
        variants.check_variant(wrong, "classification", 2, 32)
    qa = variants.load_variant(tiny_onnx(tmp_path / "qa.onnx", kind="qa", seq=32))
    with pytest.raises(ValueError, match="must output 'logits'.*task=squad"):
        variants.check_variant(qa, "classification", 2, 32)
    cls = variants.load_variant(tiny_onnx(tmp_path / "c3.onnx", num_labels=3))
    with pytest.raises(ValueError, match="3 columns but the task has num_labels=2"):
        variants.check_variant(cls, "classification", 2, 32)
    with pytest.raises(ValueError, match="must output .*output_start_logits"):
        variants.check_variant(cls, "qa", 2, 32)
    fixed = variants.load_variant(tiny_onnx(tmp_path / "f.onnx", kind="qa", seq=384))
    with pytest.raises(ValueError, match="fixed sequence length 384 but the task's max_length is 128"):
        variants.check_variant(fixed, "qa", 2, 128)
    assert variants.check_variant(fixed, "qa", 2, 384).onnx_seq_len == 384
    v = variants.load_variant(write_variant(tmp_path / "v"))
    with pytest.raises(ValueError, match="exported for task 'csv'.*pass task=csv"):
        variants.check_variant(v, "classification", 2, 32, task_name="rotten_tomatoes")
    (tmp_path / "v" / "model.json").write_text("{broken")
    with pytest.raises(ValueError, match="sidecar is not valid JSON"):
        variants.load_variant(tmp_path / "v")


def test_discover_variants_in_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    write_variant(sweep / "dense" / "onnx", "dense")
    write_variant(sweep / "0" / "onnx", "c0.50", mac_ratio=0.5, constraint=0.5)
    write_variant(sweep / "0" / "onnx_int8", "c0.50-int8", precision="int8", mac_ratio=0.5, constraint=0.5)
    write_variant(sweep / "1" / "onnx", "c0.50", mac_ratio=0.5, constraint=0.5)  # same name, other job
    write_variant(sweep / "2" / ".onnx.tmp-abc", "half-written")  # atomic_dir temp: ignored
    tiny_onnx(sweep / "3" / "onnx" / "model.onnx")  # no sidecar: not a finished export
    found = variants.discover_variants(sweep)
    names = sorted(v.name for v in found)
    assert names == ["c0.50-int8", "c0.50@0", "c0.50@1", "dense"]
    int8 = next(v for v in found if v.name == "c0.50-int8")
    assert int8.precision == "int8" and int8.mac_ratio == 0.5 and int8.tokenizer == Path(minilm_dir())
    assert [v.name for v in variants.discover_variants(sweep / "dense" / "onnx")] == ["dense"]
    bare = variants.discover_variants(sweep / "3" / "onnx" / "model.onnx")
    assert bare[0].meta == {} and bare[0].name == "onnx" and bare[0].tokenizer is None


@pytest.mark.integration
def test_export_and_harness_check_the_interface_with_one_function(tiny_data, tmp_path, monkeypatch):
    """The export (on what it wrote) and the harness (on what it is about to run) call the same
    ``interface.check_interface``; both reject a graph whose inputs are not the MLPerf names."""
    import torch

    from bertprune.jobs.bench import plan_bench
    from bertprune.models import tiny_bert
    from bertprune.onnx.export import export_onnx

    calls = []
    real = interface.check_interface
    monkeypatch.setattr(interface, "check_interface", lambda *a, **k: calls.append(k.get("exported", False))
                        or real(*a, **k))
    torch.manual_seed(0)
    export_onnx(tiny_bert("classification", 2, VOCAB), tmp_path / "model.onnx", "classification")
    assert calls == [True]  # the exporter's own check
    sweep = tmp_path / "sweep"
    write_variant(sweep / "dense" / "onnx", "dense")
    plan_bench(sweep, csv_task(tiny_data), ["offline"], "accuracy")
    assert calls == [True, False]  # the bench plan's check of the variant
    wrong = tiny_onnx(tmp_path / "w.onnx", names=("input_ids", "attention_mask", "token_type_ids"))
    for exported in (True, False):
        with pytest.raises(interface.InterfaceError, match=r"inputs .*attention_mask.* MLPerf BERT interface"):
            real(wrong, "classification", max_length=32, num_labels=2, exported=exported)


def test_variant_discovery_is_one_function(tiny_data, tmp_path, monkeypatch):
    """The bench plan, the LoadGen callback and the export benchmark find exported variants through the
    one ``variants.discover_variants`` and find the same ones in a sweep (half-written exports skipped)."""
    import bertprune.jobs.bench as jobs_bench
    from benchmarks.export_speed import find_variants
    from bertprune.jobs import callbacks
    from bertprune.jobs.callbacks import LoadgenCallback

    sweep = tmp_path / "sweep"
    write_variant(sweep / "dense" / "onnx", "dense")
    write_variant(sweep / "0" / "onnx", "c0.50", mac_ratio=0.5, constraint=0.5, seed=2)
    write_variant(sweep / "0" / "onnx_int8", "c0.50-int8", precision="int8", mac_ratio=0.5, constraint=0.5, seed=1)
    write_variant(sweep / "1" / ".onnx.tmp-abc", "half-written", seed=3)
    expected = [v.name for v in variants.discover_variants(sweep)]
    assert expected == ["dense", "c0.50", "c0.50-int8"]
    calls = []
    real = variants.discover_variants
    monkeypatch.setattr(variants, "discover_variants", lambda source: calls.append(Path(source)) or real(source))

    plans, _, _ = jobs_bench.plan_bench(sweep, csv_task(tiny_data), ["offline"], "accuracy")
    assert [p.variant.name for p in plans] == expected
    assert sorted(s["variant"] for s in find_variants(sweep)) == sorted(expected)
    seen = {}
    monkeypatch.setattr(callbacks, "run_bench", lambda sources, *a, **k: seen.setdefault("sources", sources)
                        and SimpleNamespace(files={}, complete=True, rows=[]))
    LoadgenCallback(scenarios=["offline"]).on_variant_saved(sweep / "0", minilm_dir(), csv_task(tiny_data), {})
    assert sorted(Path(s).parent.name for s in seen["sources"]) == ["onnx", "onnx_int8"]
    assert calls == [sweep, sweep, sweep / "0"]


# ----------------------------------------------------------------------------------------------
# Summary parsing


INVALID_SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : PySUT
Scenario : Offline
Mode     : PerformanceOnly
Samples per second: 1976.8
Result is : INVALID
  Min duration satisfied : NO
  Min queries satisfied : Yes
  Early stopping satisfied: Yes
Recommendations:
 * Increase expected QPS so the loadgen pre-generates a larger (coalesced) query.

================================================
Additional Stats
================================================
Min latency (ns)                : 55645527

================================================
Test Parameters Used
================================================
samples_per_query : 110
target_qps : 100

No warnings encountered during test.

1 ERROR encountered. See detailed log.
"""


def test_parse_summary_invalid_with_reasons(tmp_path):
    (tmp_path / "mlperf_log_summary.txt").write_text(INVALID_SUMMARY)
    (tmp_path / "mlperf_log_detail.txt").write_text(
        ':::MLLOG {"key": "error_invalid_config", "value": "bad seed", "metadata": {"is_error": true}}\n')
    s = logs.parse_summary(tmp_path)
    assert s["result"] == "INVALID" and s["valid"] is False and s["scenario"] == "Offline"
    assert s["throughput"] == pytest.approx(1976.8)
    assert "Min duration satisfied: NO" in s["reasons"]
    assert any("Increase expected QPS" in r for r in s["reasons"])
    assert "LoadGen error: error_invalid_config: bad seed" in s["reasons"]
    assert s["errors"] == 1 and "latency_min_ms" not in s  # Offline: one query, no latency
    retuned = settings.retune({"mode": "performance", "status": "ok", "scenario": "Offline", "summary": s,
                              "settings": {"target_qps": 100.0}}, {"name": "offline", "target_qps": None})
    assert retuned["target_qps"] > 1976.8
    assert settings.retune({"mode": "performance", "status": "ok", "scenario": "Offline", "summary": s,
                           "settings": {}}, {"name": "offline", "target_qps": 50.0}) is None  # user's value kept
    with pytest.raises(FileNotFoundError, match="did the run finish"):
        logs.parse_summary(tmp_path / "nothing")


def test_loadgen_config_local_vs_submission():
    calib = settings.Calibration(throughput=200.0, latency_min_s=0.004, latency_median_s=0.005, queries=10, seconds=1)
    off = ScenarioSettings(name="offline", min_duration_ms=2000, min_query_count=1)
    text, exact, used = settings.loadgen_config(off, calib, 2471, submission=False)
    assert "bert.Offline.min_duration = 2000" in text and "bert.Offline.min_query_count = 1" in text
    assert "bert.Offline.target_qps = 300" in text and used["performance_sample_count"] == 2471
    text, _, used = settings.loadgen_config(off, calib, 10833, submission=True)
    assert "min_duration" not in text and "min_query_count" not in text  # mlperf.conf: 600 s, 10,833 samples
    assert "performance_sample_count_override" not in text and used["performance_sample_count"] == 10833
    ss = ScenarioSettings(name="single_stream")
    text, exact, used = settings.loadgen_config(ss, calib, 10833, submission=True)
    assert "bert.SingleStream.min_query_count = 1024" in text and "bert.SingleStream.target_latency = 2" in text
    fast = settings.Calibration(throughput=1e4, latency_min_s=1e-4, latency_median_s=1e-4, queries=10, seconds=1)
    text, exact, _ = settings.loadgen_config(ss, fast, 50, submission=False)
    assert exact == {"single_stream_expected_latency_ns": 50000} and "target_latency" not in text.split("#")[0]
    srv = ScenarioSettings(name="server")
    text, _, used = settings.loadgen_config(srv, calib, 50, submission=True)
    assert "target_latency" not in text and used["target_latency_ms"] == 130  # the official bound
    slow = settings.Calibration(throughput=2.0, latency_min_s=0.4, latency_median_s=0.5, queries=3, seconds=1)
    text, _, used = settings.loadgen_config(srv, slow, 50, submission=False)
    assert "bert.Server.target_latency = 10000" in text and "bert.Server.target_qps = 1" in text


# ----------------------------------------------------------------------------------------------
# Real LoadGen runs (one subprocess each, tiny durations)


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("lg")
    return tiny_onnx(d / "c.onnx"), save_features(synthetic_features(37), d / "feat")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["offline", "single_stream", "server", "multi_stream"])
def test_performance_runs_are_valid(cls_model, tmp_path, name):
    onnx_path, feats = cls_model
    sc = ScenarioSettings(name=name, batch_size=8 if name != "single_stream" else 1, workers=2 if name == "server" else 1,
                          **FAST)
    spec = RunSpec(variant="tiny", onnx=str(onnx_path), kind="classification", num_labels=2, onnx_seq_len=None,
                   features=str(feats), scenario=asdict(sc), mode="performance", out_dir=str(tmp_path / name))
    r = runs.run_isolated(spec)
    assert r["status"] == "ok", r.get("error")
    s = r["summary"]
    assert s["valid"] is True and s["result"] == "VALID", s["reasons"]
    assert s["scenario"] == sc.loadgen and s["throughput"] > 0
    assert logs.parse_summary(tmp_path / name)["valid"] is True
    conf = (tmp_path / name / "user.conf").read_text()
    assert f"bert.{sc.loadgen}.min_duration = 500" in conf and "performance_sample_count_override = 37" in conf
    if name != "offline":
        assert 0 < s["latency_p90_ms"] <= s["latency_p99_ms"]


@pytest.mark.integration
def test_harness_cli_fails_loudly_on_bad_spec(tmp_path):
    spec = RunSpec(variant="x", onnx=str(tmp_path / "missing.onnx"), kind="classification", num_labels=2,
                   onnx_seq_len=None, features=str(tmp_path / "nofeat"), scenario={"name": "offline"}, mode="accuracy",
                   out_dir=str(tmp_path / "out"))
    r = runs.run_subprocess(spec)
    assert r["status"] == "failed" and "features not found" in r["error"]


# ----------------------------------------------------------------------------------------------
# Accuracy mode == direct evaluation


def test_prepare_features_is_cached_and_matches_the_tokenizer(tiny_data, tmp_path):
    from bertprune.models import load_tokenizer

    task = csv_task(tiny_data)
    base = qsl.prepare_features(task, minilm_dir())
    npz = Path(f"{base}.npz")
    stamp = npz.stat().st_mtime_ns
    assert qsl.prepare_features(task, minilm_dir()) == base and npz.stat().st_mtime_ns == stamp
    assert not [p for p in npz.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    f = qsl.load_features(base)
    assert len(f) == 64 and f.input_ids.shape == (64, 32) and f.input_ids.dtype == np.int64
    tok = load_tokenizer(minilm_dir())
    first = Path(tiny_data[1]).read_text().splitlines()[1].rsplit(",", 1)
    assert f.input_ids[0, :f.lengths[0]].tolist() == tok(first[0])["input_ids"]
    assert f.labels[0] == int(first[1])
    other = csv_task(tiny_data, max_length=24)
    assert qsl.prepare_features(other, minilm_dir()) != base  # the key follows the task config


@pytest.mark.integration
def test_accuracy_mode_equals_direct_evaluation_classification(tiny_data, tmp_path):
    from bertprune.models import tiny_bert
    from bertprune.onnx.export import export_onnx

    task = csv_task(tiny_data)
    onnx_path = export_onnx(tiny_bert("classification", 2, VOCAB), tmp_path / "bert.onnx", "classification")
    v = variants.load_variant(onnx_path)
    sig = variants.check_variant(v, task.kind, 2, task.max_length)
    assert sig.onnx_seq_len is None  # dynamic: the SUT buckets and trims
    base = qsl.prepare_features(task, minilm_dir())
    sc = ScenarioSettings(name="offline", batch_size=8, **FAST)  # 64 samples: 8 batches
    spec = RunSpec(variant="bert", onnx=str(onnx_path), kind="classification", num_labels=2, onnx_seq_len=None,
                   features=str(base), scenario=asdict(sc), mode="accuracy", out_dir=str(tmp_path / "acc"))
    r = runs.run_isolated(spec)
    assert r["status"] == "ok", r.get("error")
    acc = r["accuracy"]
    assert acc["samples"] == 64 and acc["equal"] is True
    assert acc["loadgen"]["accuracy"] == acc["direct"]["accuracy"]
    assert acc["max_abs_diff"] < 1e-5
    # every sample exactly once in LoadGen's accuracy log
    entries = json.loads((tmp_path / "acc" / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(64))
    assert json.loads((tmp_path / "acc" / "accuracy.txt").read_text())["accuracy"] == pytest.approx(
        acc["loadgen"]["accuracy"], abs=1e-5)


LONG_CONTEXT = " ".join(
    f"In {1800 + i} the committee of region {i} approved plan number {i * 7} for the river bridge." for i in range(60))


def squad_file(path: Path) -> Path:
    qas = [("long1", LONG_CONTEXT, "What did the committee of region 5 approve?", "plan number 35"),
           ("long2", LONG_CONTEXT, "When did region 50 approve its plan?", "1850"),
           ("short1", "The Eiffel Tower is in Paris, France.", "Where is the Eiffel Tower?", "Paris"),
           ("short2", "Water boils at 100 degrees Celsius at sea level.", "At what temperature does water boil?",
            "100 degrees Celsius")]
    paragraphs: dict[str, list] = {}
    for qid, ctx, q, a in qas:
        paragraphs.setdefault(ctx, []).append({"id": qid, "question": q,
                                               "answers": [{"text": a, "answer_start": ctx.index(a)}]})
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": c, "qas": v}
                                                                      for c, v in paragraphs.items()]}]}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.integration
def test_squad_accuracy_mode_equals_direct_and_follows_mlperf_windows(tmp_path):
    from bertprune.models import load_tokenizer, tiny_bert
    from bertprune.onnx.export import export_onnx
    from bertprune.tasks.squad import MLPERF_BERT, load_squad

    data = squad_file(tmp_path / "dev-mini.json")
    task = Task(name="squad", kind="qa", num_labels=2, source="squad", data_file=str(data),
                text_fields=["question", "context"], max_length=384, doc_stride=128, max_query_length=64)
    base = qsl.prepare_features(task, minilm_dir())
    feats = qsl.load_features(base)
    # MLPerf sliding windows: [CLS] q [SEP] span [SEP] in 384 tokens, stride 128, query <= 64 tokens
    tok = load_tokenizer(minilm_dir())
    examples = load_squad(data)
    expected = []
    for ex in examples:
        q = min(len(tok.tokenize(ex.question)), MLPERF_BERT["max_query_length"])
        doc = sum(len(tok.tokenize(w)) for w in ex.doc_tokens)
        max_doc = 384 - q - 3
        expected.append(1 + math.ceil(max(0, doc - max_doc) / 128))
    assert expected[0] > 2 and expected[2] == 1  # the long context really needs several windows
    assert len(feats) == sum(expected)
    assert np.bincount(feats.squad.example_index).tolist() == expected
    assert feats.input_ids.shape == (sum(expected), 384)

    onnx_path = export_onnx(tiny_bert("qa", 2, VOCAB), tmp_path / "qa.onnx", "qa", onnx_seq_len=384)
    sig = variants.check_variant(variants.load_variant(onnx_path), "qa", 2, 384)
    sc = ScenarioSettings(name="offline", batch_size=4, **FAST)
    spec = RunSpec(variant="qa", onnx=str(onnx_path), kind="qa", num_labels=2, onnx_seq_len=sig.onnx_seq_len,
                   features=str(base), scenario=asdict(sc), mode="accuracy", out_dir=str(tmp_path / "acc"))
    r = runs.run_isolated(spec)
    assert r["status"] == "ok", r.get("error")
    acc = r["accuracy"]
    assert acc["metric"] == "f1" and acc["equal"] is True and acc["max_abs_diff"] < 1e-5
    assert acc["loadgen"]["f1"] == acc["direct"]["f1"] and acc["loadgen"]["exact_match"] == acc["direct"]["exact_match"]
    assert set(acc["loadgen"]["targets"]) == {"bert-99", "bert-99.9"}
    line = (tmp_path / "acc" / "accuracy.txt").read_text().strip()
    assert line.startswith('{"exact_match": ') and '"f1": ' in line  # the checker's F1 pattern


# ----------------------------------------------------------------------------------------------
# Run time limits and progress


@pytest.mark.integration
def test_overloaded_server_run_is_stopped_with_a_clear_error_and_progress(cls_model, tmp_path, monkeypatch, caplog):
    """A Server run offered far more queries per second than the model sustains never ends on its own
    (LoadGen waits for every query): a default limit derived from the min duration stops it, the parent
    logs progress meanwhile, and the error says what to change."""
    import logging
    import time

    onnx_path, feats = cls_model
    monkeypatch.setattr(runs, "RUN_TIME_SLACK_S", 4.0, raising=False)  # limit = 4 x 0.5 s + 4 s: test-sized
    monkeypatch.setattr(runs, "PROGRESS_EVERY_S", 1.0, raising=False)
    sc = ScenarioSettings(name="server", batch_size=8, workers=1, target_qps=2e6, min_duration_ms=500,
                          calibration_s=0.3)
    spec = RunSpec(variant="tiny", onnx=str(onnx_path), kind="classification", num_labels=2, onnx_seq_len=None,
                   features=str(feats), scenario=asdict(sc), mode="performance", out_dir=str(tmp_path / "srv"))
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="bertprune.mlperf.runs"):
        r = runs.run_isolated(spec)
    assert time.monotonic() - t0 < 30
    assert r["status"] == "failed"
    assert "timed out after 6 s" in r["error"] and "scenario.server.target_qps" in r["error"]
    assert "samples completed" in r["error"]
    assert any("tiny Server performance: loadgen" in m and "samples completed" in m for m in caplog.messages)
    assert runs.default_time_limit(spec)[0] == pytest.approx(6.0)
    # submission runs: mlperf.conf's 600 s; accuracy runs: no limit (one pass over the data, however long)
    assert runs.default_time_limit(RunSpec(**{**asdict(spec), "submission": True}))[0] == pytest.approx(2404.0)
    assert runs.default_time_limit(RunSpec(**{**asdict(spec), "mode": "accuracy"}))[0] is None


# ----------------------------------------------------------------------------------------------
# The file a run loads is the file its export recorded


@pytest.mark.integration
def test_run_hashes_the_onnx_it_loads_and_refuses_a_swapped_file(cls_model, tmp_path):
    from bertprune.io import sha256_file

    onnx_path, feats = cls_model
    sc = asdict(ScenarioSettings(name="offline", batch_size=8, **FAST))
    good = sha256_file(onnx_path)
    spec = RunSpec(variant="tiny", onnx=str(onnx_path), kind="classification", num_labels=2, onnx_seq_len=None,
                   features=str(feats), scenario=sc, mode="accuracy", out_dir=str(tmp_path / "ok"), onnx_sha256=good)
    r = runs.run_subprocess(spec)
    assert r["status"] == "ok", r.get("error")
    assert r["onnx_sha256"] == good and json.loads((tmp_path / "ok" / "result.json").read_text())["onnx_sha256"] == good
    # the export recorded another file (a model swapped after export): the run fails and says why
    swapped = RunSpec(**{**asdict(spec), "out_dir": str(tmp_path / "bad"), "onnx_sha256": "0" * 64})
    r = runs.run_subprocess(swapped)
    assert r["status"] == "failed"
    assert f"has sha256 {good} but its export recorded {'0' * 64}" in r["error"] and "Re-export" in r["error"]
    assert not (tmp_path / "bad" / "result.json").exists()


def test_accuracy_txt_keeps_full_precision_for_the_checker():
    """4 decimals would lift an F1 of 89.965255 to 89.9653, past the bert-99 target 89.96526."""
    import re

    f1 = 89.965255
    line = logs.accuracy_txt("qa", {"exact_match": 81.0, "f1": f1})
    # the MLPerf submission checker's F1 pattern for bert (tools/submission, ACC_PATTERN["F1"])
    m = re.match(r"^{[\"\']exact_match[\"\']\:\s*[\d\.]+,\s*[\"\']f1[\"\']\:\s*([\d\.]+)}", line)
    assert m and float(m.group(1)) == f1 and float(m.group(1)) < 90.874 * 0.99
    assert json.loads(line) == {"exact_match": 81.0, "f1": f1}
    tiny = json.loads(logs.accuracy_txt("classification", {"accuracy": 1e-7}))["accuracy"]
    assert tiny == 1e-7 and "e" not in logs.accuracy_txt("classification", {"accuracy": 1e-7})  # never 1e-07
    assert logs.accuracy_txt("classification", {"accuracy": 83.29}) == '{"accuracy": 83.29}'
