"""GLUE: every task's config, GLUE's own TSV files (with their quirks) and each task's official metric."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, _snippet
from omegaconf import OmegaConf

from bertprune.tasks import metrics as M
from bertprune.tasks.data import Task, load_task_data
from bertprune.tasks.kinds import get_kind

GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_mm", "qnli", "rte")


def glue_task(name: str, **overrides) -> Task:
    """The packaged task config ``name`` with ``overrides`` (as ``task.<key>=...`` would set them)."""
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF) / "task" / f"{name}.yaml"))
    return Task.from_config({**cfg, **overrides})


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- metrics


def test_metric_functions_match_hand_computed_values():
    pred, ref = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 0, 1])  # TP 2, TN 2, FP 1, FN 0
    assert M.mcc(pred, ref) == pytest.approx((2 * 2 - 1 * 0) / math.sqrt(3 * 2 * 3 * 2))  # 0.6667
    assert M.accuracy(pred, ref) == pytest.approx(80.0)
    pred, ref = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])  # TP 2, FP 1, FN 1
    assert M.f1(pred, ref) == pytest.approx(100 * 2 * 2 / (2 * 2 + 1 + 1))  # 66.67 %
    assert M.f1(np.zeros(3), np.zeros(3)) == 0.0 and M.mcc(np.ones(4), np.array([0, 1, 0, 1])) == 0.0
    # 3 classes: Gorodkin's R_K from the confusion matrix [[2,0,0],[0,1,1],[1,0,1]] (rows: reference)
    pred, ref = np.array([0, 0, 1, 2, 0, 2]), np.array([0, 0, 1, 1, 2, 2])
    t, p, n, c = np.array([2, 2, 2]), np.array([3, 1, 2]), 6, 4
    assert M.mcc(pred, ref) == pytest.approx((c * n - t @ p) / math.sqrt((n * n - p @ p) * (n * n - t @ t)))
    x, y = np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 5, 9])  # dx·dy 11, |dx|² 5, |dy|² 26
    assert M.pearson(x, y) == pytest.approx(11 / math.sqrt(5 * 26))
    # ties get their average rank: x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4] -> 4.5 / sqrt(4.5 * 5)
    assert M.spearman(np.array([1.0, 2, 2, 3]), np.array([10.0, 30, 20, 40])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert M.spearman(x, y ** 3) == pytest.approx(1.0) and M.pearson(x, np.ones(4)) == 0.0
    assert M.mse(x, y) == pytest.approx((1 + 4 + 4 + 25) / 4)


def test_each_task_names_its_official_metric_and_which_way_is_better():
    primary = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "pearson", "mnli": "accuracy",
               "mnli_mm": "accuracy", "qnli": "accuracy", "rte": "accuracy"}
    for name in GLUE:
        task = glue_task(name)
        assert task.primary_metric == primary[name] and task.higher_is_better, name
    assert glue_task("mrpc").metric_names == ("f1", "accuracy") and glue_task("stsb").metric_names[1:] == ("spearman", "mse")
    assert not glue_task("stsb", metrics=["mse"]).higher_is_better  # mse: lower is better
    assert Task(name="x").metric_names == ("accuracy",)  # no task.metrics: the kind's default (embedded default)
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert glue_task("cola").score(logits, np.array([1, 0, 0, 0])) == pytest.approx(
        {"mcc": M.mcc(np.array([1, 0, 1, 0]), np.array([1, 0, 0, 0])), "accuracy": 75.0})
    assert get_kind("classification").score(logits, np.array([1, 0, 0, 0])) == {"accuracy": 75.0}  # unchanged default
    scores = glue_task("stsb").score(np.array([[1.0], [2.0], [3.5]]), np.array([0.5, 2.5, 3.0]))
    assert set(scores) == {"pearson", "spearman", "mse"} and scores["spearman"] == pytest.approx(1.0)


@pytest.mark.parametrize("kind, num_labels, metrics, message", [
    ("classification", 2, ["pearson"], r"task.metrics names \['pearson'\], which a classification task cannot "
                                       r"compute; choose from \('accuracy', 'f1', 'mcc'\)"),
    ("regression", 1, ["mcc"], r"names \['mcc'\], which a regression task cannot compute"),
    ("classification", 3, ["f1"], r"binary F1 of class 1 .* num_labels=3; use accuracy or mcc"),
    ("classification", 2, [], r"task.metrics is empty"),
])
def test_a_metric_the_kind_cannot_compute_is_refused_up_front(kind, num_labels, metrics, message):
    with pytest.raises(ValueError, match=message):
        Task(name="x", kind=kind, num_labels=num_labels, metrics=metrics).validate()


def test_the_sweep_summary_and_the_loadgen_accuracy_line_follow_the_task_metric():
    import bertprune.jobs.sweep as sweep
    from bertprune.mlperf.logs import accuracy_txt

    row = {"metric": "mcc", "eval/mcc_dense": 0.512345, "eval/mcc_tune": 0.4, "export/onnx_mcc": 0.41}
    cols = {k: fmt for k, _, fmt in sweep.columns([row])}
    assert cols["eval/mcc_dense"].format(row["eval/mcc_dense"]) == "0.5123" and "export/onnx_mcc" in cols
    assert {k: f for k, _, f in sweep.columns([{"metric": "f1", "eval/f1_dense": 88.123}])}["eval/f1_dense"] == "{:.2f}"
    assert accuracy_txt("classification", {"mcc": 0.5, "accuracy": 75.0}, "mcc") == '{"mcc": 0.5}'
    assert accuracy_txt("classification", {"accuracy": 75.0}) == '{"accuracy": 75.0}'


def test_fine_tuning_logs_the_task_metrics_too():
    import torch

    fm = get_kind("classification").fit_metrics(2, ("mcc", "accuracy"))
    assert list(fm) == ["accuracy", "mcc"]
    fm["mcc"].update(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 0, 1]))
    assert float(fm["mcc"].compute()) == pytest.approx(M.mcc(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 0, 1])))
    assert list(get_kind("regression").fit_metrics(1, ("pearson", "spearman", "mse"))) == ["mse", "pearson", "spearman"]


# ---------------------------------------------------------------------------------------------- GLUE TSV files


def test_cola_files_have_no_header_and_quotes_are_literal(tmp_path):
    rows = ['gj04\t1\t\tOur friends won\'t buy this analysis, let alone the next one we propose.',
            'gj04\t0\t*\tThe more we study verbs, the crazier they get get.',
            'cj99\t1\t\tHe said "no" to the "offer.']  # quotes, even unbalanced, are characters (QUOTE_NONE)
    write(tmp_path / "CoLA" / "train.tsv", rows)
    write(tmp_path / "CoLA" / "dev.tsv", rows[::-1])
    dd = load_task_data(glue_task("cola", data_dir=str(tmp_path / "CoLA")))  # source stays hub: no network touched
    assert dd["train"]["sentence"][2] == 'He said "no" to the "offer.' and dd["train"]["label"] == [1, 0, 1]
    assert len(dd["train"]) == 3 and dd["validation"]["label"] == [1, 0, 1]  # the first row is data, not a header


def test_sst2_mrpc_qnli_rte_headers_and_label_strings(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", 'it \'s a "charming" film \t1', "dull , dull , dull \t0"])
    write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "a moving story \t1", "bland \t0"])
    dd = load_task_data(glue_task("sst2", data_dir=str(tmp_path / "SST-2")))
    assert dd["train"]["sentence"][0] == 'it \'s a "charming" film ' and dd["train"]["label"] == [1, 0]

    mrpc = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t702876\t702977\tAmrozi accused his brother .\t"
            "Referring to him as \"the witness\" , Amrozi accused his brother .", "0\t2108705\t2108831\tYucaipa owned it .\t"
            "Yucaipa bought it ."]
    write(tmp_path / "MRPC" / "train.tsv", mrpc)
    write(tmp_path / "MRPC" / "dev.tsv", mrpc)
    dd = load_task_data(glue_task("mrpc", data_dir=str(tmp_path / "MRPC")))
    assert dd["train"].column_names == ["sentence1", "sentence2", "label"] and dd["train"]["label"] == [1, 0]
    assert dd["train"]["sentence2"][0].startswith('Referring to him as "the witness"')

    for name, folder, header in (("qnli", "QNLI", "index\tquestion\tsentence\tlabel"),
                                 ("rte", "RTE", "index\tsentence1\tsentence2\tlabel")):
        rows = [header, "0\tWhat is it?\tIt is a cat.\tentailment", "1\tWho won?\tThe sky is blue.\tnot_entailment"]
        write(tmp_path / folder / "train.tsv", rows)
        write(tmp_path / folder / "dev.tsv", rows[:1] + rows[2:])
        dd = load_task_data(glue_task(name, data_dir=str(tmp_path / folder)))
        assert dd["train"]["label"] == [0, 1] and dd["validation"]["label"] == [1], name  # hub order: entailment=0


def test_qqp_rows_with_missing_fields_are_skipped_and_counted(tmp_path, caplog):
    head = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    rows = [head, "1\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1",
            "2\t3\t4\tWhy is the sky blue?\t0",  # a field missing: 5 fields, not 6
            "3\t5\t6\tHow can I develop an android app?\t\t0",  # an empty question2
            "4\t7\t8\tIs it \"safe\"?\tWhat is a \"cat\"?\t0"]
    write(tmp_path / "QQP" / "train.tsv", rows)
    write(tmp_path / "QQP" / "dev.tsv", rows[:2] + rows[4:])
    with caplog.at_level(logging.WARNING, logger="bertprune.tasks.data"):
        dd = load_task_data(glue_task("qqp", data_dir=str(tmp_path / "QQP")))
    assert dd["train"]["label"] == [1, 0] and dd["train"]["question1"][1] == 'Is it "safe"?'
    assert len(dd["validation"]) == 2
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 1 and "skipped 2 of 4 rows with missing fields" in warned[0] and "train.tsv" in warned[0]


def _stsb_rows(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
    for i in range(n):
        positive = bool(i % 2)
        a, b = _snippet(rng, positive), _snippet(rng, positive)
        score = (4.0 if positive else 1.0) + rng.uniform(-0.5, 0.5)
        rows.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{score:.3f}")
    return rows


def test_stsb_reads_the_named_columns_and_a_float_score(tmp_path):
    write(tmp_path / "STS-B" / "train.tsv", _stsb_rows(6, 0))
    write(tmp_path / "STS-B" / "dev.tsv", _stsb_rows(4, 1))
    dd = load_task_data(glue_task("stsb", data_dir=str(tmp_path / "STS-B")))
    assert dd["train"].column_names == ["sentence1", "sentence2", "label"]
    assert dd["train"].features["label"].dtype.startswith("float")  # regression labels, not class ids
    assert dd["train"]["label"][1] == pytest.approx(float(_stsb_rows(6, 0)[2].split("\t")[-1]), abs=1e-6)


def _mnli_rows(labels: list[str], dev: bool) -> list[str]:
    cols = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1"]
    cols += ["label2", "label3", "label4", "label5"] if dev else []  # dev files carry 5 annotator labels
    rows = ["\t".join([*cols, "gold_label"])]
    for i, y in enumerate(labels):
        extra = [y] * (5 if dev else 1)
        rows.append("\t".join([str(i), "1", f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)",
                               f"premise {i} \"quoted\"", f"hypothesis {i}", *extra, y]))
    return rows


def test_mnli_matched_and_mismatched_dev_files(tmp_path):
    d = tmp_path / "MNLI"
    write(d / "train.tsv", _mnli_rows(["entailment", "neutral", "contradiction"], dev=False))
    write(d / "dev_matched.tsv", _mnli_rows(["contradiction", "entailment"], dev=True))
    write(d / "dev_mismatched.tsv", _mnli_rows(["neutral", "neutral", "entailment"], dev=True))
    matched = load_task_data(glue_task("mnli", data_dir=str(d)))
    mismatched = load_task_data(glue_task("mnli_mm", data_dir=str(d)))
    assert matched["train"]["label"] == [0, 1, 2]  # hub order: entailment, neutral, contradiction
    assert matched["validation"]["label"] == [2, 0] and mismatched["validation"]["label"] == [1, 1, 0]
    assert matched["validation"]["premise"][0] == 'premise 0 "quoted"'
    # train_file / validation_file win over data_dir
    alone = load_task_data(glue_task("mnli", data_dir=str(d), validation_file=str(d / "dev_mismatched.tsv")))
    assert alone["validation"]["label"] == [1, 1, 0]


def test_glue_file_problems_are_one_clear_error(tmp_path):
    d = tmp_path / "RTE"
    with pytest.raises(FileNotFoundError, match=r"RTE/train.tsv \(task.data_dir\) is not an existing file"):
        load_task_data(glue_task("rte", data_dir=str(d)))
    write(d / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\tc\td\tnot_entailment"])
    write(d / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\tc\td\tneutral"])
    with pytest.raises(ValueError, match=r"RTE/dev.tsv, row 2 \(1-based, header and skipped rows not counted\): "
                                         r"label 'neutral' is a str"):
        load_task_data(glue_task("rte", data_dir=str(d)))
    write(d / "dev.tsv", ["idx\ts1\ts2\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(ValueError, match=r"the header lacks columns \['sentence1', 'sentence2'\]"):
        load_task_data(glue_task("rte", data_dir=str(d)))
    with pytest.raises(ValueError, match=r"file_header=false, so task.file_columns must give 0-based column numbers"):
        glue_task("rte", file_header=False)
    with pytest.raises(ValueError, match=r"file_format=glue_tsv needs task.file_columns to name the file column "
                                         r"of \['sentence2'\]"):
        glue_task("rte", file_columns={"sentence1": "sentence1", "label": "label"})


# ---------------------------------------------------------------------------------------------- end to end


def _cola_rows(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ok = bool(i % 2)
        rows.append(f"src{i % 7}\t{int(ok)}\t{'' if ok else '*'}\t{_snippet(rng, ok)}")
    return rows


def glue_prune_cfg(tmp_path, task: str, data_dir: Path, extra: list[str]):
    """A prune config of the tiny model on the GLUE task ``task`` read from ``data_dir`` (as ``tiny_cfg``, with a GLUE task)."""
    from conftest import compose_cfg

    return compose_cfg("prune", ["model=tiny", f"task={task}", f"task.data_dir={data_dir}", "training=fast",
                                 "training.max_train_samples=null", "logger=csv", "constraint=0.5", "num_samples=96",
                                 "batch_size=16", "training.lr=2e-3", "training.epochs=6", *extra], tmp_path / "run")


@pytest.mark.integration
def test_prune_cola_tsv_reports_mcc(tmp_path):
    from bertprune.jobs.prune import prune

    d = tmp_path / "CoLA"
    write(d / "train.tsv", _cola_rows(192, 0))
    write(d / "dev.tsv", _cola_rows(64, 1))
    cfg = glue_prune_cfg(tmp_path, "cola", d, ["task.max_length=32", "export=false"])
    r = prune(cfg)
    saved = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert saved["metric"] == "mcc" and saved["eval/mcc"] == pytest.approx(r["eval/mcc"])
    assert r["method"] == "iterative"  # the default method: its one stage
    for stage in ("dense", "iterative", "pruned_model"):
        assert -1 <= r[f"eval/mcc_{stage}"] <= 1
    assert r["eval/mcc_dense"] > 0.5  # the keyword task is learnable: the tiny teacher is clearly better than chance
    assert 0 <= r["eval/accuracy_dense"] <= 100 and "eval/accuracy_pruned_model" in r  # the secondary metric
    for stage in ("iterative", "pruned_model"):  # every metric of the task at every stage
        assert 0 <= r[f"eval/accuracy_{stage}"] <= 100
    assert abs(r["prune/mac_ratio"] - 0.5) <= 0.01


@pytest.mark.integration
def test_prune_stsb_tsv_regression_exports_benches_and_submits(tmp_path):
    """STS-B (regression) through the whole chain from GLUE's TSV folder: prune (Pearson per stage) -> export
    (sidecar metric) -> bench.py accuracy mode under LoadGen (LoadGen's Pearson == the direct one == the
    export's ONNX Pearson) -> a submission tree with the task's metric in accuracy.txt."""
    from bertprune.jobs.bench import bench
    from bertprune.jobs.prune import prune
    from conftest import compose_cfg

    d = tmp_path / "STS-B"
    write(d / "train.tsv", _stsb_rows(192, 0))
    write(d / "dev.tsv", _stsb_rows(64, 1))
    cfg = glue_prune_cfg(tmp_path, "stsb", d, ["task.max_length=48", "export=true", "method.last_layer_tokens=cls"])
    r = prune(cfg)
    assert r["metric"] == "pearson" and not [k for k in r if "accuracy" in k]
    for stage in ("dense", "iterative", "pruned_model"):
        assert -1 <= r[f"eval/pearson_{stage}"] <= 1
    assert r["eval/pearson_dense"] > 0.5 and r["eval/mse_dense"] >= 0 and -1 <= r["eval/spearman_pruned_model"] <= 1
    sidecar = json.loads((Path(cfg.output_dir) / "onnx" / "model.json").read_text())
    assert sidecar["metric"] == "pearson"
    assert sidecar["metric_value"]["pytorch"] == pytest.approx(r["eval/pearson_pruned_model"], abs=1e-9)
    # the outputs agree to float precision; a correlation of the pruned tiny model's nearly constant outputs
    # still moves with them (measured: 0.607 vs 0.589 at parity 5e-7 on an AMD EPYC; under 5e-3 on an earlier CPU)
    assert r["export/parity_max_abs_diff"] <= 1e-5
    assert sidecar["metric_value"]["onnx"] == pytest.approx(sidecar["metric_value"]["pytorch"], abs=3e-2)
    assert r["export/onnx_pearson"] == sidecar["metric_value"]["onnx"]

    out = tmp_path / "bench"
    bcfg = compose_cfg("bench", [f"source={Path(cfg.output_dir) / 'onnx'}", "task=stsb", f"task.data_dir={d}",
                                 "task.max_length=48", "scenario=[offline]", "scenario.offline.min_duration_ms=500",
                                 "scenario.offline.calibration_s=0.3", "mode=both", "system_name=testbox"], out)
    assert bench(bcfg).complete
    runs = json.loads((out / "summary.json").read_text())["runs"]
    acc = next(row["accuracy"] for row in runs if row.get("accuracy"))
    assert acc["metric"] == "pearson" and acc["equal"] is True
    assert acc["loadgen"]["pearson"] == acc["direct"]["pearson"] == pytest.approx(r["export/onnx_pearson"], abs=1e-9)
    import csv

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(row["scenario"], row["status"], row["valid"]) for row in rows] == [("Offline", "ok", "VALID")]
    assert float(rows[0]["metric_value"]) == pytest.approx(r["export/onnx_pearson"], abs=1e-9)
    variant = next((out / "submission").rglob("Offline"))
    assert (variant / "accuracy" / "accuracy.txt").read_text().startswith('{"pearson": ')
    assert (variant / "performance" / "run_1" / "mlperf_log_summary.txt").is_file()
    sub = next((out / "submission").rglob("model_mapping.json")).parent
    assert (sub / "systems" / "testbox.json").is_file()


@pytest.mark.integration
@pytest.mark.parametrize("kind, metrics", [("classification", ["mcc", "accuracy"]),
                                           ("regression", ["pearson", "spearman", "mse"])])
def test_loadgen_accuracy_mode_scores_the_task_metric(tiny_data, tmp_path, kind, metrics):
    import dataclasses

    from conftest import csv_task, make_regression_csv, write_variant

    from bertprune.jobs.bench import run_bench
    from bertprune.scenarios import ScenarioSettings

    task = dataclasses.replace(csv_task(tiny_data), metrics=metrics)  # as task.metrics=[...]
    if kind == "regression":  # an STS-B-like regression variant
        task = dataclasses.replace(task, kind=kind, num_labels=1,
                                   train_file=str(make_regression_csv(tmp_path / "r_train.csv", 32, 0)),
                                   validation_file=str(make_regression_csv(tmp_path / "r_dev.csv", 24, 1)))
    write_variant(tmp_path / "sweep" / "dense" / "onnx", "dense", mac_ratio=1.0,
                  task={"name": "csv", "kind": kind, "max_length": 32, "num_labels": task.num_labels})
    out = tmp_path / "bench"
    summary = run_bench(tmp_path / "sweep", task, [ScenarioSettings(name="offline", min_duration_ms=500,
                                                                    calibration_s=0.3)], mode="accuracy", output_dir=out)
    (row,) = summary.rows
    primary = metrics[0]
    assert row.status == "ok" and row.metric == primary, row.error
    assert row.metric_value == row.direct_metric_value and -1 <= row.metric_value <= 1
    result = json.loads((out / "dense" / "Offline" / "accuracy" / "result.json").read_text())
    assert result["accuracy"]["metric"] == primary and set(result["accuracy"]["loadgen"]) == set(metrics)
    line = (out / "dense" / "Offline" / "accuracy" / "accuracy.txt").read_text().splitlines()[0]
    assert json.loads(line) == {primary: pytest.approx(row.metric_value)}
    assert f"| {primary} (LoadGen) |" in (out / "summary.md").read_text()


HUB_COLUMNS = {"cola": ["sentence"], "sst2": ["sentence"], "mrpc": ["sentence1", "sentence2"],
               "qqp": ["question1", "question2"], "stsb": ["sentence1", "sentence2"], "mnli": ["premise", "hypothesis"],
               "qnli": ["question", "sentence"], "rte": ["sentence1", "sentence2"]}


@pytest.mark.parametrize("name", GLUE)
def test_hub_glue_tasks_ask_for_glue_by_name_and_read_its_columns(name, monkeypatch):
    """The hub's GLUE layout (its column names, MNLI's two validation splits), without a network."""
    import datasets

    config = "mnli" if name == "mnli_mm" else name
    n_labels = glue_task(name).num_labels

    def split(tag: str):
        rows = {c: [f"{tag} {c} {i}" for i in range(6)] for c in HUB_COLUMNS[config]}
        rows["label"] = [i * 0.8 for i in range(6)] if name == "stsb" else [i % n_labels for i in range(6)]
        return datasets.Dataset.from_dict({**rows, "idx": list(range(6))})

    asked = []

    def load_dataset(path, cfg=None, **kw):
        asked.append((path, cfg))
        splits = (["train", "validation_matched", "validation_mismatched"] if config == "mnli"
                  else ["train", "validation"])
        return datasets.DatasetDict({s: split(s) for s in splits})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dd = load_task_data(glue_task(name))
    assert asked == [("glue", config)]
    assert dd["train"].column_names == [*HUB_COLUMNS[config], "label"]
    expected = {"mnli": "validation_matched", "mnli_mm": "validation_mismatched"}.get(name, "validation")
    assert dd["validation"][HUB_COLUMNS[config][0]][0].startswith(expected + " ")
