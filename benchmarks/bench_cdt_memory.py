"""Peak host memory of one CD-T decomposition on the full Qwen2.5-0.5B config (random weights),
at the workflow defaults (cdt.head_batch=12 sources stacked, length groups of 4 rows, 128 tokens),
measured on the CPU as the peak RSS (VmHWM) above the loaded model. A GPU pass holds the same
tensors, so this bounds what `score_heads` needs beyond the weights on a 24 GB GPU.

    .venv/bin/python benchmarks/bench_cdt_memory.py
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_gpu as b  # noqa: E402

from ctsft.cdt.engine import CDTEngine  # noqa: E402
from ctsft.cdt.rules import CDTOptions  # noqa: E402
from ctsft.runtime import Runtime  # noqa: E402


def status(field: str) -> float:
    """A /proc/self/status memory field in GiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 2**20
    raise KeyError(field)


def main() -> None:
    torch.set_num_threads(2)
    model = b.qwen_task_model(False, Runtime()).eval()
    batch = b.make_batches(4, 128, 150000, 4, torch.device("cpu"))[0]
    mu = torch.zeros(24, 14, 64)
    engine = CDTEngine.from_task_model(model, CDTOptions())
    base = status("VmRSS")
    started = time.perf_counter()
    cache = engine.clean(batch)
    engine.decompose(batch, [[(0, h)] for h in range(12)], mu, cache=cache)
    peak = status("VmHWM")
    print(
        f"RESULT model_gib={base:.2f} peak_gib={peak:.2f} above_model_gib={peak - base:.2f} "
        f"seconds={time.perf_counter() - started:.1f}"
    )


if __name__ == "__main__":
    main()
