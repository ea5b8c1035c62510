"""`benchmarks/bench_gpu.py --device cpu --small`: the GPU check's code runs on the CPU, passes its
own checks, and imports nothing beyond torch, transformers, safetensors and numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what a stock PyTorch image may lack: the check must not import any of these
NOT_ON_A_BARE_GPU_BOX = (
    "datasets", "pandas", "hydra", "omegaconf", "snakemake", "sklearn", "matplotlib", "wandb",
)  # fmt: skip

RUN = """
import json, runpy, sys
sys.argv = ["bench_gpu.py", "--device", "cpu", "--small", "--json", sys.argv[1]]
try:
    runpy.run_path("benchmarks/bench_gpu.py", run_name="__main__")
except SystemExit as done:
    code = done.code
print("IMPORTED " + json.dumps(sorted(m for m in sys.modules if "." not in m)))
sys.exit(code)
"""


@pytest.mark.slow
def test_bench_gpu_small_on_cpu(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(figures)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    result = [line for line in lines if line.startswith("RESULT ")]
    assert len(result) == 1 and "frozen_bit_identical=true" in result[0]
    out = json.loads(figures.read_text())
    assert out["device"] == "cpu" and out["small"] is True
    assert out["cdt_heads"] == 2 * 14 and out["cdt_examples"] == 8
    assert out["cdt_invariant_max_abs"] < 1e-4  # beta + gamma is the forward
    assert out["tiny_spearman_min"] >= 0.999
    assert out["frozen_bit_identical"] is True and out["ctsft_entries_moved"] > 0
    assert 0 < out["ctsft_trainable_pct"] < 5 and out["full_ft_trainable_pct"] == 100
    assert out["grid_gpu_jobs"] == 36 * 41 + 3 * 4 and out["grid_gpu_hours"] > 0
    # what the projection used to leave out: start-up and checkpoint I/O, measured, in the total
    assert out["startup_s"] > 0.5  # a fresh interpreter importing torch and transformers
    assert out["save_full_s"] > 0 and out["save_trained_s"] > 0 and out["read_trained_s"] > 0
    assert 0 < out["trained_mb"] < out["full_mb"] / 10  # only CT-SFT's values are written
    parts = ("compute", "startup", "load", "write", "read_trained")
    assert sum(out[f"grid_{p}_hours"] for p in parts) == pytest.approx(out["grid_gpu_hours"])
    assert out["grid_startup_hours"] == pytest.approx(
        out["grid_gpu_jobs"] * out["startup_s"] / 3600
    )
    assert "paper grid: 1488 GPU jobs" in done.stdout and "startup" in done.stdout
    imported = json.loads(next(line for line in lines if line.startswith("IMPORTED "))[9:])
    assert not set(imported) & set(NOT_ON_A_BARE_GPU_BOX), imported
