"""The tiny DAG through a real SLURM controller (one node on 127.0.0.1, no accounting).

tests/slurm/run_slurm_dag.py does the work: it installs slurm-wlm and munge with apt-get if
needed, starts munged, slurmctld and slurmd from a temporary folder, runs config/tiny.yaml through
workflow/profiles/slurm-cpu, once as is and once grouped (workflow/profiles/grouped: fewer sbatch
jobs), compares their tables byte for byte with a local run, and stops and removes everything it
started. It runs here when the process is root and apt-get exists (CI), or
with CTSFT_SLURM_TEST=1; CTSFT_SLURM_TEST=0 skips it.

    pytest tests/test_slurm_integration.py -s
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "slurm" / "run_slurm_dag.py"
# the script's own limit (it stops and cleans up itself): 14 minutes in all with the margin below
BUDGET_S = int(os.environ.get("CTSFT_SLURM_BUDGET_S", 780))


def skip_reason() -> str | None:
    flag = os.environ.get("CTSFT_SLURM_TEST", "")
    if flag == "0":
        return "CTSFT_SLURM_TEST=0"
    if flag == "1" or (os.geteuid() == 0 and shutil.which("apt-get")):
        return None
    return "needs root and apt-get to install SLURM (CI), or CTSFT_SLURM_TEST=1"


@pytest.mark.slow
def test_tiny_dag_through_slurm(capsys):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, CTSFT_SLURM_BUDGET_S=str(BUDGET_S))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=BUDGET_S + 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script cancels its jobs and stops its daemons
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"run_slurm_dag.py did not stop within its budget:\n{out[-8000:]}")
    wall = time.monotonic() - started
    summary = re.search(
        r"SLURM integration OK: .*?(\d+) sbatch jobs .*?grouped (\d+) sbatch jobs.*", out
    )
    counts = f"{summary.group(1)} sbatch jobs, {summary.group(2)} grouped" if summary else "failed"
    with capsys.disabled():
        print(
            f"\nSLURM integration test: wall {wall:.0f} s, {counts}"
            + (f"\n  {summary.group(0)}" if summary else "")
        )
    assert proc.returncode == 0 and summary, out[-8000:]
    ungrouped, grouped = int(summary.group(1)), int(summary.group(2))
    assert 0 < grouped < ungrouped, summary.group(0)
