"""What a workflow job spends before its real work: interpreter + imports, then the model load.

Every rule runs in a fresh Python process, so this fixed cost is paid once per job (73 jobs in
the quick run). Each measurement is a new subprocess, timed from its own start:

    .venv/bin/python benchmarks/bench_startup.py [--model-dir results/models/e5_small] [--repeats 3]

Prints one line per phase (median of the repeats) and a RESULT line. The same split is written by
every job into its log (`ctsft.timing: start-up ... step ...`, `loaded ... in ... s`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# what a job imports before composing its config: the step module and the workflow's wrapper's
STEPS = ("transfer", "evaluate", "score_heads", "faithfulness", "mean_baseline")

PROBE = """
import json, time
t0 = time.monotonic()
import torch
t_torch = time.monotonic()
import importlib
importlib.import_module("ctsft.steps.{step}")
t_step = time.monotonic()
out = {{"torch": t_torch - t0, "step_imports": t_step - t_torch}}
if {load!r}:
    from ctsft.models.task_model import load_task_model, load_tokenizer
    t = time.monotonic()
    load_task_model({model_dir!r}, "nusax", kind="encoder")
    out["model_load"] = time.monotonic() - t
    t = time.monotonic()
    load_tokenizer(__import__("pathlib").Path({model_dir!r}))
    out["tokenizer_again"] = time.monotonic() - t
from ctsft.cli import process_age
out["process"] = process_age()
print(json.dumps(out))
"""


def probe(step: str, model_dir: str, load: bool) -> dict[str, float]:
    code = PROBE.format(step=step, model_dir=model_dir, load=load)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="results/models/e5_small")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.model_dir, "config.json").is_file():
        raise SystemExit(
            f"error: no prepared model in {args.model_dir}: run `make reproduce` first"
        )
    rows = {}
    for step in STEPS:
        runs = [probe(step, args.model_dir, step == "transfer") for _ in range(args.repeats)]
        rows[step] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        cells = ", ".join(f"{k} {v:.2f} s" for k, v in rows[step].items())
        print(f"{step:14s} {cells}")
    transfer = rows["transfer"]
    print(
        "RESULT "
        f"torch_import_s={transfer['torch']:.2f} "
        f"step_imports_s={statistics.median(r['step_imports'] for r in rows.values()):.2f} "
        f"model_load_s={transfer['model_load']:.2f} "
        f"tokenizer_load_s={transfer['tokenizer_again']:.2f} "
        f"process_s={transfer['process']:.2f}"
    )


if __name__ == "__main__":
    main()
