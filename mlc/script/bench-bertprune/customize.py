"""bench,loadgen,bertprune: MLC inputs -> bench.py's Hydra overrides (preprocess); its summary and submission tree
-> new env (postprocess). Standard library only (runs inside mlc's interpreter).

``run.sh`` runs ``MLC_RUN_CMD``: ``<python> <checkout>/bench.py source=<...> [scenario=[a,b]] [mode=] [submission=true]
[task=] output_dir=<out> <overrides>``; bench.py exits non-zero when any LoadGen run failed, and so does ``mlcr``.
"""

import importlib.util
import json
import shlex
from pathlib import Path

_common = importlib.util.spec_from_file_location("bertprune_mlc", Path(__file__).resolve().parents[2] / "bertprune_mlc.py")
common = importlib.util.module_from_spec(_common)
_common.loader.exec_module(common)
YES, NO = ("yes", "true", "1", "on"), ("no", "false", "0", "off", "")


def preprocess(i):
    env = i["env"]
    try:
        root, python = common.checkout_and_python(env, "bench.py")
    except ValueError as e:
        return {"return": 1, "error": str(e)}
    source = common.text(env.get("BERTPRUNE_BENCH_SOURCE")) or common.text(env.get("BERTPRUNE_SWEEP_DIR"))
    if not source:
        return {"return": 1, "error": "no --source: give --source=<sweep folder | variant folder | model.onnx>, or run "
                                      "prune,bert,kwon,bertprune first in the same workflow (BERTPRUNE_SWEEP_DIR)"}
    source_path = Path(source).expanduser().resolve()
    if not source_path.exists():
        return {"return": 1, "error": f"--source={source}: no such file or folder"}
    submission = common.text(env.get("BERTPRUNE_SUBMISSION")).lower()
    if submission not in YES + NO:
        return {"return": 1, "error": f"--submission={submission}: expected yes or no"}
    out = env.get("BERTPRUNE_BENCH_OUTPUT_DIR") or (source_path if source_path.is_dir() else source_path.parent) / "bench"
    out = Path(out).expanduser().resolve()
    args = [python, str(root / "bench.py"), f"source={source_path}"]
    if scenario := common.text(env.get("BERTPRUNE_SCENARIO")):
        args.append(f"scenario=[{scenario.strip('[]')}]")
    if mode := common.text(env.get("BERTPRUNE_MODE")):
        args.append(f"mode={mode}")
    if submission in YES:
        args.append("submission=true")
    if task := common.text(env.get("BERTPRUNE_TASK")):
        args.append(f"task={task}")
    args += [f"output_dir={out}", *shlex.split(common.text(env.get("BERTPRUNE_OVERRIDES")))]
    env["MLC_RUN_CMD"] = shlex.join(args)
    env["BERTPRUNE_BENCH_DIR"] = str(out)
    return {"return": 0}


def postprocess(i):
    env = i["env"]
    out = Path(env["BERTPRUNE_BENCH_DIR"])
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError) as e:
        return {"return": 1, "error": f"bench.py wrote no readable summary.json in {out} ({e})"}
    env["BERTPRUNE_BENCH_SUMMARY"] = str(out / "summary.json")
    env["BERTPRUNE_BENCH_SUMMARY_MD"] = str(out / "summary.md")
    env["BERTPRUNE_SUBMISSION_DIR"] = str(summary.get("files", {}).get("submission") or out / "submission")
    return {"return": 0}
