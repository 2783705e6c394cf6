"""A third method is one module, one yaml, one test: ``method=weight_norm`` (bertprune/core/weight_norm.py,
conf/method/weight_norm.yaml) runs through the real prune.py command line end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertprune.core.cost import MacCost
from bertprune.core.pipeline import prune_model
from bertprune.core.weight_norm import WeightNorm
from bertprune.models import tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def test_weight_norm_keeps_the_heads_with_the_largest_output_columns():
    torch.manual_seed(0)
    model = tiny_bert("classification", 2, 100).eval()
    d_head = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():  # the later heads and neurons of every layer planted larger than the earlier ones
        for layer in model.bert.encoder.layer:
            attn, ffn = layer.attention.output.dense, layer.output.dense
            for h in range(model.config.num_attention_heads):
                attn.weight[:, h * d_head:(h + 1) * d_head] *= 0.1 + h
            ffn.weight *= torch.linspace(0.1, 3.0, ffn.weight.shape[1])
    batches = [{"input_ids": torch.randint(0, 100, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
                "labels": torch.randint(0, 2, (4,))}]
    r = prune_model(model, batches, "classification", MacCost.for_model(model, 8.0), 0.5, WeightNorm(),
                    progress=False)
    assert r.mac_ratio <= 0.5 + 1e-6 and r.method == "weight_norm" and 0 < r.head_mask.sum() < r.head_mask.numel()
    for layer, heads, neurons in zip(model.bert.encoder.layer, r.head_mask, r.neuron_mask):
        attn = layer.attention.output.dense.weight
        norms = attn.reshape(attn.shape[0], -1, d_head).norm(dim=(0, 2))
        for mask, imp in ((heads, norms), (neurons, layer.output.dense.weight.norm(dim=0))):
            kept, pruned = imp[mask != 0], imp[mask == 0]
            if len(kept) and len(pruned):  # within a layer, every kept unit outweighs every pruned one
                assert kept.min() >= pruned.max()
    assert "fisher" not in r.timings  # a data-free method asks for no Fisher
    with pytest.raises(ValueError, match="method.power"):
        WeightNorm(power=-1.0)


@pytest.mark.integration
def test_weight_norm_method_through_the_prune_cli(tmp_path, tiny_data):
    train_file, dev_file = tiny_data
    out = tmp_path / "job"
    cmd = [sys.executable, str(ROOT / "prune.py"), "method=weight_norm", "method.power=1", "constraint=0.5",
           "model=tiny", "task=csv", f"task.train_file={train_file}", f"task.validation_file={dev_file}",
           "task.max_length=32", "training=fast", "training.max_train_samples=null", "training.epochs=1",
           "logger=csv", "num_samples=32", "batch_size=16", "export=false", f"output_dir={out}",
           f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["method"] == "weight_norm" and r["method/power"] == 1.0
    assert r["prune/mac_ratio"] <= 0.5 + 1e-6 and (out / "pruned" / "model.safetensors").is_file()
    bad = subprocess.run([*cmd[:2], "method=weight_norm", "method.power=-2", *cmd[4:]], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert bad.returncode != 0 and "method.power=-2" in bad.stderr
