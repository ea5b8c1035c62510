"""benchmarks/bench_disk.py's arithmetic against real files: the bytes it predicts for a checkpoint
of each format are those the writers of `ctsft.models.checkpoint` (and `save_pretrained`) write,
on tiny models, to within the safetensors header's digits; and its expansion of a config gives
the transfers and evaluations `snakemake -n` plans."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ctsft.adapters import get_adapter
from ctsft.models.checkpoint import save_adapter, save_trained
from ctsft.models.tiny import tiny_model
from ctsft.train.lora import inject_lora
from ctsft.train.methods import build_plan

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_disk", REPO / "benchmarks" / "bench_disk.py")
bench_disk = importlib.util.module_from_spec(SPEC)
sys.modules["bench_disk"] = bench_disk
SPEC.loader.exec_module(bench_disk)

# header JSON digits: the offsets' order (safetensors sorts tensors) and numbers may differ
HEADER_SLACK = 64
CIRCUIT = {"circuit": [[0, 1], [1, 3]], "near_zero": [[0, 2]], "random": [[1, 0]]}


def trained_plan(arch: str, method: dict, freeze: bool = False):
    hf = tiny_model(arch)
    plan = build_plan(hf, get_adapter(hf), method, CIRCUIT, freeze_embeddings=freeze)
    return hf, plan


@pytest.mark.parametrize(
    "arch, method, freeze",
    [
        ("bert", {"name": "ctsft"}, False),
        ("qwen2", {"name": "ctsft"}, False),  # grouped-query attention: shared k/v rows
        ("llama", {"name": "sparse_random", "seed": 3}, False),  # values + int32 indices
        ("gemma3", {"name": "norms_only"}, False),
        ("bert", {"name": "full_ft"}, True),  # frozen token embeddings: a subset
    ],
)
def test_trained_file_size_is_predicted(tmp_path: Path, arch, method, freeze) -> None:
    hf, plan = trained_plan(arch, method, freeze)
    spans = [(e.name, e.dim, e.start, e.stop) for e in plan.entries]
    scatter = [(s.name, s.indices) for s in plan.scatter.entries] if plan.scatter else []
    save_trained(hf, spans, scatter, tmp_path)
    real = (tmp_path / "trained.safetensors").stat().st_size
    tensors, metadata = bench_disk.trained_tensors(plan, hf)
    predicted = bench_disk.safetensors_bytes(tensors, metadata)
    assert abs(predicted - real) <= HEADER_SLACK, (predicted, real)
    data = sum(4 * torch.Size(shape).numel() for _, _, shape in tensors)
    entries = plan.scatter.numel if plan.scatter else 0
    assert data == 4 * plan.trainable + 4 * entries  # fp32 values, int32 index per entry


def test_full_and_lora_sizes_are_predicted(tmp_path: Path) -> None:
    tied = tiny_model("gpt2")  # lm_head is the token embedding: stored once
    tied.save_pretrained(tmp_path / "full")
    real = (tmp_path / "full" / "model.safetensors").stat().st_size
    assert abs(bench_disk.full_weights_bytes(tied) - real) <= HEADER_SLACK, real

    hf = tiny_model("qwen2")
    plan = build_plan(hf, get_adapter(hf), {"name": "lora", "rank": 3}, None)
    config = inject_lora(hf, plan.lora_modules, plan.lora_rank, 2.0, 0.0)
    (tmp_path / "lora").mkdir()
    save_adapter(hf, config, tmp_path / "lora")
    real = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    predicted = bench_disk.safetensors_bytes(bench_disk.lora_tensors(plan, hf), {"format": "pt"})
    assert abs(predicted - real) <= HEADER_SLACK, (predicted, real)


def test_meta_models_have_the_real_parameter_counts() -> None:
    """The configs next to the benchmark give the published sizes (no weights read)."""
    counts = {
        name: sum(p.numel() for p in bench_disk.meta_model(name, 3).parameters())
        for name in ("e5_small", "qwen2_5_0_5b", "smollm2_135m", "gemma3_270m")
    }
    assert counts["e5_small"] == 117_654_915  # 470,643,204-byte theta_1 minus its header
    assert counts["qwen2_5_0_5b"] == 494_032_768  # Qwen2.5-0.5B, tied embeddings once
    assert counts["smollm2_135m"] == 134_515_008
    assert counts["gemma3_270m"] == 268_098_176


def test_tiny_config_expands_as_snakemake_plans_it() -> None:
    """config/tiny.yaml with temporary full checkpoints: per (target, seed) 3 transfers (full_ft's
    temporary), one evaluate job writing their 3 metrics files, zero-shot's evaluation per target;
    predict() itself stops if `snakemake -n` plans other counts."""
    pred = bench_disk.predict("config/tiny.yaml", ["keep_full_checkpoints=false"])
    runs = 2 * 2  # jav, sun x seeds 0, 1
    assert pred.jobs == {
        "evaluation": 3 * runs + 2, "evaluate": runs, "evaluate_as_is": 2,
        "transfer": 2 * runs, "transfer_temp": runs,
    }  # fmt: skip
    assert (pred.dry_run["transfer"], pred.dry_run["transfer_temp"]) == (2 * runs, runs)
    rows = {row.kind: row for row in pred.rows}
    assert rows["transfer full_ft"].temporary and rows["transfer full_ft"].note == "full"
    assert rows["transfer ctsft/k2"].note.startswith("trained")
    assert pred.stays < pred.total < pred.old_total


def test_measure_sorts_files_by_layout_template(tmp_path: Path) -> None:
    """--measure: a checkpoint file counts under its folder's kind (theta_1 or its variant,
    `ctsft/k2` included), every other file under the template it matches."""
    run = tmp_path / "nusax" / "tiny_bert"
    files = {
        run / "ind" / "proxy_checkpoint" / "model.safetensors": 100,
        run / "ind" / "proxy_checkpoint" / "tokenizer.json": 10,
        run / "ind-jav" / "ctsft" / "k2" / "seed0" / "checkpoint" / "trained.safetensors": 50,
        run / "ind-jav" / "full_ft" / "seed0" / "checkpoint" / "model.safetensors": 70,
        run / "ind-jav" / "ctsft" / "k2" / "seed0" / "metrics.json": 7,
        run / "ind" / "mu.safetensors": 5,
        tmp_path / "tables" / "table1_nusax.csv": 3,
    }
    for file, size in files.items():
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"x" * size)
    assert dict(bench_disk.measure(tmp_path)) == {
        "theta_1": 110,
        "transfer ctsft/k2": 50,
        "transfer full_ft": 70,
        "records, tables, figures, logs": 10,
        "mu + scores + heatmap": 5,
    }
