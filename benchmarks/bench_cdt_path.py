"""Wall time of directional head scoring on the two `cdt.path`s: fast (cached) vs reference (naive).

    .venv/bin/python benchmarks/bench_cdt_path.py [--examples 4] [--repeats 3] [--threads 1]

Both paths score all heads of e5_small (the prepared `results/models/e5_small` if present, else a
randomly initialised BERT of e5-small's shape: 12 layers x 12 heads, hidden 384, FFN 1536) on
label-balanced NusaX-ind training examples, through `ctsft.cdt.score_heads` with the workflow's
stacking (`head_batch` 12) and length groups of 4, eager rules (`cdt.compile` off, its YAML
default). Calls alternate fast / reference so both see the same machine load; the median of
`--repeats` is reported, as wall time and as the process's CPU time (one thread by default: on a
shared box the CPU time is the steadier figure). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ctsft.cdt.baseline import batches, mean_baseline
from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.rules import CDTOptions
from ctsft.cdt.scores import score_heads
from ctsft.data import balanced_sample, load_split
from ctsft.models import load_task_model
from ctsft.models.task_model import TaskModel
from ctsft.models.tiny_tokenizer import build_tiny_tokenizer
from ctsft.provenance import REPO_ROOT

E5_DIR = REPO_ROOT / "results" / "models" / "e5_small"


def load_model(model_dir: Path) -> tuple[TaskModel, str]:
    """The prepared e5_small (fresh classifier head: fine for timing), else a random model of its
    shape (BERT, 12 x 12 heads, hidden 384) with the tiny word-level tokenizer."""
    if (model_dir / "model.safetensors").is_file():
        return load_task_model(model_dir, "nusax", seed=0).eval(), f"e5_small ({model_dir})"
    from transformers import BertConfig, BertForSequenceClassification

    from ctsft.data.tasks import get_task

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32000, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=1536, num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    hf = BertForSequenceClassification(config).eval()
    return TaskModel(
        hf, build_tiny_tokenizer(config.vocab_size), get_task("nusax"), "encoder"
    ), "random e5-shaped BERT"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.flatten().argsort().argsort().double() for x in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=E5_DIR)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-batch", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, name = load_model(args.model_dir)
    pool = load_split("nusax", "ind", "train")
    examples = list(balanced_sample(pool, -(-args.examples // 3), seed=0))[: args.examples]
    mu = mean_baseline(model, examples, "all", len(examples))
    data = list(batches(model, examples, len(examples)))
    engines = {
        path: CDTEngine.from_task_model(model, CDTOptions(path=path))
        for path in ("fast", "reference")
    }
    geo = engines["fast"].geo
    print(
        f"{name}: {geo.n_layers}x{geo.n_heads} heads, {len(examples)} examples, padded length "
        f"{data[0]['attention_mask'].shape[1]}, {args.threads} threads, eager rules"
    )
    wall: dict[str, list[float]] = {path: [] for path in engines}
    cpu: dict[str, list[float]] = {path: [] for path in engines}
    scores: dict[str, torch.Tensor] = {}
    for rep in range(args.repeats):
        for path, engine in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            scores[path], _ = score_heads(
                engine, data, mu, "directional", args.head_batch, progress=False
            )
            wall[path].append(time.perf_counter() - t0)
            cpu[path].append(time.process_time() - c0)
            print(
                f"  repeat {rep + 1} {path:9s} {wall[path][-1]:7.2f} s wall {cpu[path][-1]:7.2f} s CPU"
            )
    fast_s, ref_s = (statistics.median(wall[p]) for p in ("fast", "reference"))
    fast_cpu, ref_cpu = (statistics.median(cpu[p]) for p in ("fast", "reference"))
    diff = float((scores["fast"] - scores["reference"]).abs().max())
    rho = spearman(scores["fast"], scores["reference"])
    print(
        f"median wall: fast {fast_s:.2f} s, reference {ref_s:.2f} s ({ref_s / fast_s:.2f}x); "
        f"CPU: {fast_cpu:.2f} s, {ref_cpu:.2f} s ({ref_cpu / fast_cpu:.2f}x)"
    )
    print(
        f"max |fast - reference| score {diff:.3g} (scale {scores['fast'].abs().max():.3g}), "
        f"Spearman {rho:.4f}"
    )
    print(
        f"RESULT fast_s={fast_s:.3f} reference_s={ref_s:.3f} reference_vs_fast={ref_s / fast_s:.3f} "
        f"fast_cpu_s={fast_cpu:.3f} reference_cpu_s={ref_cpu:.3f} "
        f"reference_vs_fast_cpu={ref_cpu / fast_cpu:.3f} max_score_diff={diff:.3g} spearman={rho:.5f}"
    )


if __name__ == "__main__":
    main()
