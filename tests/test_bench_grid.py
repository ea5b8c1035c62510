"""benchmarks/bench_grid.py sums a finished run's job-seconds per rule and its evaluations' split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_grid", REPO / "benchmarks" / "bench_grid.py")
bench_grid = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench_grid)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _tsv(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t1\t1\t1\t1\t0\t0\t90\t1\n")


def test_job_seconds_and_evaluation_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _tsv(tmp_path / "benchmarks/transfer/nusax/m/ind-jav/ctsft/k1/seed0.tsv", 10.0)
    _tsv(tmp_path / "benchmarks/transfer/nusax/m/ind-sun/ctsft/k1/seed0.tsv", 14.0)
    _tsv(tmp_path / "benchmarks/evaluate/nusax/m/ind-jav/seed0.tsv", 30.5)
    for i, (load, target) in enumerate([(1.0, 5.0), (2.0, 7.0)]):
        metrics = tmp_path / f"nusax/m/ind-jav/v{i}/seed0/metrics.json"
        metrics.parent.mkdir(parents=True)
        timings = {"load_s": load, "target_eval_s": target, "proxy_eval_s": 4.0, "total_s": 20.0}
        metrics.write_text(json.dumps({"timings": timings}))
    assert bench_grid.job_seconds(tmp_path) == {"transfer": [10.0, 14.0], "evaluate": [30.5]}
    split = bench_grid.evaluation_split(tmp_path)
    assert split == {"load_s": 3.0, "target_eval_s": 12.0, "proxy_eval_s": 8.0, "total_s": 40.0, "runs": 2}  # fmt: skip
    assert bench_grid.main([str(tmp_path), "--wall-s", "20"]) == 0
    result = capsys.readouterr().out.strip().splitlines()[-1]
    assert result.startswith("RESULT job_seconds=54 ") and result.endswith(
        "busy=1.363"
    )  # 54.5 s / (20 s x 2 cores)
