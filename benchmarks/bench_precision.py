"""fp32 against bf16 autocast on the CPU, for the grid's transfer and evaluation jobs.

    .venv/bin/python benchmarks/bench_precision.py results/nusax_grid [--run ind-jav/ctsft/k0.05/seed0]

Takes the exact command of one transfer and one evaluation of a finished run (the first line of
each job's log), runs each as a whole process once with `runtime.precision=fp32` and once with
`bf16` (outputs in a temporary folder, the run's own files untouched), and prints their wall
times and how far the results agree: the evaluations' predictions row by row (same checkpoint,
only the autocast differs) and the accuracy the two transfers reach. For a speed figure, time
the two commands it prints with a paired A/B runner; the RESULT line here is one pair.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def logged_commands(log: Path) -> list[list[str]]:
    """Every `$ python -m ctsft.steps.<step> ...` line of a job's log, as arguments after the step."""
    lines = [line[2:] for line in log.read_text().splitlines() if line.startswith("$ python -m")]
    if not lines:
        raise SystemExit(f"error: {log} has no command line: is the run finished?")
    return [shlex.split(line)[3:] for line in lines]


def with_overrides(args: list[str], **values: str) -> list[str]:
    """`args` with `key=value` set for each of `values` (keys with dots as `__`)."""
    out = list(args)
    for key, value in values.items():
        key = key.replace("__", ".")
        pattern = re.compile(rf"^\+*{re.escape(key)}=")
        out = [a for a in out if not pattern.match(a)] + [f"++{key}={value}"]
    return out


def run_step(step: str, args: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", f"ctsft.steps.{step}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"error: {step} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a finished run's results_dir")
    parser.add_argument("--run", default="ind-jav/ctsft/k0.05/seed0", help="pair/variant/seed")
    parser.add_argument("--task-model", default="nusax/e5_small")
    args = parser.parse_args(argv)
    pair, _, rest = args.run.partition("/")
    variant, _, seed = rest.rpartition("/")
    logs = args.results / "logs"
    transfer = logged_commands(logs / "transfer" / args.task_model / pair / variant / f"{seed}.log")[0]  # fmt: skip
    evaluations = logged_commands(logs / "evaluate" / args.task_model / pair / f"{seed}.log")
    mine = f"/{variant}/{seed}/checkpoint"
    evaluation = next(r for r in evaluations if any(a.startswith("++io.checkpoint=") and a.endswith(mine) for a in r))  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    predictions: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            folder = Path(tmp) / precision
            checkpoint = folder / "checkpoint"
            t_transfer = run_step("transfer", with_overrides(transfer, io__checkpoint=str(checkpoint), runtime__precision=precision))  # fmt: skip
            # the run's own checkpoint: only the autocast differs
            metrics_same = folder / "same.json"
            t_eval = run_step("evaluate", with_overrides(evaluation, io__metrics=str(metrics_same), runtime__precision=precision))  # fmt: skip
            metrics_own = folder / "own.json"  # this precision's own transfer
            run_step("evaluate", with_overrides(evaluation, io__checkpoint=str(checkpoint), io__metrics=str(metrics_own), runtime__precision=precision))  # fmt: skip
            same, own = json.loads(metrics_same.read_text()), json.loads(metrics_own.read_text())
            predictions[precision] = same["predictions"] + same["proxy_predictions"]
            out[precision] = {"transfer_s": t_transfer, "evaluate_s": t_eval, "accuracy": own["accuracy"]}  # fmt: skip
            print(f"{precision}: transfer {t_transfer:.1f} s, evaluate {t_eval:.1f} s (whole processes), accuracy after its own transfer {own['accuracy']:.4f}")  # fmt: skip
    a, b = predictions["fp32"], predictions["bf16"]
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    print(f"same checkpoint, fp32 vs bf16 autocast: {agree:.2%} of {len(a)} predictions agree")
    print(
        f"RESULT transfer_ratio={out['bf16']['transfer_s'] / out['fp32']['transfer_s']:.3f} "
        f"evaluate_ratio={out['bf16']['evaluate_s'] / out['fp32']['evaluate_s']:.3f} "
        f"agreement={agree:.4f} accuracy_fp32={out['fp32']['accuracy']:.4f} "
        f"accuracy_bf16={out['bf16']['accuracy']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
