"""Wall time of CD-T head scoring on e5_small (64 NusaX-ind discovery examples, all 144 heads).

    .venv/bin/python benchmarks/bench_scoring.py [--model-dir /tmp/ctsft_models/e5_small]

(a) batched CD-T directional scoring (cached clean forward, heads of a layer stacked), (b) the naive
two-stream decomposition one head at a time from the embeddings, (c) a single-head mean-ablation
scan with cached prefixes (same stacking and read-out pruning as (a)), (d) one plain forward pass
over the 64 examples. (a), (b) and (c) run on the same length groups (`--group-size` rows of similar
length, padding trimmed; `ctsft.cdt.scores.length_groups`); (d) on the padded batches. The last
line is machine-readable.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from ctsft.cdt.baseline import batches, mean_baseline
from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.margin import gold_margin
from ctsft.cdt.rules import CDTOptions
from ctsft.cdt.scores import length_groups, score_heads
from ctsft.data import balanced_sample, load_split
from ctsft.models import get_model_spec, load_task_model, prepare_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="/tmp/ctsft_models/e5_small")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head-batch", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--group-size", type=int, default=4,
        help="rows per length group (score_heads' group_size; 0: keep the padded batches); "
        "the naive path is timed on the same groups",
    )  # fmt: skip
    parser.add_argument(
        "--naive-heads", type=int, default=12,
        help="time the naive path on this many heads (one per layer first) and scale to all heads: "
        "its cost per head does not depend on the layer (it always starts at the embeddings)",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True,
        help="fuse the CD-T node rules with torch.compile (the workflow default); (a) and (b) "
        "include the compilation, from an empty inductor cache",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile:  # cold start: no kernels compiled by an earlier run
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ctsft-inductor-")
    model_dir = Path(args.model_dir)
    prepare_model(get_model_spec("e5_small"), model_dir)  # no-op when cached
    model = load_task_model(
        model_dir, "nusax", seed=0
    ).eval()  # fresh classifier head: fine for timing
    pool = load_split("nusax", "ind", "train")
    per_label = -(-args.examples // 3)
    examples = list(balanced_sample(pool, per_label, seed=0))[: args.examples]
    mu = mean_baseline(model, examples, "all", args.batch_size)
    data = list(batches(model, examples, args.batch_size))
    engine = CDTEngine.from_task_model(model, CDTOptions(compile=args.compile))
    geo = engine.geo
    lengths = [int(b["attention_mask"].shape[1]) for b in data]
    print(
        f"e5_small: {geo.n_layers}x{geo.n_heads} heads, {len(examples)} examples, padded lengths "
        f"{lengths}, {args.threads} threads, compile={args.compile}"
    )

    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in data:
            model(**batch)
    forward_s = time.perf_counter() - t0
    print(f"(d) plain forward          {forward_s:8.2f} s")

    t0 = time.perf_counter()
    group = args.group_size or None
    cdt, _ = score_heads(
        engine, data, mu, "directional", args.head_batch, progress=False, group_size=group
    )
    cdt_s = time.perf_counter() - t0
    print(f"(a) batched CD-T           {cdt_s:8.2f} s")

    t0 = time.perf_counter()
    ablation, _ = score_heads(
        engine, data, mu, "ablation", args.head_batch, progress=False, group_size=group
    )
    ablation_s = time.perf_counter() - t0
    print(f"(c) ablation scan (cached) {ablation_s:8.2f} s")

    heads = [(i % geo.n_layers, (i * 5) % geo.n_heads) for i in range(geo.n_layers * geo.n_heads)]
    timed = heads[: args.naive_heads]
    t0 = time.perf_counter()
    worst = 0.0
    for layer, head in timed:
        total = 0.0
        for batch in (part for b in data for part in length_groups(b, group)):
            dec = engine.decompose_naive(batch, [[(layer, head)]], mu)
            total += float(gold_margin(dec.beta[0], batch["labels"]).sum())
        worst = max(worst, abs(total / len(examples) - float(cdt[layer, head])))
    measured = time.perf_counter() - t0
    naive_s = measured * len(heads) / len(timed)
    print(
        f"(b) naive one at a time    {naive_s:8.2f} s  ({measured:.2f} s for {len(timed)} heads, scaled to {len(heads)})"
    )
    print(
        f"max |batched - naive| directional score on those heads: {worst:.3g} (score scale {cdt.abs().max().item():.3g})"
    )
    print(
        f"RESULT cdt_s={cdt_s:.3f} naive_s={naive_s:.3f} ablation_s={ablation_s:.3f} "
        f"forward_s={forward_s:.3f} cdt_vs_ablation={cdt_s / ablation_s:.3f} naive_vs_cdt={naive_s / cdt_s:.3f}"
    )


if __name__ == "__main__":
    main()
