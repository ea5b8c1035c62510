"""`python -m ctsft.export`: any checkpoint as a standalone Hugging Face folder that loads without
ctsft to the very model ctsft evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_train_masking import CIRCUIT, _method
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from ctsft.data import load_split
from ctsft.export import EXPORT_RECORD, main
from ctsft.models import load_task_model
from ctsft.models.task_model import class_logits
from ctsft.train import TrainConfig, build_plan
from ctsft.train.loop import train_to_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = TrainConfig(epochs=1, max_steps=2, lr=1e-2, batch_size=4, warmup_ratio=0.0)
METHODS = {
    "ctsft": _method("ctsft"),
    "sparse_random": _method("sparse_random", heads="circuit", seed=1),
    "lora": OmegaConf.create({"name": "lora", "rank": 2}),
}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_split("nusax", "ind", "train").to_list()[:8]


def lean_checkpoint(theta: Path, method: str, rows: list[dict], out: Path) -> Path:
    model = load_task_model(theta, "nusax", max_length=16)
    plan = build_plan(model.hf, model.adapter, METHODS[method], CIRCUIT)
    train_to_checkpoint(model, plan, STEPS, rows, out, seed=0, progress=False, base_dir=theta)
    return out


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("method", list(METHODS))
def test_export_loads_without_ctsft_to_the_evaluated_model(
    tiny_thetas: dict[str, Path], rows: list[dict], tmp_path: Path, arch: str, method: str, capsys
) -> None:
    ckpt = lean_checkpoint(tiny_thetas[arch], method, rows, tmp_path / "ckpt")
    out = tmp_path / "exported"
    assert main([str(ckpt), str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["trained"] in printed and record["format"] == ("lora" if method == "lora" else "trained")  # fmt: skip
    if method == "ctsft":
        assert "\nctsft: 3 heads (L0H1 L1H2 L1H3), " in printed
    ours = load_task_model(ckpt, "nusax", max_length=16).eval()
    auto = AutoModelForSequenceClassification if ours.kind == "encoder" else AutoModelForCausalLM
    theirs = auto.from_pretrained(
        out, attn_implementation=ours.hf.config._attn_implementation
    ).eval()
    mine, other = ours.hf.state_dict(), theirs.state_dict()
    assert mine.keys() == other.keys()
    assert all(torch.equal(mine[k], other[k]) for k in mine)
    batch = ours.encode(rows[:4])
    with torch.no_grad():
        expected = ours(**batch)
        got = class_logits(theirs, ours.kind, ours.label_ids, **batch)
    assert torch.equal(expected, got)
    if ours.kind == "encoder":
        assert theirs.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


def test_export_refuses_an_existing_folder_and_a_base_model(
    tiny_thetas: dict[str, Path],
    tiny_model_dirs: dict[str, Path],
    rows: list[dict],
    tmp_path: Path,
    capsys,
) -> None:
    ckpt = lean_checkpoint(tiny_thetas["tiny_bert"], "ctsft", rows, tmp_path / "ckpt")
    (tmp_path / "taken").mkdir()
    assert main([str(ckpt), str(tmp_path / "taken")]) == 1
    assert "exists: choose another output folder" in capsys.readouterr().err
    assert main([str(tiny_model_dirs["tiny_bert"]), str(tmp_path / "x")]) == 1
    assert "not a ctsft checkpoint" in capsys.readouterr().err
    assert main([str(ckpt), str(tmp_path / "dry"), "--dry-run"]) == 0
    assert not (tmp_path / "dry").exists() and "would write" in capsys.readouterr().out
