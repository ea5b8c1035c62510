"""Checkpoints that store only what their method trained (issue: paper scale that fits a disk).

For every tiny family and every method that trains a subset, the same run is written twice: as a
whole model (the old format) and relative to theta_1. Loading the lean one must give a model whose
every tensor is `torch.equal` to the whole one; its file must hold exactly the plan's trainable
count; a re-created theta_1 is refused in one line; a LoRA transfer is a PEFT adapter that PEFT's
own loader reads to the logits ctsft evaluates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_train_masking import ARCHES, CIRCUIT, _method

from ctsft.data import load_split
from ctsft.errors import CtsftError
from ctsft.facts import ADAPTER_FILE, TRAINED_FILE, WEIGHTS_FILE
from ctsft.models import load_task_model
from ctsft.models.checkpoint import own_weights, stored_record
from ctsft.models.task_model import TaskModel, class_logits
from ctsft.train import TrainConfig, build_plan
from ctsft.train.loop import train_to_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = TrainConfig(
    epochs=1, max_steps=3, lr=1e-2, batch_size=4, weight_decay=0.1, warmup_ratio=0.0
)
SUBSET_METHODS = {
    "ctsft": _method("ctsft"),
    "near_zero": _method("near_zero"),
    "random_heads": _method("random_heads", seed=5),  # its own draw of heads
    "sparse_random": _method("sparse_random", heads="circuit", seed=3),
    "norms_only": _method("norms_only"),
    "full_ft_frozen_embeddings": OmegaConf.create({"name": "full_ft"}),
}
LORA = OmegaConf.create({"name": "lora", "rank": 2})


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_split("nusax", "ind", "train").to_list()[:12]


@pytest.fixture(scope="module")
def thetas(tiny_thetas: dict[str, Path]) -> dict[str, Path]:
    return tiny_thetas


def _train(theta: Path, method: object, rows: list[dict], out: Path, lean: bool) -> TaskModel:
    model = load_task_model(theta, "nusax", max_length=16)
    freeze = str(method["name"]) == "full_ft"
    plan = build_plan(model.hf, model.adapter, method, CIRCUIT, freeze_embeddings=freeze)
    train_to_checkpoint(
        model, plan, STEPS, rows, out, seed=0, progress=False, base_dir=theta if lean else None
    )
    return model


def _assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


def _stored_values(folder: Path) -> int:
    """Scalars of trained values in a trained.safetensors (its index tensors excluded)."""
    with safe_open(str(folder / TRAINED_FILE), framework="pt") as handle:
        keys = [k for k in handle.keys() if not k.endswith(".idx")]
        return sum(handle.get_tensor(k).numel() for k in keys)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("method", list(SUBSET_METHODS))
def test_lean_checkpoint_loads_bit_identical_to_the_whole_one(
    thetas: dict[str, Path], rows: list[dict], tmp_path: Path, arch: str, method: str
) -> None:
    cfg = SUBSET_METHODS[method]
    _train(thetas[arch], cfg, rows, tmp_path / "whole", lean=False)
    trained = _train(thetas[arch], cfg, rows, tmp_path / "lean", lean=True)
    lean = tmp_path / "lean"
    assert not (lean / WEIGHTS_FILE).exists() and not (lean / "tokenizer.json").exists()
    record = json.loads((lean / "task_model.json").read_text())
    assert record["format"] == "trained" and record["base"]["path"].endswith(arch)
    plan = build_plan(
        trained.hf, trained.adapter, cfg, CIRCUIT, freeze_embeddings=method.startswith("full")
    )
    assert _stored_values(lean) == plan.trainable  # what was trained, and nothing else
    whole = load_task_model(tmp_path / "whole", "nusax", max_length=16)
    loaded = load_task_model(lean, "nusax", max_length=16)
    _assert_same_tensors(loaded.hf, whole.hf)
    theta = load_task_model(thetas[arch], "nusax", max_length=16)
    moved = [
        n for n, p in theta.hf.state_dict().items() if not torch.equal(p, loaded.hf.state_dict()[n])
    ]
    assert moved, "training changed nothing: the comparison above proves nothing"
    assert own_weights(lean) == lean / TRAINED_FILE


def test_full_ft_without_frozen_parts_stays_whole(
    thetas: dict[str, Path], rows: list[dict], tmp_path: Path
) -> None:
    model = load_task_model(thetas["tiny_bert"], "nusax", max_length=16)
    plan = build_plan(model.hf, model.adapter, OmegaConf.create({"name": "full_ft"}), None)
    train_to_checkpoint(model, plan, STEPS, rows, tmp_path / "ft", seed=0, progress=False, base_dir=thetas["tiny_bert"])  # fmt: skip
    assert (tmp_path / "ft" / WEIGHTS_FILE).is_file() and stored_record(tmp_path / "ft") is None


def test_a_recreated_theta_1_is_refused_in_one_line(
    thetas: dict[str, Path], rows: list[dict], tmp_path: Path
) -> None:
    theta = tmp_path / "theta"
    load_task_model(thetas["tiny_llama"], "nusax", max_length=16).save(theta)
    _train(theta, SUBSET_METHODS["ctsft"], rows, tmp_path / "lean", lean=True)
    weights = load_file(str(theta / WEIGHTS_FILE))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(theta / WEIGHTS_FILE), metadata={"format": "pt"})
    with pytest.raises(CtsftError) as err:
        load_task_model(tmp_path / "lean", "nusax", max_length=16)
    message = str(err.value)
    assert "\n" not in message and "theta_1 was re-created" in message
    assert "--forcerun transfer" in message and str(theta.resolve()) in message


def test_a_missing_theta_1_is_refused_in_one_line(
    thetas: dict[str, Path], rows: list[dict], tmp_path: Path
) -> None:
    theta = tmp_path / "theta"
    load_task_model(thetas["tiny_bert"], "nusax", max_length=16).save(theta)
    _train(theta, SUBSET_METHODS["norms_only"], rows, tmp_path / "lean", lean=True)
    (theta / WEIGHTS_FILE).unlink()
    with pytest.raises(CtsftError, match=r"has no model\.safetensors: re-create theta_1"):
        load_task_model(tmp_path / "lean", "nusax", max_length=16)


def test_a_truncated_trained_file_is_refused(
    thetas: dict[str, Path], rows: list[dict], tmp_path: Path
) -> None:
    _train(thetas["tiny_qwen2"], SUBSET_METHODS["ctsft"], rows, tmp_path / "lean", lean=True)
    data = (tmp_path / "lean" / TRAINED_FILE).read_bytes()
    (tmp_path / "lean" / TRAINED_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CtsftError, match="truncated or corrupt"):
        load_task_model(tmp_path / "lean", "nusax", max_length=16)


@pytest.mark.parametrize("arch", [a for a in ARCHES if a != "tiny_gpt2"])
def test_lora_is_a_peft_adapter_that_peft_loads_to_the_same_logits(
    thetas: dict[str, Path], rows: list[dict], tmp_path: Path, arch: str
) -> None:
    from peft import PeftModel

    _train(thetas[arch], LORA, rows, tmp_path / "whole", lean=False)
    _train(thetas[arch], LORA, rows, tmp_path / "lora", lean=True)
    folder = tmp_path / "lora"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        ADAPTER_FILE,
        "task_model.json",
    ]
    ours = load_task_model(folder, "nusax", max_length=16).eval()
    _assert_same_tensors(ours.hf, load_task_model(tmp_path / "whole", "nusax", max_length=16).hf)
    theta = load_task_model(thetas[arch], "nusax", max_length=16).eval()
    batch = theta.encode(rows[:6])
    before = theta(**batch).detach()
    peft_model = PeftModel.from_pretrained(theta.hf, str(folder)).eval()
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in peft_model.named_parameters())
    with torch.no_grad():
        theirs = class_logits(theta.hf, theta.kind, theta.label_ids, **batch)
        mine = ours(**batch)
    assert not torch.allclose(theirs, before, atol=1e-4), "the adapter changed nothing"
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_e5_small_lean_checkpoints_are_bit_identical(
    e5_dir: Path, rows: list[dict], tmp_path: Path
) -> None:
    """The real model: CT-SFT's 0.31% and full fine-tuning with frozen embeddings (18%)."""
    theta = tmp_path / "theta"
    load_task_model(e5_dir, "nusax", max_length=16, seed=0).save(theta)
    for method in ("ctsft", "full_ft_frozen_embeddings"):
        cfg = SUBSET_METHODS[method]
        _train(theta, cfg, rows[:8], tmp_path / method / "whole", lean=False)
        _train(theta, cfg, rows[:8], tmp_path / method / "lean", lean=True)
        lean = load_task_model(tmp_path / method / "lean", "nusax", max_length=16)
        whole = load_task_model(tmp_path / method / "whole", "nusax", max_length=16)
        _assert_same_tensors(lean.hf, whole.hf)
        size = (tmp_path / method / "lean" / TRAINED_FILE).stat().st_size
        assert size < 0.25 * (tmp_path / method / "whole" / WEIGHTS_FILE).stat().st_size


def test_a_base_without_a_classifier_head_gets_it_stored(
    tiny_model_dirs: dict[str, Path], rows: list[dict], tmp_path: Path
) -> None:
    """A bare encoder (no head, as prepare_model writes e5-small): the head the transfer
    initialised from its seed is not in the base, so the checkpoint must store it."""
    import shutil

    from transformers import AutoModel

    bare = tmp_path / "bare"
    AutoModel.from_pretrained(tiny_model_dirs["tiny_bert"]).save_pretrained(bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dirs["tiny_bert"] / name).is_file():
            shutil.copy(tiny_model_dirs["tiny_bert"] / name, bare / name)
    for lean, out in ((False, "whole"), (True, "lean")):
        model = load_task_model(bare, "nusax", kind="encoder", max_length=16, seed=5)
        assert {"classifier.weight", "classifier.bias"} <= set(model.fresh_parameters)
        plan = build_plan(model.hf, model.adapter, SUBSET_METHODS["ctsft"], CIRCUIT)
        train_to_checkpoint(model, plan, STEPS, rows, tmp_path / out, seed=0, progress=False, base_dir=bare if lean else None)  # fmt: skip
    whole = load_task_model(tmp_path / "whole", "nusax", max_length=16)
    loaded = load_task_model(tmp_path / "lean", "nusax", max_length=16)  # seed 0, not 5
    _assert_same_tensors(loaded.hf, whole.hf)


def test_an_unchanged_theta_1_is_not_hashed_again_and_a_rewritten_one_is(
    thetas: dict[str, Path], rows: list[dict], tmp_path: Path, monkeypatch
) -> None:
    import os

    from ctsft.models import checkpoint

    theta = tmp_path / "theta"
    load_task_model(thetas["tiny_bert"], "nusax", max_length=16).save(theta)
    _train(theta, SUBSET_METHODS["ctsft"], rows, tmp_path / "lean", lean=True)
    hashed = []
    real = checkpoint.sha256_file
    monkeypatch.setattr(checkpoint, "sha256_file", lambda p: hashed.append(p) or real(p))
    load_task_model(tmp_path / "lean", "nusax", max_length=16)
    assert hashed == []  # same size and mtime: the recorded sha256 stands
    weights = theta / WEIGHTS_FILE
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, new mtime
    load_task_model(tmp_path / "lean", "nusax", max_length=16)
    assert hashed == [weights.resolve()]  # hashed, and accepted: the content is the same
