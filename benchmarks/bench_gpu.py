"""GPU check at paper scale: CD-T scoring, CT-SFT vs full fine-tuning steps, frozen weights, and
the projected GPU-hours of the paper grid, on a random-weight Qwen2.5-0.5B.

    PYTHONPATH=src python benchmarks/bench_gpu.py                 # on a GPU machine (make gpu-check)
    PYTHONPATH=src python benchmarks/bench_gpu.py --device cpu --small   # the same code, tiny, on CPU

Self-contained on purpose: it needs only torch, transformers, safetensors, numpy and `src/`
(no snakemake, hydra, datasets, pandas or scipy), no internet and no weights: the model is built
from the exact Qwen2.5-0.5B config committed next to this file (24 layers x 14 query heads,
2 key/value heads, d_head 64), so a stock PyTorch image runs it. Random weights cost the same
time and memory as trained ones.

It prints, and ends with one machine-readable `RESULT key=value ...` line:
1. CD-T directional scoring of all heads (336) on 64 examples of 128 tokens: wall time (after one
   warm-up group), and the beta + gamma invariant (max |beta + gamma - logits|);
2. device vs CPU head scores on the tiny families (Spearman; 1.0 when --device cpu);
3. CT-SFT (top 5% heads + norms) and full fine-tuning step time and peak memory at 16 x 128 in
   the runtime's precision (bf16 autocast on CUDA), and their ratio;
4. whether every frozen entry is bit-identical after 20 CT-SFT steps;
5. evaluation throughput and model load time;
6. what every job pays besides its compute: process start-up (a fresh `python -c "import torch,
   transformers"` that initialises the device, timed as a subprocess) and checkpoint I/O (writing
   the whole model with `save_pretrained` and a CT-SFT checkpoint of only the trained values with
   `ctsft.models.checkpoint.save_trained`, reading the whole model and applying the trained
   values), and from all of these the GPU-hours of the paper grid (config/config.yaml: 36 pairs
   x 5 trained methods x 4 seeds, at 128 tokens, an upper bound since NusaX rows are ~50 tokens),
   printed with its job count and each part of the total.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.rules import CDTOptions
from ctsft.cdt.scores import score_heads
from ctsft.data.tasks import NUSAX
from ctsft.models.checkpoint import apply_trained, save_trained
from ctsft.models.task_model import TaskModel
from ctsft.models.tiny import tiny_model
from ctsft.runtime import Runtime, configure_determinism, set_tf32
from ctsft.train.loop import TrainConfig, Trainer
from ctsft.train.methods import build_plan

CONFIG = Path(__file__).with_name("configs") / "qwen2_5_0_5b.json"
SMALL = dict(
    num_hidden_layers=2, hidden_size=64, intermediate_size=128, vocab_size=2000,
    bos_token_id=1, eos_token_id=1,
)  # fmt: skip

# The paper grid of config/config.yaml: (task, proxy, number of targets), rows per split, methods.
GRID_PAIRS = [("nusax", "ind", 11), ("nusax", "eng", 11), ("xnli", "en", 14)]
TRAIN_ROWS = {"nusax": 500, "xnli": 2241}  # XNLI: dev minus every 10th row (validation)
TEST_ROWS = {"nusax": 400, "xnli": 5010}
TRAINED_METHODS = {"full_ft": "full", "ctsft": "heads", "near_zero": "heads", "random_heads": "heads", "lora": "heads"}  # fmt: skip
SEEDS, EPOCHS, BATCH = 4, 5, 16
DISCOVERY = 96  # cdt.n_per_label 32 x 3 labels
FAITH_SETS = 12  # circuit, NearZero, 10 random sets


class LabelTokens:
    """The only tokenizer calls a causal TaskModel makes without text: one id per label word."""

    pad_token_id = 0
    padding_side = "right"

    def __init__(self, words: tuple[str, ...], first_id: int) -> None:
        self.ids = {word: first_id + i for i, word in enumerate(words)}

    def encode(self, word: str, add_special_tokens: bool = False) -> list[int]:
        return [self.ids[word]]


class MethodCfg(dict):
    """Attribute access over a dict, as the method configs give `build_plan` (no omegaconf)."""

    __getattr__ = dict.get


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device, out: dict[str, float], key: str):
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    out[key] = time.perf_counter() - start


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation without scipy (no ties in float scores)."""
    ra, rb = (np.argsort(np.argsort(x.ravel())).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def make_batches(n: int, length: int, vocab: int, batch: int, device, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        ids = torch.randint(10, vocab, (rows, length), generator=gen)
        labels = torch.arange(start, start + rows) % 3  # label-balanced
        out.append(
            {
                "input_ids": ids.to(device),
                "attention_mask": torch.ones(rows, length, dtype=torch.long, device=device),
                "labels": labels.to(device),
            }
        )
    return out


def head_mean(task_model: TaskModel, batches: list[dict]) -> torch.Tensor:
    """mu `[layer, head, d_head]`: the mean head output over all tokens (full-length rows)."""
    adapter, sums, count = task_model.adapter, None, 0
    with torch.inference_mode():
        for batch in batches:
            with adapter.capture_head_outputs() as store:
                task_model(batch["input_ids"], batch["attention_mask"])
            z = torch.stack([store[i] for i in range(adapter.geometry.n_layers)]).float()
            part = z.sum(dim=(1, 2))
            sums = part if sums is None else sums + part
            count += z.shape[1] * z.shape[2]
    return (sums / count).cpu()


def qwen_task_model(small: bool, runtime: Runtime) -> TaskModel:
    settings = json.loads(CONFIG.read_text())
    if small:
        settings.update(SMALL)
    config = Qwen2Config(**{k: v for k, v in settings.items() if k not in ("architectures",)})
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(runtime.device)
    tokens = LabelTokens(NUSAX.label_words, first_id=config.vocab_size - 10)
    return TaskModel(hf, tokens, NUSAX, "causal", max_length=128, runtime=runtime)


def cdt_part(model: TaskModel, args: argparse.Namespace, out: dict[str, Any]) -> list[list[int]]:
    """CD-T scores of every head; returns the top-5% circuit."""
    device = model.device
    set_tf32(False)
    model.eval()
    batches = make_batches(args.examples, args.length, model.hf.config.vocab_size - 20, 16, device)
    mu = head_mean(model, batches)
    engine = CDTEngine.from_task_model(model, CDTOptions(compile=args.compile))
    geo = engine.geo
    n_heads = geo.n_layers * geo.n_heads
    warm = {k: v[:2] for k, v in batches[0].items()}
    with timed(device, out, "cdt_warmup_s"):
        score_heads(engine, [warm], mu, "directional", args.head_batch, False, args.group_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with timed(device, out, "cdt_all_heads_s"):
        scores, n = score_heads(
            engine, batches, mu, "directional", args.head_batch, True, args.group_size
        )
    if device.type == "cuda":
        out["cdt_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    dec = engine.decompose(warm, [[(geo.n_layers // 2, h)] for h in range(min(4, geo.n_heads))], mu)
    out["cdt_invariant_max_abs"] = float((dec.beta + dec.gamma - dec.logits).abs().max())
    out["cdt_heads"], out["cdt_examples"] = n_heads, n
    print(
        f"CD-T: {n_heads} heads x {n} examples x {args.length} tokens in "
        f"{out['cdt_all_heads_s']:.1f} s (warm-up {out['cdt_warmup_s']:.1f} s); "
        f"max |beta + gamma - logits| = {out['cdt_invariant_max_abs']:.2e}",
        flush=True,
    )
    k = max(1, round(0.05 * n_heads))
    flat = scores.flatten().argsort(descending=True)[:k].tolist()
    return [[i // geo.n_heads, i % geo.n_heads] for i in flat]


def tiny_agreement(device: torch.device, out: dict[str, Any]) -> None:
    """Head scores of the tiny families on the device vs on the CPU."""
    rhos = {}
    for arch in ("bert", "llama", "qwen2", "gemma3"):
        torch.manual_seed(0)
        hf = tiny_model(arch)
        with torch.no_grad():  # random init makes every head negligible: scale the matrices up
            for name, param in hf.named_parameters():
                if param.dim() == 2 and "embed" not in name:
                    param.mul_(8)
        kind = "encoder" if arch == "bert" else "causal"
        label_ids = None if kind == "encoder" else [5, 6, 7]
        batches_cpu = make_batches(12, 24, 900, 4, torch.device("cpu"), seed=1)
        results = []
        for dev in (torch.device("cpu"), device):
            hf.to(dev)
            engine = CDTEngine(hf, kind, label_ids, CDTOptions())
            data = [{k: v.to(dev) for k, v in b.items()} for b in batches_cpu]
            mu = torch.zeros(engine.geo.n_layers, engine.geo.n_heads, engine.geo.d_head)
            with torch.inference_mode():
                with engine.adapter.capture_head_outputs() as store:
                    for b in data:
                        if kind == "encoder":
                            hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                        else:
                            hf.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                        mu += torch.stack([store[i] for i in range(engine.geo.n_layers)]).mean(
                            dim=(1, 2)
                        ).cpu() / len(data)
            scores, _ = score_heads(engine, data, mu, "directional", 4, False, None)
            results.append(scores.numpy())
        rhos[arch] = spearman(results[0], results[1])
    out["tiny_spearman_min"] = min(rhos.values())
    print(
        "device vs CPU head scores (Spearman): "
        + ", ".join(f"{a} {r:.5f}" for a, r in rhos.items())
    )


def train_part(model: TaskModel, circuit: list[list[int]], args, out: dict[str, Any]) -> None:
    device = model.device
    model.train()
    batches = make_batches(
        16 * (args.steps + 2), args.length, model.hf.config.vocab_size - 20, 16, device, seed=2
    )
    config = TrainConfig(lr=5e-5, batch_size=16, weight_decay=0.01)
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    for method in ("ctsft", "full_ft"):
        plan = build_plan(
            model.hf, model.adapter, MethodCfg(name=method, heads="circuit"), {"circuit": circuit}
        )
        trainer = Trainer(model, plan, config, seed=0)
        n_steps = args.frozen_steps if method == "ctsft" else args.steps + 2
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for step in range(n_steps):
            batch = batches[step % len(batches)]
            sync(device)
            start = time.perf_counter()
            trainer.backward(batch)
            trainer.apply_update()
            sync(device)
            times.append(time.perf_counter() - start)
        timed_steps = times[2:] or times
        out[f"{method}_step_s"] = float(np.median(timed_steps))
        out[f"{method}_trainable_pct"] = 100.0 * plan.trainable / plan.total
        if device.type == "cuda":
            out[f"{method}_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        trainer.finish()
        print(
            f"{method}: {out[f'{method}_step_s'] * 1000:.1f} ms/step at 16 x {args.length} "
            f"({model.runtime.precision}), {plan.trainable:,} trainable "
            f"({out[f'{method}_trainable_pct']:.2f}%), "
            f"peak {out.get(f'{method}_peak_gb', float('nan')):.2f} GiB",
            flush=True,
        )
        if method == "ctsft":
            out["frozen_bit_identical"], out["ctsft_entries_moved"] = frozen_check(
                model, plan, before
            )
            print(
                f"after {n_steps} CT-SFT steps: frozen entries bit-identical = "
                f"{out['frozen_bit_identical']}, {out['ctsft_entries_moved']:,} entries moved",
                flush=True,
            )
    out["step_ratio"] = out["ctsft_step_s"] / out["full_ft_step_s"]


def frozen_check(model: TaskModel, plan: Any, before: dict[str, torch.Tensor]) -> tuple[bool, int]:
    """Every entry outside the plan is bit-identical to `before`; returns (ok, entries moved)."""
    allowed = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in before.items()}
    for entry in plan.entries:
        if entry.dim is None:
            allowed[entry.name][...] = True
        else:
            allowed[entry.name].narrow(entry.dim, entry.start, entry.stop - entry.start)[...] = True
    ok, moved = True, 0
    for name, param in model.hf.named_parameters():
        changed = ~torch.eq(param.detach(), before[name])
        ok &= not bool((changed & ~allowed[name]).any())
        moved += int(changed.sum())
    return ok, moved


def eval_part(model: TaskModel, args, out: dict[str, Any]) -> None:
    device = model.device
    model.eval()
    batches = make_batches(32 * args.eval_batches, args.length, 1000, 32, device, seed=3)
    with torch.inference_mode(), model.autocast():
        model(batches[0]["input_ids"], batches[0]["attention_mask"])  # warm-up
        with timed(device, out, "eval_s"):
            for batch in batches:
                model(batch["input_ids"], batch["attention_mask"]).argmax(-1).cpu()
    out["eval_examples_per_s"] = 32 * len(batches) / out["eval_s"]
    print(
        f"evaluation: {out['eval_examples_per_s']:.0f} examples/s at 32 x {args.length}",
        flush=True,
    )


STARTUP = """
import sys, torch, transformers
device = torch.device(sys.argv[1])
torch.zeros(1, device=device).sum().item()  # CUDA context and allocator, as a job's first op
"""


def startup_part(device: torch.device, out: dict[str, Any]) -> None:
    """A job's process start-up: interpreter, torch + transformers imports, device init (a
    workflow job adds ctsft, Hydra and its config on top: benchmarks/bench_startup.py)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", STARTUP, str(device)], check=True, timeout=600)
    out["startup_s"] = time.perf_counter() - start
    print(f"process start-up (imports, {device.type} init): {out['startup_s']:.1f} s", flush=True)


def checkpoint_part(model: TaskModel, circuit: list[list[int]], out: dict[str, Any]) -> None:
    """Checkpoint write and read: the whole model (theta_1, full fine-tuning) and the trained
    values of a CT-SFT plan (every other transfer), as the workflow's jobs write and read them."""
    device = model.device
    plan = build_plan(
        model.hf, model.adapter, MethodCfg(name="ctsft", heads="circuit"), {"circuit": circuit}
    )
    spans = [(e.name, e.dim, e.start, e.stop) for e in plan.entries]
    with tempfile.TemporaryDirectory() as tmp:
        full, trained = Path(tmp) / "full", Path(tmp) / "trained"
        trained.mkdir()
        with timed(device, out, "save_full_s"):
            model.hf.save_pretrained(full)
        with timed(device, out, "load_s"):
            AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32).to(device)
        with timed(device, out, "save_trained_s"):
            save_trained(model.hf, spans, [], trained)
        with timed(device, out, "read_trained_s"):
            apply_trained(model.hf, trained, "transfer")
        out["full_mb"] = (full / "model.safetensors").stat().st_size / 1e6
        out["trained_mb"] = (trained / "trained.safetensors").stat().st_size / 1e6
    print(
        f"checkpoint: whole model {out['full_mb']:.1f} MB written in {out['save_full_s']:.2f} s, "
        f"loaded in {out['load_s']:.2f} s; CT-SFT's trained values {out['trained_mb']:.2f} MB "
        f"written in {out['save_trained_s']:.3f} s, applied in {out['read_trained_s']:.3f} s",
        flush=True,
    )


def project_grid(out: dict[str, Any]) -> None:
    """GPU-hours of the paper grid from the measured unit costs, by part: compute (training,
    evaluation, CD-T), process start-up (every job), model loads (every job reads theta_1 or the
    base), checkpoint writes (finetune and full_ft: whole model; other methods: trained values)
    and trained-value reads (each evaluation of such a transfer)."""
    step = {"full": out["full_ft_step_s"], "heads": out["ctsft_step_s"]}
    cdt_per_example = out["cdt_all_heads_s"] / out["cdt_examples"]
    save = {"full": out["save_full_s"], "heads": out["save_trained_s"]}
    parts = dict.fromkeys(("compute", "startup", "load", "write", "read_trained"), 0.0)
    jobs = 0
    for task, _proxy, n_targets in GRID_PAIRS:
        steps = math.ceil(TRAIN_ROWS[task] / BATCH) * EPOCHS
        eval_s = 2 * TEST_ROWS[task] / out["eval_examples_per_s"]
        parts["compute"] += steps * step["full"] + eval_s / 2  # finetune, evaluate_proxy
        parts["compute"] += (
            cdt_per_example * DISCOVERY * 2
        )  # score_heads; single-head ablation scan
        parts["compute"] += cdt_per_example * TEST_ROWS[task] * FAITH_SETS / out["cdt_heads"]
        parts["write"] += save["full"]  # theta_1
        jobs += 4
        for kind in TRAINED_METHODS.values():
            runs = n_targets * SEEDS
            parts["compute"] += runs * (steps * step[kind] + eval_s)
            parts["write"] += runs * save[kind]
            parts["read_trained"] += runs * (out["read_trained_s"] if kind == "heads" else 0.0)
            jobs += 2 * runs
        parts["compute"] += n_targets * eval_s  # zero-shot
        jobs += n_targets
    parts["startup"] = jobs * out["startup_s"]
    parts["load"] = jobs * out["load_s"]
    seconds = sum(parts.values())
    out["grid_gpu_jobs"], out["grid_gpu_hours"] = jobs, seconds / 3600
    for name, value in parts.items():
        out[f"grid_{name}_hours"] = value / 3600
    print(
        f"paper grid: {jobs} GPU jobs, projected {out['grid_gpu_hours']:.2f} GPU-hours = "
        + " + ".join(f"{name} {value / 3600:.2f}" for name, value in parts.items()),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="a 2-layer Qwen2 and fewer examples")
    parser.add_argument("--precision", default=None, help="bf16 (default on CUDA) | fp32 | fp16")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--head-batch", type=int, default=14)
    parser.add_argument("--group-size", type=int, default=16, help="rows per CD-T length group")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--frozen-steps", type=int, default=20)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="fused CD-T rules (torch.compile)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here: run with --device cpu --small", file=sys.stderr)
        return 2
    if args.small:
        args.examples, args.length, args.steps = 8, 32, 3
        args.frozen_steps, args.eval_batches = 5, 2
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        configure_determinism(True)
        torch.cuda.set_device(device)
    runtime = Runtime(device, precision, "sdpa" if device.type == "cuda" else "eager")
    out: dict[str, Any] = {"device": str(device), "precision": precision, "small": args.small}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device).replace(" ", "_")
    started = time.perf_counter()
    model = qwen_task_model(args.small, runtime)
    circuit = cdt_part(model, args, out)
    tiny_agreement(device, out)
    train_part(model, circuit, args, out)
    eval_part(model, args, out)
    startup_part(device, out)
    checkpoint_part(model, circuit, out)
    project_grid(out)
    out["total_s"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(
        "RESULT "
        + " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={str(v).lower()}"
            for k, v in out.items()
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
