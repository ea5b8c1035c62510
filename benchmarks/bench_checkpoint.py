"""A transfer's checkpoint write and an evaluation's checkpoint load, whole vs lean, on e5-small.

    python benchmarks/bench_checkpoint.py prepare --model-dir results/models/e5_small --out /tmp/ckpt
    python benchmarks/bench_checkpoint.py load /tmp/ckpt/ctsft_lean      # one load, for whole-process timing

`prepare` makes theta_1 (the base with a classifier head, saved whole), trains CT-SFT (7 heads +
norms) and full fine-tuning with frozen token embeddings for one step each (quick settings,
max length 64), then writes each model both ways, the old whole checkpoint (`save_pretrained` +
tokenizer) and the lean one (what was trained, relative to theta_1), `--repeats` times, and
prints the median write time and the size of each. `load` loads one folder as an evaluation job
does (`load_task_model`) and prints the seconds; time it as a whole process to include start-up.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from omegaconf import OmegaConf

from ctsft.data import load_split
from ctsft.models import load_task_model
from ctsft.train import TrainConfig, build_plan
from ctsft.train.loop import stored_weights, train_to_checkpoint

CIRCUIT = {"circuit": [[0, 3], [2, 5], [4, 1], [6, 7], [8, 2], [10, 11], [11, 0]]}  # 7 heads
METHODS = {
    "ctsft": (
        OmegaConf.create(
            {"name": "ctsft", "heads": "circuit", "kv_policy": "shared", "train_norms": True}
        ),
        False,
    ),  # fmt: skip
    "full_ft": (OmegaConf.create({"name": "full_ft"}), True),
}


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def prepare(model_dir: Path, out: Path, repeats: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    theta = out / "theta_1"
    if not theta.is_dir():
        load_task_model(model_dir, "nusax", kind="encoder", max_length=64).save(theta)
    rows = load_split("nusax", "jav", "train").to_list()[:16]
    config = TrainConfig(epochs=1, max_steps=1, lr=5e-5, batch_size=16)
    print("| method | format | write s (median) | size MB |\n|---|---|---:|---:|")
    for name, (method, freeze) in METHODS.items():
        model = load_task_model(theta, "nusax", max_length=64)
        plan = build_plan(model.hf, model.adapter, method, CIRCUIT, freeze_embeddings=freeze)
        train_to_checkpoint(model, plan, config, rows, out / f"{name}_lean", seed=0, progress=False, base_dir=theta)  # fmt: skip
        stored = stored_weights(plan, model.hf, theta)
        for fmt, kwargs in (("whole", {}), ("lean", {"stored": stored})):
            target = out / f"{name}_{fmt}"
            seconds = []
            for _ in range(repeats):
                shutil.rmtree(target, ignore_errors=True)
                started = time.perf_counter()
                model.save(target, extra={"training": {"method": name}}, **kwargs)
                seconds.append(time.perf_counter() - started)
            print(f"| {name} | {fmt} | {statistics.median(seconds):.2f} | {size_mb(target):.1f} |")


def load(folder: Path) -> None:
    started = time.perf_counter()
    load_task_model(folder, "nusax", kind="encoder", max_length=64)
    print(f"loaded {folder} in {time.perf_counter() - started:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--model-dir", type=Path, default=Path("results/models/e5_small"))
    p.add_argument("--out", type=Path, default=Path("/tmp/ctsft_checkpoint_bench"))
    p.add_argument("--repeats", type=int, default=5)
    q = sub.add_parser("load")
    q.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.model_dir, args.out, args.repeats)
    else:
        load(args.folder)


if __name__ == "__main__":
    main()
