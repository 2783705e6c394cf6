"""prune,bert,kwon,bertprune: MLC inputs -> prune.py's Hydra overrides (preprocess); the sweep's variants -> new env
(postprocess). Standard library only: this file runs inside mlc's own interpreter, which may not have bertprune.

``run.sh`` runs ``MLC_RUN_CMD``: ``<python> <checkout>/prune.py -m [constraint=<c | a,b,c>] [model= task= teacher=
cost=] hydra.sweep.dir=<sweep> <overrides>``. Every job of the sweep is a variant folder ``<sweep>/c<constraint>/``
(results.json, pruned/, onnx/model.onnx); a failed job makes prune.py, hence run.sh and ``mlcr``, exit non-zero.
"""

import importlib.util
import json
import os
import shlex
import time
from pathlib import Path

_common = importlib.util.spec_from_file_location("bertprune_mlc", Path(__file__).resolve().parents[2] / "bertprune_mlc.py")
common = importlib.util.module_from_spec(_common)
_common.loader.exec_module(common)
INPUTS = (("BERTPRUNE_MODEL", "model"), ("BERTPRUNE_TASK", "task"), ("BERTPRUNE_CHECKPOINT", "teacher"),
          ("BERTPRUNE_COST", "cost"))


def preprocess(i):
    env = i["env"]
    try:
        root, python = common.checkout_and_python(env, "prune.py")
    except ValueError as e:
        return {"return": 1, "error": str(e)}
    constraint, sweep = common.text(env.get("BERTPRUNE_CONSTRAINT")), common.text(env.get("BERTPRUNE_SWEEP"))
    if constraint and sweep:
        return {"return": 1, "error": f"--constraint={constraint} and --sweep={sweep} both given; "
                                      "use --constraint for one job or --sweep for a list"}
    out = Path(env.get("BERTPRUNE_OUTPUT_DIR") or Path.cwd() / "multirun" / "mlc" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    out = out.expanduser().resolve()
    args = [python, str(root / "prune.py"), "-m"]
    if constraint or sweep:
        args.append(f"constraint={constraint or sweep}")
    args += [f"{key}={common.text(env[name])}" for name, key in INPUTS if common.text(env.get(name))]
    args += [f"hydra.sweep.dir={out}", *shlex.split(common.text(env.get("BERTPRUNE_OVERRIDES")))]
    env["MLC_RUN_CMD"] = shlex.join(args)
    env["BERTPRUNE_SWEEP_DIR"] = str(out)
    return {"return": 0}


def _order(requested: str):
    """Sort key of a job: its place in the requested constraint list (the last given is the last variant)."""
    try:
        wanted = [float(c) for c in requested.split(",")] if requested else []
    except ValueError:  # Hydra sweep syntax (range(...)): ascending constraint
        wanted = []

    def key(item):
        c = item[1].get("constraint")
        return (wanted.index(c) if c in wanted else len(wanted), c if c is not None else 0.0)

    return key


def postprocess(i):
    env = i["env"]
    sweep = Path(env["BERTPRUNE_SWEEP_DIR"])
    jobs = []
    for results_file in sorted(sweep.glob("*/results.json")):
        try:
            jobs.append((results_file.parent, json.loads(results_file.read_text())))
        except (OSError, ValueError) as e:
            return {"return": 1, "error": f"{results_file}: unreadable results ({e})"}
    if not jobs:
        return {"return": 1, "error": f"prune.py wrote no results.json under {sweep} (see its log above)"}
    jobs.sort(key=_order(common.text(env.get("BERTPRUNE_CONSTRAINT")) or common.text(env.get("BERTPRUNE_SWEEP"))))
    onnx = [job / "onnx" / "model.onnx" for job, _ in jobs]
    last, last_results = jobs[-1]
    env["BERTPRUNE_SUMMARY_CSV"] = str(sweep / "summary.csv")
    env["BERTPRUNE_VARIANT_DIRS"] = os.pathsep.join(str(job) for job, _ in jobs)
    env["BERTPRUNE_ONNX_PATHS"] = os.pathsep.join(str(p) for p in onnx if p.is_file())
    env["BERTPRUNE_VARIANT_DIR"] = str(last)
    env["BERTPRUNE_PRUNED_DIR"] = str(last_results.get("pruned_dir") or last / "pruned")
    if onnx[-1].is_file():  # export=false leaves no ONNX: then no model file to hand on
        env["BERTPRUNE_ONNX_PATH"] = env["MLC_ML_MODEL_FILE_WITH_PATH"] = str(onnx[-1])
    return {"return": 0}
